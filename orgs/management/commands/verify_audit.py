import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from orgs.services import audit, audit_anchor, audit_export
from orgs.services.orgs import get_org
from siphera.api_errors import ApiError
from siphera.tenancy import in_tenant


class Command(BaseCommand):
    help = (
        "Verify an org's keyed, hash-chained audit log against its latest anchor (or an "
        "exported file): prints OK with the entry count and head hash, or the first broken "
        "link (entry id and what is wrong) and exits 1. An intact log's head is then "
        "anchored (AUDIT_ANCHOR_DIR), unless --no-anchor."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", help="The org's slug (verifies its live log).")
        parser.add_argument(
            "--expect-head",
            default="",
            metavar="HASH",
            help="Also require the entry with this hash (a head noted earlier) to be present: "
            "catches a log cut short at its end.",
        )
        parser.add_argument(
            "--file", type=Path, help="Verify an export (from export_audit) instead."
        )
        parser.add_argument(
            "--format", choices=audit_export.FORMATS, help="The file's format (default: by suffix)."
        )
        parser.add_argument(
            "--segment",
            action="store_true",
            help="The file is a time-cut export: check links from its first entry on.",
        )
        parser.add_argument(
            "--entries-only",
            action="store_true",
            help="The file was filtered by event/actor/target: check each entry's own hash only.",
        )
        parser.add_argument(
            "--no-anchor",
            action="store_true",
            help="Do not write an anchor of the verified head (read-only check).",
        )
        parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")

    def handle(self, *args, **opts):
        if bool(opts["org"]) == bool(opts["file"]):
            raise CommandError("Pass exactly one of --org SLUG or --file EXPORT.")
        progress = None if opts["quiet"] else self._progress
        try:
            if opts["file"]:
                subject = str(opts["file"])
                report = self._verify_file(opts)
            else:
                org = get_org(opts["org"])
                subject = f"org {org.slug}"
                report = in_tenant(
                    org, audit.verify_chain, progress=progress, expect_head=opts["expect_head"]
                )
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"{subject}: {report.describe()}")
        if not report.ok:
            raise CommandError(f"audit log of {subject} failed verification", returncode=1)
        if opts["org"] and not opts["no_anchor"]:
            self._anchor(org, subject)

    def _anchor(self, org, subject: str) -> None:
        try:
            anchored = in_tenant(org, audit.do_anchor_head)
        except OSError as exc:
            raise CommandError(f"Cannot write the anchor of {subject}: {exc}") from None
        if not anchored.ok:
            self.stdout.write(f"{subject}: not anchored: {anchored.describe()}")
            raise CommandError(f"audit log of {subject} failed verification", returncode=1)
        if anchored.anchor_id is not None:
            path = audit_anchor.anchor_path(org.schema_name)
            self.stdout.write(f"{subject}: head entry {anchored.anchor_id} anchored in {path}")

    def _verify_file(self, opts) -> audit.ChainReport:
        path: Path = opts["file"]
        fmt = opts["format"] or path.suffix.lstrip(".").lower()
        if fmt not in audit_export.FORMATS:
            raise CommandError("Cannot tell the file's format: pass --format csv|jsonl.")
        try:
            with path.open(newline="", encoding="utf-8") as stream:
                return audit_export.verify_export(
                    stream, fmt, links=not opts["entries_only"], from_start=not opts["segment"]
                )
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}") from None
        except (ValueError, KeyError) as exc:
            raise CommandError(f"{path} is not a valid {fmt} audit export: {exc}") from None

    def _progress(self, done: int, total: int) -> None:
        share = f" ({100 * done // total}%)" if total else ""
        sys.stderr.write(f"verify_audit: {done}/{total} entries checked{share}\n")
        sys.stderr.flush()
