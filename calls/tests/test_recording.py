"""Acceptance: compliance recording of a 1:1 call between two aiortc peers.

The org's policy records Alice's calls. Both parties hear `call.recording` before anything
else of the call, each connects a leg of its own to the org's recorder (aiortc in a
process the worker starts), over the same coturn; Bob's answer reaches Alice only once
both legs are connected. After the hang-up the stored blob holds no plaintext WAV, and
decrypts to a stereo WAV of the call's length with Alice's 440 Hz on the left and Bob's
880 Hz on the right; the worker then transcribes it. A callee that never connects its
leg (the recorder is up) is not connected: the call ends `recording_refused`. A recorded
leg lost mid-call must come back within the grace, or the call ends `recording_lost`; so
does a call whose recorder process dies.
"""

from __future__ import annotations

import asyncio
import io
import uuid
import wave
from array import array
from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription
from django.conf import settings

from calls.models import Call, Recording, RecordingLeg
from calls.services import recording_policy, recording_store, transcription
from calls.tests.recording_support import (
    CONNECT_SECONDS,
    LOST_GRACE_SECONDS,
    SILENT_SECONDS,
    eventually_value,
)
from calls.tests.test_aiortc_call import CALLEE_HZ, CALLER_HZ, WAIT, Side, hear
from orgs.services import audit
from siphera.tenancy import in_tenant
from siphera_client.media import Tone, configuration
from tests.fixtures import Api, host_of, make_user, register_device
from tests.fixtures import Session as FixtureSession
from tests.ws import send


class OrderedSide(Side):
    """A Side that also remembers the order frames arrived in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrivals: list[str] = []
        self.rec_pc = RTCPeerConnection(configuration(self.turn, relay_only=True))

    async def _read(self) -> None:
        import contextlib
        import json

        with contextlib.suppress(Exception):
            async for raw in self.ws:
                frame = json.loads(raw)
                self.arrivals.append(frame["type"])
                self.frames[frame["type"]].put_nowait(frame)

    async def connect_recorder_leg(self, call_id: str, hz: int) -> None:
        """Offer a leg to the recorder (this side's own tone), apply its answer."""
        self.rec_pc.addTrack(Tone(hz))
        await self.rec_pc.setLocalDescription(await self.rec_pc.createOffer())
        await send(
            self.ws,
            {
                "type": "call.recording.offer",
                "call_id": call_id,
                "sdp": self.rec_pc.localDescription.sdp,
            },
        )
        answer = await self.expect("call.recording.answer")
        await self.rec_pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.rec_pc.close(), WAIT)
        await super().close()


def session_in(deployment, user) -> FixtureSession:
    api = Api(deployment.server, host_of(deployment.org))
    device_id, token, keys = register_device(api, user.username)
    return FixtureSession(deployment.org, user, device_id, token, keys, api.as_device(token))


def record_alice(org, alice) -> None:
    in_tenant(
        org,
        recording_policy.check_update_policy,
        {"user_ids": [str(alice.pk)]},
        actor=audit.Actor.system("tests"),
    )


def dominant_hz(samples: array, rate: int) -> float:
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)


async def invite(alice: OrderedSide, bob: OrderedSide, call_id: str) -> None:
    alice.pc.addTrack(Tone(CALLER_HZ))
    await alice.pc.setLocalDescription(await alice.pc.createOffer())
    await send(
        alice.ws,
        {
            "type": "call.invite",
            "call_id": call_id,
            "to": {"user_id": str(bob.session.user.pk)},
            "media": "audio",
            "sdp": alice.local_sdp(),
        },
    )


async def alice_recorded_and_bob(deployment) -> tuple[OrderedSide, OrderedSide]:
    """Two new users of the deployment's org, on sockets, Alice's calls recorded."""
    org, live = deployment.org, deployment.server
    alice_user, bob_user = make_user(org), make_user(org)
    record_alice(org, alice_user)
    alice = await OrderedSide.join("alice", session_in(deployment, alice_user), live)
    bob = await OrderedSide.join("bob", session_in(deployment, bob_user), live)
    return alice, bob


