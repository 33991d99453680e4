"""Attachments: encrypted blobs uploaded by a device, bound to a conversation by the first
message that lists them, readable by that conversation's members only.

Guarantees:
- The server stores opaque ciphertext (the key travels inside the end-to-end encrypted
  message) and never logs it.
- An upload streams in chunks from the request to the `attachments` storage, counted and
  hashed on the way: memory stays flat whatever the size, and an upload over the org's
  limit is refused (413) with nothing left behind, neither blob nor row.
- The row is written before the first byte, so a process dying mid-upload leaves a row
  that the retention job finds (and deletes with its partial blob), never an orphaned blob.
- Only the uploader may read an unsent upload; once bound, only current members of its
  conversation may. Anyone else, another org included, gets the same 404.
- An attachment is deleted (row, then blob) with the last message that references it, and
  a never-sent upload after `ATTACHMENT_UNBOUND_TTL_SECONDS`.
- Quotas (the org's policy): the bytes of the org's completed attachments (a running
  total, AttachmentStorage, changed in the transaction that completes or deletes them)
  and the bytes of one user's uploads not yet sent. An upload that would exceed either is
  refused (413 `storage_quota_exceeded` / `unsent_upload_quota_exceeded`) with nothing
  left behind; the check at completion runs under locks, so concurrent uploads cannot
  pass a quota together.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.files.storage import Storage, storages
from django.db import connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from messaging.error_codes import MessagingError
from messaging.models import Attachment, AttachmentStorage, Message, MessageAttachment
from orgs.accounts.models import User
from siphera.api_errors import ApiError, not_found

log = logging.getLogger("siphera.attachments")

CONTENT_TYPE = "application/octet-stream"
CHUNK_BYTES = 256 * 1024
# Retry-After of a 503 when the blob store fails.
STORAGE_RETRY_AFTER_SECONDS = 30
MAX_PER_MESSAGE = 32


def storage() -> Storage:
    """The `attachments` storage (settings.STORAGES): filesystem or S3-compatible."""
    return storages["attachments"]


class _TooLarge(Exception):
    pass


class _LimitedBody:
    """A request body as a file for `Storage.save`: read in chunks, counted and hashed on
    the way; reading past `limit` bytes raises `_TooLarge`."""

    content_type = CONTENT_TYPE

    def __init__(self, stream, limit: int):
        self.stream = stream
        self.limit = limit
        self.size = 0
        self.digest = hashlib.sha256()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_BYTES), b""))
        # Ask for one byte past the limit: a body of exactly `limit` bytes is fine.
        data = self.stream.read(max(0, min(size, self.limit - self.size + 1)))
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLarge
        self.digest.update(data)
        return data

    def chunks(self, chunk_size: int | None = None):
        while data := self.read(chunk_size or CHUNK_BYTES):
            yield data

    # The rest of the file protocol that storage backends and s3transfer look at: a
    # readable, not seekable stream (S3 then uploads it part by part as it is read).
    closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _storage_name(attachment_id: uuid.UUID) -> str:
    # The org's schema first (one prefix per org), then a fan-out directory.
    return f"{connection.schema_name}/attachments/{attachment_id.hex[:2]}/{attachment_id}"


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        MessagingError.ATTACHMENT_TOO_LARGE,
        f"Attachments are limited to {limit} bytes in this org.",
        extra={"max_bytes": limit},
    )


# With hashtext(user id): one advisory lock per user for completing uploads (unsent quota).
_UPLOAD_LOCK_NAMESPACE = 0x5E1C


@dataclass(frozen=True)
class _Room:
    """How many more bytes an upload may have, and the error for each limit."""

    max_bytes: int  # the org's size limit for one attachment
    storage_quota: int
    storage_used: int
    unsent_quota: int
    unsent_used: int

    def error_for(self, size: int) -> ApiError | None:
        if size > self.max_bytes:
            return too_large(self.max_bytes)
        if self.storage_used + size > self.storage_quota:
            return ApiError(
                413,
                MessagingError.STORAGE_QUOTA_EXCEEDED,
                "The org's attachment storage is full; an admin can raise its quota.",
                extra={"quota_bytes": self.storage_quota, "used_bytes": self.storage_used},
            )
        if self.unsent_used + size > self.unsent_quota:
            return ApiError(
                413,
                MessagingError.UNSENT_UPLOAD_QUOTA_EXCEEDED,
                "Your uploads not yet sent in a message fill your quota: send them or let "
                "them expire first.",
                extra={"quota_bytes": self.unsent_quota, "used_bytes": self.unsent_used},
            )
        return None

    @property
    def limit(self) -> int:
        """The most bytes a body may have now (reading stops one byte past it)."""
        return max(
            0,
            min(
                self.max_bytes,
                self.storage_quota - self.storage_used,
                self.unsent_quota - self.unsent_used,
            ),
        )


def _room(uploader: User) -> _Room:
    from messaging.services import retention

    policy = retention.get_policy()
    return _Room(
        max_bytes=retention.attachment_max_bytes(policy),
        storage_quota=retention.attachment_storage_quota_bytes(policy),
        storage_used=storage_used_bytes(),
        unsent_quota=retention.unsent_upload_quota_bytes(policy),
        unsent_used=unsent_bytes(uploader),
    )


def storage_used_bytes() -> int:
    """The bytes of the org's completed attachments (the running total)."""
    return AttachmentStorage.objects.filter(pk=1).values_list("used_bytes", flat=True).first() or 0


