"""Retention policy, legal holds, and the purge of messages past retention.

Guarantees:
- A message is deleted (history row, every device's queue row, and attachments no other
  message references) only once it is older than its conversation's effective retention:
  the conversation's own `retention_days` if set, else the org's policy, else
  `RETENTION_DEFAULT_DAYS`. Until then it stays queued for devices that have not yet
  acknowledged it (DESIGN invariant 3).
- An active legal hold keeps everything it covers: a held conversation entirely; for a
  held user, every message they sent, every message queued for one of their devices, and
  every message of a conversation sent while they were a member (current members from
  their join time; former members up to the event that removed them, conservatively from
  the conversation's start).
- Revoking a device deletes its queue except the entries whose message a hold covers:
  their envelopes are kept, never delivered, and purged once no hold covers them.
- Placing a hold and a purge batch are serialised by one per-org advisory lock, so a batch
  never deletes what a hold committed before it covers.
- Policy changes, conversation overrides, holds placed and released, and every purge run
  are audited in the same transaction as the change.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    DateTimeField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    OuterRef,
    Q,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from messaging.error_codes import MessagingError
from messaging.models import (
    Conversation,
    LegalHold,
    Member,
    Message,
    MessageAttachment,
    MessagingPolicy,
    QueuedMessage,
)
from messaging.services import attachments
from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.roles import Perm, has_perm
from orgs.services import audit
from siphera.api_errors import ApiError, not_found
from siphera.params import after_row

log = logging.getLogger("siphera.retention")

MIN_DAYS = 1
MAX_DAYS = 36500  # 100 years: "keep" without a special value
# With hashtext(schema): one advisory lock per org shared by hold changes and purge batches.
_HOLD_LOCK_NAMESPACE = 0x5E1B
_LEFT_ACTIONS = ["member.left", "member.removed"]


# --- policy -----------------------------------------------------------------------------


def get_policy() -> MessagingPolicy:
    """The current org's messaging policy row (created with defaults on first use)."""
    policy, _ = MessagingPolicy.objects.get_or_create(pk=1)
    return policy


def org_retention_days(policy: MessagingPolicy | None = None) -> int:
    policy = policy or get_policy()
    return policy.retention_days or settings.RETENTION_DEFAULT_DAYS


def attachment_max_bytes(policy: MessagingPolicy | None = None) -> int:
    policy = policy or get_policy()
    return policy.attachment_max_bytes or settings.ATTACHMENT_MAX_BYTES


def device_queue_max(policy: MessagingPolicy | None = None) -> int:
    policy = policy or get_policy()
    return policy.device_queue_max or settings.DEVICE_QUEUE_MAX


def attachment_storage_quota_bytes(policy: MessagingPolicy | None = None) -> int:
    policy = policy or get_policy()
    return policy.attachment_storage_quota_bytes or settings.ATTACHMENT_STORAGE_QUOTA_BYTES


def unsent_upload_quota_bytes(policy: MessagingPolicy | None = None) -> int:
    policy = policy or get_policy()
    return policy.unsent_upload_quota_bytes or settings.UNSENT_UPLOAD_QUOTA_BYTES


MAX_QUEUE_CAP = 1_000_000
MAX_QUOTA_BYTES = 2**62

# Each policy field: (its effective value, its platform default, its [min, max]).
_POLICY_FIELDS: dict[str, tuple[Callable, Callable[[], int], Callable[[], list[int]]]] = {
    "retention_days": (
        org_retention_days,
        lambda: settings.RETENTION_DEFAULT_DAYS,
        lambda: [MIN_DAYS, MAX_DAYS],
    ),
    "attachment_max_bytes": (
        attachment_max_bytes,
        lambda: settings.ATTACHMENT_MAX_BYTES,
        lambda: [1, settings.ATTACHMENT_MAX_BYTES_CEILING],
    ),
    "device_queue_max": (
        device_queue_max,
        lambda: settings.DEVICE_QUEUE_MAX,
        lambda: [1, MAX_QUEUE_CAP],
    ),
    "attachment_storage_quota_bytes": (
        attachment_storage_quota_bytes,
        lambda: settings.ATTACHMENT_STORAGE_QUOTA_BYTES,
        lambda: [1, MAX_QUOTA_BYTES],
    ),
    "unsent_upload_quota_bytes": (
        unsent_upload_quota_bytes,
        lambda: settings.UNSENT_UPLOAD_QUOTA_BYTES,
        lambda: [1, MAX_QUOTA_BYTES],
    ),
}


