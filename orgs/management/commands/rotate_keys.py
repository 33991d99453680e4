"""manage.py rotate_keys: the key ring's rotation, step by step (docs/key-rotation.md)."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from orgs.services import key_rotation
from siphera import keyring

BAR = 30


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret at rest under the active key (default; resumes an "
        "interrupted run), or --status, --new-key, --promote KEY, --retire KEY."
    )

    def add_arguments(self, parser):
        what = parser.add_mutually_exclusive_group()
        what.add_argument(
            "--status", action="store_true", help="The keys, and which secrets use each."
        )
        what.add_argument(
            "--new-key",
            action="store_true",
            help="Add a new key to KEY_RING_FILE as pending (decrypt-only).",
        )
        what.add_argument(
            "--promote",
            metavar="KEY",
            help="Make pending key KEY the active key (once every process holds it).",
        )
        what.add_argument(
            "--retire",
            metavar="KEY",
            help="Take old key KEY out of the ring; refused while a secret uses it.",
        )
        what.add_argument(
            "--enqueue",
            action="store_true",
            help="Send the re-encryption to a Celery worker instead of running it here.",
        )
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Rows per transaction (1-10000)."
        )
        parser.add_argument(
            "--org",
            action="append",
            metavar="SLUG",
            help="Re-encrypt only this org's secrets (repeatable); default: every org.",
        )
        parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")

    def handle(self, *args, **opts):
        size = opts["batch_size"]
        if size is not None and not 1 <= size <= 10000:
            raise CommandError("--batch-size must be between 1 and 10000.")
        schemas = self._schemas(opts["org"] or [])
        try:
            if opts["status"]:
                return self._status()
            if opts["new_key"]:
                key = key_rotation.do_add_key()
                self.stdout.write(
                    f"added key {key.id} as pending (decrypts, does not encrypt yet). Every "
                    "process re-reads the key ring within KEY_RING_RELOAD_SECONDS; then run "
                    f"`manage.py rotate_keys --promote {key.id}`."
                )
                return
            # `is not None`: an empty KEY (an unset shell variable) is refused as no such
            # key, never taken for the default (a re-encryption of every org).
            if opts["promote"] is not None:
                key = key_rotation.do_promote(opts["promote"])
                self.stdout.write(
                    f"key {key.id} is now active: new secrets are encrypted with it. Run "
                    "`manage.py rotate_keys` to re-encrypt the stored ones."
                )
                return
            if opts["retire"] is not None:
                return self._retire(opts["retire"])
            if opts["enqueue"]:
                from orgs.tasks import reencrypt_secrets

                result = reencrypt_secrets.apply_async(
                    kwargs={"batch_size": size, "schemas": schemas}
                )
                self.stdout.write(
                    f"re-encryption sent to a worker (task {result.id}); follow it with "
                    "`manage.py rotate_keys --status`."
                )
                return
            self._reencrypt(size, schemas, quiet=opts["quiet"])
        except (key_rotation.KeyRotationRefused, keyring.KeyRingError) as exc:
            raise CommandError(str(exc)) from None

    # --- re-encryption ------------------------------------------------------------------

    def _schemas(self, slugs: list[str]) -> list[str]:
        from orgs.models import Org
        from siphera.tenancy import public_schema

        with public_schema():
            found = dict(Org.objects.filter(slug__in=slugs).values_list("slug", "schema_name"))
        unknown = sorted(set(slugs) - set(found))
        if unknown:
            raise CommandError(f"No org with slug {', '.join(unknown)}.")
        return sorted(found.values())

    def _reencrypt(self, batch_size: int | None, schemas: list[str], *, quiet: bool) -> None:
        bar = _Bar(sys.stderr) if not quiet else None
        report = key_rotation.do_reencrypt(
            batch_size=batch_size, progress=bar.update if bar else None, schemas=schemas
        )
        if bar:
            bar.close()
        how = "resumed from its checkpoints" if report.resumed else "ran"
        self.stdout.write(
            f"run {report.run_id} {how}: {report.rotated_now} secret(s) re-encrypted under "
            f"key {report.key_id}, {report.scanned_now} checked (the run in all: "
            f"{report.rotated} re-encrypted, {report.scanned} checked)"
            + (f"; {report.unreadable} no key opens (see the log)" if report.unreadable else "")
        )

    # --- status -------------------------------------------------------------------------

    def _status(self) -> None:
        out = self.stdout.write
        path = keyring.file_path()
        out(f"key-ring file: {path if path else '(none: keys come from SECRET_KEYS only)'}")
        usage = key_rotation.key_usage()
        for key in keyring.ring():
            age = key_rotation.key_age(key) if key.state == keyring.ACTIVE else None
            since = f", active for {age.days} day(s)" if age is not None else ""
            out(f"key {key.id}  {key.state:<7}  from {key.source}{since}")
            used = usage.secrets_of(key.id)
            for (schema, target), count in sorted(used.items()):
                out(f"    {schema:<20} {target:<45} {count}")
            entries = usage.audit_of(key.id)
            if entries:
                out(
                    f"    audit entries not sealed: {sum(entries.values())} "
                    f"in {len(entries)} org(s) (sealed when the key is retired)"
                )
            if not used and not entries:
                out("    (nothing uses it)")
        for (schema, target), count in sorted(usage.unreadable.items()):
            out(f"unreadable (no key of the ring opens them): {schema} {target}: {count}")
        run = key_rotation.latest_run()
        if run is None:
            out("re-encryption: never run")
            return
        steps = key_rotation.run_progress(run)
        scanned = sum(p.scanned for p in steps)
        total = sum(p.total for p in steps)
        rotated = sum(p.rotated for p in steps)
        out(
            f"re-encryption run {run.pk} to key {run.key_id}: {run.state}, {scanned}/{total} "
            f"checked, {rotated} re-encrypted (started {run.created_at:%Y-%m-%d %H:%M:%S}Z)"
        )

    # --- retire -------------------------------------------------------------------------

    def _retire(self, kid: str) -> None:
        report = key_rotation.do_retire(kid)
        for schema, count in sorted(report.sealed.items()):
            self.stdout.write(f"org {schema}: sealed {count} audit entries made with key {kid}")
        if report.file:
            self.stdout.write(f"key {kid} retired: it is out of the ring of every process.")
        if report.in_env:
            self.stdout.write(
                f"key {kid} is still listed in SECRET_KEYS: remove it there before the next "
                "restart" + ("" if report.file else " (until then it stays in the ring)") + "."
            )


class _Bar:
    """A progress bar on a terminal; a plain line per target (and per 10 %) otherwise."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.last: tuple[str, str] | None = None
        self.shown_tenth = -1

    def update(self, p: key_rotation.Progress) -> None:
        where = (p.schema, p.target)
        total = max(p.total, p.scanned, 1)
        share = min(p.scanned / total, 1.0)
        text = f"{p.schema} {p.target}: {p.scanned}/{p.total} checked, {p.rotated} re-encrypted"
        if self.tty:
            filled = int(share * BAR)
            self.stream.write(f"\r[{'#' * filled}{'.' * (BAR - filled)}] {text}\033[K")
            if p.done:
                self.stream.write("\n")
        else:
            tenth = int(share * 10)
            if where != self.last:
                self.shown_tenth = -1
            if p.done or tenth > self.shown_tenth:
                self.stream.write(f"rotate_keys: {text}{' (done)' if p.done else ''}\n")
                self.shown_tenth = 10 if p.done else tenth
        self.last = where
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
