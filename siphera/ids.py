"""Identifiers."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> uuid.UUID:
    """A version 7 UUID (RFC 9562): 48 bits of Unix time in milliseconds, then 74 random
    bits. Ids made later sort later (to the millisecond), so rows keyed by them are
    appended to the right edge of their indexes instead of landing on a random page each:
    fewer pages dirtied and written to the WAL per insert on a large table. They reveal
    when they were made, to the millisecond, and nothing else."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122/9562 variant
    return uuid.UUID(int=value)
