import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from orgs.management.atomic_file import write_atomically
from orgs.services import audit, personal_data, users
from orgs.services.orgs import get_org
from siphera.api_errors import ApiError
from siphera.tenancy import tenant_context


class Command(BaseCommand):
    help = (
        "Export everything the server holds about one user as JSON (a data-subject access "
        "request): profile, devices, sign-ins, memberships, message metadata, calls and "
        "audit entries; never a secret or message content. Audited."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument("--user", required=True, help="The user's id.")
        parser.add_argument("--output", type=Path, help="Write here (default: stdout).")

    def handle(self, *args, **opts):
        try:
            org = get_org(opts["org"])
            with tenant_context(org):
                user = users.access_user(opts["user"])
                export = personal_data.check_export_personal_data(
                    user, actor=audit.Actor.system("command:export_personal_data")
                )
                if opts["output"]:
                    write_atomically(opts["output"], export.write_to)
                else:
                    for piece in export.pieces():
                        self.stdout.write(piece, ending="")
                    self.stdout.flush()
        except ApiError as exc:
            raise CommandError(exc.message) from None
        where = str(opts["output"]) if opts["output"] else "stdout"
        sys.stderr.write(
            f"export_personal_data: wrote user {user.pk} of org {org.slug} to {where}\n"
        )
