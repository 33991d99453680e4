"""Call records (tenant schema): one row per call, one per person in it.

A record holds metadata only: who called whom, from and on which devices, the media, when
it rang, was answered and ended, and how it ended. SDP and ICE candidates are relayed
untouched and media is end to end; none of it is kept, with one exception: the callee's
answer to a call the org records is held, encrypted with the key ring, on its Recording
row until both recorder legs connect (then it is sent and cleared; it is cleared too when
the call ends). Compliance recordings (Recording) are the audio the parties' devices sent
the org's recorder, encrypted at rest.

The same rows are the live state of a 1:1 call while it rings and runs: `state` moves
ringing -> active -> ended under a row lock (calls.services.signaling), so every web
process sees one truth and a restart loses nothing.
"""

import uuid

from django.db import models

from orgs.accounts.models import User


class Call(models.Model):
    DIRECT = "direct"  # 1:1, signaled over /ws/v1, media peer to peer (DTLS-SRTP)
    GROUP = "group"  # a room on the SFU (LiveKit), clients encrypt frames end to end
    KINDS = [(DIRECT, "direct"), (GROUP, "group")]

    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"
    STATES = [(RINGING, "ringing"), (ACTIVE, "active"), (ENDED, "ended")]

    # Outcomes of an ended call.
    COMPLETED = "completed"  # answered, then hung up
    MISSED = "missed"  # not answered: timed out, cancelled by the caller, or do-not-disturb
    REJECTED = "rejected"
    BUSY = "busy"
    FAILED = "failed"  # a party's connection was lost past the grace period
    GLARE = "glare"  # superseded by the callee's own call to the caller
    OUTCOMES = [
        (COMPLETED, "completed"),
        (MISSED, "missed"),
        (REJECTED, "rejected"),
        (BUSY, "busy"),
        (FAILED, "failed"),
        (GLARE, "glare"),
    ]

    # The client's call_id for 1:1 calls (so a retried invite is recognised).
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=10, choices=KINDS, default=DIRECT)
    media = models.CharField(max_length=10)  # "audio" | "video"
    state = models.CharField(max_length=10, choices=STATES, default=RINGING)
    outcome = models.CharField(max_length=12, choices=OUTCOMES, blank=True)
    # Why it ended, as the `call.ended` frame said (hangup, rejected, busy, timeout, ...).
    end_reason = models.CharField(max_length=20, blank=True)
    caller = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    caller_device_id = models.PositiveIntegerField(null=True)
    conversation = models.ForeignKey(
        "messaging.Conversation", on_delete=models.SET_NULL, null=True, related_name="+"
    )
    # Group calls: the SFU room's name (carries the org's schema, rooms are shared).
    room = models.CharField(max_length=200, null=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    answered_at = models.DateTimeField(null=True)
    ended_at = models.DateTimeField(null=True)
    # A call that must never be refused for do-not-disturb or busy (E911, later).
    emergency = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state"], condition=~models.Q(state="ended"), name="call_live")
        ]

    @property
    def duration_seconds(self) -> int | None:
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0, round((self.ended_at - self.answered_at).total_seconds()))


class CallParticipant(models.Model):
    """A person in a call: the caller, a callee, or a group-call participant."""

    CALLER = "caller"
    CALLEE = "callee"
    MEMBER = "member"  # group calls
    ROLES = [(CALLER, "caller"), (CALLEE, "callee"), (MEMBER, "member")]

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(max_length=10, choices=ROLES)
    # The device in the call: the caller's, the callee's answering one, a group joiner's.
    device_id = models.PositiveIntegerField(null=True)
    joined_at = models.DateTimeField(null=True)
    left_at = models.DateTimeField(null=True)
    # Set while the device's socket is gone during a live call; a reconnect within the
    # grace period clears it (calls.services.signaling).
    disconnected_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["call", "user"], name="call_participant_once")
        ]
        indexes = [
            models.Index(fields=["user", "call"]),
            # A socket's connect asks whether its device dropped out of a call.
            models.Index(
                fields=["user", "device_id"],
                condition=models.Q(disconnected_at__isnull=False),
                name="call_participant_away",
            ),
        ]