def policy_payload(policy: MessagingPolicy | None = None) -> dict:
    """The policy as set (null: the default), what is in effect, the defaults, the
    limits of each field, and the org's attachment storage in use."""
    from messaging.services.attachments import storage_used_bytes

    policy = policy or get_policy()
    return {
        **{name: getattr(policy, name) for name in _POLICY_FIELDS},
        "effective": {name: f[0](policy) for name, f in _POLICY_FIELDS.items()},
        "defaults": {name: f[1]() for name, f in _POLICY_FIELDS.items()},
        "limits": {name: f[2]() for name, f in _POLICY_FIELDS.items()},
        "usage": {"attachment_storage_bytes": storage_used_bytes()},
    }


def _check_days(days: int | None) -> None:
    if days is not None and not (MIN_DAYS <= days <= MAX_DAYS):
        raise ApiError(
            400,
            MessagingError.INVALID_RETENTION,
            f"Retention is between {MIN_DAYS} and {MAX_DAYS} days (or null for the default).",
        )


def check_set_policy(changes: dict, *, actor: audit.Actor) -> MessagingPolicy:
    """Change the org's retention days, attachment size limit and quotas (null: the
    platform default). Each changed field is one `retention.policy_changed` audit entry.
    Lowering a quota below what is in use drops nothing: it refuses what would go beyond."""
    if "retention_days" in changes:
        _check_days(changes["retention_days"])
    for field, (_, _, limits) in _POLICY_FIELDS.items():
        value = changes.get(field)
        if field == "retention_days" or value is None:
            continue
        low, high = limits()
        if not (low <= value <= high):
            raise ApiError(
                400,
                "invalid_policy",
                f"{field} is between {low} and {high} (or null for the default).",
            )
    with transaction.atomic():
        get_policy()
        policy = MessagingPolicy.objects.select_for_update().get(pk=1)
        changed = []
        for field in _POLICY_FIELDS:
            if field in changes and getattr(policy, field) != changes[field]:
                before = getattr(policy, field)
                setattr(policy, field, changes[field])
                changed.append(field)
                audit.record(
                    AuditEvent.RETENTION_POLICY_CHANGED,
                    actor=actor,
                    target_type="messaging_policy",
                    target_id=field,
                    data={"field": field, "before": before, "after": changes[field]},
                )
        if changed:
            policy.save(update_fields=[*changed, "updated_at"])
    return policy


def conversation_retention_payload(conversation: Conversation) -> dict:
    """What members see. Legal holds are not shown: a hold must not tip off its subject."""
    return {
        "days": conversation.retention_days,
        "effective_days": conversation.retention_days or org_retention_days(),
    }


def check_set_conversation_retention(
    conversation: Conversation,
    days: int | None,
    *,
    acting_user: User,
    acting_device_id: int | None,
    actor: audit.Actor,
) -> Conversation:
    """Set (or with None clear) a conversation's retention override. Group admins may set
    it on their groups, either member on a direct conversation, and `compliance.manage`
    on any conversation (`access_any_conversation`). Without `compliance.manage` the
    override may only shorten retention (at most the org's policy). Audited
    (`retention.conversation_changed`); the members' devices get a `retention.changed`
    conversation event."""
    from messaging.services.conversations import _require_group_admin
    from messaging.services.delivery import do_append_event

    _check_days(days)
    compliance = has_perm(acting_user, Perm.COMPLIANCE_MANAGE)
    if conversation.kind == Conversation.GROUP and not compliance:
        _require_group_admin(conversation, acting_user)
    org_days = org_retention_days()
    if days is not None and days > org_days and not compliance:
        raise ApiError(
            403,
            MessagingError.RETENTION_EXCEEDS_POLICY,
            f"The org keeps messages {org_days} days: a conversation may only shorten that.",
            extra={"max_days": org_days},
        )
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        before = locked.retention_days
        if before != days:
            locked.retention_days = days
            locked.save(update_fields=["retention_days"])
            audit.record(
                AuditEvent.RETENTION_CONVERSATION_CHANGED,
                actor=actor,
                target_type="conversation",
                target_id=locked.pk,
                data={"before": before, "after": days},
            )
            do_append_event(
                locked,
                {"action": "retention.changed", "days": days},
                actor=acting_user,
                actor_device_id=acting_device_id,
            )
    return locked