async def recorded_and_answered(alice: OrderedSide, bob: OrderedSide) -> str:
    """Alice calls Bob, both connect their legs to the recorder, Bob's answer reaches
    Alice. Returns the call's id."""
    call_id = str(uuid.uuid4())
    await invite(alice, bob, call_id)
    await alice.expect("call.recording")
    await alice.connect_recorder_leg(call_id, CALLER_HZ)
    await alice.expect("call.recording.connected")
    incoming = await bob.expect("call.incoming")
    await bob.pc.setRemoteDescription(RTCSessionDescription(incoming["sdp"], "offer"))
    bob.pc.addTrack(Tone(CALLEE_HZ))
    await bob.pc.setLocalDescription(await bob.pc.createAnswer())
    await send(bob.ws, {"type": "call.accept", "call_id": call_id, "sdp": bob.local_sdp()})
    await bob.connect_recorder_leg(call_id, CALLEE_HZ)
    await bob.expect("call.recording.connected")
    await alice.expect("call.accept")
    return call_id


async def test_a_recorded_call_reaches_the_recorder_from_both_sides_and_is_stored_encrypted(
    recording_deployment, loopback_only, media_root
):
    org = recording_deployment.org
    alice, bob = await alice_recorded_and_bob(recording_deployment)
    tasks: list[asyncio.Task] = []
    try:
        call_id = str(uuid.uuid4())
        await invite(alice, bob, call_id)
        # Both are told about the recorder before anything else of the call
        notice = await alice.expect("call.recording")
        assert notice["recorder"]["name"] == "Compliance recorder"
        await alice.expect("call.invited")
        assert alice.arrivals[-2:] == ["call.recording", "call.invited"]
        incoming = await bob.expect("call.incoming")
        assert bob.arrivals.index("call.recording") < bob.arrivals.index("call.incoming")

        # Alice adds her leg to the recorder while it rings; trickles her candidates
        await alice.connect_recorder_leg(call_id, CALLER_HZ)
        await alice.expect("call.recording.connected")
        await alice.trickle(call_id)

        # Bob answers before his leg is up: Alice does not get the answer yet
        await bob.pc.setRemoteDescription(RTCSessionDescription(incoming["sdp"], "offer"))
        bob.pc.addTrack(Tone(CALLEE_HZ))
        await bob.pc.setLocalDescription(await bob.pc.createAnswer())
        tasks.append(asyncio.create_task(bob.apply_remote_candidates(alice)))
        await send(bob.ws, {"type": "call.accept", "call_id": call_id, "sdp": bob.local_sdp()})
        await asyncio.sleep(1.5)
        assert "call.accept" not in alice.arrivals

        # ... until Bob's leg to the recorder connects
        await bob.connect_recorder_leg(call_id, CALLEE_HZ)
        await bob.expect("call.recording.connected")
        accepted = await alice.expect("call.accept")
        rec, legs = _recording(org, call_id)
        assert rec.started_at is not None and all(leg.connected_at for leg in legs)
        assert max(leg.connected_at for leg in legs) <= rec.started_at
        # The recorder reported itself up before it answered a leg
        assert rec.recorder_ready_at is not None
        assert rec.recorder_ready_at <= min(leg.connected_at for leg in legs)

        await bob.trickle(call_id)
        await alice.pc.setRemoteDescription(RTCSessionDescription(accepted["sdp"], "answer"))
        tasks.append(asyncio.create_task(alice.apply_remote_candidates(bob)))
        await asyncio.gather(alice.ice_completed(), bob.ice_completed(), *tasks)
        bob_track = await asyncio.wait_for(bob.tracks.get(), WAIT)
        await hear(bob_track, 50)  # the call itself carries media end to end
        await asyncio.sleep(2)

        await send(alice.ws, {"type": "call.hangup", "call_id": call_id})
        await bob.expect("call.ended")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(alice.close(), bob.close())

    rec = await asyncio.to_thread(
        eventually_value,
        lambda: _stored(org, call_id),
        within=90,
    )
    call = in_tenant(org, Call.objects.get, pk=call_id)
    stored = (Path(media_root) / rec.storage_name).read_bytes()
    assert rec.size == len(stored)
    # No plaintext WAV in the store. (Not `b"RIFF" not in stored`: the store is base64 text,
    # where any four letters turn up by chance in a long enough recording.)
    assert not stored.startswith(b"RIFF") and b"WAVEfmt " not in stored
    with open(Path(media_root) / rec.storage_name, "rb") as blob:
        plain = b"".join(recording_store.decrypt_stream(rec.pk, rec.data_key_encrypted, blob))
    with wave.open(io.BytesIO(plain)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 16000, 2)
        seconds = wav.getnframes() / wav.getframerate()
        samples = array("h", wav.readframes(wav.getnframes()))
    assert plain[:44] not in stored  # the WAV header...
    pcm_slice = plain[44 + 32000 : 44 + 32000 + 64]
    assert pcm_slice not in stored  # ...and its samples
    # The call's length: from the moment both legs connected and Bob's answer went out
    connected_for = (call.ended_at - rec.started_at).total_seconds()
    assert abs(seconds - connected_for) < 1.5, (seconds, connected_for)
    assert seconds > 3
    # The recorder got both audio streams: Alice's tone left, Bob's right
    middle = slice(int(16000 * 1) * 2, int(16000 * (seconds - 0.5)) * 2)
    left, right = samples[middle][0::2], samples[middle][1::2]
    assert max(map(abs, left)) > 2000 and max(map(abs, right)) > 2000
    assert abs(dominant_hz(left, 16000) - CALLER_HZ) < CALLER_HZ * 0.15
    assert abs(dominant_hz(right, 16000) - CALLEE_HZ) < CALLEE_HZ * 0.15

    # The worker transcribes the stored call (tones: the text may be anything), encrypted
    done = await asyncio.to_thread(
        eventually_value,
        lambda: in_tenant(
            org, Recording.objects.filter(pk=rec.pk, transcript_state=Recording.T_DONE).first
        ),
        within=120,
    )
    assert done.transcript_engine == "pocketsphinx" and done.transcribed_at is not None
    transcript = transcription.transcript_of(done)
    assert set(transcript) == {"engine", "segments", "text"}
    assert {s["speaker"] for s in transcript["segments"]} <= {"caller", "callee"}