class RoomSession(models.Model):
    """One connection of a device to a group call's SFU room, as LiveKit's webhooks report
    it (calls.services.room_events).

    Keyed by LiveKit's participant sid, which names one connection and is never reused:
    a redelivered or late webhook finds its row, so applying events is idempotent and
    does not depend on their order. A user's CallParticipant row is derived from their
    sessions (first join; left once no device is still in the room).
    """

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="room_sessions")
    sid = models.CharField(max_length=100)  # LiveKit's participant sid ("PA_...")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    device_id = models.PositiveIntegerField()
    joined_at = models.DateTimeField()
    left_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["call", "sid"], name="room_session_once")]
        indexes = [models.Index(fields=["call", "user"], name="room_session_user")]


class RecordingPolicy(models.Model):
    """The org's compliance-recording policy (one row, pk=1; calls.services.recording_policy).

    Off by default. A 1:1 call is recorded when its caller or callee is covered: everyone
    (`everyone`), a role named in `roles`, or a user listed in `user_ids`.
    """

    everyone = models.BooleanField(default=False)
    roles = models.JSONField(default=list)  # role names (built-in or custom slugs)
    user_ids = models.JSONField(default=list)  # user ids as strings
    updated_at = models.DateTimeField(auto_now=True)


class Recording(models.Model):
    """A compliance recording of a 1:1 call, made by the org's recorder: a visible
    participant every client connects a leg to (calls.services.recording, calls.recorder).

    The audio is a 16 kHz stereo WAV (left: the caller, right: the callee) stored as a blob
    in the `attachments` storage, encrypted with a random data key per recording (Fernet
    over chunks); the data key is wrapped with the server's key ring
    (`data_key_encrypted`, registered with siphera.encrypted_at_rest), so a key rotation
    re-wraps a short token and never rewrites the blob. The transcript is a key-ring token
    too (`transcript_encrypted`).
    """

    PENDING = "pending"  # the call rings or connects; legs are being set up
    RECORDING = "recording"  # every leg is connected and the call is answered
    STORED = "stored"  # the blob is written
    FAILED = "failed"  # the recorder could not store anything
    EMPTY = "empty"  # the call was never answered with every leg: nothing recorded
    STATES = [
        (PENDING, "pending"),
        (RECORDING, "recording"),
        (STORED, "stored"),
        (FAILED, "failed"),
        (EMPTY, "empty"),
    ]

    T_NONE, T_QUEUED, T_RUNNING, T_DONE, T_FAILED = "", "queued", "running", "done", "failed"
    TRANSCRIPT_STATES = [
        (T_NONE, "none"),
        (T_QUEUED, "queued"),
        (T_RUNNING, "running"),
        (T_DONE, "done"),
        (T_FAILED, "failed"),
    ]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.OneToOneField(Call, on_delete=models.CASCADE, related_name="recording")
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The callee's answer, held (key-ring token) until every leg is connected: the caller
    # hears `call.accept` only then, so no media flows unrecorded. Cleared when released.
    held_accept_encrypted = models.TextField(blank=True)
    # The recorder process reported itself up (it reached its channel-layer channel and
    # the database): a leg missing at its deadline is then the client's refusal
    # (`recording_refused`), before it the recorder's fault (`recorder_unavailable`).
    recorder_ready_at = models.DateTimeField(null=True)
    # The recorder's last sign of life (set when ready, then every quarter of
    # CALL_RECORDER_SILENT_SECONDS): a recorded call whose recorder fell silent ends.
    recorder_seen_at = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)  # media recorded from here
    ended_at = models.DateTimeField(null=True)
    duration_ms = models.PositiveBigIntegerField(null=True)
    storage_name = models.CharField(max_length=300, blank=True)
    size = models.PositiveBigIntegerField(null=True)  # bytes stored (ciphertext)
    data_key_encrypted = models.TextField(blank=True)
    transcript_state = models.CharField(
        max_length=10, choices=TRANSCRIPT_STATES, default=T_NONE, blank=True
    )
    transcript_engine = models.CharField(max_length=40, blank=True)
    transcript_encrypted = models.TextField(blank=True)
    transcript_error = models.CharField(max_length=200, blank=True)
    transcribed_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["-created_at"]


class RecordingLeg(models.Model):
    """One device's leg to the recorder: the caller's device, and each callee device that
    offered one (the answering device's leg is the one recorded)."""

    recording = models.ForeignKey(Recording, on_delete=models.CASCADE, related_name="legs")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    device_id = models.PositiveIntegerField()
    offered_at = models.DateTimeField()
    connected_at = models.DateTimeField(null=True)
    # The recorder lost the leg's media mid-call (cleared when it connects again): the
    # call ends `recording_lost` unless it does within CALL_RECORDING_LOST_GRACE_SECONDS.
    lost_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["recording", "user", "device_id"], name="recording_leg_once"
            )
        ]