def access_any_conversation(conversation_id) -> Conversation:
    """Any conversation of the org by id, for `compliance.manage` (members use
    messaging.services.conversations.access_conversation); 404 for an unknown or
    malformed id."""
    try:
        return Conversation.objects.get(pk=uuid.UUID(str(conversation_id)))
    except (Conversation.DoesNotExist, ValueError):
        raise not_found("No such conversation.") from None


MAX_OVERRIDES_PAGE = 200


def conversation_overrides(limit: int = MAX_OVERRIDES_PAGE) -> list[Conversation]:
    """Conversations with a retention override of their own (oldest first, at most
    `limit`), each with `member_count`."""
    from django.db.models import Count

    return list(
        Conversation.objects.filter(retention_days__isnull=False)
        .annotate(member_count=Count("members"))
        .order_by("created_at")[:limit]
    )


# --- legal holds ------------------------------------------------------------------------


def _lock_holds() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
            [_HOLD_LOCK_NAMESPACE],
        )


def hold_payload(hold: LegalHold) -> dict:
    return {
        "id": str(hold.pk),
        "kind": hold.kind,
        "user_id": str(hold.user_id) if hold.user_id else None,
        "conversation_id": str(hold.conversation_id) if hold.conversation_id else None,
        "reason": hold.reason,
        "placed_by": str(hold.placed_by_id) if hold.placed_by_id else None,
        "placed_at": hold.placed_at.isoformat(),
        "released_by": str(hold.released_by_id) if hold.released_by_id else None,
        "released_at": hold.released_at.isoformat() if hold.released_at else None,
        "active": hold.released_at is None,
    }


MAX_HOLD_PAGE = 500


def list_holds(*, active_only: bool = False, limit: int = MAX_HOLD_PAGE, after=None) -> list:
    """Legal holds, oldest first, at most `limit`; `after` (a hold id) starts after that
    hold (404 for an unknown one)."""
    rows = LegalHold.objects.order_by("placed_at", "pk")
    if active_only:
        rows = rows.filter(released_at__isnull=True)
    if after is not None:
        rows = after_row(rows, access_hold(after), "placed_at")
    return list(rows[:limit])


def recently_released_holds(limit: int = 50) -> list[LegalHold]:
    """The `limit` holds released last, newest release first."""
    return list(
        LegalHold.objects.filter(released_at__isnull=False).order_by("-released_at", "-pk")[:limit]
    )


def access_hold(hold_id) -> LegalHold:
    """The hold with this id in the current org, or a 404 (also for malformed ids)."""
    try:
        return LegalHold.objects.get(pk=uuid.UUID(str(hold_id)))
    except (LegalHold.DoesNotExist, ValueError):
        raise not_found("No such legal hold.") from None


HOLD_REASON_MAX = 500


def _check_reason_length(reason: str) -> None:
    if len(reason) > HOLD_REASON_MAX:
        raise ApiError(
            400,
            MessagingError.INVALID_HOLD,
            f"The reason is at most {HOLD_REASON_MAX} characters.",
        )


def check_place_hold(
    *, user_id=None, conversation_id=None, reason: str, actor: audit.Actor
) -> LegalHold:
    """Place a legal hold on exactly one user or conversation of this org (404 for an
    unknown id), saying why: 400 `reason_required` without a reason (blank counts as
    none), as the hold's who/why is what a later review reads. Audited
    `legal_hold.placed`; from its commit on, purges keep what it covers."""
    if (user_id is None) == (conversation_id is None):
        raise ApiError(
            400, MessagingError.INVALID_HOLD, "Name exactly one user_id or conversation_id."
        )
    reason = (reason or "").strip()
    if not reason:
        raise ApiError(
            400,
            MessagingError.REASON_REQUIRED,
            "Say why the hold is placed (a case or matter number, say).",
        )
    _check_reason_length(reason)
    user = conversation = None
    if user_id is not None:
        user = User.objects.filter(pk=user_id).first()
        if user is None:
            raise not_found("No such user.")
    else:
        conversation = Conversation.objects.filter(pk=conversation_id).first()
        if conversation is None:
            raise not_found("No such conversation.")
    with transaction.atomic():
        _lock_holds()
        hold = LegalHold.objects.create(
            user=user,
            conversation=conversation,
            reason=reason,
            placed_by=actor.user,
            placed_at=timezone.now(),
        )
        audit.record(
            AuditEvent.LEGAL_HOLD_PLACED,
            actor=actor,
            target_type="legal_hold",
            target_id=hold.pk,
            data={
                "kind": hold.kind,
                "user_id": str(user.pk) if user else None,
                "conversation_id": str(conversation.pk) if conversation else None,
                "reason": reason,
            },
        )
    return hold


