import json

from django.core.management.base import BaseCommand, CommandError

from orgs.services import audit, personal_data, users
from orgs.services.orgs import get_org
from siphera.api_errors import ApiError
from siphera.tenancy import tenant_context


class Command(BaseCommand):
    help = (
        "Erase a user's personal data (a data-subject erasure request), except what a legal "
        "hold or the audit log keeps. Revokes every device and session. Requires a reason; "
        "prints what was removed and what was kept and why. Audited (member.erased)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument("--user", required=True, help="The user's id.")
        parser.add_argument("--reason", required=True, help="Why (kept in the audit log).")

    def handle(self, *args, **opts):
        try:
            org = get_org(opts["org"])
            with tenant_context(org):
                user = users.access_user(opts["user"])
                report = personal_data.check_erase_user(
                    user, reason=opts["reason"], actor=audit.Actor.system("command:erase_user")
                )
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
