"""Byte sizes as people read and type them: binary units (1 KiB = 1,024 bytes), the ones
the admin guide and the API's limits are written in."""

from __future__ import annotations

from decimal import Decimal

UNITS: list[tuple[str, int]] = [
    ("B", 1),
    ("KiB", 2**10),
    ("MiB", 2**20),
    ("GiB", 2**30),
    ("TiB", 2**40),
]
FACTOR = dict(UNITS)


def split_bytes(size: int) -> tuple[int, str]:
    """`size` as a whole number of the largest unit that holds it exactly (what a form
    shows, so saving it unchanged stores the same number of bytes)."""
    for unit, factor in reversed(UNITS):
        if size and size % factor == 0:
            return size // factor, unit
    return size, "B"


def to_bytes(amount: Decimal, unit: str) -> int:
    """`amount` `unit`s in whole bytes (rounded down)."""
    return int(amount * FACTOR[unit])


def human_bytes(size: int | None) -> str:
    """`size` in the largest unit it reaches, to at most two decimals: "1.5 GiB"."""
    if size is None:
        return "—"
    for unit, factor in reversed(UNITS[1:]):
        if size >= factor:
            return f"{size / factor:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return "1 byte" if size == 1 else f"{size} bytes"
