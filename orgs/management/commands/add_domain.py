from django.core.management.base import BaseCommand, CommandError

from orgs.services import audit
from orgs.services.orgs import check_add_domain, get_org
from siphera.api_errors import ApiError


class Command(BaseCommand):
    help = "Add host name(s) an existing org answers at (audited org.domain_added)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument(
            "--domain",
            action="append",
            required=True,
            dest="domains",
            help="Host name to add; repeat to add more (each is added on its own).",
        )

    def handle(self, *args, org, domains, **options):
        actor = audit.Actor.system("command:add_domain")
        try:
            target = get_org(org)
            for domain in domains:
                added = check_add_domain(target, domain, actor=actor)
                self.stdout.write(f"Added {added.domain} to org {target.slug}")
        except ApiError as exc:
            raise CommandError(exc.message) from None
