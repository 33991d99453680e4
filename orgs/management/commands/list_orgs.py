import json

from django.core.management.base import BaseCommand

from orgs.accounts.models import Device, User
from orgs.models import Org
from siphera.tenancy import in_tenant, public_schema


def _counts():
    return {
        "users": User.objects.filter(is_active=True).count(),
        "devices": Device.objects.filter(revoked_at__isnull=True).count(),
    }


class Command(BaseCommand):
    help = "List orgs with their domains and user/device counts."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="One JSON object per line.")

    def handle(self, *args, **opts):
        with public_schema():
            orgs = list(Org.objects.prefetch_related("domains").exclude(schema_name="public"))
        if not orgs:
            self.stdout.write("No orgs yet. Create one with: manage.py create_org --help")
            return
        for org in orgs:
            row = {
                "slug": org.slug,
                "name": org.name,
                "schema": org.schema_name,
                "active": org.is_active,
                "domains": [d.domain for d in org.domains.all()],
                **in_tenant(org, _counts),
            }
            if opts["json"]:
                self.stdout.write(json.dumps(row))
            else:
                self.stdout.write(
                    f"{row['slug']:<20} {row['name']:<30} users={row['users']:<5} "
                    f"devices={row['devices']:<5} {'active' if org.is_active else 'inactive'}  "
                    f"{', '.join(row['domains'])}"
                )
