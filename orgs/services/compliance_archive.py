"""The legal-hold archive: a ZIP of what the org's active legal holds keep, streamed.

Each app adds its files (orgs.services.compliance.register_archive_part): messaging the
holds and the held messages with their ciphertext and attachments, calls the held call
records. The archive ends with `manifest.json`, which lists every other file with its
size and SHA-256 (computed while it was written), so a recipient can check that nothing
was altered or lost; the ZIP's own CRCs catch transport damage.

The ZIP is written to a non-seekable sink (sizes go in data descriptors, zip64 when
needed), so no file of the archive is ever held whole in memory or on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator

from django.utils import timezone

from orgs.services.compliance import ExportScope, archive_parts

MANIFEST = "manifest.json"


class _Sink(io.RawIOBase):
    """Collects what the ZIP writer writes until the stream takes it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def archive_pieces(scope: ExportScope, counts: dict) -> Iterator[bytes]:
    """The archive's bytes in pieces; `counts` is filled with the files written per kind
    (for the caller's report)."""
    sink = _Sink()
    now = timezone.now()
    stamp = now.astimezone(dt.UTC).timetuple()[:6]
    listed = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for part in archive_parts():
            for item in part(scope):
                info = zipfile.ZipInfo(item.name, date_time=stamp)
                # Text compresses; encrypted blobs do not, and deflating them only costs CPU.
                text = item.name.endswith((".json", ".jsonl"))
                info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
                digest, size = hashlib.sha256(), 0
                with archive.open(info, "w", force_zip64=True) as out:
                    for piece in item.pieces:
                        out.write(piece)
                        digest.update(piece)
                        size += len(piece)
                        if data := sink.take():
                            yield data
                listed.append(
                    {
                        "name": item.name,
                        "size": size,
                        "sha256": digest.hexdigest(),
                        "ciphertext": item.ciphertext,
                        "description": item.description,
                    }
                )
                if data := sink.take():
                    yield data
        manifest = {
            "format": "siphera.legal-hold-archive/1",
            "generated_at": now.isoformat(),
            **scope.describe(),
            "files": listed,
        }
        info = zipfile.ZipInfo(MANIFEST, date_time=stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    counts["files"] = len(listed)
    if data := sink.take():
        yield data


def verify_archive(path_or_file) -> list[str]:
    """Problems found in an archive (empty: every file is listed, present and matches
    its SHA-256, and nothing unlisted is in it)."""
    problems = []
    with zipfile.ZipFile(path_or_file) as archive:
        names = set(archive.namelist())
        if MANIFEST not in names:
            return [f"{MANIFEST} is missing"]
        manifest = json.loads(archive.read(MANIFEST))
        listed = {entry["name"]: entry for entry in manifest["files"]}
        for name in sorted(names - set(listed) - {MANIFEST}):
            problems.append(f"{name} is not in the manifest")
        for name, entry in listed.items():
            if name not in names:
                problems.append(f"{name} is listed but missing")
                continue
            digest = hashlib.sha256()
            with archive.open(name) as handle:
                while chunk := handle.read(1 << 16):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                problems.append(f"{name} does not match its SHA-256")
    return problems
