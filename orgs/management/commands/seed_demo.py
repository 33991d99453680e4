import os

from django.core.management.base import BaseCommand

from orgs.accounts.models import User
from orgs.models import Org
from orgs.services import audit
from orgs.services.orgs import check_create_org
from orgs.services.users import check_create_user
from siphera.tenancy import in_tenant, public_schema

DEMO_USERS = [
    ("admin", "owner", "Ada Admin"),
    ("alice", "member", "Alice Anders"),
    ("bob", "member", "Bob Brown"),
    ("carol", "security_desk", "Carol Chen"),
]


class Command(BaseCommand):
    help = (
        "Create (or keep) the demo org 'demo' at demo.localhost with a few users. "
        "Safe to run again: existing org and users are left as they are."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--domain",
            action="append",
            dest="domains",
            help="Host name(s) for the demo org (default: demo.localhost, localhost, 127.0.0.1).",
        )
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD", "demo-pass-123"))

    def handle(self, *args, domains, password, **opts):
        actor = audit.Actor.system("command:seed_demo")
        with public_schema():
            org = Org.objects.filter(slug="demo").first()
        if org is None:
            org = check_create_org(
                slug="demo",
                name="Demo Org",
                domains=domains or ["demo.localhost", "localhost", "127.0.0.1"],
                actor=actor,
            )
            self.stdout.write("Created org demo")
        else:
            self.stdout.write("Org demo exists; keeping it")
        for username, role, display in DEMO_USERS:
            if in_tenant(org, User.objects.filter(username=username).exists):
                continue
            in_tenant(
                org,
                check_create_user,
                username=username,
                password=password,
                role=role,
                display_name=display,
                actor=actor,
            )
            self.stdout.write(f"Created user {username} ({role})")
        self.stdout.write(
            f"Demo users: {', '.join(u for u, _, _ in DEMO_USERS)}; password: {password}"
        )
