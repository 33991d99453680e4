import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from orgs.management.atomic_file import write_atomically
from orgs.services import audit, compliance
from orgs.services.orgs import get_org
from siphera.api_errors import ApiError
from siphera.tenancy import tenant_context


class Command(BaseCommand):
    help = (
        "Export an org's message metadata, membership changes and call records for a time "
        "range and users (JSON Lines or CSV), or with --format zip the legal-hold archive "
        "(held ciphertext and metadata, with a SHA-256 manifest). Never message content "
        "in the metadata formats. Audited (compliance.exported)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="The org's slug.")
        parser.add_argument("--since", required=True, help="ISO 8601 date/time, inclusive.")
        parser.add_argument("--until", required=True, help="ISO 8601 date/time, exclusive.")
        parser.add_argument(
            "--user", action="append", default=[], dest="users", help="A user id; repeatable."
        )
        parser.add_argument(
            "--section", action="append", default=[], dest="sections", help="Repeatable."
        )
        parser.add_argument("--format", default="jsonl", choices=compliance.FORMATS)
        parser.add_argument("--output", type=Path, help="Write here (default: stdout).")

    def handle(self, *args, **opts):
        binary = getattr(self.stdout._out, "buffer", None)
        if opts["format"] == "zip" and not opts["output"] and binary is None:
            raise CommandError("The archive is binary: write it with --output.")
        try:
            org = get_org(opts["org"])
            with tenant_context(org):
                scope = compliance.check_scope(
                    since=opts["since"], until=opts["until"], user_ids=opts["users"]
                )
                export = compliance.check_export(
                    fmt=opts["format"],
                    scope=scope,
                    section_names=opts["sections"],
                    actor=audit.Actor.system("command:compliance_export"),
                )
                if opts["output"]:
                    written = write_atomically(opts["output"], export.write_to)
                else:
                    written = self._to_stdout(export)
        except ApiError as exc:
            raise CommandError(exc.message) from None
        where = str(opts["output"]) if opts["output"] else "stdout"
        counts = ", ".join(f"{k} {v}" for k, v in export.counts.items()) or "archive"
        sys.stderr.write(
            f"compliance_export: wrote {written} bytes of org {org.slug} as {export.fmt} "
            f"to {where} ({counts})\n"
        )

    def _to_stdout(self, export) -> int:
        if export.fmt == "zip":
            binary = self.stdout._out.buffer  # checked in handle()
            written = export.write_to(binary)
            binary.flush()
            return written
        written = 0
        for piece in export.pieces():
            self.stdout.write(piece, ending="")
            written += len(piece.encode())
        self.stdout.flush()
        return written
