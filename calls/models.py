"""Call records (tenant schema): one row per call, one per person in it.

A record holds metadata only: who called whom, from and on which devices, the media, when
it rang, was answered and ended, and how it ended. SDP, ICE candidates and media never
touch the database (they are relayed untouched, and media is end to end).

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
