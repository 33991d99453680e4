"""Compliance recording of 1:1 calls, without breaking end-to-end encryption.

Where the org's policy covers the caller or the callee (calls.services.recording_policy),
the org's recorder is a visible third participant: every client connects a leg of its
own (a separate peer connection carrying its own audio) to the recorder, which runs in the
worker with aiortc (calls.recorder). The server never decrypts media it was not sent, as
a participant, on such a leg.

Order of events (docs/protocol.md, "Compliance recording"):
1. `call.invite`: the caller's socket hears `call.recording` before `call.invited`; each
   callee device hears `call.recording` before `call.incoming`. The worker starts the
   recorder for the call.
2. Each party's device sends `call.recording.offer` (its SDP offer for the leg, with its
   candidates); the recorder answers with `call.recording.answer`; once the leg's media
   connects, the device hears `call.recording.connected`.
3. The callee's `call.accept` is held (its answer, as a key-ring token on the recording
   row) until the caller's leg and the answering device's leg are both connected; then
   the caller gets `call.accept` and the recorder starts keeping audio. Without the
   answer no media flows between the parties, so nothing is said unrecorded.
4. A party that does not connect its leg within `CALL_RECORDING_CONNECT_SECONDS` (the
   caller's from the invite, the callee's from the accept) ends the call: `call.ended`
   reason `recording_refused` (outcome `failed`), or `recorder_unavailable` when the
   recorder itself never came up (it reports itself ready once it reads its channel and
   the database: `do_recorder_ready`). A lost deadline timer is made up by beat's sweep
   (`sweep`).
5. A recorded leg the recorder loses mid-call (`do_leg_lost`): its device hears
   `call.recording.lost` and offers a new leg; unless that connects within
   `CALL_RECORDING_LOST_GRACE_SECONDS` the call ends `recording_lost` (outcome `failed`):
   a call the policy records does not go on unrecorded. The audio keeps its place (the
   gap is silence). A recorder that dies cannot say so: it marks itself alive every
   quarter of `CALL_RECORDER_SILENT_SECONDS` (`do_recorder_heartbeat`), and a call whose
   recorder fell silent that long, and is still silent two heartbeats later, ends
   `recording_lost` too (`do_recorder_watchdog`).
6. When the call ends the recorder stops, stores the audio encrypted
   (calls.services.recording_store) and the transcription job is queued.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from calls.error_codes import CallError
from calls.models import Call, CallParticipant, Recording, RecordingLeg
from calls.services import recording_policy, recording_store
from orgs.accounts.models import User
from siphera import crypto
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit
from siphera.redis_outage import REDIS_ERRORS
from siphera.tenancy import group_name

log = logging.getLogger("siphera.recordings")

REFUSED = "recording_refused"  # a party's leg did not connect to a recorder that was up
UNAVAILABLE = CallError.RECORDER_UNAVAILABLE.value  # the recorder never came up
LOST = "recording_lost"  # a recorded leg dropped mid-call and did not come back in time
# A recording whose call ended this long ago and that the recorder has not stored: the
# recorder died with it (the sweep marks it failed rather than leave it "recording").
STORE_WITHIN_SECONDS = 30 * 60
RECORDER = {"id": "recorder", "name": "Compliance recorder"}


def recorder_channel(call_id, schema: str | None = None) -> str:
    """The channel-layer channel the call's recorder reads (a queue: what is sent before
    the recorder is up waits for it, up to the layer's expiry)."""
    return group_name(schema or connection.schema_name, "rec", uuid.UUID(str(call_id)))


def _send_to_recorder(call_id, message: dict) -> None:
    channel = recorder_channel(call_id)
    try:
        async_to_sync(get_channel_layer().send)(channel, message)
    except REDIS_ERRORS:
        log.warning("recorder message not sent", extra={"call_id": str(call_id)}, exc_info=True)


def _to_recorder_on_commit(call_id, message: dict) -> None:
    transaction.on_commit(lambda: _send_to_recorder(call_id, message))


def notice(call: Call) -> dict:
    """The `call.recording` frame: who records, and by how long a leg must connect."""
    return {
        "type": "call.recording",
        "call_id": str(call.pk),
        "required": True,
        "recorder": RECORDER,
        "connect_within": settings.CALL_RECORDING_CONNECT_SECONDS,
    }


