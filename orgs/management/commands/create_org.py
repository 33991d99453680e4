from django.core.management.base import BaseCommand, CommandError

from orgs.services import audit
from orgs.services.orgs import check_create_org
from siphera.api_errors import ApiError


class Command(BaseCommand):
    help = "Create an org: its PostgreSQL schema (migrated) and the host name(s) it answers at."

    def add_arguments(self, parser):
        parser.add_argument("--slug", required=True, help="Short id, e.g. acme (a-z, 0-9, -).")
        parser.add_argument("--name", required=True, help='Display name, e.g. "Acme Corp".')
        parser.add_argument(
            "--domain",
            action="append",
            required=True,
            dest="domains",
            help="Host name the org answers at; repeat to add more.",
        )

    def handle(self, *args, slug, name, domains, **options):
        try:
            org = check_create_org(
                slug=slug,
                name=name,
                domains=domains,
                actor=audit.Actor.system("command:create_org"),
            )
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"Created org {org.slug} (schema {org.schema_name}) at {', '.join(domains)}"
        )
