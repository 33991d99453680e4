"""SCIM documents as plain dicts: input cleaning (canonical names, types, what may be
written), PATCH operations (RFC 7644 section 3.5.2, with Okta's and Entra's forms), and
`attributes` / `excludedAttributes` projection.

The writable document of a resource is every attribute except id, meta, schemas and the
read-only ones; an extension's attributes sit under its URN. PATCH is applied to a copy of
that document and the result is cleaned again, so PUT, PATCH and POST end in one check.
"""

from __future__ import annotations

import copy
from typing import Any

from orgs.scim import schema
from orgs.scim.errors import (
    invalid_path,
    invalid_syntax,
    invalid_value,
    mutability,
    no_target,
)
from orgs.scim.filters import Path, matches, parse_path, split_attr_path
from orgs.scim.schema import Attr, ResourceKind

# Accepted and dropped wherever they appear (Okta may push a password; sign-in is SSO).
IGNORED = {"password", "schemas", "id", "meta"}


def _coerce_scalar(attr: Attr, value: Any, where: str) -> Any:
    if attr.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise invalid_value(f"{where} is a boolean.")
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise invalid_value(f"{where} is a string.")
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise invalid_value(f"{where} is a string.")
    if len(value) > schema.MAX_STRING:
        raise invalid_value(f"{where} is at most {schema.MAX_STRING} characters.")
    return value


def _coerce_complex(attr: Attr, value: Any, where: str, keep_readonly: bool) -> dict | None:
    if not isinstance(value, dict):
        if attr.child("value") is not None and isinstance(value, (str, int)):
            value = {"value": value}  # Entra: "manager": "<id>"; bare member ids
        else:
            raise invalid_value(f"{where} is an object.")
    out: dict = {}
    for key, sub_value in value.items():
        sub = attr.child(key)
        if sub is None or sub_value is None:
            continue  # unknown sub-attributes are dropped, like unknown attributes
        if sub.mutability == "readOnly" and not keep_readonly:
            continue
        out[sub.name] = _coerce_scalar(sub, sub_value, f"{where}.{sub.name}")
    return out or None


def coerce(attr: Attr, value: Any, *, keep_readonly: bool = False) -> Any:
    """`value` as attribute `attr` stores it (string booleans become booleans, a single
    value of a multi-valued attribute a list); 400 invalidValue when it cannot be."""
    if value is None:
        return None
    if attr.multi:
        items = value if isinstance(value, list) else [value]
        out: list = []
        for item in items:
            if attr.type == "complex":
                item = _coerce_complex(attr, item, attr.name, keep_readonly)
            elif item is not None:
                item = _coerce_scalar(attr, item, attr.name)
            if item is not None and item not in out:
                out.append(item)
        if len(out) > schema.MAX_VALUES and attr.name != "members":
            raise invalid_value(f"{attr.name} has at most {schema.MAX_VALUES} values.")
        _one_primary(out)
        return out or None
    if attr.type == "complex":
        return _coerce_complex(attr, value, attr.name, keep_readonly)
    if isinstance(value, str) and value == "" and attr.type != "string":
        return None
    return _coerce_scalar(attr, value, attr.name)


def _one_primary(items: list) -> None:
    """At most one `primary: true` (RFC 7643 2.4): the last one given wins."""
    flagged = [i for i in items if isinstance(i, dict) and i.get("primary") is True]
    for item in flagged[:-1]:
        item["primary"] = False


def clean(kind: ResourceKind, body: dict) -> dict:
    """The writable document from a POST/PUT body or a patched document: canonical
    names, coerced values; unknown and read-only attributes dropped."""
    if not isinstance(body, dict):
        raise invalid_syntax("The body is a JSON object.")
    out: dict = {}
    for key, value in body.items():
        if not isinstance(key, str) or key.lower() in IGNORED:
            continue
        ext = kind.schema_for(key) if key.lower().startswith("urn:") else None
        if ext is not None and ext is not kind.core:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise invalid_value(f"{ext.id} is an object.")
            inner = {}
            for sub_key, sub_value in value.items():
                attr = ext.attr(sub_key) if isinstance(sub_key, str) else None
                if attr is None or attr.mutability == "readOnly":
                    continue
                sub_value = coerce(attr, sub_value)
                if sub_value is not None:
                    inner[attr.name] = sub_value
            if inner:
                out[ext.id] = inner
            continue
        attr = kind.top(key)
        if attr is None or attr.mutability == "readOnly":
            continue
        value = coerce(attr, value)
        if value not in (None, ""):
            out[attr.name] = value
    return out


