"""Assertions shared by the client tests."""

from __future__ import annotations

import asyncio
import base64
import subprocess

from siphera_client.client import Client, Received


async def drained(*clients: Client, timeout: float = 30.0) -> None:
    """Wait until each connected client has read its queued messages (`queue.empty`)."""
    await asyncio.gather(*(asyncio.wait_for(c.drained.wait(), timeout) for c in clients))


async def texts(client: Client, count: int, timeout: float = 60.0) -> list[Received]:
    """The next `count` messages of `client`, all decrypted, then nothing more for a moment."""
    got = await client.receive(count, timeout)
    undecryptable = [(r.id, r.error) for r in got if r.kind != "text"]
    assert not undecryptable, undecryptable
    await asyncio.sleep(0.3)
    assert client.inbox.empty(), "more messages than expected"
    return got


def base64_forms(secret: bytes) -> list[bytes]:
    """What `secret` looks like inside any standard-base64 text, at each of the three byte
    alignments (characters that also depend on neighbouring bytes are left out)."""
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret)
        head = (offset * 8 + 5) // 6  # characters mixing the prefix in
        forms.append(encoded[head:-4])
    return forms


def pg_dump(database_url: str) -> bytes:
    """The whole test database (every org schema) as pg_dump writes it, a few schemas per
    pg_dump run: one run locks every table it dumps in one transaction, and a suite's
    hundreds of org schemas would pass PostgreSQL's lock table (max_locks_per_transaction)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        schemas = [
            row[0]
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname !~ '^(pg_|information_schema)'"
                " ORDER BY nspname"
            )
        ]
    dump = b""
    for start in range(0, len(schemas), 20):
        chosen = [f"--schema={name}" for name in schemas[start : start + 20]]
        done = subprocess.run(
            ["pg_dump", f"--dbname={database_url}", "--no-owner", *chosen],
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        dump += done.stdout
    assert b"messaging_message" in dump, "the dump misses the messages table"
    return dump


def assert_nowhere(marker: str, *blobs: bytes) -> None:
    raw = marker.encode()
    for blob in blobs:
        assert raw not in blob
        for form in base64_forms(raw):
            assert form not in blob
