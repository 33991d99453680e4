"""Compliance recording when PostgreSQL or Redis goes away.

- The worker cannot reach PostgreSQL when a recorded call starts: its recorder never comes
  up, and once the connect window closes the call ends `recorder_unavailable` (not
  `recording_refused`: the client offered its leg), for both parties.
- The web process cannot reach PostgreSQL when a device offers its leg: the device hears
  `database_unavailable` with `retry_after`, and its offer goes through once it is back.
- Redis (the recorder's channel) stalls when a device offers its leg: after a bound the
  device hears `recorder_unavailable` with `retry_after` and its socket stays; once Redis
  answers, the offer sent again reaches the recorder's channel. Redis gone: a clear error
  with `retry_after` (`recorder_unavailable`, or `redis_unavailable` when the socket
  noticed first), never an internal error.
- The worker cannot reach PostgreSQL when a transcription job runs: the job is retried,
  and finishes once the database is back.
- A connect deadline or a lost leg's grace whose timer was lost is made up by beat's
  sweep, which also marks failed a recording its recorder never stored.

PostgreSQL "goes away" through a TCP proxy that is cut (siphera/tests/test_database_outage);
Redis is a redis-server of the test's own that is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import defaultdict
from datetime import timedelta

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.utils import timezone

from calls import tasks
from calls.models import Call, CallParticipant, Recording, RecordingLeg
from calls.services import recording, signaling
from calls.tests.recording_support import (
    _worker,
    eventually_value,
    make_stored_recording,
    stereo_pcm,
    tone,
)
from calls.tests.test_recording import record_alice
from siphera import crypto
from siphera.tenancy import in_tenant
from siphera.tests.test_database_outage import TcpProxy
from tests.fixtures import (
    Api,
    RedisProcess,
    create_org,
    host_of,
    make_user,
    register_device,
    server_with_env,
    unique,
)
from tests.fixtures import Session as FixtureSession
from tests.ws import authed_socket, send

CONNECT_SECONDS = 8
WAIT = 60.0
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"  # nobody answers it here


class Peer:
    """A device's socket with its frames filed by type."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, live, session) -> Peer:
        return cls(await authed_socket(live, session, live=True))

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames[frame["type"]].put_nowait(frame)

    async def expect(self, frame_type: str, timeout: float = WAIT) -> dict:
        return await asyncio.wait_for(self.frames[frame_type].get(), timeout)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()


def session_of(live, org, user) -> FixtureSession:
    api = Api(live, host_of(org))
    device_id, token, keys = register_device(api, user.username)
    return FixtureSession(org, user, device_id, token, keys, api.as_device(token))


async def ring(alice: Peer, bob_user, call_id: str) -> None:
    """Alice calls Bob; both hear that the call is recorded."""
    await send(
        alice.ws,
        {
            "type": "call.invite",
            "call_id": call_id,
            "to": {"user_id": str(bob_user.pk)},
            "media": "audio",
            "sdp": SDP,
        },
    )
    await alice.expect("call.recording")
    await alice.expect("call.invited")


# --- a worker whose PostgreSQL goes away ----------------------------------------------


@pytest.fixture(scope="module")
def worker_without_database(tmp_path_factory):
    """A server (database direct) and a worker reaching PostgreSQL through a proxy the
    test cuts, on a queue of their own. Yields (server, proxy, worker log, queue)."""
    base = tmp_path_factory.mktemp("recording-faults")
    proxy = TcpProxy.to_database()
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-rf-{uuid.uuid4().hex[:6]}"
    env = {"CALL_RECORDING_CONNECT_SECONDS": str(CONNECT_SECONDS), "CELERY_QUEUE": queue}
    worker_env = {**env, "DATABASE_URL": proxy.database_url()}
    worker_env["DATABASE_POOL_TIMEOUT_SECONDS"] = "1"
    worker_log = base / "worker.log"
    try:
        with (
            server_with_env(base / "server.log", **env) as live,
            _worker(worker_log, queue, worker_env),
        ):
            yield live, proxy, worker_log, queue
    finally:
        proxy.cut()


