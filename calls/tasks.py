"""Celery tasks of calls: the timers of 1:1 calls and beat's sweep (thin wrappers around
calls.services.signaling). Each timer task runs in the call's org schema (sent with
siphera.tenancy.send_task) and is idempotent: it acts only if the call is still where the
timer left it, so a redelivered or late task changes nothing."""

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError, connection

from calls.services import records, signaling
from orgs.services import audit
from orgs.tasks import for_each_org

log = logging.getLogger("siphera.tasks")


@shared_task(name="calls.tasks.ring_timeout")
def ring_timeout(call_id: str, due: str) -> bool:
    ended = signaling.do_ring_timeout(call_id, due)
    if ended:
        log.info("call.missed", extra={"call_id": call_id, "reason": "timeout"})
    return ended


@shared_task(name="calls.tasks.reconnect_grace_expired")
def reconnect_grace_expired(call_id: str, user_id: str, since: str) -> bool:
    ended = signaling.do_reconnect_grace_expired(call_id, user_id, since)
    if ended:
        log.info("call.failed", extra={"call_id": call_id, "reason": "connection_lost"})
    return ended


@shared_task(name="calls.tasks.dispatch_sweep_calls")
def dispatch_sweep_calls() -> int:
    return for_each_org(sweep_calls)


@shared_task(name="calls.tasks.sweep_calls")
def sweep_calls() -> dict:
    ended = signaling.do_sweep()
    if ended:
        log.info("calls swept", extra={"schema": connection.schema_name, "ended": ended})
    return {"schema": connection.schema_name, "ended": ended}


@shared_task(name="calls.tasks.dispatch_purge_call_records")
def dispatch_purge_call_records() -> int:
    return for_each_org(purge_call_records)


@shared_task(name="calls.tasks.purge_call_records")
def purge_call_records() -> dict:
    """Delete this org's call records past its retention (held users' and conversations'
    are kept)."""
    deleted = records.do_purge_call_records(actor=audit.Actor.system("job:retention"))
    log.info("call records purged", extra={"schema": connection.schema_name, "deleted": deleted})
    return {"schema": connection.schema_name, "deleted": deleted}


# --- compliance recording and transcription (calls.services.recording, .transcription) --

_recorders: list = []  # recorder processes this worker started (reaped as they exit)


@shared_task(name="calls.tasks.start_recorder")
def start_recorder(call_id: str) -> int:
    """Start the call's recorder (`python -m calls.recorder`, aiortc) beside the worker:
    it lives as long as the call, independent of this task. Its log lines go to the
    worker's log. Returns its process id. Not retried: a recorder started late would miss
    the call's connect window, whose deadline ends the call `recorder_unavailable`."""
    import subprocess
    import sys

    _recorders[:] = [p for p in _recorders if p.poll() is None]
    proc = subprocess.Popen(  # noqa: S603 (our own module, fixed arguments)
        [sys.executable, "-m", "calls.recorder", connection.schema_name, str(call_id)],
        start_new_session=True,
    )
    _recorders.append(proc)
    log.info("recorder started", extra={"call_id": call_id, "pid": proc.pid})
    return proc.pid


# PostgreSQL unreachable (down, restarting, out of connections): the job is tried again
# later rather than lost. Each job is idempotent.
_DATABASE_GONE = (OperationalError, InterfaceError)
# A recording timer with the database gone: tried again, 2 s doubling, at most a minute apart.
_TIMER_RETRIES = {
    "autoretry_for": _DATABASE_GONE,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "max_retries": 10,
}


@shared_task(name="calls.tasks.recording_deadline", **_TIMER_RETRIES)
def recording_deadline(call_id: str, stage: str) -> str:
    """A recorder leg's connect deadline (calls.services.recording.do_recording_deadline);
    with the database gone it is retried (2 s doubling, at most a minute apart), and
    beat's sweep ends what a lost one leaves."""
    from calls.services import recording

    reason = recording.do_recording_deadline(call_id, stage)
    if reason:
        log.info("call.failed", extra={"call_id": call_id, "reason": reason})
    return reason


@shared_task(name="calls.tasks.recording_lost", **_TIMER_RETRIES)
def recording_lost(call_id: str, user_id: str, device_id: int, since: str) -> bool:
    """A lost recorder leg's grace is over (calls.services.recording.do_recording_lost)."""
    from calls.services import recording

    ended = recording.do_recording_lost(call_id, user_id, device_id, since)
    if ended:
        log.info("call.failed", extra={"call_id": call_id, "reason": recording.LOST})
    return ended


@shared_task(name="calls.tasks.recorder_watchdog", **_TIMER_RETRIES)
def recorder_watchdog(call_id: str, silent_since: str = "") -> bool:
    """Is the recorded call's recorder still alive? (calls.services.recording.
    do_recorder_watchdog: it ends the call if still silent at a second look, else comes
    back later.)"""
    from calls.services import recording

    ended = recording.do_recorder_watchdog(call_id, silent_since)
    if ended:
        log.info("call.failed", extra={"call_id": call_id, "reason": recording.LOST})
    return ended


@shared_task(
    name="calls.tasks.transcribe_recording",
    autoretry_for=_DATABASE_GONE,
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=False,
    max_retries=10,
)
def transcribe_recording(recording_id: str) -> str:
    """Transcribe a stored recording with the configured engine; progress in the log.
    With the database gone it is retried (5 s doubling, at most 10 min apart, 10 tries;
    about an hour in all); a recording that cannot be transcribed is marked failed."""
    from calls.services import transcription

    def progress(done: float, total: float) -> None:
        log.info(
            "transcription progress",
            extra={"recording": recording_id, "percent": round(100 * done / max(total, 1e-9))},
        )

    return transcription.do_transcribe(recording_id, progress=progress)