def check_release_hold(hold: LegalHold, *, actor: audit.Actor, reason: str = "") -> LegalHold:
    """Release an active hold (idempotent: releasing a released hold changes nothing).
    Audited `legal_hold.released` (with `reason`, why it was released); what no other
    hold covers is purged by the next run."""
    _check_reason_length(reason)
    with transaction.atomic():
        _lock_holds()
        hold = LegalHold.objects.select_for_update().get(pk=hold.pk)
        if hold.released_at is None:
            hold.released_at = timezone.now()
            hold.released_by = actor.user
            hold.save(update_fields=["released_at", "released_by"])
            audit.record(
                AuditEvent.LEGAL_HOLD_RELEASED,
                actor=actor,
                target_type="legal_hold",
                target_id=hold.pk,
                data={
                    "kind": hold.kind,
                    "user_id": str(hold.user_id) if hold.user_id else None,
                    "conversation_id": str(hold.conversation_id) if hold.conversation_id else None,
                    "reason": reason,
                },
            )
    return hold


def active_holds() -> tuple[list[str], list[str]]:
    """(held user ids, held conversation ids) of the active holds."""
    users, conversations = set(), set()
    for user_id, conversation_id in LegalHold.objects.filter(released_at__isnull=True).values_list(
        "user_id", "conversation_id"
    ):
        if user_id:
            users.add(str(user_id))
        if conversation_id:
            conversations.add(str(conversation_id))
    return sorted(users), sorted(conversations)


# --- purge ------------------------------------------------------------------------------


@dataclass
class PurgeReport:
    """What one purge run did (the job's log and its audit entry carry it)."""

    retention_days: int = 0
    batches: int = 0
    messages: int = 0
    queue_rows: int = 0
    attachments: int = 0
    unbound_attachments: int = 0
    blobs_not_deleted: int = 0
    held_users: int = 0
    held_conversations: int = 0
    # Queue entries of revoked devices that a hold kept and no hold covers any more.
    revoked_queue_rows: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


ProgressFn = Callable[[str, PurgeReport], None]


def held_messages_q(held_users: list, held_conversations: list) -> Q:
    """The messages the given holds keep: every message of a held conversation; for a
    held user, every message they sent, every message queued for one of their devices,
    and every message of a conversation sent while they were a member (current members
    from their join time; former members up to the event that removed them,
    conservatively from the conversation's start). Matches nothing without holds."""
    held = Q(pk__in=[])
    if held_conversations:
        held |= Q(conversation_id__in=held_conversations)
    if held_users:
        held |= (
            Q(sender_id__in=held_users)
            | Exists(
                Member.objects.filter(
                    conversation_id=OuterRef("conversation_id"),
                    user_id__in=held_users,
                    joined_at__lte=OuterRef("created_at"),
                )
            )
            | Exists(
                Message.objects.filter(
                    conversation_id=OuterRef("conversation_id"),
                    kind=Message.EVENT,
                    seq__gte=OuterRef("seq"),
                    event__action__in=_LEFT_ACTIONS,
                    event__user_ids__has_any_keys=held_users,
                )
            )
            | Exists(
                QueuedMessage.objects.filter(
                    message_id=OuterRef("pk"), device__user_id__in=held_users
                )
            )
        )
    return held


def _unheld_queue_rows(rows, held_users: list, held_conversations: list):
    """`rows` (queue rows) less those whose message an active hold covers."""
    if not (held_users or held_conversations):
        return rows
    held = Message.objects.filter(pk=OuterRef("message_id")).filter(
        held_messages_q(held_users, held_conversations)
    )
    return rows.filter(~Exists(held))