async def test_a_recorder_that_cannot_start_ends_the_call_recorder_unavailable(
    worker_without_database,
):
    live, proxy, worker_log, _ = worker_without_database
    org = create_org(unique("rf"))
    alice_user, bob_user = make_user(org), make_user(org)
    record_alice(org, alice_user)
    alice = await Peer.join(live, session_of(live, org, alice_user))
    bob = await Peer.join(live, session_of(live, org, bob_user))
    call_id = str(uuid.uuid4())
    proxy.cut()  # the worker loses PostgreSQL as the call starts
    try:
        await ring(alice, bob_user, call_id)
        await bob.expect("call.recording")
        await bob.expect("call.incoming")
        # Alice is willing: she offers her leg (the web process takes it) ...
        await send(alice.ws, {"type": "call.recording.offer", "call_id": call_id, "sdp": SDP})
        # ... but the worker cannot start the recorder
        await asyncio.to_thread(
            eventually_value,
            lambda: (
                "calls.tasks.start_recorder" in worker_log.read_text()
                and "OperationalError" in worker_log.read_text()
            ),
        )
        proxy.restore()  # PostgreSQL is back before the connect window closes
        ended = await alice.expect("call.ended", CONNECT_SECONDS + WAIT)
        assert ended["reason"] == "recorder_unavailable"
        assert (await bob.expect("call.ended"))["reason"] == "recorder_unavailable"
        assert alice.frames["call.recording.answer"].empty()
        call = in_tenant(org, Call.objects.get, pk=call_id)
        assert (call.outcome, call.end_reason) == ("failed", "recorder_unavailable")
        rec = in_tenant(org, Recording.objects.get, call_id=call_id)
        assert rec.recorder_ready_at is None and rec.state == Recording.EMPTY
        offered = in_tenant(org, RecordingLeg.objects.filter(recording=rec).count)
        assert offered == 1  # her leg was offered: not a refusal
    finally:
        proxy.restore()
        await asyncio.gather(alice.close(), bob.close())


def test_a_transcription_job_without_its_database_is_retried_and_finishes(
    worker_without_database,
):
    live, proxy, worker_log, queue = worker_without_database
    org = create_org(unique("rf"))
    alice, bob = make_user(org), make_user(org)
    audio = stereo_pcm(tone(440, 2), tone(660, 2))

    def queued():
        rec = make_stored_recording(alice, bob, audio=audio, transcript={})
        Recording.objects.filter(pk=rec.pk).update(
            transcript_state=Recording.T_QUEUED, transcript_encrypted="", transcribed_at=None
        )
        return rec

    rec = in_tenant(org, queued)
    proxy.cut()
    try:
        tasks.transcribe_recording.apply_async(
            args=[str(rec.pk)], headers={"_schema_name": org.schema_name}, queue=queue
        )
        # The job fails to reach PostgreSQL and is retried, not dropped ...
        eventually_value(
            lambda: any(
                "transcribe_recording" in line and "Retry in" in line
                for line in worker_log.read_text().splitlines()
            )
        )
        assert in_tenant(org, Recording.objects.get, pk=rec.pk).transcript_state == "queued"
    finally:
        proxy.restore()
    # ... and finishes once it is back (tones: the text may be anything)
    done = eventually_value(
        lambda: in_tenant(org, Recording.objects.filter(pk=rec.pk, transcript_state="done").first),
        within=120,
    )
    assert set(json.loads(crypto.decrypt(done.transcript_encrypted))) >= {"segments", "text"}


# --- a web process whose PostgreSQL goes away -----------------------------------------