def _recording(org, call_id):
    def read():
        rec = Recording.objects.get(call_id=call_id)
        return rec, list(RecordingLeg.objects.filter(recording=rec))

    return in_tenant(org, read)


def _stored(org, call_id):
    rec = in_tenant(org, Recording.objects.filter(call_id=call_id).first)
    return rec if rec is not None and rec.state == Recording.STORED else None


async def test_a_callee_that_never_connects_its_leg_is_not_connected(
    recording_deployment, loopback_only
):
    org = recording_deployment.org
    alice, bob = await alice_recorded_and_bob(recording_deployment)
    try:
        call_id = str(uuid.uuid4())
        await invite(alice, bob, call_id)
        await alice.expect("call.recording")
        await alice.connect_recorder_leg(call_id, CALLER_HZ)
        await alice.expect("call.recording.connected")
        incoming = await bob.expect("call.incoming")
        await bob.pc.setRemoteDescription(RTCSessionDescription(incoming["sdp"], "offer"))
        await bob.pc.setLocalDescription(await bob.pc.createAnswer())
        # Bob ignores the recorder and answers
        await send(bob.ws, {"type": "call.accept", "call_id": call_id, "sdp": bob.local_sdp()})
        ended = await asyncio.wait_for(alice.frames["call.ended"].get(), CONNECT_SECONDS + WAIT)
        assert ended["reason"] == "recording_refused"
        assert (await bob.expect("call.ended"))["reason"] == "recording_refused"
        assert "call.accept" not in alice.arrivals  # never connected to Bob
        assert _recording(org, call_id)[0].recorder_ready_at is not None  # not its fault
        call = in_tenant(org, Call.objects.get, pk=call_id)
        assert (call.outcome, call.end_reason) == ("failed", "recording_refused")
        rec = await asyncio.to_thread(
            eventually_value,
            lambda: in_tenant(org, Recording.objects.filter(call_id=call_id, state="empty").first),
            within=30,
        )
        assert rec.size is None and not rec.held_accept_encrypted
    finally:
        await asyncio.gather(alice.close(), bob.close())