# --- PATCH -----------------------------------------------------------------------------------


def _lookup(container: dict, name: str) -> str | None:
    key = name.lower()
    return next((k for k in container if k.lower() == key), None)


def _resolve(kind: ResourceKind, path: Path) -> tuple[str | None, Attr, tuple[str, ...]]:
    """(extension URN or None, the top attribute, the rest of the path below it)."""
    ext_urn = None
    if path and path[0].lower().startswith("urn:"):
        ext = kind.schema_for(path[0])
        if ext is None or ext is kind.core:
            raise invalid_path(f"{path[0]} is not a schema of {kind.name}.")
        ext_urn, path = ext.id, path[1:]
        attr = ext.attr(path[0]) if path else None
    else:
        attr = kind.top(path[0]) if path else None
    if attr is None:
        raise invalid_path(f"{'.'.join(path) or 'the path'} is not an attribute of {kind.name}.")
    rest = path[1:]
    if rest and (attr.type != "complex" or attr.child(rest[0]) is None or len(rest) > 1):
        raise invalid_path(f"{'.'.join(path)} is not an attribute of {kind.name}.")
    return ext_urn, attr, rest


def _same(a: Any, b: Any) -> bool:
    """Two values of a multi-valued attribute are the same entry when their `value`s are
    equal (case-insensitively), or when they are equal as a whole."""
    if isinstance(a, dict) and isinstance(b, dict) and "value" in a and "value" in b:
        va, vb = a["value"], b["value"]
        if isinstance(va, str) and isinstance(vb, str):
            return va.casefold() == vb.casefold()
        return va == vb
    return a == b


def _seed_from_filter(node) -> dict | None:
    """`type eq "work"` (or an `and` of such) -> {"type": "work"}: Entra adds an entry
    with `emails[type eq "work"].value` when none matches."""
    if node[0] == "cmp" and node[2] == "eq" and len(node[1]) == 1:
        return {node[1][0]: node[3]}
    if node[0] == "and":
        left, right = _seed_from_filter(node[1]), _seed_from_filter(node[2])
        if left is not None and right is not None:
            return {**left, **right}
    return None


def _check_immutable(attr: Attr, container: dict, key: str | None, new: Any) -> None:
    if attr.mutability == "immutable" and key is not None and container.get(key) not in (None, new):
        raise mutability(f"{attr.name} cannot be changed once set.")