def do_drop_revoked_queue(device) -> int:
    """Delete a revoked device's queue, except the entries whose message an active legal
    hold covers: their envelopes are ciphertext the hold must keep (often its only copy).
    Those rows stay, never delivered (the device's token is gone, and only a live
    device's socket or request reads its queue), until the first purge after the last
    hold covering them is released. Runs inside the revoking transaction, serialised with
    hold changes by the holds' lock. Returns how many entries went."""
    _lock_holds()
    held_users, held_conversations = active_holds()
    rows = _unheld_queue_rows(
        QueuedMessage.objects.filter(device=device), held_users, held_conversations
    )
    deleted, _ = rows.delete()
    return deleted


def _expired_messages(now: datetime, org_days: int, held_users: list, held_conversations: list):
    """Messages past their conversation's effective retention that no active hold covers."""
    days = Coalesce(F("conversation__retention_days"), Value(org_days))
    cutoff = ExpressionWrapper(
        Value(now, output_field=DateTimeField())
        - Func(
            days, template="make_interval(days => %(expressions)s)", output_field=DurationField()
        ),
        output_field=DateTimeField(),
    )
    rows = Message.objects.filter(created_at__lt=cutoff)
    if held_users or held_conversations:
        rows = rows.exclude(held_messages_q(held_users, held_conversations))
    return rows.order_by("created_at")


def do_purge(
    *,
    actor: audit.Actor,
    now: datetime | None = None,
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
) -> PurgeReport:
    """Delete, in batches of `batch_size` messages (one transaction each), every message
    past retention that no hold covers, with its queue rows and the attachments no other
    message references; then what revoked devices' queues kept for holds since released;
    then never-sent uploads older than `ATTACHMENT_UNBOUND_TTL_SECONDS`.
    Blobs are deleted after each batch commits. Reports each batch to `progress` and writes
    one `retention.purged` audit entry with the totals."""
    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_PURGE_BATCH
    report = PurgeReport(retention_days=org_retention_days())
    while True:
        with transaction.atomic():
            _lock_holds()
            held_users, held_conversations = active_holds()
            report.held_users, report.held_conversations = len(held_users), len(held_conversations)
            ids = list(
                _expired_messages(
                    now, report.retention_days, held_users, held_conversations
                ).values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                break
            linked = set(
                MessageAttachment.objects.filter(message_id__in=ids).values_list(
                    "attachment_id", flat=True
                )
            )
            _, per_model = Message.objects.filter(pk__in=ids).delete()
            names = attachments.delete_unreferenced(linked)
        report.batches += 1
        report.messages += per_model.get(Message._meta.label, 0)
        report.queue_rows += per_model.get(QueuedMessage._meta.label, 0)
        report.attachments += len(names)
        report.blobs_not_deleted += attachments.delete_blobs(names)
        if progress:
            progress("messages", report)

    while True:
        with transaction.atomic():
            _lock_holds()
            held_users, held_conversations = active_holds()
            kept = QueuedMessage.objects.filter(device__revoked_at__isnull=False)
            ids = list(
                _unheld_queue_rows(kept, held_users, held_conversations).values_list(
                    "pk", flat=True
                )[:batch_size]
            )
            if ids:
                QueuedMessage.objects.filter(pk__in=ids).delete()
        if not ids:
            break
        report.batches += 1
        report.revoked_queue_rows += len(ids)
        if progress:
            progress("revoked_queue_rows", report)

    while True:
        with transaction.atomic():
            _lock_holds()
            held_users, _ = active_holds()
            names = attachments.take_stale_unbound(
                now=now,
                ttl_seconds=settings.ATTACHMENT_UNBOUND_TTL_SECONDS,
                limit=batch_size,
                keep_uploaders=held_users,
            )
        if not names:
            break
        report.batches += 1
        report.unbound_attachments += len(names)
        report.blobs_not_deleted += attachments.delete_blobs(names)
        if progress:
            progress("unbound_attachments", report)

    with transaction.atomic():
        audit.record(
            AuditEvent.RETENTION_PURGED,
            actor=actor,
            target_type="org",
            target_id=connection.schema_name,
            data={**report.as_dict(), "ran_at": now.isoformat()},
        )
    return report