def _device_group(user_id, device_id) -> str:
    return group_name(connection.schema_name, "d", uuid.UUID(str(user_id)), device_id)


def _frame_event(frame: dict) -> dict:
    return {"type": "call.frame", "frame": frame}


# --- invite and accept (called by calls.services.signaling, inside its transactions) ---


def on_invite(call: Call, caller: User, callee: User, callee_group: str) -> dict | None:
    """A new ringing call: if policy requires recording, make its recording row, tell
    the callee's devices (`call.recording`, before their `call.incoming`), start the
    recorder and the caller's deadline. Returns the caller's `call.recording` frame."""
    if not recording_policy.recording_required(caller, callee):
        return None
    Recording.objects.create(call=call)
    frame = notice(call)
    notify_on_commit(callee_group, _frame_event(frame))
    _schedule("start_recorder", str(call.pk))
    _schedule(
        "recording_deadline",
        str(call.pk),
        "caller",
        countdown=settings.CALL_RECORDING_CONNECT_SECONDS,
    )
    return frame


def recording_of(call: Call) -> Recording | None:
    return Recording.objects.filter(call=call).first()


def hold_accept(call: Call, frame: dict) -> bool:
    """The callee answered a recorded call (call locked, now active): keep its
    `call.accept` for the caller until every leg is connected. True if held."""
    rec = Recording.objects.select_for_update().filter(call=call).first()
    if rec is None:
        return False
    rec.held_accept_encrypted = crypto.encrypt(json.dumps(frame))
    rec.save(update_fields=["held_accept_encrypted"])
    _schedule(
        "recording_deadline",
        str(call.pk),
        "answer",
        countdown=settings.CALL_RECORDING_CONNECT_SECONDS,
    )
    _release_if_ready(call, rec)
    return True


def _legs_connected(call: Call, rec: Recording) -> bool:
    callee = CallParticipant.objects.get(call=call, role=CallParticipant.CALLEE)
    wanted = {(call.caller_id, call.caller_device_id), (callee.user_id, callee.device_id)}
    connected = set(
        RecordingLeg.objects.filter(recording=rec, connected_at__isnull=False).values_list(
            "user_id", "device_id"
        )
    )
    return wanted <= connected


def _release_if_ready(call: Call, rec: Recording) -> bool:
    """Hand the held answer to the caller once both parties' legs are connected, and
    start the recording (call and recording rows locked)."""
    if not rec.held_accept_encrypted or call.state != Call.ACTIVE:
        return False
    if not _legs_connected(call, rec):
        return False
    frame = json.loads(crypto.decrypt(rec.held_accept_encrypted))
    notify_on_commit(_device_group(call.caller_id, call.caller_device_id), _frame_event(frame))
    callee = CallParticipant.objects.get(call=call, role=CallParticipant.CALLEE)
    rec.held_accept_encrypted = ""
    rec.state = Recording.RECORDING
    rec.started_at = timezone.now()
    rec.save(update_fields=["held_accept_encrypted", "state", "started_at"])
    _schedule("recorder_watchdog", str(call.pk), countdown=settings.CALL_RECORDER_SILENT_SECONDS)
    _to_recorder_on_commit(
        call.pk,
        {
            "type": "recorder.start",
            "legs": [
                [str(call.caller_id), call.caller_device_id],
                [str(callee.user_id), callee.device_id],
            ],
        },
    )
    return True


def on_finished(call: Call) -> None:
    """The call ended (row locked): the recorder stops; a recording that never started
    is `empty`."""
    rec = Recording.objects.select_for_update().filter(call=call).first()
    if rec is None or rec.ended_at is not None:
        return
    rec.ended_at = timezone.now()
    rec.held_accept_encrypted = ""
    if rec.state == Recording.PENDING:
        rec.state = Recording.EMPTY
    rec.save(update_fields=["ended_at", "held_accept_encrypted", "state"])
    _to_recorder_on_commit(call.pk, {"type": "recorder.stop"})


# --- legs -------------------------------------------------------------------------------


@dataclass
class LegOffer:
    channel: str
    message: dict


