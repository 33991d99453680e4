"""A NUL character anywhere a client can put text is a clear 400, never a 500: PostgreSQL
text cannot hold it ("PostgreSQL text fields cannot contain NUL (0x00) bytes"), so a
`?q=%00` that reached SQL failed as an internal error on the directory, the user list
and the audit filters."""

from __future__ import annotations

import pytest

from tests.fixtures import Api


@pytest.fixture
def owner(org_a, new_session):
    return new_session(org_a, role="owner")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/directory?q=%00",
        "/api/v1/directory?after=a%00b",
        "/api/v1/users?q=%00",
        "/api/v1/users?after=%00",
        "/api/v1/audit?actor=%00",
        "/api/v1/conversations?after=%00",
        "/api/v1/messages?limit=1%00",
    ],
)
def test_a_nul_in_the_query_string_is_a_400_on_every_endpoint(owner, path):
    response = owner.api.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert "NUL" in response.json()["error"]["message"]
    # Nothing was left half-done: the same request without the NUL works.
    assert owner.api.get(path.replace("%00", "")).status_code == 200


def test_a_nul_in_a_portal_query_string_is_a_plain_400(owner, server):
    anonymous = Api(server, owner.api.host)
    response = anonymous.get("/portal/users/?q=%00")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")


def test_a_clamped_number_that_is_not_a_number_says_so_plainly(owner, org_a, new_session):
    from messaging.tests.helpers import start_conversation

    cid = start_conversation(owner, new_session(org_a))["id"]
    response = owner.api.get(f"/api/v1/conversations/{cid}/messages?limit=lots")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "`limit` must be an integer (clamped to 1-500)."
