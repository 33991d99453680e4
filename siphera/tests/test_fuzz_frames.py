"""Fuzzing the WebSocket (issue 15 item 3): Hypothesis-generated frames of every type
the socket registry lists (siphera.sockets), sent on a live socket of the test server.

After every frame a `ping` still answers (the socket stays usable), no frame is answered
with `internal_error` (an unexpected exception in a handler), and once the sockets are
closed none of them is left in a channel-layer group in Redis (no leaked consumer: a
consumer that skipped its cleanup keeps its channel in its groups).

Frames get the fields frames have (docs/protocol.md), each with a plausible value (a real
conversation, user, device, a valid enum value) or any JSON at all; the budget is
FUZZ_FRAMES per frame type (derandomized, so CI sees the same frames every run).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from messaging.tests.helpers import start_conversation
from siphera import sockets
from tests.fixtures import b64, create_org, unique
from tests.ws import authed_socket, recv, send

FUZZ_FRAMES = int(os.environ.get("SIPHERA_FUZZ_FRAMES", "12"))

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _plausible(world: dict) -> dict[str, st.SearchStrategy]:
    ids = st.sampled_from(world["user_ids"] + [str(uuid.uuid4()), "x"])
    envelope = st.fixed_dictionaries(
        {
            "user_id": ids,
            "device_id": st.sampled_from([world["bob_device"], 2, 0, -1, 2**31, 2**63]),
            "type": st.sampled_from([1, 2, 3, 0]),
            "body": st.just(b64(b"ciphertext")),
        }
    )
    return {
        "ref": st.text(max_size=8) | st.integers(),
        "token": st.just(world["token"]) | st.text(max_size=20),
        "ids": st.lists(st.sampled_from([str(uuid.uuid4()), "x", 1]), max_size=3),
        "conversation": st.sampled_from([world["conversation"], str(uuid.uuid4()), "0"]),
        "kind": st.sampled_from(["delivered", "read", "played", ""]),
        "up_to_seq": st.integers(min_value=-1, max_value=2**64),
        "state": st.sampled_from(["start", "stop", "active", "idle", "away"]),
        "status": st.sampled_from(["dnd", "away", "available", None]),
        "until": st.sampled_from([None, "2030-01-01T00:00:00Z", "soon", 10**12]),
        "client_id": st.sampled_from([str(uuid.uuid4()), "not-a-uuid"]),
        "body": st.sampled_from([b64(b"hello"), "%%%", ""]),
        "envelopes": st.lists(envelope, max_size=3),
        "attachments": st.lists(st.sampled_from([str(uuid.uuid4()), "x"]), max_size=2),
        "call_id": st.sampled_from([str(uuid.uuid4()), "x", ""]),
        "to": ids,
        "media": st.sampled_from(["audio", "video", "smell"]),
        "sdp": st.text(max_size=60),
        "reason": st.text(max_size=120),
        "candidate": st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3),
        "user_id": ids,
        "user_ids": st.lists(ids, max_size=4),
        "device_id": st.sampled_from([1, 2, 2**31, -1, "1"]),
    }


# The fields each frame type reads (docs/protocol.md): a frame usually has them, so most
# frames get past the first check; the others are optional.
TYPE_FIELDS = {
    "ack": ["ids"],
    "receipt": ["conversation", "kind", "up_to_seq"],
    "typing": ["conversation", "state"],
    "send": ["conversation", "client_id", "envelopes"],
    "call.invite": ["call_id", "to", "media", "sdp"],
    "call.ringing": ["call_id"],
    "call.accept": ["call_id", "sdp"],
    "call.reject": ["call_id"],
    "call.ice": ["call_id", "candidate"],
    "call.hangup": ["call_id"],
    "call.recording.offer": ["call_id", "sdp"],
    "presence": ["state"],
    "presence.set": ["status"],
    "presence.subscribe": ["user_ids"],
    "presence.unsubscribe": ["user_ids"],
    "auth": ["token"],
}


def _valid(world: dict) -> dict[str, st.SearchStrategy]:
    """Values a handler accepts, so that frames reach past validation into the services."""
    bob, bob_device = world["user_ids"][1], world["bob_device"]
    return {
        "conversation": st.just(world["conversation"]),
        "client_id": st.uuids().map(str),
        "call_id": st.uuids().map(str),
        "envelopes": st.just(
            [{"user_id": bob, "device_id": bob_device, "type": 1, "body": b64(b"x")}]
        ),
        "up_to_seq": st.integers(0, 5),
        "to": st.just(bob),
        "user_ids": st.just([bob]),
        "media": st.just("audio"),
        "sdp": st.just("v=0\r\n"),
        "body": st.just(b64(b"hello")),
    }


def _mostly(valid: st.SearchStrategy | None, plausible: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value three times in five (where one is known), a plausible or odd one
    otherwise, and any JSON one time in five."""
    valid = plausible if valid is None else valid
    return st.integers(0, 4).flatmap(lambda i: JSON if i == 0 else plausible if i == 1 else valid)