async def test_a_recorder_leg_lost_mid_call_must_come_back_or_the_call_ends_recording_lost(
    recording_deployment, loopback_only
):
    org = recording_deployment.org
    alice, bob = await alice_recorded_and_bob(recording_deployment)
    try:
        # Given a recorded call with both legs connected
        call_id = await recorded_and_answered(alice, bob)
        await asyncio.sleep(1)

        # When Bob's leg drops, he hears so, and a new leg within the grace keeps the call
        await bob.rec_pc.close()
        lost = await bob.expect("call.recording.lost")
        assert lost["reconnect_within"] == LOST_GRACE_SECONDS
        bob.rec_pc = RTCPeerConnection(configuration(bob.turn, relay_only=True))
        await bob.connect_recorder_leg(call_id, CALLEE_HZ)
        await bob.expect("call.recording.connected")
        await asyncio.sleep(LOST_GRACE_SECONDS + 2)
        assert alice.frames["call.ended"].empty() and bob.frames["call.ended"].empty()

        # When it drops again and does not come back, the call ends `recording_lost`
        await bob.rec_pc.close()
        await bob.expect("call.recording.lost")
        ended = await asyncio.wait_for(alice.frames["call.ended"].get(), LOST_GRACE_SECONDS + WAIT)
        assert ended["reason"] == "recording_lost"
        assert (await bob.expect("call.ended"))["reason"] == "recording_lost"
        call = in_tenant(org, Call.objects.get, pk=call_id)
        assert (call.outcome, call.end_reason) == ("failed", "recording_lost")
    finally:
        await asyncio.gather(alice.close(), bob.close())

    # What was recorded until then is stored, the call's length, Bob's tone on the right
    # before and after his leg came back
    rec = await asyncio.to_thread(eventually_value, lambda: _stored(org, call_id), within=90)
    with open(Path(settings.MEDIA_ROOT) / rec.storage_name, "rb") as blob:
        plain = b"".join(recording_store.decrypt_stream(rec.pk, rec.data_key_encrypted, blob))
    with wave.open(io.BytesIO(plain)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
        samples = array("h", wav.readframes(wav.getnframes()))
    assert abs(seconds - (call.ended_at - rec.started_at).total_seconds()) < 1.5
    right = samples[1::2]
    second = 16000
    assert max(map(abs, right[: 2 * second])) > 2000  # before the drop
    assert max(map(abs, right[-(LOST_GRACE_SECONDS + 4) * second :])) > 2000  # after it


async def test_a_call_whose_recorder_process_dies_ends_recording_lost(
    recording_deployment, loopback_only
):
    import os
    import signal

    org = recording_deployment.org
    alice, bob = await alice_recorded_and_bob(recording_deployment)
    try:
        # Given a recorded call with both legs connected
        call_id = await recorded_and_answered(alice, bob)
        # It goes on past the silence limit while the recorder lives
        await asyncio.sleep(SILENT_SECONDS + 2)
        assert alice.frames["call.ended"].empty() and bob.frames["call.ended"].empty()

        # When the recorder's process is killed (it can say nothing), the call ends
        # `recording_lost` for both: it does not go on unrecorded
        os.kill(_recorder_pid(call_id), signal.SIGKILL)
        ended = await asyncio.wait_for(alice.frames["call.ended"].get(), SILENT_SECONDS + WAIT)
        assert ended["reason"] == "recording_lost"
        assert (await bob.expect("call.ended"))["reason"] == "recording_lost"
        call = in_tenant(org, Call.objects.get, pk=call_id)
        assert (call.outcome, call.end_reason) == ("failed", "recording_lost")
    finally:
        await asyncio.gather(alice.close(), bob.close())
    assert "recorder silent: call ended" in recording_deployment.worker_log.read_text()


def _recorder_pid(call_id: str) -> int:
    """The process of `python -m calls.recorder <schema> <call_id>`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"calls.recorder" in argv and call_id.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no recorder process for {call_id}")
