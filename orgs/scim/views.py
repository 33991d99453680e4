"""SCIM 2.0 endpoints at /scim/v2/ on the org's host (RFC 7644): parse, authenticate the
org's bearer token, call orgs.scim services, answer SCIM JSON. Every refusal is a SCIM Error
body (`application/scim+json`), including 401, 404, 405, 412, 413 and 429.
"""

from __future__ import annotations

import functools
import json
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from orgs.api.permissions import SCIM_TOKEN
from orgs.scim import documents, groups, schema, tokens, users
from orgs.scim.errors import ScimError, invalid_filter, invalid_syntax, invalid_value, not_found
from orgs.scim.filters import parse_filter
from orgs.services import audit
from siphera import api_errors, ratelimit
from siphera.api_errors import ApiError
from siphera.net import client_ip

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/scim+json"


def scim_response(body: dict | None, status: int = 200, headers: dict | None = None):
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    response = HttpResponse(content, status=status, content_type=CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error_response(status: int, detail: str, scim_type: str = "", headers=None) -> HttpResponse:
    body = {"schemas": [schema.ERROR], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return scim_response(body, status, headers)


def max_body() -> int:
    return getattr(settings, "SCIM_MAX_BODY_BYTES", 2 * 1024 * 1024)


def base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/scim/v2").rstrip("/")


def _bearer(request: HttpRequest) -> str:
    kind, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if kind.lower() == "bearer" else ""


def endpoint(*methods: str):
    """Wrap a SCIM view: method check, bearer token of this org, rate limit, body cap,
    and every error as a SCIM Error body."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                token = tokens.authenticate(_bearer(request))
                if token is None:
                    retry = ratelimit.hit_named("http.ip", client_ip(request) or "-")
                    if retry is not None:
                        raise ratelimit.too_many(retry)
                    raise ScimError(
                        401,
                        "",
                        "A valid SCIM bearer token of this organisation is required.",
                        headers={"WWW-Authenticate": 'Bearer realm="scim"'},
                    )
                retry = ratelimit.hit_named("scim.token", token.pk)
                if retry is not None:
                    raise ratelimit.too_many(retry)
                if request.method not in methods:
                    raise ScimError(
                        405,
                        "",
                        f"{request.method} is not allowed here.",
                        headers={"Allow": ", ".join(methods)},
                    )
                length = request.META.get("CONTENT_LENGTH") or "0"
                if not length.isdigit() or int(length) > max_body():
                    raise ScimError(413, "", f"Request bodies are at most {max_body()} bytes.")
                request.scim_actor = audit.Actor(
                    label=f"scim:{token.label}",
                    ip=client_ip(request),
                    user_agent=request.headers.get("User-Agent", "")[:300],
                )
                return view(request, *args, **kwargs)
            except ScimError as exc:
                return error_response(exc.status_code, exc.message, exc.scim_type, exc.headers)
            except ApiError as exc:
                return error_response(exc.status_code, exc.message, "", exc.headers)
            except RequestDataTooBig:
                return error_response(413, f"Request bodies are at most {max_body()} bytes.")
            except Exception:
                # The project's answer (503 + Retry-After when PostgreSQL or Redis is out
                # of reach, else 500), in SCIM's shape: IdPs retry on 503.
                fallback = api_errors.handler500(request)
                if fallback.status_code == 500:
                    log.exception("SCIM request failed")
                message = json.loads(fallback.content)["error"]["message"]
                retry = (
                    {"Retry-After": fallback["Retry-After"]}
                    if fallback.has_header("Retry-After")
                    else None
                )
                return error_response(fallback.status_code, message, "", retry)

        # The permission registry lists the route as needing the org's SCIM token.
        wrapped.required_credential = SCIM_TOKEN
        return wrapped

    return decorate


def _json_body(request: HttpRequest) -> dict:
    if len(request.body) > max_body():
        raise ScimError(413, "", f"Request bodies are at most {max_body()} bytes.")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid_syntax("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise invalid_syntax("The body is a JSON object.")
    return body


MAX_START = 10**9


def _int(raw, name: str, default: int) -> int:
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise invalid_value(f"{name} is an integer.") from None


class Query:
    """filter, startIndex, count, attributes, excludedAttributes (query string or a
    SearchRequest body)."""

    def __init__(self, params):
        raw_filter = params.get("filter")
        if raw_filter is not None and not isinstance(raw_filter, str):
            raise invalid_filter("filter is a string.")
        self.filter = parse_filter(raw_filter) if raw_filter else None
        # Bounded before SQL sees it (an OFFSET past bigint would be a database error).
        self.start = min(max(_int(params.get("startIndex"), "startIndex", 1), 1), MAX_START)
        count = _int(params.get("count"), "count", schema.DEFAULT_PAGE)
        self.count = min(max(count, 0), schema.MAX_PAGE)
        self.attributes = documents.parse_attribute_list(params.get("attributes"))
        self.excluded = documents.parse_attribute_list(params.get("excludedAttributes"))

    def project(self, doc: dict) -> dict:
        return documents.project(doc, self.attributes, self.excluded)

    def wants(self, name: str) -> bool:
        key = name.lower()
        if self.attributes:
            return any(p[0].lower() == key for p in self.attributes)
        return not any(len(p) == 1 and p[0].lower() == key for p in self.excluded)


def _list(total: int, start: int, resources: list[dict]) -> dict:
    return {
        "schemas": [schema.LIST_RESPONSE],
        "totalResults": total,
        "itemsPerPage": len(resources),
        "startIndex": start,
        "Resources": resources,
    }


def _resource(request, doc: dict, version_tag: str, status: int = 200, location=False):
    headers = {"ETag": version_tag}
    if location:
        headers["Location"] = doc["meta"]["location"]
    query = Query(request.GET)
    return scim_response(query.project(doc), status, headers)


def _not_modified(request, version_tag: str) -> bool:
    wanted = {t.strip() for t in request.headers.get("If-None-Match", "").split(",") if t.strip()}
    return bool(wanted) and ("*" in wanted or version_tag in wanted)


# --- discovery -------------------------------------------------------------------------------


@endpoint("GET")
def service_provider_config(request):
    return scim_response(schema.service_provider_config(base_url(request), max_body()))


@endpoint("GET")
def schemas(request, schema_id: str | None = None):
    base = base_url(request)
    if schema_id is not None:
        found = next((s for s in schema.SCHEMAS if s.id.lower() == schema_id.lower()), None)
        if found is None:
            raise not_found(f"No schema {schema_id}.")
        return scim_response(found.render(base))
    items = [s.render(base) for s in schema.SCHEMAS]
    return scim_response(_list(len(items), 1, items))


@endpoint("GET")
def resource_types(request, name: str | None = None):
    base = base_url(request)
    if name is not None:
        found = next((k for k in schema.KINDS if k.name.lower() == name.lower()), None)
        if found is None:
            raise not_found(f"No resource type {name}.")
        return scim_response(found.render(base))
    items = [k.render(base) for k in schema.KINDS]
    return scim_response(_list(len(items), 1, items))


# --- Users -----------------------------------------------------------------------------------


def _list_users(request, query: Query):
    total, docs = users.search(query.filter, query.start, query.count, base_url(request))
    return scim_response(_list(total, query.start, [query.project(d) for d in docs]))


@endpoint("GET", "POST")
def user_collection(request):
    if request.method == "GET":
        return _list_users(request, Query(request.GET))
    user = users.check_create_user(_json_body(request), actor=request.scim_actor)
    doc = users.render(user, base_url(request))
    return _resource(request, doc, doc["meta"]["version"], 201, location=True)


@endpoint("POST")
def user_search(request):
    return _list_users(request, Query(_json_body(request)))


@endpoint("GET", "PUT", "PATCH", "DELETE")
def user_detail(request, user_id: str):
    user = users.access_user(user_id)
    if_match = request.headers.get("If-Match")
    actor = request.scim_actor
    if request.method == "GET":
        tag = users.etag(users.version_of(user))
        if _not_modified(request, tag):
            return scim_response(None, 304, {"ETag": tag})
        return _resource(request, users.render(user, base_url(request)), tag)
    if request.method == "DELETE":
        users.check_delete_user(user, actor=actor, if_match=if_match)
        return scim_response(None, 204)
    body = _json_body(request)
    if request.method == "PUT":
        user = users.check_update_user(user, body, actor=actor, if_match=if_match)
    else:
        user = users.check_patch_user(user, body, actor=actor, if_match=if_match)
    doc = users.render(user, base_url(request))
    return _resource(request, doc, doc["meta"]["version"])


# --- Groups ----------------------------------------------------------------------------------


def _list_groups(request, query: Query):
    total, docs = groups.search(
        query.filter,
        query.start,
        query.count,
        base_url(request),
        with_members=query.wants("members"),
    )
    return scim_response(_list(total, query.start, [query.project(d) for d in docs]))


@endpoint("GET", "POST")
def group_collection(request):
    if request.method == "GET":
        return _list_groups(request, Query(request.GET))
    group = groups.check_create_group(_json_body(request), actor=request.scim_actor)
    doc = groups.render(group, base_url(request))
    return _resource(request, doc, doc["meta"]["version"], 201, location=True)


@endpoint("POST")
def group_search(request):
    return _list_groups(request, Query(_json_body(request)))


@endpoint("GET", "PUT", "PATCH", "DELETE")
def group_detail(request, group_id: str):
    group = groups.access_group(group_id)
    if_match = request.headers.get("If-Match")
    actor = request.scim_actor
    if request.method == "GET":
        tag = users.etag(group.version)
        if _not_modified(request, tag):
            return scim_response(None, 304, {"ETag": tag})
        query = Query(request.GET)
        doc = groups.render(group, base_url(request), with_members=query.wants("members"))
        return scim_response(query.project(doc), 200, {"ETag": tag})
    if request.method == "DELETE":
        groups.check_delete_group(group, actor=actor, if_match=if_match)
        return scim_response(None, 204)
    body = _json_body(request)
    if request.method == "PUT":
        group = groups.check_update_group(group, body, actor=actor, if_match=if_match)
    else:
        group = groups.check_patch_group(group, body, actor=actor, if_match=if_match)
    doc = groups.render(group, base_url(request))
    return _resource(request, doc, doc["meta"]["version"])


@endpoint("POST")
def root_search(request):
    """POST /.search: Users, then Groups, paged as one list (RFC 7644 3.4.3)."""
    query = Query(_json_body(request))
    base = base_url(request)
    user_total, docs = users.search(query.filter, query.start, query.count, base)
    group_start = max(query.start - user_total, 1)
    group_total, group_docs = groups.search(
        query.filter,
        group_start,
        query.count - len(docs),
        base,
        with_members=query.wants("members"),
    )
    docs = [query.project(d) for d in docs + group_docs]
    return scim_response(_list(user_total + group_total, query.start, docs))


@endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
def unknown(request, rest: str = ""):
    raise not_found(f"No SCIM endpoint /{rest}.")