async def test_a_leg_offer_while_postgresql_is_gone_is_database_unavailable_then_goes_through(
    tmp_path,
):
    proxy = TcpProxy.to_database()
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-rf-{uuid.uuid4().hex[:6]}"  # no worker
    org = create_org(unique("rf"))
    alice_user, bob_user = make_user(org), make_user(org)
    record_alice(org, alice_user)
    with server_with_env(
        tmp_path / "server.log",
        DATABASE_URL=proxy.database_url(),
        DATABASE_POOL_TIMEOUT_SECONDS="1",
        CELERY_QUEUE=queue,
    ) as live:
        alice = await Peer.join(live, session_of(live, org, alice_user))
        try:
            call_id = str(uuid.uuid4())
            await ring(alice, bob_user, call_id)
            offer = {"type": "call.recording.offer", "call_id": call_id, "sdp": SDP, "ref": 1}

            proxy.cut()
            await send(alice.ws, offer)
            error = await alice.expect("error")
            assert (error["code"], error["ref"]) == ("database_unavailable", 1)
            assert error["retry_after"] > 0
            legs = in_tenant(org, RecordingLeg.objects.filter(recording__call_id=call_id).count)
            assert legs == 0

            proxy.restore()
            # The client offers again after retry_after; the first frame may still meet the
            # broken connection (replaced before the next call)
            deadline = time.monotonic() + WAIT
            while not in_tenant(
                org, RecordingLeg.objects.filter(recording__call_id=call_id).exists
            ):
                assert time.monotonic() < deadline, "the offer never went through"
                await send(alice.ws, offer)
                with contextlib.suppress(TimeoutError):
                    error = await alice.expect("error", 2)
                    assert error["code"] == "database_unavailable", error
            assert "ws.frame_failed" not in live.log_text()
        finally:
            await alice.close()
            proxy.cut()


# --- Redis goes away ------------------------------------------------------------------


async def test_a_leg_offer_while_redis_is_gone_is_a_clear_error_then_reaches_the_recorder(
    tmp_path,
):
    redis = RedisProcess(tmp_path)
    redis.start()
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-rf-{uuid.uuid4().hex[:6]}"  # no worker
    org = create_org(unique("rf"))
    alice_user, bob_user = make_user(org), make_user(org)
    record_alice(org, alice_user)
    try:
        with server_with_env(
            tmp_path / "server.log",
            REDIS_URL=redis.url,
            CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
            CELERY_QUEUE=queue,
        ) as live:
            session = session_of(live, org, alice_user)
            alice = await Peer.join(live, session)
            call_id = str(uuid.uuid4())
            offer = {"type": "call.recording.offer", "call_id": call_id, "sdp": SDP, "ref": 2}
            layer = RedisChannelLayer(hosts=[redis.url], prefix=settings.CHANNEL_LAYER_PREFIX)
            channel = recorder_channel_of(org, call_id)
            try:
                await ring(alice, bob_user, call_id)
                # Redis stalls (stopped, not gone: nothing fails, nothing answers): the
                # offer is refused after a bound, the socket stays
                redis.proc.send_signal(signal.SIGSTOP)
                try:
                    await send(alice.ws, offer)
                    error = await alice.expect("error")
                finally:
                    redis.proc.send_signal(signal.SIGCONT)
                assert (error["code"], error["ref"]) == ("recorder_unavailable", 2), error
                assert error["retry_after"] > 0
                # Redis answers again: the offer, sent again, reaches the recorder's channel
                await asyncio.sleep(error["retry_after"])
                await send(alice.ws, offer)
                message = await _latest(layer, channel)
                assert message["type"] == "recorder.offer"
                assert message["user_id"] == str(alice_user.pk) and message["sdp"] == SDP
                assert alice.frames["error"].empty()

                # Redis gone: the device hears why, with when to try again (the socket may
                # have noticed first: then it is told to reconnect)
                redis.stop()
                with contextlib.suppress(Exception):  # the socket may be closing already
                    await send(alice.ws, offer)
                error = await alice.expect("error")
                assert error["code"] in ("recorder_unavailable", "redis_unavailable"), error
                assert error["retry_after"] > 0
            finally:
                await alice.close()
            assert "ws.frame_failed" not in live.log_text()
    finally:
        redis.stop()


