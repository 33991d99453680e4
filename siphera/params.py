"""Client-supplied numbers, bounded before SQL sees them (PITFALLS 27), and list pages.

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


def page_limit(params, *, default: int, hi: int, code: str = "invalid_request") -> int:
    """The `limit` of a list endpoint's query string: `default` when absent, else an int
    in [1, hi] (400 `code` otherwise). Every list endpoint bounds its page with this or
    is bounded by construction (siphera/tests/test_page_sizes.py checks which)."""
    raw = params.get("limit")
    return default if raw is None else parse_int(raw, name="limit", lo=1, hi=hi, code=code)


def after_row(rows, anchor, field: str):
    """The rows of `rows` (ordered by `field`, then pk) that come after `anchor`: a
    keyset page cursor, stable while rows are added or removed."""
    from django.db.models import Q

    value = getattr(anchor, field)
    return rows.filter(Q(**{f"{field}__gt": value}) | Q(**{field: value, "pk__gt": anchor.pk}))
