"""Messaging's share of compliance exports and data-subject requests (registered in
MessagingConfig.ready(); see orgs.services.compliance and orgs.services.personal_data).

- Sections `messages` (metadata of every message: sender user and device, conversation,
  time, ciphertext sizes) and `membership` (member added / removed / left events). Never
  a body, an envelope, a title or an event's content beyond who and what.
- Legal-hold archive files: the active holds, the held messages with their ciphertext
  (base64), and the held attachments' blobs.
- Personal data: the user's memberships and the metadata of the messages they sent.
- Erasure: the user's messages no hold covers are redacted (ciphertext of the history
  body and of undelivered envelopes removed, attachments deleted; the row stays as a
  placeholder so conversations keep their order), their unsent uploads deleted, and they
  leave every conversation (a `member.removed` event the members see). Under a hold on
  the user, their messages and memberships stay; in a held conversation, its messages.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

from django.db import transaction
from django.db.models import F, Func, IntegerField, Q, QuerySet

from messaging.models import (
    Attachment,
    Conversation,
    LegalHold,
    Member,
    Message,
    MessageAttachment,
    QueuedMessage,
)
from messaging.services import attachments, retention
from messaging.services.conversations import do_remove_member
from orgs.accounts.models import User
from orgs.services.compliance import (
    ArchiveFile,
    ExportScope,
    Section,
    iso,
    register_archive_part,
    register_section,
)
from orgs.services.personal_data import ErasureReport, register_subject_part
from siphera.api_errors import ApiError

MEMBER_ACTIONS = ("member.added", "member.removed", "member.left")
_CHUNK = 2000


def _octets(name: str) -> Func:
    return Func(F(name), function="octet_length", output_field=IntegerField())


def _in_range(rows: QuerySet, scope: ExportScope) -> QuerySet:
    return rows.filter(created_at__gte=scope.since, created_at__lt=scope.until)


# --- sections --------------------------------------------------------------------------

MESSAGE_COLUMNS = (
    "id",
    "time",
    "user_id",
    "device_id",
    "conversation_id",
    "seq",
    "thread",
    "refers_to",
    "body_bytes",
    "attachment_count",
    "attachment_bytes",
)


def _messages(scope: ExportScope) -> QuerySet:
    rows = _in_range(Message.objects.filter(kind=Message.MESSAGE), scope)
    if scope.user_ids:
        rows = rows.filter(sender_id__in=scope.user_ids)
    return rows


def _message_rows(scope: ExportScope) -> Iterator[dict]:
    rows = (
        _messages(scope)
        .annotate(body_bytes=_octets("body"))
        .order_by("created_at", "conversation_id", "seq")
        .values_list(
            "pk",
            "created_at",
            "sender_id",
            "sender_device_id",
            "conversation_id",
            "seq",
            "thread",
            "refers_to",
            "body_bytes",
            "attachments",
        )
    )
    for pk, at, sender, device, conv, seq, thread, refers_to, size, files in rows.iterator(
        chunk_size=_CHUNK
    ):
        yield {
            "id": str(pk),
            "time": iso(at),
            "user_id": str(sender) if sender else None,
            "device_id": device,
            "conversation_id": str(conv),
            "seq": seq,
            "thread": str(thread) if thread else None,
            "refers_to": str(refers_to) if refers_to else None,
            "body_bytes": size or 0,
            "attachment_count": len(files or []),
            "attachment_bytes": sum(int(f.get("size") or 0) for f in files or []),
        }


MEMBERSHIP_COLUMNS = (
    "id",
    "time",
    "user_id",
    "device_id",
    "conversation_id",
    "seq",
    "action",
    "subject_user_ids",
)


def _membership(scope: ExportScope) -> QuerySet:
    rows = _in_range(
        Message.objects.filter(kind=Message.EVENT, event__action__in=list(MEMBER_ACTIONS)), scope
    )
    if scope.user_ids:
        rows = rows.filter(
            Q(sender_id__in=scope.user_ids) | Q(event__user_ids__has_any_keys=list(scope.user_ids))
        )
    return rows


def _membership_rows(scope: ExportScope) -> Iterator[dict]:
    rows = _membership(scope).order_by("created_at", "conversation_id", "seq")
    fields = ("pk", "created_at", "sender_id", "sender_device_id", "conversation_id", "seq")
    for *head, event in rows.values_list(*fields, "event").iterator(chunk_size=_CHUNK):
        pk, at, sender, device, conv, seq = head
        yield {
            "id": str(pk),
            "time": iso(at),
            "user_id": str(sender) if sender else None,
            "device_id": device,
            "conversation_id": str(conv),
            "seq": seq,
            "action": event.get("action"),
            "subject_user_ids": [str(u) for u in event.get("user_ids") or []],
        }


# --- the legal-hold archive ------------------------------------------------------------


def _held(scope: ExportScope) -> QuerySet:
    held_users, held_conversations = retention.active_holds()
    rows = _in_range(
        Message.objects.filter(retention.held_messages_q(held_users, held_conversations)), scope
    )
    if scope.user_ids:
        rows = rows.filter(sender_id__in=scope.user_ids)
    return rows


def _archive(scope: ExportScope) -> Iterator[ArchiveFile]:
    holds = [retention.hold_payload(h) for h in LegalHold.objects.filter(released_at__isnull=True)]
    yield ArchiveFile(
        "legal-holds.json",
        [json.dumps(holds, indent=2, sort_keys=True).encode() + b"\n"],
        "The active legal holds the archive covers.",
    )
    attachment_ids: set[str] = set()

    def messages() -> Iterator[bytes]:
        rows = _held(scope).order_by("created_at", "conversation_id", "seq")
        for m in rows.iterator(chunk_size=_CHUNK):
            attachment_ids.update(str(a["id"]) for a in m.attachments or [])
            line = {
                "id": str(m.pk),
                "time": iso(m.created_at),
                "kind": m.kind,
                "user_id": str(m.sender_id) if m.sender_id else None,
                "device_id": m.sender_device_id,
                "conversation_id": str(m.conversation_id),
                "seq": m.seq,
                "thread": str(m.thread) if m.thread else None,
                "refers_to": str(m.refers_to) if m.refers_to else None,
                "mentions": m.mentions,
                "attachments": m.attachments,
                "event": m.event,
                "body_base64": base64.b64encode(bytes(m.body)).decode() if m.body else None,
            }
            yield (json.dumps(line, sort_keys=True) + "\n").encode()

    yield ArchiveFile(
        "messages.jsonl",
        messages(),
        "Held messages and conversation events: metadata and the end-to-end encrypted body "
        "(base64) exactly as stored.",
        ciphertext=True,
    )
    missing = []
    for attachment in Attachment.objects.filter(pk__in=sorted(attachment_ids)).order_by("pk"):
        try:
            blob = attachments.open_blob(attachment)
        except ApiError:
            missing.append(str(attachment.pk))
            continue
        yield ArchiveFile(
            f"attachments/{attachment.pk}",
            _blob_pieces(blob),
            f"Encrypted attachment (sha256 at upload: {attachment.sha256}).",
            ciphertext=True,
        )
    if missing:
        yield ArchiveFile(
            "attachments-missing.json",
            [json.dumps(missing).encode()],
            "Attachments of held messages whose blobs the store could not return.",
        )


def _blob_pieces(blob) -> Iterator[bytes]:
    try:
        while data := blob.read(256 * 1024):
            yield data
    finally:
        blob.close()


# --- personal data ---------------------------------------------------------------------


def _memberships_of(user: User) -> Iterator[dict]:
    rows = Member.objects.filter(user=user).select_related("conversation").order_by("joined_at")
    for m in rows:
        yield {
            "conversation_id": str(m.conversation_id),
            "kind": m.conversation.kind,
            "role": m.role,
            "joined_at": iso(m.joined_at),
            "delivered_seq": m.delivered_seq,
            "read_seq": m.read_seq,
        }


def _messages_of(user: User) -> Iterator[dict]:
    scope_rows = Message.objects.filter(sender=user, kind=Message.MESSAGE)
    rows = (
        scope_rows.annotate(body_bytes=_octets("body"))
        .order_by("created_at", "conversation_id", "seq")
        .values_list("pk", "created_at", "sender_device_id", "conversation_id", "seq", "body_bytes")
    )
    for pk, at, device, conv, seq, size in rows.iterator(chunk_size=_CHUNK):
        yield {
            "id": str(pk),
            "time": iso(at),
            "device_id": device,
            "conversation_id": str(conv),
            "seq": seq,
            "body_bytes": size or 0,
        }


# --- erasure ---------------------------------------------------------------------------


def _hold_reasons(holds) -> str:
    return "; ".join(
        f"legal hold {h.pk} placed {h.placed_at:%Y-%m-%d}" + (f" ({h.reason})" if h.reason else "")
        for h in holds
    )


def on_user_erasing(user: User, report: ErasureReport) -> None:
    """orgs.hooks.user_erasing: see the module's docstring."""
    held_users, held_conversations = retention.active_holds()
    sent = Message.objects.filter(sender=user, kind=Message.MESSAGE)
    memberships = Member.objects.filter(user=user)
    user_holds = list(LegalHold.objects.filter(user=user, released_at__isnull=True))
    if user_holds:
        why = "Kept under " + _hold_reasons(user_holds) + "."
        report.keep("messages", sent.count(), why)
        report.keep("memberships", memberships.count(), why)
        report.keep("profile", 1, why + " The hold names this person as its custodian.")
        report.profile = "kept"
        return
    kept = sent.filter(retention.held_messages_q(held_users, held_conversations))
    kept_count = kept.count()
    if kept_count:
        conversations = kept.values_list("conversation_id", flat=True).distinct()
        # The holds that can cover them: on those conversations, or on someone of them.
        members = Member.objects.filter(conversation_id__in=conversations).values("user_id")
        holds = LegalHold.objects.filter(
            Q(conversation_id__in=conversations) | Q(user_id__in=members),
            released_at__isnull=True,
        )
        report.keep("messages", kept_count, "Kept under " + _hold_reasons(holds) + ".")
    ids = list(
        sent.exclude(retention.held_messages_q(held_users, held_conversations)).values_list(
            "pk", flat=True
        )
    )
    linked = set(
        MessageAttachment.objects.filter(message_id__in=ids).values_list("attachment_id", flat=True)
    )
    MessageAttachment.objects.filter(message_id__in=ids).delete()
    report.remove(
        "messages_redacted",
        Message.objects.filter(pk__in=ids).update(body=None, mentions=[], attachments=[]),
    )
    QueuedMessage.objects.filter(message_id__in=ids).update(envelope_body=None)
    names = attachments.delete_unreferenced(linked)
    names += attachments.delete_rows(
        Attachment.objects.filter(uploader=user, conversation__isnull=True)
    )
    report.remove("attachments", len(names))
    if names:
        transaction.on_commit(lambda: attachments.delete_blobs(names))

    left = 0
    for member in memberships:
        conversation = Conversation.objects.select_for_update().get(pk=member.conversation_id)
        if conversation.kind == Conversation.GROUP:
            # The group's other members are told, and one becomes admin if the erased
            # user was its only one.
            do_remove_member(
                conversation, member, action="member.removed", actor=user, reason="erased"
            )
        else:
            member.delete()
        left += 1
    report.remove("memberships", left)


def register() -> None:
    register_section(
        Section(
            name="messages",
            app="messaging",
            description="Message metadata: sender user and device, conversation, time, "
            "ciphertext sizes. Never content.",
            columns=MESSAGE_COLUMNS,
            rows=_message_rows,
            count=lambda scope: _messages(scope).count(),
        )
    )
    register_section(
        Section(
            name="membership",
            app="messaging",
            description="Conversation membership changes (added, removed, left).",
            columns=MEMBERSHIP_COLUMNS,
            rows=_membership_rows,
            count=lambda scope: _membership(scope).count(),
        )
    )
    register_archive_part(_archive)
    register_subject_part("memberships", _memberships_of)
    register_subject_part("messages", _messages_of)
    from orgs import hooks

    hooks.user_erasing.register(on_user_erasing)
