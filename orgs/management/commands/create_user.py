import getpass
import os

from django.core.management.base import BaseCommand, CommandError

from orgs.roles import BUILTIN_ROLES
from orgs.services import audit
from orgs.services.orgs import get_org
from orgs.services.users import check_create_user
from siphera.api_errors import ApiError
from siphera.tenancy import in_tenant


class Command(BaseCommand):
    help = "Create a user in an org and print the new user's id."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", help="Omit to be prompted (or set SIPHERA_PASSWORD).")
        parser.add_argument("--role", default="member", choices=list(BUILTIN_ROLES))
        parser.add_argument("--display-name", default="")
        parser.add_argument("--email", default="")

    def handle(self, *args, **opts):
        password = opts["password"] or os.environ.get("SIPHERA_PASSWORD")
        if password is None:
            if not os.isatty(0):
                raise CommandError("No password: pass --password or set SIPHERA_PASSWORD.")
            password = getpass.getpass("Password: ")
        try:
            org = get_org(opts["org"])
            user = in_tenant(
                org,
                check_create_user,
                username=opts["username"],
                password=password,
                role=opts["role"],
                display_name=opts["display_name"],
                email=opts["email"],
                actor=audit.Actor.system("command:create_user"),
            )
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(user.pk))
