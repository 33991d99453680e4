import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from orgs.management.atomic_file import write_atomically
from orgs.services import audit, audit_export
from orgs.services.orgs import get_org
from siphera.api_errors import ApiError
from siphera.tenancy import tenant_context


class Command(BaseCommand):
    help = (
        "Export an org's audit log as CSV or JSON Lines, streamed, oldest first. Each row "
        "carries its hash and prev_hash, so the file can be re-verified with "
        "`verify_audit --file`. The export itself is audited (audit.exported)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument("--format", required=True, choices=audit_export.FORMATS)
        parser.add_argument("--output", type=Path, help="Write here (default: stdout).")
        parser.add_argument("--since", help="ISO 8601 date/time (UTC unless a zone is given).")
        parser.add_argument("--until", help="ISO 8601 date/time, exclusive.")
        parser.add_argument(
            "--event",
            action="append",
            default=[],
            dest="events",
            help="Only this event (e.g. device.revoked) or family (e.g. 'mfa.*'); repeatable.",
        )
        parser.add_argument("--actor", help="Only entries by this user id.")
        parser.add_argument("--target-type", default="")
        parser.add_argument("--target-id", default="")
        parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")

    def handle(self, *args, **opts):
        try:
            org = get_org(opts["org"])
            with tenant_context(org):
                filters = audit_export.check_filter(
                    since=opts["since"],
                    until=opts["until"],
                    events=opts["events"],
                    actor_id=opts["actor"],
                    target_type=opts["target_type"],
                    target_id=opts["target_id"],
                )
                export = audit_export.check_export(
                    fmt=opts["format"],
                    filters=filters,
                    actor=audit.Actor.system("command:export_audit"),
                )
                progress = None if opts["quiet"] else self._progress
                if opts["output"]:
                    count = write_atomically(
                        opts["output"],
                        lambda out: export.write_to(out, progress=progress),
                        text=True,
                    )
                else:
                    count = export.write_to(self.stdout, progress=progress)
                    self.stdout.flush()
        except ApiError as exc:
            raise CommandError(exc.message) from None
        where = str(opts["output"]) if opts["output"] else "stdout"
        sys.stderr.write(
            f"export_audit: wrote {count} entries of org {org.slug} as {export.fmt} to {where}\n"
        )

    def _progress(self, done: int, total: int) -> None:
        share = f" ({100 * done // total}%)" if total else ""
        sys.stderr.write(f"export_audit: {done}/{total} entries{share}\n")
        sys.stderr.flush()
