"""Client-supplied numbers, bounded before SQL sees them (PITFALLS 27).

PostgreSQL refuses an `integer` past 2^31 - 1 or a `bigint` past 2^63 - 1 with an error
that would be a 500 over REST and an `internal_error` on the socket; Python's `int()`
also takes digits that are not ASCII ("²", "٣"). Every number a client sends in a query
string or a frame goes through one of these first, and is a clear 400 otherwise.
"""

from __future__ import annotations

from siphera.api_errors import ApiError

INT_MAX = 2**31 - 1  # PostgreSQL integer
BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint


def parse_int(raw, *, name: str, lo: int = 0, hi: int = INT_MAX, code: str = "invalid_request"):
    """`raw` (a query-string value) as an int in [lo, hi], or 400 `code`."""
    text = raw.strip() if isinstance(raw, str) else ""
    digits = text[1:] if text.startswith("-") and lo < 0 else text
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        raise ApiError(400, code, f"`{name}` must be an integer from {lo} to {hi}.")
    value = int(text)
    if not lo <= value <= hi:
        raise ApiError(400, code, f"`{name}` must be an integer from {lo} to {hi}.")
    return value


def in_range(value, lo: int, hi: int) -> bool:
    """Whether a JSON value is an int (not a bool) in [lo, hi]."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