def unsent_bytes(uploader: User) -> int:
    """The bytes of `uploader`'s completed uploads not yet sent in a message (a few rows:
    the quota and the unsent-upload purge bound them; partial index)."""
    total = Attachment.objects.filter(
        uploader=uploader, conversation__isnull=True, completed_at__isnull=False
    ).aggregate(total=Sum("size"))["total"]
    return total or 0


def _add_used(delta: int) -> None:
    if delta and not AttachmentStorage.objects.filter(pk=1).update(
        used_bytes=F("used_bytes") + delta
    ):
        AttachmentStorage.objects.create(pk=1, used_bytes=max(delta, 0))


def check_upload(
    stream,
    *,
    uploader: User,
    uploader_device_id: int,
    content_type: str,
    content_length: int | None,
) -> Attachment:
    """Store an encrypted blob read from `stream` (a file-like request body) and return the
    completed attachment. Content-Type must be application/octet-stream (415); an empty
    body is 400; more than the org's limit is 413 (from Content-Length before anything is
    stored, or while streaming a body without one) and leaves nothing behind."""
    if (content_type or "").split(";")[0].strip().lower() != CONTENT_TYPE:
        raise ApiError(
            415,
            MessagingError.UNSUPPORTED_MEDIA_TYPE,
            f"Upload the encrypted bytes as the raw body with Content-Type: {CONTENT_TYPE}.",
        )
    room = _room(uploader)
    if content_length == 0:
        raise ApiError(400, MessagingError.EMPTY_ATTACHMENT, "The body is empty.")
    if content_length is not None and (error := room.error_for(content_length)):
        raise error

    attachment_id = uuid.uuid4()
    attachment = Attachment.objects.create(
        id=attachment_id,
        uploader=uploader,
        uploader_device_id=uploader_device_id,
        storage_name=_storage_name(attachment_id),
        created_at=timezone.now(),
    )
    body = _LimitedBody(stream, room.limit)
    try:
        stored_name = storage().save(attachment.storage_name, body)
    except _TooLarge:
        _discard(attachment)
        raise room.error_for(room.limit + 1) from None
    except Exception:
        error = storage_unavailable(attachment)
        _discard(attachment)
        raise error from None
    except BaseException:
        _discard(attachment)
        raise
    if body.size == 0:
        _discard(attachment)
        raise ApiError(400, MessagingError.EMPTY_ATTACHMENT, "The body is empty.")
    if content_length is not None and body.size != content_length:
        _discard(attachment)
        raise ApiError(400, "invalid_request", "The body is shorter than its Content-Length.")

    attachment.storage_name = stored_name
    attachment.size = body.size
    attachment.sha256 = body.digest.hexdigest()
    attachment.completed_at = timezone.now()
    try:
        _do_complete(attachment, uploader)
    except ApiError:
        _discard(attachment)
        raise
    log.info("attachment stored", extra={"attachment": str(attachment.pk), "size": body.size})
    return attachment