def check_recording_offer(*, user: User, device_id: int, call_id, sdp) -> LegOffer:
    """A party's device offers its leg to the recorder. Returns what to send to the
    recorder's channel (the socket sends it). The caller's calling device, a callee
    device while the call rings, or the answering device may offer; 404 otherwise (and
    for a call without recording), 410 once the call ended."""
    from calls.services.signaling import _call_id, _sdp

    sdp = _sdp(sdp)
    call = Call.objects.filter(pk=_call_id(call_id), kind=Call.DIRECT).first()
    if call is None:
        raise not_found("No such call.")
    me = CallParticipant.objects.filter(call=call, user=user).first()
    rec = recording_of(call)
    if me is None or rec is None:
        raise not_found("No such call.")
    if call.state == Call.ENDED:
        raise ApiError(410, CallError.CALL_ENDED, "The call has ended.")
    if me.role == CallParticipant.CALLER:
        allowed = device_id == call.caller_device_id
    else:
        allowed = call.state == Call.RINGING or me.device_id == device_id
    if not allowed:
        raise not_found("No such call.")
    RecordingLeg.objects.update_or_create(
        recording=rec,
        user=user,
        device_id=device_id,
        defaults={"offered_at": timezone.now(), "connected_at": None},
    )
    return LegOffer(
        recorder_channel(call.pk),
        {
            "type": "recorder.offer",
            "user_id": str(user.pk),
            "device_id": device_id,
            "sdp": sdp,
        },
    )


def do_leg_connected(call_id, user_id, device_id: int) -> bool:
    """The recorder reports a leg's media connected: the device hears
    `call.recording.connected`, and a held answer goes out if this was the last leg."""
    from calls.services.signaling import _lock_call

    with transaction.atomic():
        try:
            call, _ = _lock_call(call_id)
        except ApiError:
            return False
        rec = Recording.objects.select_for_update().filter(call=call).first()
        if rec is None or call.state == Call.ENDED:
            return False
        updated = RecordingLeg.objects.filter(
            recording=rec, user_id=user_id, device_id=device_id
        ).update(connected_at=timezone.now(), lost_at=None)
        if not updated:
            return False
        notify_on_commit(
            _device_group(user_id, device_id),
            _frame_event(
                {"type": "call.recording.connected", "call_id": str(call.pk), "recorder": RECORDER}
            ),
        )
        _release_if_ready(call, rec)
    return True


def do_recorder_ready(call_id) -> bool:
    """The call's recorder is up (it read its own channel and reached the database).
    Returns whether the call is still live (the recorder exits otherwise)."""
    now = timezone.now()
    Recording.objects.filter(call_id=call_id, recorder_ready_at__isnull=True).update(
        recorder_ready_at=now
    )
    return do_recorder_heartbeat(call_id)


def do_recorder_heartbeat(call_id) -> bool:
    """The call's recorder is alive (it says so every quarter of
    CALL_RECORDER_SILENT_SECONDS). Returns whether the call is still live."""
    Recording.objects.filter(call_id=call_id).update(recorder_seen_at=timezone.now())
    return Call.objects.filter(pk=call_id).exclude(state=Call.ENDED).exists()


def recorder_heartbeat_seconds() -> float:
    """How often the recorder says it is alive: a quarter of CALL_RECORDER_SILENT_SECONDS."""
    return max(1.0, settings.CALL_RECORDER_SILENT_SECONDS / 4)


def _recorder_silent(rec: Recording, now) -> bool:
    """The recorder came up but has not said it is alive for CALL_RECORDER_SILENT_SECONDS
    (its process died, or its host went away)."""
    silent = timedelta(seconds=settings.CALL_RECORDER_SILENT_SECONDS)
    return rec.recorder_seen_at is not None and rec.recorder_seen_at < now - silent