def apply_operation(kind: ResourceKind, doc: dict, op: str, path: Path, filt, sub, value) -> None:
    if path and path[0].lower().startswith("urn:") and len(path) == 1:
        # The extension as a whole: {"path": "urn:...:enterprise:2.0:User", "value": {...}}
        ext = kind.schema_for(path[0])
        if ext is None or ext is kind.core:
            raise invalid_path(f"{path[0]} is not a schema of {kind.name}.")
        if op == "remove":
            doc.pop(ext.id, None)
            return
        if not isinstance(value, dict):
            raise invalid_value(f"The value for {ext.id} is an object.")
        for key, sub_value in value.items():
            if isinstance(key, str) and key.lower() not in IGNORED:
                apply_operation(
                    kind, doc, op, (ext.id, *split_attr_path(key)), None, None, sub_value
                )
        return
    ext_urn, attr, rest = _resolve(kind, path)
    if attr.name.lower() in IGNORED:
        return
    if attr.mutability == "readOnly":
        raise mutability(f"{attr.name} is read-only.")
    container = doc.setdefault(ext_urn, {}) if ext_urn else doc
    key = _lookup(container, attr.name)
    if key is not None and key != attr.name:
        container[attr.name] = container.pop(key)
    key = attr.name if attr.name in container else None

    if filt is not None:
        _apply_filtered(attr, container, op, filt, sub, value)
    elif rest:
        _apply_sub(attr, container, op, rest[0], value)
    elif op == "remove":
        if value is not None and attr.multi and container.get(attr.name):
            # Entra: {"op": "Remove", "path": "members", "value": [{"value": "<id>"}]}
            gone = coerce(attr, value) or []
            container[attr.name] = [
                item for item in container[attr.name] if not any(_same(item, g) for g in gone)
            ]
        else:
            if attr.required:
                raise invalid_value(f"{attr.name} is required and cannot be removed.")
            _check_immutable(attr, container, key, None)
            container.pop(attr.name, None)
    elif attr.multi:
        new = coerce(attr, value, keep_readonly=True) or []
        if op == "replace":
            container[attr.name] = new
        else:
            items = list(container.get(attr.name) or [])
            for item in new:
                match = next((i for i in items if _same(i, item)), None)
                if match is None:
                    items.append(item)
                elif isinstance(match, dict):
                    match.update(item)
            if any(isinstance(i, dict) and i.get("primary") is True for i in new):
                for item in items:
                    if isinstance(item, dict) and not any(item is n or _same(item, n) for n in new):
                        item["primary"] = False
            container[attr.name] = items
    elif attr.type == "complex":
        new = coerce(attr, value, keep_readonly=True)
        current = container.get(attr.name) if isinstance(container.get(attr.name), dict) else {}
        container[attr.name] = {**current, **(new or {})}
    else:
        new = coerce(attr, value)
        _check_immutable(attr, container, key, new)
        if new is None:
            container.pop(attr.name, None)
        else:
            container[attr.name] = new


def _apply_sub(attr: Attr, container: dict, op: str, sub_name: str, value) -> None:
    sub = attr.child(sub_name)
    if sub.mutability == "readOnly":
        raise mutability(f"{attr.name}.{sub.name} is read-only.")
    if attr.multi:  # every entry (RFC 7644 3.5.2: no filter means all values)
        items = container.get(attr.name) or []
        if op == "remove":
            for item in items:
                item.pop(sub.name, None)
            return
        new = coerce(sub, value)
        if not items:
            container[attr.name] = [{sub.name: new}]
        for item in items:
            item[sub.name] = new
        return
    current = container.get(attr.name) if isinstance(container.get(attr.name), dict) else {}
    if op == "remove":
        current.pop(sub.name, None)
    else:
        current[sub.name] = coerce(sub, value)
    if current:
        container[attr.name] = current
    else:
        container.pop(attr.name, None)


def _apply_filtered(attr: Attr, container: dict, op: str, filt, sub_name, value) -> None:
    if not attr.multi or attr.type != "complex":
        raise invalid_path(f"{attr.name} is not a multi-valued complex attribute.")
    sub = None
    if sub_name is not None:
        sub = attr.child(sub_name)
        if sub is None:
            raise invalid_path(f"{attr.name}.{sub_name} is not an attribute.")
        if sub.mutability == "readOnly":
            raise mutability(f"{attr.name}.{sub.name} is read-only.")
    items = list(container.get(attr.name) or [])
    hit = [i for i in items if isinstance(i, dict) and matches(filt, i)]
    if op == "remove":
        # Removing what is not there already holds: IdPs retry removals, so no error.
        if sub is None:
            items = [i for i in items if not any(i is h for h in hit)]
        else:
            for item in hit:
                item.pop(sub.name, None)
        container[attr.name] = items
        return
    if sub is not None:
        new = coerce(sub, value)
        if not hit:
            seed = _seed_from_filter(filt)
            if seed is None:
                raise no_target(f"No {attr.name} entry matches the path's filter.")
            items.append({**seed, sub.name: new})
        for item in hit:
            item[sub.name] = new
    else:
        new_items = coerce(attr, value, keep_readonly=True) or []
        if not hit:
            if op == "replace":
                raise no_target(f"No {attr.name} entry matches the path's filter.")
            items.extend(new_items)
        elif new_items:
            for item in hit:
                item.update(new_items[0])
    container[attr.name] = items


