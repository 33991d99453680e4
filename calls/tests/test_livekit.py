"""Group calls on LiveKit: room tokens, LiveKit's webhook and the room service.

Tokens and webhooks are checked with livekit-api itself (its TokenVerifier reads what we
mint; its AccessToken signs webhooks exactly as LiveKit's server does: a JWT whose
`sha256` claim is the base64 SHA-256 of the body, in the Authorization header).

There is no LiveKit server binary on these machines (no Docker Hub; it is on neither PyPI
nor Debian), so the room service is a small fake of LiveKit's Twirp HTTP API below. That
is the external boundary, replaced at HTTP level only: Siphera's own code runs unmocked in
a real uvicorn process against the real PostgreSQL and Redis, and the fake checks the API
token LiveKit would check.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api as lk

from calls.models import Call, CallParticipant, RoomSession
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import (
    Api,
    Session,
    _free_port,
    create_org,
    host_of,
    make_user,
    register_device,
    server_with_env,
    unique,
)

KEY = "siphera-test-key"
SECRET = "siphera-test-secret-0123456789-abcdefghijkl"
CLIENT_URL = "wss://sfu.example.test"
TTL = 300
WEBHOOK = "/api/v1/calls/livekit/webhook"


# --- the fake LiveKit room service (the external boundary) -------------------------------


class FakeRoomService:
    """LiveKit's RoomService over Twirp (protobuf over HTTP POST), for ListParticipants
    and RemoveParticipant, refusing any request whose API token LiveKit would refuse."""

    def __init__(self):
        self.rooms: dict[str, list[lk.ParticipantInfo]] = {}
        self.seen: list[tuple[str, str]] = []  # (method, room) of accepted requests
        self.mode = "ok"  # "error": answer 500; "drop": close the connection, no answer
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fake.mode == "drop":
                    self.close_connection = True
                    return
                if fake.mode == "error":
                    return self._error(500, "internal", "boom")
                method = self.path.removeprefix("/twirp/livekit.RoomService/")
                request_class = {
                    "ListParticipants": lk.ListParticipantsRequest,
                    "RemoveParticipant": lk.RoomParticipantIdentity,
                }.get(method)
                if request_class is None:
                    return self._error(404, "bad_route", "no such method")
                request = request_class.FromString(body)
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                try:
                    claims = lk.TokenVerifier(KEY, SECRET).verify(token)
                except Exception:
                    return self._error(401, "unauthenticated", "invalid token")
                if scheme != "Bearer" or not claims.video.room_admin:
                    return self._error(403, "permission_denied", "needs roomAdmin")
                if claims.video.room != request.room:
                    return self._error(403, "permission_denied", "token is for another room")
                fake.seen.append((method, request.room))
                people = fake.rooms.get(request.room, [])
                if method == "ListParticipants":
                    return self._ok(lk.ListParticipantsResponse(participants=people))
                if not any(p.identity == request.identity for p in people):
                    return self._error(404, "not_found", "participant not found")
                fake.rooms[request.room] = [p for p in people if p.identity != request.identity]
                return self._ok(lk.RemoveParticipantResponse())

            def _ok(self, message):
                raw = message.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/protobuf")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _error(self, status, code, msg):
                raw = json.dumps({"code": code, "msg": msg}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", _free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def room_service():
    fake = FakeRoomService()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _room_service_answers(room_service):
    room_service.mode = "ok"


@pytest.fixture(scope="module")
def lk_server(room_service, tmp_path_factory, org_a, org_b):
    """Siphera with LiveKit configured: clients are sent to CLIENT_URL, the room service
    is the fake above."""
    log_path = tmp_path_factory.mktemp("livekit") / "server.log"
    with server_with_env(
        log_path,
        LIVEKIT_URL=CLIENT_URL,
        LIVEKIT_API_URL=room_service.url,
        LIVEKIT_API_KEY=KEY,
        LIVEKIT_API_SECRET=SECRET,
        LIVEKIT_TOKEN_TTL_SECONDS=str(TTL),
    ) as server:
        yield server


# --- helpers ---------------------------------------------------------------------------


def session_on(server, org, *, role: str = "member") -> Session:
    user = make_user(org, role=role)
    api = Api(server, host_of(org))
    device_id, token, keys = register_device(api, user.username)
    return Session(org, user, device_id, token, keys, api.as_device(token))


def another_device(server, session: Session) -> Session:
    api = Api(server, host_of(session.org))
    device_id, token, keys = register_device(api, session.user.username, name="phone")
    return Session(session.org, session.user, device_id, token, keys, api.as_device(token))


def group_of(creator: Session, *others: Session) -> str:
    response = creator.api.post(
        "/api/v1/conversations",
        json={"kind": "group", "members": [str(o.user.pk) for o in others]},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def open_room(session: Session, conversation: str | None, media: str = "video"):
    body = (
        {"media": media} if conversation is None else {"media": media, "conversation": conversation}
    )
    return session.api.post("/api/v1/calls/rooms", json=body)


def join_room(session: Session, call_id: str):
    return session.api.post(f"/api/v1/calls/rooms/{call_id}/token", json={})


def video_claims(token: str) -> dict:
    """The token's `video` claim as LiveKit reads it, after livekit-api verified it."""
    lk.TokenVerifier(KEY, SECRET).verify(token)
    return jwt.decode(token, SECRET, algorithms=["HS256"], issuer=KEY)["video"]