def do_recorder_watchdog(call_id, silent_since: str = "") -> bool:
    """While the call is recorded (calls.tasks.recorder_watchdog): is its recorder alive?
    If so this runs again when it would next be silent. A recorder found silent gets one
    more look two heartbeats later (its beats may have failed only while the database was
    away, and resume when it is back), with `silent_since` its last beat as this run saw it
    (ISO 8601): if it has still not been heard from since, the call ends `recording_lost`
    (outcome `failed`). True if it ended."""
    from calls.services.signaling import _finish, _lock_call

    with transaction.atomic():
        try:
            call, parts = _lock_call(call_id)
        except ApiError:
            return False
        rec = Recording.objects.filter(call=call).first()
        if rec is None or call.state != Call.ACTIVE or rec.state != Recording.RECORDING:
            return False
        now = timezone.now()
        if not _recorder_silent(rec, now):
            due = (rec.recorder_seen_at or now) - now
            due += timedelta(seconds=settings.CALL_RECORDER_SILENT_SECONDS)
            _schedule("recorder_watchdog", str(call.pk), countdown=max(1.0, due.total_seconds()))
            return False
        last_beat = rec.recorder_seen_at.isoformat()
        if silent_since != last_beat:
            countdown = 2 * recorder_heartbeat_seconds()
            _schedule("recorder_watchdog", str(call.pk), last_beat, countdown=countdown)
            return False
        _finish(call, Call.FAILED, LOST, parts=parts)
    log.warning("recorder silent: call ended", extra={"call_id": str(call_id)})
    return True


def do_leg_lost(call_id, user_id, device_id: int) -> bool:
    """The recorder lost a recorded leg's media while the call is recorded: the device
    hears `call.recording.lost` (offer a new leg) and the call ends `recording_lost`
    unless the leg connects again within CALL_RECORDING_LOST_GRACE_SECONDS. True if the
    leg was counted as lost (the call is live and the leg was connected)."""
    from calls.services.signaling import _lock_call

    with transaction.atomic():
        try:
            call, _ = _lock_call(call_id)
        except ApiError:
            return False
        rec = Recording.objects.select_for_update().filter(call=call).first()
        if rec is None or call.state != Call.ACTIVE or rec.state != Recording.RECORDING:
            return False
        now = timezone.now()
        lost = RecordingLeg.objects.filter(
            recording=rec, user_id=user_id, device_id=device_id, connected_at__isnull=False
        ).update(connected_at=None, lost_at=now)
        if not lost:
            return False
        grace = settings.CALL_RECORDING_LOST_GRACE_SECONDS
        notify_on_commit(
            _device_group(user_id, device_id),
            _frame_event(
                {
                    "type": "call.recording.lost",
                    "call_id": str(call.pk),
                    "recorder": RECORDER,
                    "reconnect_within": grace,
                }
            ),
        )
        since = now.isoformat()
        _schedule("recording_lost", str(call.pk), str(user_id), device_id, since, countdown=grace)
    log.info("recorder leg lost", extra={"call_id": str(call_id)})
    return True


def do_recording_lost(call_id, user_id, device_id: int, since: str) -> bool:
    """The grace of a leg lost at `since` (ISO 8601) is over: the call ends
    `recording_lost` if that leg has not connected again since. True if so."""
    from calls.services.signaling import _finish, _lock_call

    with transaction.atomic():
        try:
            call, parts = _lock_call(call_id)
        except ApiError:
            return False
        if call.state == Call.ENDED:
            return False
        leg = RecordingLeg.objects.filter(
            recording__call=call, user_id=user_id, device_id=device_id
        ).first()
        if (
            leg is None
            or leg.connected_at is not None
            or leg.lost_at is None
            or leg.lost_at.isoformat() != since
        ):
            return False
        _finish(call, Call.FAILED, LOST, parts=parts)
        return True


def do_recording_deadline(call_id, stage: str) -> str:
    """The connect deadline of a party's leg (`caller`: from the invite; `answer`: from the
    accept). Ends the call if that leg is still missing: `recording_refused` when the
    recorder was up (the client did not connect), `recorder_unavailable` when it never
    came up. Returns the reason it ended with, or "" when it did not."""
    from calls.services.signaling import _finish, _lock_call

    with transaction.atomic():
        try:
            call, parts = _lock_call(call_id)
        except ApiError:
            return ""
        rec = Recording.objects.select_for_update().filter(call=call).first()
        if rec is None or call.state == Call.ENDED:
            return ""
        if stage == "caller":
            missing = not RecordingLeg.objects.filter(
                recording=rec,
                user_id=call.caller_id,
                device_id=call.caller_device_id,
                connected_at__isnull=False,
            ).exists()
        else:
            missing = bool(rec.held_accept_encrypted)
        if not missing:
            return ""
        up = rec.recorder_ready_at is not None and not _recorder_silent(rec, timezone.now())
        reason = REFUSED if up else UNAVAILABLE
        _finish(call, Call.FAILED, reason, parts=parts)
        log.info("recording deadline", extra={"call_id": str(call.pk), "reason": reason})
        return reason