def _frames(frame_type: str, world: dict) -> list[dict]:
    """FUZZ_FRAMES frames of `frame_type`, drawn by Hypothesis."""
    plausible, valid = _plausible(world), _valid(world)
    wanted = TYPE_FIELDS.get(frame_type, [])
    fields = st.fixed_dictionaries(
        {name: _mostly(valid.get(name), plausible[name]) for name in wanted},
        optional={
            name: _mostly(valid.get(name), v) for name, v in plausible.items() if name not in wanted
        },
    )
    drawn: list[dict] = []

    @settings(
        max_examples=FUZZ_FRAMES,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fields, st.dictionaries(st.text(max_size=8), JSON, max_size=2))
    def draw(known, unknown):
        drawn.append({**unknown, **known, "type": frame_type})

    draw()
    return drawn


def _channel_groups(schema: str) -> dict[str, int]:
    """The org's channel-layer groups in Redis with how many channels each holds."""
    from django.conf import settings as django_settings

    client = redis.Redis.from_url(django_settings.REDIS_URL)
    pattern = f"{django_settings.CHANNEL_LAYER_PREFIX}:group:t.{schema}.*"
    return {key.decode(): client.zcard(key) for key in client.scan_iter(pattern)}


@pytest.fixture
def world(new_session):
    org = create_org(unique("fuzzws"))
    alice = new_session(org, role="owner")
    bob = new_session(org)
    conversation = start_conversation(alice, bob)["id"]
    return {
        "org": org,
        "alice": alice,
        "token": alice.token,
        "conversation": conversation,
        "user_ids": [str(alice.user.pk), str(bob.user.pk)],
        "bob_device": bob.device_id,
    }


async def _still_answers(ws, ref: str) -> list[dict]:
    """Ping and wait for its pong; return the frames that came before it."""
    await send(ws, {"type": "ping", "ref": ref})
    before = []
    while True:
        frame = await recv(ws, timeout=10)
        if frame.get("type") == "pong" and frame.get("ref") == ref:
            return before
        before.append(frame)


async def test_frames_of_every_type_never_break_the_socket_or_leak_it(server, world):
    types = sorted(sockets.frames())
    assert {"send", "receipt", "call.invite", "presence.subscribe"} <= set(types)
    problems: list[str] = []
    ws = await authed_socket(server, world["alice"], live=True)
    schema = world["org"].schema_name
    assert any(_channel_groups(schema).values())  # the check below can see a socket
    sent = 0
    try:
        for frame_type in types:
            for frame in _frames(frame_type, world):
                sent += 1
                try:
                    await ws.send(json.dumps(frame))
                    replies = await _still_answers(ws, f"fuzz-{sent}")
                except Exception as exc:  # closed or silent: the socket broke
                    problems.append(f"{frame!r}: socket broke ({exc!r}, {ws.close_code})")
                    ws = await authed_socket(server, world["alice"], live=True)
                    continue
                crashed = [r for r in replies if r.get("code") == "internal_error"]
                if crashed:
                    problems.append(f"{frame!r}: {crashed[0]}")
    finally:
        await ws.close()
    assert sent >= len(types) * FUZZ_FRAMES // 2
    assert not problems, "\n".join(problems[:20])

    # Every socket closed: no channel of it is left in any group of the org.
    for _ in range(50):
        left = {group: n for group, n in _channel_groups(schema).items() if n}
        if not left:
            break
        await asyncio.sleep(0.1)
    assert not left


def test_every_frame_type_has_its_fields_listed():
    assert set(TYPE_FIELDS) | {"ping", "devices"} == set(sockets.frames())
