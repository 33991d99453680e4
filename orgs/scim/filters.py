"""SCIM filters and attribute paths (RFC 7644 sections 3.4.2.2 and 3.5.2).

`parse_filter` turns a filter into a small tree of tuples; `matches` evaluates it against a
SCIM document (a dict as this server renders it); `parse_path` reads a PATCH path such as
`emails[type eq "work"].value` or `urn:...:enterprise:2.0:User:manager`. The views
translate the common filters (userName, externalId, id, active, displayName,
members.value) to SQL and evaluate the rest here, so every filter the grammar allows works.

Node shapes: ("and", a, b) ("or", a, b) ("not", a) ("pr", path) ("cmp", path, op, value)
("vp", path, node) where path is a tuple of attribute names (an extension URN is its
first element).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from django.db.models import Q

from orgs.scim import schema
from orgs.scim.errors import invalid_filter, invalid_path

MAX_FILTER = 2000
MAX_DEPTH = 20
OPS = {"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le"}
_URNS = sorted((s.id for s in schema.SCHEMAS), key=len, reverse=True)

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<punct>[()\[\]])
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w:.]))
  | (?P<word>[A-Za-z$][\w$:.\-]*)
    )""",
    re.VERBOSE,
)

Path = tuple[str, ...]


def split_attr_path(text: str) -> Path:
    """`name.givenName` -> ("name", "givenName"); a leading known schema URN becomes its
    own element (core URNs are dropped: they name the resource's own attributes)."""
    lower = text.lower()
    for urn in _URNS:
        if lower.startswith(urn.lower()):
            rest = text[len(urn) :]
            if rest and not rest.startswith(":"):
                continue
            parts = tuple(p for p in rest[1:].split(".") if p) if rest else ()
            if urn in (schema.USER, schema.GROUP):
                if not parts:
                    raise invalid_path(f"{text!r} names a schema, not an attribute.")
                return parts
            return (urn, *parts)
    if lower.startswith("urn:"):
        raise invalid_path(f"Unknown schema in {text!r}.")
    parts = tuple(text.split("."))
    if not all(parts) or len(parts) > 2:
        raise invalid_path(f"{text!r} is not an attribute path.")
    return parts


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise invalid_filter(f"Cannot read the filter at position {pos}.")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        if len(text) > MAX_FILTER:
            raise invalid_filter(f"A filter is at most {MAX_FILTER} characters.")
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise invalid_filter("The filter ends too early.")
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "word" and tok[1].lower() == word

    def expect(self, punct: str) -> None:
        tok = self.take()
        if tok != ("punct", punct):
            raise invalid_filter(f"Expected {punct!r} in the filter, found {tok[1]!r}.")

    def parse(self):
        node = self.or_expr()
        if self.peek() is not None:
            raise invalid_filter(f"Unexpected {self.peek()[1]!r} in the filter.")
        return node

    def or_expr(self):
        node = self.and_expr()
        while self.keyword("or"):
            self.i += 1
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self):
        node = self.unary()
        while self.keyword("and"):
            self.i += 1
            node = ("and", node, self.unary())
        return node

    def unary(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise invalid_filter("The filter is nested too deeply.")
        try:
            if self.keyword("not") and self.peek(1) == ("punct", "("):
                self.i += 1
                return ("not", self.group())
            if self.peek() == ("punct", "("):
                return self.group()
            return self.attr_expr()
        finally:
            self.depth -= 1

    def group(self):
        self.expect("(")
        node = self.or_expr()
        self.expect(")")
        return node

    def attr_expr(self):
        kind, text = self.take()
        if kind != "word":
            raise invalid_filter(f"Expected an attribute name, found {text!r}.")
        path = split_attr_path(text)
        if self.peek() == ("punct", "["):
            self.i += 1
            inner = self.or_expr()
            self.expect("]")
            return ("vp", path, inner)
        op_kind, op = self.take()
        op = op.lower()
        if op_kind != "word" or (op not in OPS and op != "pr"):
            raise invalid_filter(f"Unknown operator {op!r}.")
        if op == "pr":
            return ("pr", path)
        return ("cmp", path, op, self.value())

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            try:
                return json.loads(text)
            except ValueError:
                raise invalid_filter(f"Bad string {text} in the filter.") from None
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "word" and text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text.lower()]
        raise invalid_filter(f"Expected a value, found {text!r}.")


def parse_filter(text: str):
    if not text or not text.strip():
        raise invalid_filter("The filter is empty.")
    return _Parser(text).parse()


# --- PATCH paths -----------------------------------------------------------------------------