def sweep(now) -> int:
    """What lost timers left (beat's call sweep, calls.services.signaling.do_sweep): live
    recorded calls past a leg's connect deadline or a lost leg's grace end as
    `do_recording_deadline` / `do_recording_lost` would have ended them, and those whose
    recorder is silent get the watchdog's second look (`do_recorder_watchdog`); recordings
    whose call ended STORE_WITHIN_SECONDS ago and that were never stored are marked
    failed. Returns how many calls ended."""
    late = now - timedelta(seconds=settings.CALL_RECORDING_CONNECT_SECONDS + 5)
    live = Recording.objects.filter(call__kind=Call.DIRECT).exclude(call__state=Call.ENDED)
    ended = 0
    # Not recording yet: a leg may be missing (once recording, both legs were connected).
    waiting = live.filter(state=Recording.PENDING, call__created_at__lt=late)
    for call_id in waiting.values_list("call_id", flat=True):
        ended += bool(do_recording_deadline(call_id, "caller"))
    held = live.exclude(held_accept_encrypted="").filter(call__answered_at__lt=late)
    for call_id in held.values_list("call_id", flat=True):
        ended += bool(do_recording_deadline(call_id, "answer"))
    silent = now - timedelta(seconds=settings.CALL_RECORDER_SILENT_SECONDS + 5)
    quiet = live.filter(
        state=Recording.RECORDING, call__state=Call.ACTIVE, recorder_seen_at__lt=silent
    )
    for call_id in quiet.values_list("call_id", flat=True):
        ended += do_recorder_watchdog(call_id)
    gone = now - timedelta(seconds=settings.CALL_RECORDING_LOST_GRACE_SECONDS + 5)
    for leg in RecordingLeg.objects.filter(
        lost_at__lt=gone, connected_at__isnull=True, recording__call__state=Call.ACTIVE
    ).select_related("recording"):
        ended += do_recording_lost(
            leg.recording.call_id, leg.user_id, leg.device_id, leg.lost_at.isoformat()
        )
    lost = Recording.objects.filter(
        state=Recording.RECORDING,
        ended_at__lt=now - timedelta(seconds=STORE_WITHIN_SECONDS),
    ).update(state=Recording.FAILED)
    if lost:
        log.warning("recordings never stored", extra={"count": lost})
    return ended


# --- the stored audio -------------------------------------------------------------------


def do_store_recording(recording_id, *, duration_ms: int, pieces) -> Recording:
    """Encrypt and store the recording's WAV (`pieces`, plaintext bytes), mark it stored
    and queue its transcription. Raises (and marks it failed) if the store fails."""
    rec = Recording.objects.get(pk=recording_id)
    key, wrapped = recording_store.new_data_key()
    try:
        name, size = recording_store.write_encrypted(rec.pk, key, pieces)
    except Exception:
        Recording.objects.filter(pk=rec.pk).update(state=Recording.FAILED)
        log.exception("recording not stored", extra={"recording": str(rec.pk)})
        raise
    with transaction.atomic():
        rec = Recording.objects.select_for_update().get(pk=rec.pk)
        rec.state = Recording.STORED
        rec.storage_name, rec.size, rec.data_key_encrypted = name, size, wrapped
        rec.duration_ms = duration_ms
        rec.transcript_state = Recording.T_QUEUED
        rec.save(
            update_fields=[
                "state",
                "storage_name",
                "size",
                "data_key_encrypted",
                "duration_ms",
                "transcript_state",
            ]
        )
        _schedule("transcribe_recording", str(rec.pk))
    log.info(
        "recording stored",
        extra={"recording": str(rec.pk), "duration_ms": duration_ms, "size": size},
    )
    return rec


def _schedule(task_name: str, *args, countdown: float | None = None) -> None:
    from calls import tasks
    from siphera.tenancy import send_task

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: send_task(task, *args, countdown=countdown))