def _do_complete(attachment: Attachment, uploader: User) -> None:
    """Mark the stored upload complete and count its bytes, if the quotas still allow it
    (checked again under the org's storage row lock and the uploader's lock: concurrent
    uploads each passed the first check); else the quota's 413."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                [_UPLOAD_LOCK_NAMESPACE, str(uploader.pk)],
            )
        AttachmentStorage.objects.get_or_create(pk=1)
        AttachmentStorage.objects.select_for_update().get(pk=1)
        error = _room(uploader).error_for(attachment.size)
        if error is not None:
            raise error
        attachment.save(update_fields=["storage_name", "size", "sha256", "completed_at"])
        _add_used(attachment.size)


def storage_unavailable(attachment: Attachment) -> ApiError:
    """The 503 for a failure of the blob store (disk, S3 bucket) with `attachment`; logs
    the exception being handled. The client may try again later."""
    log.exception("attachment storage failed", extra={"attachment": str(attachment.pk)})
    return ApiError(
        503,
        MessagingError.STORAGE_UNAVAILABLE,
        "Attachment storage is unavailable; nothing was stored. Try again later.",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
    )


def _discard(attachment: Attachment) -> None:
    """Remove a failed upload: the (partial) blob, then its row. If the blob cannot be
    deleted (the store is down), the row stays, incomplete and invisible, and the purge of
    never-sent uploads deletes both later: a blob is never left without its row."""
    try:
        storage().delete(attachment.storage_name)
    except Exception:
        log.warning(
            "partial attachment blob not deleted; the unsent-upload purge will retry",
            extra={"attachment": str(attachment.pk)},
            exc_info=True,
        )
        return
    Attachment.objects.filter(pk=attachment.pk).delete()


def upload_payload(attachment: Attachment) -> dict:
    return {"id": str(attachment.pk), "size": attachment.size, "sha256": attachment.sha256}


def access_attachment(user: User, attachment_id) -> Attachment:
    """A completed attachment `user` may read, else 404 (whether or not it exists): the
    uploader before it is sent, afterwards the current members of its conversation."""
    try:
        attachment_id = uuid.UUID(str(attachment_id))
    except ValueError:
        raise not_found("No such attachment.") from None
    try:
        attachment = (
            Attachment.objects.filter(pk=attachment_id, completed_at__isnull=False)
            .filter(
                Q(conversation__isnull=True, uploader=user)
                | Q(conversation__isnull=False, conversation__members__user=user)
            )
            .first()
        )
    except (ValidationError, ValueError):
        attachment = None
    if attachment is None:
        raise not_found("No such attachment.")
    return attachment


def open_blob(attachment: Attachment):
    """The stored bytes as a file object (read in chunks by the response); 404 if the blob
    is missing from storage (logged: it should not happen), 503 if the store fails (S3
    checks the object when it is opened, before the response has begun)."""
    try:
        return storage().open(attachment.storage_name, "rb")
    except FileNotFoundError:
        log.warning("attachment blob missing", extra={"attachment": str(attachment.pk)})
        raise not_found("No such attachment.") from None
    except Exception:
        raise storage_unavailable(attachment) from None


# --- binding to messages (inside the send transaction) ------------------------------------


def lock_for_message(conversation_id, attachment_ids: list, *, sender: User) -> list[Attachment]:
    """Lock and return the attachments a message of `sender` in `conversation_id` lists, in
    the given order. Each must be a completed upload of the sender, not yet bound or bound
    to this same conversation; otherwise 400 `invalid_attachment` naming the bad ids (the
    same answer whether an id is someone else's or does not exist)."""
    ids = [str(a) for a in attachment_ids]
    if not ids:
        return []
    if len(ids) > MAX_PER_MESSAGE:
        raise ApiError(
            400,
            MessagingError.INVALID_ATTACHMENT,
            f"A message lists at most {MAX_PER_MESSAGE} attachments.",
        )
    if len(set(ids)) != len(ids):
        raise ApiError(400, MessagingError.INVALID_ATTACHMENT, "An attachment is listed twice.")
    rows = {
        str(a.pk): a
        for a in Attachment.objects.select_for_update()
        .filter(pk__in=ids, uploader=sender, completed_at__isnull=False)
        .filter(Q(conversation__isnull=True) | Q(conversation_id=conversation_id))
        .order_by("pk")  # one lock order for concurrent sends
    }
    bad = [i for i in ids if i not in rows]
    if bad:
        raise ApiError(
            400,
            MessagingError.INVALID_ATTACHMENT,
            "Attachments must be your own completed uploads, not sent to another conversation.",
            extra={"invalid": bad},
        )
    return [rows[i] for i in ids]


def do_link_to_message(message: Message, attachments: list[Attachment]) -> None:
    """Bind the (locked) attachments to the message's conversation and reference them
    from the message, in order. Runs inside the send transaction."""
    if not attachments:
        return
    now = timezone.now()
    unbound = [a.pk for a in attachments if a.conversation_id is None]
    if unbound:
        Attachment.objects.filter(pk__in=unbound).update(
            conversation_id=message.conversation_id, bound_at=now
        )
    MessageAttachment.objects.bulk_create(
        [
            MessageAttachment(message=message, attachment=a, position=i)
            for i, a in enumerate(attachments)
        ]
    )


def frame_entries(attachments: list[Attachment]) -> list[dict]:
    """The `attachments` of a message frame, [{id, size, sha256}] in the sender's order.
    Stored on the message when it is sent (the values never change), so delivering it
    costs no extra query."""
    return [{"id": str(a.pk), "size": a.size, "sha256": a.sha256} for a in attachments]


# --- deletion ---------------------------------------------------------------------------


def delete_unreferenced(attachment_ids: Iterable) -> list[str]:
    """Delete the rows of those attachments no message references any more (inside the
    caller's transaction). Returns their storage names: delete the blobs after commit
    with `delete_blobs`."""
    orphans = Attachment.objects.filter(pk__in=list(attachment_ids), message_links__isnull=True)
    return delete_rows(orphans)


def delete_rows(rows) -> list[str]:
    """Delete these attachment rows (inside the caller's transaction), taking their bytes
    off the org's storage total. Returns their storage names: delete the blobs after
    commit with `delete_blobs`. Every deletion of completed attachments goes through here
    (a failed upload's row, never counted, is `_discard`ed)."""
    found = list(rows.values_list("pk", "storage_name", "size", "completed_at"))
    if not found:
        return []
    Attachment.objects.filter(pk__in=[pk for pk, *_ in found]).delete()
    _add_used(-sum(size or 0 for _, _, size, done in found if done is not None))
    return [name for _, name, _, _ in found]


def take_stale_unbound(*, now, ttl_seconds: int, limit: int, keep_uploaders=()) -> list[str]:
    """Delete up to `limit` uploads never bound to a conversation and older than the TTL
    (completed or left incomplete by a failed upload), skipping the uploaders in
    `keep_uploaders` (legal hold). Rows locked by a concurrent send are skipped. Inside
    the caller's transaction; returns the storage names for `delete_blobs`."""
    cutoff = now - timedelta(seconds=ttl_seconds)
    rows = (
        Attachment.objects.select_for_update(skip_locked=True)
        .filter(conversation__isnull=True, created_at__lt=cutoff)
        .exclude(uploader_id__in=list(keep_uploaders))
        .order_by("created_at")
        .values_list("pk", "storage_name")[:limit]
    )
    return delete_rows(Attachment.objects.filter(pk__in=[pk for pk, _ in rows]))


def delete_blobs(names: Iterable[str], *, kind: str = "attachment") -> int:
    """Delete stored blobs (attachments, or another `kind` kept in the same store, such as
    recordings) whose rows are gone (after commit: a rollback must never leave a row
    without its bytes). Empty names are skipped. Returns how many could not be deleted
    (logged)."""
    failed = 0
    for name in names:
        if not name:
            continue
        try:
            storage().delete(name)
        except Exception:  # one unreachable blob must not stop the purge of the rest
            failed += 1
            log.warning(f"{kind} blob not deleted", extra={"storage_name": name}, exc_info=True)
    return failed
