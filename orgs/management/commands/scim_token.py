from django.core.management.base import BaseCommand, CommandError

from orgs.scim import tokens
from orgs.services import audit
from orgs.services.orgs import get_org
from siphera.api_errors import ApiError
from siphera.tenancy import in_tenant


class Command(BaseCommand):
    help = (
        "Create a new SCIM bearer token for an org and print it once (stdout, nothing "
        "else there); the org's previous token stops working at once. Give the token and "
        "the base URL https://<org host>/scim/v2/ to the identity provider (Okta, Entra ID). "
        "Audited scim.token_rotated. With --revoke, revoke the live token and create none."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument(
            "--label",
            default="identity provider",
            help="Who uses the token (e.g. okta); audit entries name the IdP scim:<label>.",
        )
        parser.add_argument(
            "--revoke", action="store_true", help="Only revoke the live token (SCIM stops)."
        )

    def handle(self, *args, **opts):
        actor = audit.Actor.system("command:scim_token")
        try:
            org = get_org(opts["org"])
            if opts["revoke"]:
                count = in_tenant(org, tokens.do_revoke_tokens, actor=actor)
                self.stderr.write(f"Revoked {count} SCIM token(s) of {org.slug}.")
                return
            row, secret = in_tenant(org, tokens.do_rotate_token, label=opts["label"], actor=actor)
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"New SCIM token {row.hint}… for {org.slug} (label {row.label!r}); any earlier "
            "token is revoked. It is shown once:"
        )
        self.stdout.write(secret)