MEMBER_GRANTS = {"roomJoin": True, "canPublish": True, "canSubscribe": True, "canPublishData": True}


def call_row(org, call_id) -> Call:
    return in_tenant(org, lambda: Call.objects.get(pk=call_id))


def participants(org, call_id) -> dict[str, CallParticipant]:
    rows = in_tenant(org, lambda: list(CallParticipant.objects.filter(call_id=call_id)))
    return {str(p.user_id): p for p in rows}


def snapshot(org, call_id) -> tuple:
    """Everything the webhook may change about a call, for 'nothing changed' checks."""

    def read():
        call = Call.objects.get(pk=call_id)
        return (
            (call.state, call.answered_at, call.ended_at, call.outcome),
            sorted(
                CallParticipant.objects.filter(call=call).values_list(
                    "user_id", "device_id", "joined_at", "left_at"
                )
            ),
            sorted(RoomSession.objects.filter(call=call).values_list("sid", "left_at")),
        )

    return in_tenant(org, read)


def at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def event(kind: str, room: str, *, ts: int, who: Session | None = None, sid: str = "", **extra):
    participant = None
    if who is not None:
        participant = lk.ParticipantInfo(
            sid=sid or f"PA_{uuid.uuid4().hex[:12]}",
            identity=f"{who.user.pk}:{who.device_id}",
            joined_at=extra.pop("joined_at", ts),
        )
    return lk.WebhookEvent(
        event=kind,
        id=f"EV_{uuid.uuid4().hex[:12]}",
        created_at=ts,
        room=lk.Room(name=room, sid="RM_test"),
        participant=participant,
    )