async def _latest(layer, channel: str) -> dict:
    """The last message waiting on `channel` (an offer the stall held may have landed)."""
    message = await asyncio.wait_for(layer.receive(channel), WAIT)
    while True:
        try:
            message = await asyncio.wait_for(layer.receive(channel), 1)
        except TimeoutError:
            return message


def recorder_channel_of(org, call_id: str) -> str:
    return in_tenant(org, recording.recorder_channel, call_id)


# --- a lost deadline timer ------------------------------------------------------------


def test_the_sweep_ends_a_recorded_call_whose_deadline_timer_was_lost():
    # Given recorded calls whose connect deadlines passed with no timer to end them: one
    # whose recorder never came up, one whose callee's answer is still held (recorder up)
    org = create_org(unique("rf"))
    alice, bob = make_user(org), make_user(org)
    # Past the connect window, not yet past the ring timeout (which the sweep ends first)
    late = timezone.now() - timedelta(seconds=settings.CALL_RECORDING_CONNECT_SECONDS + 10)
    assert settings.CALL_RECORDING_CONNECT_SECONDS + 10 < settings.CALL_RING_TIMEOUT_SECONDS

    def calls():
        made = []
        for state in (Call.RINGING, Call.ACTIVE):
            call = Call.objects.create(
                media="audio",
                state=state,
                caller=alice,
                caller_device_id=1,
                answered_at=late if state == Call.ACTIVE else None,
            )
            Call.objects.filter(pk=call.pk).update(created_at=late)
            CallParticipant.objects.create(call=call, user=alice, role="caller", device_id=1)
            CallParticipant.objects.create(call=call, user=bob, role="callee", device_id=1)
            rec = Recording.objects.create(call=call)
            if state == Call.ACTIVE:  # Alice's leg connected, Bob's never did
                rec.recorder_ready_at, rec.held_accept_encrypted = late, crypto.encrypt(b"{}")
                rec.save()
                RecordingLeg.objects.create(
                    recording=rec, user=alice, device_id=1, offered_at=late, connected_at=late
                )
            made.append(call.pk)
        # A recording call whose callee's leg was lost past the grace, its timer lost too
        call = Call.objects.create(
            media="audio", state=Call.ACTIVE, caller=alice, caller_device_id=1, answered_at=late
        )
        CallParticipant.objects.create(call=call, user=alice, role="caller", device_id=1)
        CallParticipant.objects.create(call=call, user=bob, role="callee", device_id=1)
        rec = Recording.objects.create(call=call, state=Recording.RECORDING, started_at=late)
        away = timezone.now() - timedelta(seconds=settings.CALL_RECORDING_LOST_GRACE_SECONDS + 10)
        RecordingLeg.objects.create(
            recording=rec, user=bob, device_id=1, offered_at=late, lost_at=away
        )
        made.append(call.pk)
        # A call that ended long ago whose recorder never stored its recording
        gone = Call.objects.create(media="audio", state=Call.ENDED, caller=alice, ended_at=late)
        made.append(
            Recording.objects.create(
                call=gone,
                state=Recording.RECORDING,
                ended_at=timezone.now() - timedelta(seconds=recording.STORE_WITHIN_SECONDS + 60),
            ).pk
        )
        return made

    never_up, held, lost, unstored = in_tenant(org, calls)

    # When beat's sweep runs
    ended = in_tenant(org, signaling.do_sweep)

    # Then the three end, each with its reason, and nothing is left held; the recording
    # never stored is marked failed
    assert ended == 3
    rows = in_tenant(org, lambda: {c.pk: c for c in Call.objects.all()})
    assert (rows[never_up].outcome, rows[never_up].end_reason) == ("failed", "recorder_unavailable")
    assert (rows[held].outcome, rows[held].end_reason) == ("failed", "recording_refused")
    assert (rows[lost].outcome, rows[lost].end_reason) == ("failed", "recording_lost")
    assert in_tenant(org, Recording.objects.get, pk=unstored).state == Recording.FAILED
    assert not in_tenant(org, Recording.objects.exclude(held_accept_encrypted="").exists)
    assert in_tenant(org, signaling.do_sweep) == 0  # a second run changes nothing


