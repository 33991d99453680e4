"""No client-supplied number reaches SQL unbounded (PITFALLS 27): numbers past
PostgreSQL's integer or bigint, and digits that are not ASCII, are a clear 400 over REST
and an `error` frame on the socket, which stays usable."""

from __future__ import annotations

import base64
import uuid

import pytest

from messaging.tests.helpers import start_conversation
from tests.ws import authed_socket, recv_type, send

HUGE = "99999999999999999999"  # past bigint


@pytest.fixture
def pair(org_a, new_session):
    alice, bob = new_session(org_a, role="owner"), new_session(org_a)
    return alice, bob, start_conversation(alice, bob)["id"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/conversations/{cid}/messages?limit=²",
        "/api/v1/conversations/{cid}/messages?after_seq=" + HUGE,
        "/api/v1/conversations/{cid}/messages?after_seq=-" + HUGE,
        "/api/v1/audit?before=" + HUGE,
        "/api/v1/audit?before=²",
        "/api/v1/audit?limit=²",
        "/api/v1/calls?limit=²",
        "/api/v1/calls?limit=" + HUGE,
    ],
)
def test_out_of_range_or_odd_numbers_in_a_query_are_a_400(pair, path):
    alice, _, cid = pair
    response = alice.api.get(path.format(cid=cid))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in {"invalid_request", "invalid_call"}


@pytest.mark.parametrize("device_id", ["99999999999", "²", HUGE])
def test_a_device_id_past_the_column_claims_nothing(pair, device_id):
    alice, bob, _ = pair
    response = alice.api.get(f"/api/v1/keys/{bob.user.pk}?device_id={device_id}")
    assert response.status_code == 404, response.text


def _envelope(user, device_id: int) -> dict:
    return {
        "user_id": str(user.pk),
        "device_id": device_id,
        "type": 1,
        "body": base64.b64encode(b"x").decode(),
    }


def test_an_envelope_for_a_device_id_past_the_column_is_a_400(pair):
    alice, bob, cid = pair
    response = alice.api.post(
        f"/api/v1/conversations/{cid}/messages",
        json={"client_id": str(uuid.uuid4()), "envelopes": [_envelope(bob.user, 2**31)]},
    )
    assert response.status_code == 400, response.text


async def test_the_socket_refuses_out_of_range_numbers_and_stays_usable(server, pair):
    alice, bob, cid = pair
    ws = await authed_socket(server, alice, live=True)
    await send(
        ws,
        {
            "type": "send",
            "ref": "s",
            "conversation": cid,
            "client_id": str(uuid.uuid4()),
            "envelopes": [_envelope(bob.user, 2147483648)],
        },
    )
    error = await recv_type(ws, "error")
    assert (error["code"], error["ref"]) == ("invalid_request", "s")
    assert "device_id" in error["message"]
    for seq in (2**63, -1, True, "5"):
        await send(
            ws,
            {"type": "receipt", "ref": "r", "conversation": cid, "kind": "read", "up_to_seq": seq},
        )
        error = await recv_type(ws, "error")
        assert (error["code"], error["ref"]) == ("invalid_frame", "r"), seq
    await send(ws, {"type": "ping", "ref": "p"})
    assert (await recv_type(ws, "pong"))["ref"] == "p"
    await ws.close()