def parse_path(text: str) -> tuple[Path, Any, str | None]:
    """A PATCH path: (attribute path, value filter node or None, sub-attribute after the
    filter or None). `members[value eq "x"]` -> (("members",), node, None)."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_FILTER:
        raise invalid_path("A PATCH path is a non-empty attribute path.")
    text = text.strip()
    if "[" not in text:
        return split_attr_path(text), None, None
    head, _, rest = text.partition("[")
    inner, close, tail = rest.rpartition("]")
    if not close:
        raise invalid_path(f"Unbalanced '[' in {text!r}.")
    sub = None
    if tail:
        if not tail.startswith(".") or not re.fullmatch(r"\.[A-Za-z$][\w$]*", tail):
            raise invalid_path(f"Cannot read {tail!r} after the filter in {text!r}.")
        sub = tail[1:]
    try:
        node = parse_filter(inner)
    except Exception as exc:
        raise invalid_path(f"Bad filter in the path {text!r}: {exc}") from None
    return split_attr_path(head), node, sub


# --- evaluation against a document -----------------------------------------------------------


def _get(doc: dict, name: str) -> Any:
    if not isinstance(doc, dict):
        return None
    key = name.lower()
    for k, v in doc.items():
        if k.lower() == key:
            return v
    return None


def values_at(doc: dict, path: Path) -> list:
    """Every value at `path` in `doc`, flattening multi-valued attributes."""
    current: list = [doc]
    for name in path:
        nxt = []
        for item in current:
            value = _get(item, name)
            if isinstance(value, list):
                nxt.extend(value)
            elif value is not None:
                nxt.append(value)
        current = nxt
    return current


def _case_exact(path: Path) -> bool:
    return path[-1].lower() in ("id", "externalid", "$ref")


def _compare(actual: Any, op: str, expected: Any, case_exact: bool) -> bool:
    if isinstance(actual, dict):  # a complex multi-valued item without a sub: its value
        actual = _get(actual, "value")
    if actual is None:
        return False
    if isinstance(actual, bool) or isinstance(expected, bool):
        if isinstance(actual, str):
            actual = actual.lower() == "true"
        return op in ("eq", "ne") and (actual == expected) == (op == "eq")
    if isinstance(expected, str) and isinstance(actual, str):
        if not case_exact:
            actual, expected = actual.casefold(), expected.casefold()
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        pass
    elif expected is None:
        return op == "ne"
    else:
        actual, expected = str(actual), str(expected)
    return {
        "eq": lambda: actual == expected,
        "ne": lambda: actual != expected,
        "co": lambda: isinstance(actual, str) and expected in actual,
        "sw": lambda: isinstance(actual, str) and actual.startswith(expected),
        "ew": lambda: isinstance(actual, str) and actual.endswith(expected),
        "gt": lambda: actual > expected,
        "lt": lambda: actual < expected,
        "ge": lambda: actual >= expected,
        "le": lambda: actual <= expected,
    }[op]()


def matches(node, doc: dict) -> bool:
    kind = node[0]
    if kind == "and":
        return matches(node[1], doc) and matches(node[2], doc)
    if kind == "or":
        return matches(node[1], doc) or matches(node[2], doc)
    if kind == "not":
        return not matches(node[1], doc)
    if kind == "pr":
        return any(v not in ("", [], {}) for v in values_at(doc, node[1]))
    if kind == "vp":
        items = values_at(doc, node[1])
        return any(isinstance(item, dict) and matches(node[2], item) for item in items)
    _, path, op, expected = node
    found = values_at(doc, path)
    if op == "ne" and not found:
        return expected is not None
    case_exact = _case_exact(path)
    if op == "ne":
        return all(_compare(v, "ne", expected, case_exact) for v in found)
    return any(_compare(v, op, expected, case_exact) for v in found)


def narrowing(node, leaf: Callable[[Any], Q | None]) -> Q | None:
    """A condition in SQL that every match of `node` meets (it may let more through): the
    parts `leaf` can say in SQL, joined through `and`/`or`, so `userName sw "a" and title
    eq "x"` reads few rows before the rest is matched in Python. None: nothing to narrow by."""
    q = leaf(node)
    if q is not None:
        return q
    if node[0] == "and":
        left, right = narrowing(node[1], leaf), narrowing(node[2], leaf)
        if left is None or right is None:
            return left if right is None else right
        return left & right
    if node[0] == "or":
        left, right = narrowing(node[1], leaf), narrowing(node[2], leaf)
        return None if left is None or right is None else left | right
    return None