def test_a_recorded_call_whose_recorder_fell_silent_ends_recording_lost():
    # Given recorded calls: one whose recorder last said it was alive long ago (its
    # process died), one whose recorder just did, and one still waiting for the callee's
    # leg whose recorder came up and then fell silent
    org = create_org(unique("rs"))
    alice, bob = make_user(org), make_user(org)
    now = timezone.now()
    long_ago = now - timedelta(seconds=settings.CALL_RECORDER_SILENT_SECONDS + 10)
    late = now - timedelta(seconds=settings.CALL_RECORDING_CONNECT_SECONDS + 10)

    def recorded_call(seen_at, *, held: bool = False):
        call = Call.objects.create(
            media="audio", state=Call.ACTIVE, caller=alice, caller_device_id=1, answered_at=late
        )
        Call.objects.filter(pk=call.pk).update(created_at=late)
        CallParticipant.objects.create(call=call, user=alice, role="caller", device_id=1)
        CallParticipant.objects.create(call=call, user=bob, role="callee", device_id=1)
        Recording.objects.create(
            call=call,
            state=Recording.PENDING if held else Recording.RECORDING,
            started_at=None if held else late,
            recorder_ready_at=late,
            recorder_seen_at=seen_at,
            held_accept_encrypted=crypto.encrypt(b"{}") if held else "",
        )
        return call.pk

    dead, alive, held = in_tenant(
        org,
        lambda: (
            recorded_call(long_ago),
            recorded_call(timezone.now()),
            recorded_call(long_ago, held=True),
        ),
    )

    def state(pk):
        call = Call.objects.get(pk=pk)
        return call.state, call.outcome, call.end_reason

    # The watchdog leaves the call whose recorder is alive (and comes back later)...
    assert in_tenant(org, recording.do_recorder_watchdog, alive) is False
    # ...beat's sweep ends the held one, as its lost deadline timer would have: a leg
    # missing when the recorder is gone is the recorder's fault, not the client's...
    assert in_tenant(org, signaling.do_sweep) == 1
    assert in_tenant(org, state, held) == (Call.ENDED, "failed", "recorder_unavailable")
    # ...and gives the silent one's watchdog its first look, which ends nothing yet
    assert in_tenant(org, state, dead)[0] == Call.ACTIVE
    last_beat = in_tenant(org, Recording.objects.get, call_id=dead).recorder_seen_at

    # A recorder heard from again before the second look (its beats failed only while
    # the database was away) keeps its call
    in_tenant(org, recording.do_recorder_heartbeat, dead)
    assert in_tenant(org, recording.do_recorder_watchdog, dead, last_beat.isoformat()) is False
    assert in_tenant(org, state, dead)[0] == Call.ACTIVE

    # One still silent at the second look ends its call `recording_lost`
    in_tenant(org, Recording.objects.filter(call_id=dead).update, recorder_seen_at=long_ago)
    assert in_tenant(org, recording.do_recorder_watchdog, dead) is False  # the first look
    second_look = long_ago.isoformat()
    assert in_tenant(org, recording.do_recorder_watchdog, dead, second_look) is True
    assert in_tenant(org, state, dead) == (Call.ENDED, "failed", "recording_lost")
    assert in_tenant(org, state, alive)[0] == Call.ACTIVE
    assert in_tenant(org, recording.do_recorder_watchdog, dead, second_look) is False