def signed(body: bytes, *, key: str = KEY, secret: str = SECRET) -> str:
    """The Authorization LiveKit's server sends: an API-key JWT with the body's sha256."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return lk.AccessToken(key, secret).with_sha256(digest).to_jwt()


def post_webhook(server, org, body: bytes, authorization: str | None):
    headers = {"Content-Type": "application/webhook+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return Api(server, host_of(org)).post(WEBHOOK, content=body, headers=headers)


def deliver(server, org, webhook_event: lk.WebhookEvent):
    body = MessageToJson(webhook_event).encode()
    return post_webhook(server, org, body, signed(body))


def started_call(lk_server, org_a):
    """A member, an admin and a guest in one group conversation; the member started a call."""
    member = session_on(lk_server, org_a)
    admin = session_on(lk_server, org_a, role="admin")
    guest = session_on(lk_server, org_a, role="guest")
    conversation = group_of(member, admin, guest)
    response = open_room(member, conversation)
    assert response.status_code == 201, response.text
    return member, admin, guest, conversation, response.json()


# --- tokens ----------------------------------------------------------------------------


def test_a_member_gets_a_token_for_the_conversations_room_that_livekit_accepts(lk_server, org_a):
    # Given a member of a group conversation
    member = session_on(lk_server, org_a)
    other = session_on(lk_server, org_a)
    conversation = group_of(member, other)

    # When they start a group call in it
    response = open_room(member, conversation, media="audio")

    # Then they get a room named for the org and the call, and a token for it alone
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "private, no-store"
    body = response.json()
    assert set(body) == {"call_id", "conversation", "media", "room", "url", "token", "ttl"}
    assert body["room"] == f"{org_a.schema_name}.{body['call_id']}"
    assert (body["url"], body["ttl"], body["media"]) == (CLIENT_URL, TTL, "audio")
    assert body["conversation"] == conversation
    claims = lk.TokenVerifier(KEY, SECRET).verify(body["token"])
    assert claims.identity == f"{member.user.pk}:{member.device_id}"
    assert claims.video == lk.VideoGrants(
        room_join=True,
        room=body["room"],
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
    )
    assert video_claims(body["token"]) == {**MEMBER_GRANTS, "room": body["room"]}
    raw = jwt.decode(body["token"], SECRET, algorithms=["HS256"], issuer=KEY)
    assert raw["exp"] - raw["nbf"] == TTL
    # And the call and the caller's participation are on record
    call = call_row(org_a, body["call_id"])
    assert (call.kind, call.state, call.media, call.room) == (
        "group",
        "ringing",
        "audio",
        body["room"],
    )
    assert str(call.conversation_id) == conversation and call.caller_id == member.user.pk
    row = participants(org_a, body["call_id"])[str(member.user.pk)]
    assert (row.role, row.device_id, row.joined_at) == ("member", member.device_id, None)


def test_an_admin_token_also_carries_room_admin(lk_server, org_a):
    _, admin, _, _, room = started_call(lk_server, org_a)

    response = join_room(admin, room["call_id"])

    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert video_claims(token) == {**MEMBER_GRANTS, "room": room["room"], "roomAdmin": True}
    assert lk.TokenVerifier(KEY, SECRET).verify(token).identity == (
        f"{admin.user.pk}:{admin.device_id}"
    )


def test_a_guest_in_the_conversation_gets_exactly_a_members_grants(lk_server, org_a):
    _, _, guest, _, room = started_call(lk_server, org_a)

    response = join_room(guest, room["call_id"])

    assert response.status_code == 200, response.text
    assert video_claims(response.json()["token"]) == {**MEMBER_GRANTS, "room": room["room"]}
    assert str(guest.user.pk) in participants(org_a, room["call_id"])


def test_starting_a_call_where_one_is_live_joins_that_one(lk_server, org_a):
    member, admin, _, conversation, room = started_call(lk_server, org_a)

    response = open_room(admin, conversation)

    assert response.status_code == 200, response.text
    assert response.json()["call_id"] == room["call_id"]
    assert set(participants(org_a, room["call_id"])) == {str(member.user.pk), str(admin.user.pk)}


def test_two_members_starting_a_call_at_once_end_up_in_one(lk_server, org_a):
    members = [session_on(lk_server, org_a) for _ in range(6)]
    conversation = group_of(members[0], *members[1:])

    with ThreadPoolExecutor(len(members)) as pool:
        responses = list(pool.map(lambda m: open_room(m, conversation), members))

    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["call_id"] for r in responses}) == 1
    calls = in_tenant(org_a, lambda: Call.objects.filter(conversation_id=conversation).count())
    assert calls == 1


def test_a_guest_outside_the_conversation_gets_404_and_no_ad_hoc_room(lk_server, org_a):
    _, _, _, _, room = started_call(lk_server, org_a)
    outsider = session_on(lk_server, org_a, role="guest")

    assert join_room(outsider, room["call_id"]).status_code == 404
    refused = open_room(outsider, None)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_allowed"
    # An ad hoc room started by a member is not open to guests either
    ad_hoc = open_room(session_on(lk_server, org_a), None)
    assert ad_hoc.status_code == 201 and ad_hoc.json()["conversation"] is None
    assert join_room(outsider, ad_hoc.json()["call_id"]).status_code == 404
    assert str(outsider.user.pk) not in participants(org_a, room["call_id"])


def test_a_member_outside_the_conversation_gets_404(lk_server, org_a):
    _, _, _, conversation, room = started_call(lk_server, org_a)
    outsider = session_on(lk_server, org_a)

    assert join_room(outsider, room["call_id"]).status_code == 404
    assert open_room(outsider, conversation).status_code == 404
    assert str(outsider.user.pk) not in participants(org_a, room["call_id"])


def test_another_orgs_user_gets_404_for_the_room_the_conversation_and_moderation(
    lk_server, org_a, org_b
):
    _, _, _, conversation, room = started_call(lk_server, org_a)
    stranger = session_on(lk_server, org_b, role="owner")

    for response in (
        join_room(stranger, room["call_id"]),
        open_room(stranger, conversation),
        stranger.api.get(f"/api/v1/calls/rooms/{room['call_id']}/participants"),
        stranger.api.delete(
            f"/api/v1/calls/rooms/{room['call_id']}/participants/{stranger.user.pk}:1"
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert in_tenant(org_b, lambda: Call.objects.filter(pk=room["call_id"]).exists()) is False


def test_a_token_for_an_ended_call_is_refused(lk_server, org_a):
    member, admin, _, _, room = started_call(lk_server, org_a)
    finished = event("room_finished", room["room"], ts=int(time.time()))
    assert deliver(lk_server, org_a, finished).status_code == 204

    response = join_room(admin, room["call_id"])

    assert response.status_code == 410 and response.json()["error"]["code"] == "call_ended"


def test_bad_requests_are_400(lk_server, org_a):
    member = session_on(lk_server, org_a)
    for body in ({}, {"media": "hologram"}, {"media": "video", "conversation": "nope"}):
        response = member.api.post("/api/v1/calls/rooms", json=body)
        assert response.status_code == 400, (body, response.text)
    assert join_room(member, "not-a-uuid").status_code == 404


# --- the webhook -----------------------------------------------------------------------


def test_signed_webhooks_record_joins_leaves_and_the_end(lk_server, org_a):
    member, admin, _, _, room = started_call(lk_server, org_a)
    t0 = int(time.time()) - 100
    joined = event("participant_joined", room["room"], ts=t0, who=member, sid="PA_m1")

    # When LiveKit reports the member joining
    response = deliver(lk_server, org_a, joined)

    # Then the call is answered and the member joined at that time
    assert response.status_code == 204, response.text
    call = call_row(org_a, room["call_id"])
    assert (call.state, call.answered_at) == ("active", at(t0))
    row = participants(org_a, room["call_id"])[str(member.user.pk)]
    assert (row.joined_at, row.left_at, row.device_id) == (at(t0), None, member.device_id)

    # And the admin joins, the member leaves, the room finishes
    assert (
        deliver(
            lk_server,
            org_a,
            event("participant_joined", room["room"], ts=t0 + 5, who=admin, sid="PA_a1"),
        ).status_code
        == 204
    )
    left = event(
        "participant_left", room["room"], ts=t0 + 30, who=member, sid="PA_m1", joined_at=t0
    )
    assert deliver(lk_server, org_a, left).status_code == 204
    finished = event("room_finished", room["room"], ts=t0 + 60)
    assert deliver(lk_server, org_a, finished).status_code == 204

    call = call_row(org_a, room["call_id"])
    assert (call.state, call.outcome, call.answered_at, call.ended_at) == (
        "ended",
        "completed",
        at(t0),
        at(t0 + 60),
    )
    rows = participants(org_a, room["call_id"])
    assert (rows[str(member.user.pk)].joined_at, rows[str(member.user.pk)].left_at) == (
        at(t0),
        at(t0 + 30),
    )
    # The admin never sent a leave: the room's end is when they left
    assert (rows[str(admin.user.pk)].joined_at, rows[str(admin.user.pk)].left_at) == (
        at(t0 + 5),
        at(t0 + 60),
    )

    # And every event delivered again changes nothing
    before = snapshot(org_a, room["call_id"])
    for again in (joined, left, finished):
        assert deliver(lk_server, org_a, again).status_code == 204
    assert snapshot(org_a, room["call_id"]) == before


def test_a_late_redelivered_leave_does_not_undo_a_rejoin(lk_server, org_a):
    member, _, _, _, room = started_call(lk_server, org_a)
    t0 = int(time.time()) - 100
    first = event("participant_joined", room["room"], ts=t0, who=member, sid="PA_one")
    first_left = event(
        "participant_left", room["room"], ts=t0 + 10, who=member, sid="PA_one", joined_at=t0
    )
    rejoin = event("participant_joined", room["room"], ts=t0 + 20, who=member, sid="PA_two")
    for e in (first, first_left, rejoin, first_left):
        assert deliver(lk_server, org_a, e).status_code == 204

    row = participants(org_a, room["call_id"])[str(member.user.pk)]
    assert (row.joined_at, row.left_at) == (at(t0), None)


def test_a_user_leaves_when_their_last_device_does(lk_server, org_a):
    member, _, _, _, room = started_call(lk_server, org_a)
    phone = another_device(lk_server, member)
    t0 = int(time.time()) - 100
    laptop_in = event("participant_joined", room["room"], ts=t0, who=member, sid="PA_laptop")
    phone_in = event("participant_joined", room["room"], ts=t0 + 3, who=phone, sid="PA_phone")
    laptop_out = event(
        "participant_left", room["room"], ts=t0 + 10, who=member, sid="PA_laptop", joined_at=t0
    )
    phone_out = event(
        "participant_left", room["room"], ts=t0 + 40, who=phone, sid="PA_phone", joined_at=t0 + 3
    )
    for e in (laptop_in, phone_in, laptop_out):
        assert deliver(lk_server, org_a, e).status_code == 204
    row = participants(org_a, room["call_id"])[str(member.user.pk)]
    assert (row.joined_at, row.left_at) == (at(t0), None)

    assert deliver(lk_server, org_a, phone_out).status_code == 204

    row = participants(org_a, room["call_id"])[str(member.user.pk)]
    assert (row.joined_at, row.left_at, row.device_id) == (at(t0), at(t0 + 40), phone.device_id)


def test_a_room_nobody_joined_ends_missed(lk_server, org_a):
    _, _, _, _, room = started_call(lk_server, org_a)

    finished = event("room_finished", room["room"], ts=int(time.time()))
    assert deliver(lk_server, org_a, finished).status_code == 204

    call = call_row(org_a, room["call_id"])
    assert (call.state, call.outcome, call.answered_at) == ("ended", "missed", None)


def test_a_badly_signed_webhook_is_refused_and_changes_nothing(lk_server, org_a):
    member, _, _, _, room = started_call(lk_server, org_a)
    joined = event("participant_joined", room["room"], ts=int(time.time()), who=member)
    body = MessageToJson(joined).encode()
    before = snapshot(org_a, room["call_id"])

    tampered = body.replace(b"participant_joined", b"room_finished")
    for authorization in (
        None,  # no signature at all
        "",
        "not-a-jwt",
        signed(body, secret="another-secret-of-some-other-livekit-x"),  # wrong secret
        signed(body, key="another-key"),  # right secret, key we do not know (issuer)
        signed(tampered),  # signs a different body
    ):
        response = post_webhook(lk_server, org_a, body, authorization)
        assert response.status_code == 401, (authorization, response.text)
        assert response.json()["error"]["code"] == "bad_signature"
    assert snapshot(org_a, room["call_id"]) == before


def test_a_webhook_for_another_orgs_room_is_refused_on_this_host(lk_server, org_a, org_b):
    member, _, _, _, room = started_call(lk_server, org_a)
    before = snapshot(org_a, room["call_id"])
    joined = event("participant_joined", room["room"], ts=int(time.time()), who=member)

    # Org A's room, posted to org B's host: not B's, refused; nothing changes in A
    response = deliver(lk_server, org_b, joined)

    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert snapshot(org_a, room["call_id"]) == before
    # A room named with B's schema and A's call id is no call of B's either
    forged = event(
        "participant_joined",
        f"{org_b.schema_name}.{room['call_id']}",
        ts=int(time.time()),
        who=member,
    )
    assert deliver(lk_server, org_b, forged).status_code == 404
    assert deliver(lk_server, org_a, forged).status_code == 404
    assert snapshot(org_a, room["call_id"]) == before


def test_events_siphera_does_not_record_are_accepted(lk_server, org_a):
    _, _, _, _, room = started_call(lk_server, org_a)
    before = snapshot(org_a, room["call_id"])

    response = deliver(lk_server, org_a, event("track_published", room["room"], ts=1))

    assert response.status_code == 204
    assert snapshot(org_a, room["call_id"]) == before


def test_an_oversized_webhook_is_413(lk_server, org_a):
    body = b"{" + b" " * (64 * 1024) + b"}"

    response = post_webhook(lk_server, org_a, body, signed(body))

    assert response.status_code == 413


# --- the room service ------------------------------------------------------------------


def test_an_admin_lists_the_rooms_participants_from_livekit(lk_server, org_a, room_service):
    member, admin, _, _, room = started_call(lk_server, org_a)
    room_service.rooms[room["room"]] = [
        lk.ParticipantInfo(
            sid="PA_x",
            identity=f"{member.user.pk}:{member.device_id}",
            name="Ann",
            joined_at=1_700_000_000,
            is_publisher=True,
        )
    ]

    response = admin.api.get(f"/api/v1/calls/rooms/{room['call_id']}/participants")

    assert response.status_code == 200, response.text
    assert response.json() == [
        {
            "identity": f"{member.user.pk}:{member.device_id}",
            "user_id": str(member.user.pk),
            "device_id": member.device_id,
            "name": "Ann",
            "joined_at": "2023-11-14T22:13:20+00:00",
            "publishing": True,
        }
    ]
    assert ("ListParticipants", room["room"]) in room_service.seen


def test_a_member_cannot_moderate(lk_server, org_a):
    member, _, _, _, room = started_call(lk_server, org_a)

    listed = member.api.get(f"/api/v1/calls/rooms/{room['call_id']}/participants")
    removed = member.api.delete(
        f"/api/v1/calls/rooms/{room['call_id']}/participants/{member.user.pk}:{member.device_id}"
    )

    for response in (listed, removed):
        assert response.status_code == 403
        assert response.json()["permission"] == "calls.manage"


def test_an_admin_removes_a_participant_and_it_is_audited(lk_server, org_a, room_service):
    member, admin, _, _, room = started_call(lk_server, org_a)
    who = f"{member.user.pk}:{member.device_id}"
    room_service.rooms[room["room"]] = [lk.ParticipantInfo(sid="PA_y", identity=who)]

    response = admin.api.delete(f"/api/v1/calls/rooms/{room['call_id']}/participants/{who}")

    assert response.status_code == 204, response.text
    assert room_service.rooms[room["room"]] == []
    entry = in_tenant(
        org_a,
        lambda: AuditEntry.objects.filter(
            event="call.participant_removed", target_id=room["call_id"]
        ).get(),
    )
    assert entry.actor_id == admin.user.pk and entry.target_type == "call"
    assert entry.data == {
        "room": room["room"],
        "user_id": str(member.user.pk),
        "device_id": member.device_id,
    }


def test_removing_someone_not_in_the_room_is_404_and_not_audited(lk_server, org_a):
    member, admin, _, _, room = started_call(lk_server, org_a)
    for who in (f"{member.user.pk}:{member.device_id}", "not-an-identity"):
        response = admin.api.delete(f"/api/v1/calls/rooms/{room['call_id']}/participants/{who}")
        assert response.status_code == 404, response.text
    audited = in_tenant(
        org_a,
        lambda: AuditEntry.objects.filter(
            event="call.participant_removed", target_id=room["call_id"]
        ).exists(),
    )
    assert audited is False


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_failing_or_unreachable_livekit_is_503(lk_server, org_a, room_service, mode):
    member, admin, _, _, room = started_call(lk_server, org_a)
    room_service.mode = mode
    who = f"{member.user.pk}:{member.device_id}"

    listed = admin.api.get(f"/api/v1/calls/rooms/{room['call_id']}/participants")
    removed = admin.api.delete(f"/api/v1/calls/rooms/{room['call_id']}/participants/{who}")

    for response in (listed, removed):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "livekit_unavailable"
        assert response.headers["Retry-After"] == "5"
    assert SECRET not in lk_server.log_text()


# --- not configured ----------------------------------------------------------------------


def test_without_livekit_every_endpoint_answers_503_and_writes_nothing(new_session, org_a, server):
    # `server` runs without any LIVEKIT_* setting
    member = new_session(org_a)
    admin = new_session(org_a, role="admin")
    conversation = group_of(member, admin)
    call_id = str(uuid.uuid4())
    in_tenant(
        org_a,
        lambda: Call.objects.create(
            id=call_id, kind=Call.GROUP, media="video", room=f"{org_a.schema_name}.{call_id}"
        ),
    )
    body = b"{}"

    responses = [
        open_room(member, conversation),
        open_room(member, None),
        join_room(member, call_id),
        admin.api.get(f"/api/v1/calls/rooms/{call_id}/participants"),
        admin.api.delete(f"/api/v1/calls/rooms/{call_id}/participants/{member.user.pk}:1"),
        post_webhook(server, org_a, body, signed(body)),
    ]

    for response in responses:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "livekit_not_configured"
    calls = in_tenant(
        org_a, lambda: list(Call.objects.filter(conversation_id=conversation).values_list("pk"))
    )
    assert calls == []
    assert participants(org_a, call_id) == {}


def test_a_user_whose_calls_must_be_recorded_cannot_open_or_join_a_group_call(lk_server):
    """Group calls cannot be recorded yet: someone the org's recording policy covers is
    refused (409, nothing written) rather than let into an unrecorded call; the others
    may still call as a group."""
    from calls.models import RecordingPolicy

    org = create_org(unique("rec"))
    covered, member, other = (session_on(lk_server, org) for _ in range(3))
    conversation = group_of(member, covered, other)
    in_tenant(
        org,
        lambda: RecordingPolicy.objects.update_or_create(
            pk=1, defaults={"user_ids": [str(covered.user.pk)]}
        ),
    )

    refused = open_room(covered, conversation)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "recording_unsupported"
    assert in_tenant(org, lambda: Call.objects.filter(conversation_id=conversation).count()) == 0

    started = open_room(member, conversation)
    assert started.status_code == 201, started.text
    call_id = started.json()["call_id"]
    assert open_room(other, conversation).status_code == 200
    for response in (
        open_room(covered, conversation),
        covered.api.post(f"/api/v1/calls/rooms/{call_id}/token", json={}),
    ):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "recording_unsupported"
    assert str(covered.user.pk) not in participants(org, call_id)
