"""Helpers for the SCIM tests: an org's SCIM token and an HTTP client for /scim/v2/."""

from __future__ import annotations

import httpx

from orgs.scim import tokens
from orgs.services import audit
from siphera.tenancy import in_tenant
from tests.fixtures import LiveServer, host_of

SCIM_JSON = "application/scim+json"


def scim_token(org, label: str = "okta") -> str:
    _, secret = in_tenant(
        org, tokens.do_rotate_token, label=label, actor=audit.Actor.system("tests")
    )
    return secret


class Scim:
    """/scim/v2/ of one org's host, with a bearer token (connects to 127.0.0.1)."""

    def __init__(self, server: LiveServer, org, token: str | None):
        self.host = host_of(org)
        self.token = token
        self.http = httpx.Client(base_url=f"{server.url}/scim/v2", timeout=30)

    def request(self, method: str, path: str, *, headers: dict | None = None, **kwargs):
        sent = {"Host": self.host, "Content-Type": SCIM_JSON}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        return self.http.request(method, path, headers=sent, **kwargs)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def patch_body(*operations: dict) -> dict:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": list(operations),
    }