def apply_patch(kind: ResourceKind, doc: dict, body: Any) -> dict:
    """A copy of the writable document `doc` with the PatchOp `body` applied (not yet
    cleaned). Ops are case-insensitive (Entra's "Replace"); a path-less add/replace takes
    an object whose keys are attribute paths or extension URNs (Okta's, Entra's)."""
    if not isinstance(body, dict):
        raise invalid_syntax("The body is a PatchOp object.")
    operations = body.get("Operations", body.get("operations"))
    if not isinstance(operations, list) or not operations:
        raise invalid_syntax("A PatchOp has a non-empty Operations list.")
    if len(operations) > 1000:
        raise invalid_value("At most 1000 operations per PATCH.")
    doc = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict):
            raise invalid_syntax("Each operation is an object.")
        op = str(operation.get("op", "")).strip().lower()
        if op not in ("add", "replace", "remove"):
            raise invalid_syntax(f"Unknown PATCH op {operation.get('op')!r}.")
        path = operation.get("path")
        value = operation.get("value")
        if path in (None, ""):
            if op == "remove":
                raise no_target("A remove needs a path.")
            if not isinstance(value, dict):
                raise invalid_syntax("A PATCH without a path takes an object as its value.")
            for key, sub_value in value.items():
                if not isinstance(key, str) or key.lower() in IGNORED:
                    continue
                apply_operation(kind, doc, op, split_attr_path(key), None, None, sub_value)
            continue
        attr_path, filt, sub = parse_path(path)
        if op != "remove" and "value" not in operation:
            raise invalid_syntax(f"The {op} of {path!r} has no value.")
        apply_operation(kind, doc, op, attr_path, filt, sub, value)
    return doc


# --- projection ------------------------------------------------------------------------------


def parse_attribute_list(raw: Any) -> list[Path]:
    if raw in (None, ""):
        return []
    if isinstance(raw, list):
        items = raw
    elif isinstance(raw, str):
        items = raw.split(",")
    else:
        raise invalid_value("attributes / excludedAttributes is a comma-separated list.")
    return [split_attr_path(item.strip()) for item in items if str(item).strip()]


def _pick(value: Any, subs: list[str]) -> Any:
    keys = {s.lower() for s in subs}
    if isinstance(value, list):
        out = [
            {k: v for k, v in i.items() if k.lower() in keys} for i in value if isinstance(i, dict)
        ]
        return [i for i in out if i] or None
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k.lower() in keys} or None
    return value


def project(doc: dict, attributes: list[Path], excluded: list[Path]) -> dict:
    """`doc` with only `attributes` (plus id and schemas, always returned), or without
    `excluded` (RFC 7644 3.9)."""
    if attributes:
        out = {"schemas": doc.get("schemas"), "id": doc.get("id")}
        for key, value in doc.items():
            if key in out:
                continue
            lower = key.lower()
            wanted = [p[1:] for p in attributes if p[0].lower() == lower]
            if not wanted:
                continue
            if any(len(w) == 0 for w in wanted):
                out[key] = value
            elif lower.startswith("urn:") and isinstance(value, dict):
                inner = project({**value, "schemas": None, "id": None}, [w for w in wanted], [])
                inner = {k: v for k, v in inner.items() if k not in ("schemas", "id")}
                if inner:
                    out[key] = inner
            else:
                picked = _pick(value, [w[0] for w in wanted])
                if picked:
                    out[key] = picked
        return {k: v for k, v in out.items() if v is not None}
    out = copy.deepcopy(doc)
    for path in excluded:
        key = _lookup(out, path[0])
        if key is None or key in ("id", "schemas"):
            continue
        if len(path) == 1:
            out.pop(key)
            continue
        target = out[key]
        if key.lower().startswith("urn:") and isinstance(target, dict):
            inner = _lookup(target, path[1])
            if inner is not None and len(path) == 2:
                target.pop(inner)
            elif inner is not None and isinstance(target[inner], dict):
                sub = _lookup(target[inner], path[2])
                if sub:
                    target[inner].pop(sub)
            continue
        for item in target if isinstance(target, list) else [target]:
            if isinstance(item, dict):
                sub = _lookup(item, path[1])
                if sub:
                    item.pop(sub)
    return out
