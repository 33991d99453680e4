"""Key directory (tenant schema). Public keys only: private keys never reach the server."""

import uuid

from django.db import models

from orgs.accounts.models import Device, User
from siphera.ids import uuid7


class SignedPrekey(models.Model):
    """The device's current signed prekey (the last-resort key when one-time keys run out)."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="signed_prekey")
    key_id = models.PositiveIntegerField()
    key = models.BinaryField()
    signature = models.BinaryField()
    uploaded_at = models.DateTimeField(auto_now=True)


class OneTimePrekey(models.Model):
    """A one-time prekey; handed out at most once, oldest upload first."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="one_time_prekeys")
    key_id = models.PositiveIntegerField()
    key = models.BinaryField()
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "key_id"], name="otk_id_unique_per_device")
        ]
        indexes = [models.Index(fields=["device", "id"], name="otk_claim_order")]


class PqPrekey(models.Model):
    """A signed post-quantum (KEM) one-time prekey."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="pq_prekeys")
    key_id = models.PositiveIntegerField()
    key = models.BinaryField()
    signature = models.BinaryField()
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "key_id"], name="pqk_id_unique_per_device")
        ]
        indexes = [models.Index(fields=["device", "id"], name="pqk_claim_order")]


class Conversation(models.Model):
    """A direct (two users, unique per pair) or group conversation.

    `last_seq` is the per-conversation sequence counter: a message takes the next value
    under the row lock, so sequence order is commit order.
    """

    DIRECT = "direct"
    GROUP = "group"
    KINDS = [(DIRECT, "direct"), (GROUP, "group")]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=10, choices=KINDS)
    title = models.BinaryField(null=True)  # encrypted by clients; opaque here
    topic = models.BinaryField(null=True)  # likewise (groups; set by their admins)
    # "<smaller user id>:<larger user id>" for direct conversations: one per pair.
    direct_key = models.CharField(max_length=80, unique=True, null=True)
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_seq = models.BigIntegerField(default=0)
    # The seq of the conversation's last event (membership changes among them). A send
    # that read the members in a snapshot older than this event must read them again
    # (messaging.services.delivery._insert_sql).
    last_event_seq = models.BigIntegerField(default=0)
    retention_days = models.PositiveIntegerField(null=True)  # overrides the org policy

    class Meta:
        ordering = ["created_at"]


class Member(models.Model):
    """A user's membership of a conversation, with their receipt markers."""

    ADMIN = "admin"
    MEMBER = "member"
    ROLES = [(ADMIN, "admin"), (MEMBER, "member")]

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=ROLES, default=MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)
    delivered_seq = models.BigIntegerField(default=0)
    read_seq = models.BigIntegerField(default=0)
    # Messages after `read_seq` that mention this user: raised by the send that mentions
    # them, lowered when `read_seq` passes such messages (messaging.services.unread).
    mention_count = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "user"], name="member_once")]
        indexes = [models.Index(fields=["user", "conversation"], name="member_by_user")]


class Message(models.Model):
    """One message (or membership event) of a conversation. `body` is opaque ciphertext
    for the history; per-device envelopes live only in the recipients' queues."""

    MESSAGE = "message"
    EVENT = "event"

    # Time-ordered (siphera.ids.uuid7): messages are the table that grows fastest.
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # No index of its own: message_seq_unique (conversation, seq) serves every lookup by
    # conversation. One index less for each message to write.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=10, default=MESSAGE)
    sender = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    sender_device_id = models.PositiveIntegerField(null=True)
    client_id = models.UUIDField(null=True)
    body = models.BinaryField(null=True)
    thread = models.UUIDField(null=True)  # id of the thread's root message
    refers_to = models.UUIDField(null=True)  # message an edit/delete/reaction is about
    mentions = models.JSONField(default=list)
    # [{id, size, sha256}] as frames list them; the references live in MessageAttachment.
    attachments = models.JSONField(default=list)
    event = models.JSONField(null=True)  # membership changes: {"action", "user_ids", ...}
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["conversation_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_seq_unique"),
            models.UniqueConstraint(
                fields=["conversation", "sender", "client_id"], name="message_client_id_unique"
            ),
        ]
        indexes = [
            # The retention purge looks for the oldest messages across all conversations.
            models.Index(fields=["created_at"], name="message_created_at"),
            # A thread's replies in order (GET .../messages?thread=): only replies are in it,
            # so a message outside a thread costs no index write.
            models.Index(
                fields=["thread", "seq"],
                name="message_thread_replies",
                condition=models.Q(thread__isnull=False),
            ),
        ]


class QueuedMessage(models.Model):
    """A message waiting for one device, with that device's envelope if any. Deleted only
    when the device acknowledges it; `id` order is delivery order."""

    id = models.BigAutoField(primary_key=True)
    # queue_drain_order (device, id) and queued_once_per_device (device, message) serve
    # every lookup by device, so the foreign key has no index of its own.
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="queue", db_index=False
    )
    # No database constraint on `message`: a queue row is only ever written by the statement
    # (or transaction) that writes its message, and deleted with it by the ORM's cascade.
    # The constraint's check locked the new message row at every commit, writing WAL for
    # it: the costliest statement of a send after the insert itself (docs/architecture.md).
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="queued", db_constraint=False
    )
    envelope_type = models.PositiveSmallIntegerField(null=True)
    envelope_body = models.BinaryField(null=True)

    class Meta:
        indexes = [models.Index(fields=["device", "id"], name="queue_drain_order")]
        constraints = [
            models.UniqueConstraint(fields=["device", "message"], name="queued_once_per_device")
        ]


# --- attachments, retention and legal holds --------------------------------------------


class Attachment(models.Model):
    """An encrypted blob a device uploaded (opaque ciphertext; the key travels inside the
    end-to-end encrypted message). The bytes live in the `attachments` storage under
    `storage_name`; this row says who may read them.

    Lifecycle: created when the upload starts (`completed_at` null), completed when every
    byte is stored, bound to one conversation by the first message that references it, and
    deleted (row and blob) with the last message referencing it or, never bound, after
    `ATTACHMENT_UNBOUND_TTL_SECONDS`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Sent attachments belong to their conversation: they outlive the uploader's account.
    uploader = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    uploader_device_id = models.PositiveIntegerField()
    storage_name = models.CharField(max_length=300, unique=True)
    size = models.BigIntegerField(null=True)
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, null=True, related_name="attachments"
    )
    bound_at = models.DateTimeField(null=True)

    class Meta:
        indexes = [
            # The purge of never-sent uploads.
            models.Index(
                fields=["created_at"],
                name="attachment_unbound_age",
                condition=models.Q(conversation__isnull=True),
            ),
            # A user's never-sent uploads (the unsent-upload quota).
            models.Index(
                fields=["uploader"],
                name="attachment_unbound_by_user",
                condition=models.Q(conversation__isnull=True),
            ),
        ]


class MessageAttachment(models.Model):
    """A message's reference to an attachment, in the order the sender listed them."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachment_links")
    attachment = models.ForeignKey(
        Attachment, on_delete=models.CASCADE, related_name="message_links"
    )
    position = models.PositiveSmallIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["message", "attachment"], name="attachment_once_per_msg"
            )
        ]
        indexes = [models.Index(fields=["attachment"], name="attachment_links_by_blob")]


class MessagingPolicy(models.Model):
    """The org's retention and attachment policy: one row per org schema (pk is always 1).

    Null fields follow the platform defaults (`RETENTION_DEFAULT_DAYS`,
    `ATTACHMENT_MAX_BYTES`, `DEVICE_QUEUE_MAX`, `ATTACHMENT_STORAGE_QUOTA_BYTES`,
    `UNSENT_UPLOAD_QUOTA_BYTES`). Kept apart from accounts.OrgPolicy so each app owns its
    migrations. Read and changed only through messaging.services.retention.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    retention_days = models.PositiveIntegerField(null=True)
    attachment_max_bytes = models.BigIntegerField(null=True)
    # Quotas: messages waiting for one device; bytes of the org's completed attachments;
    # bytes of one user's uploads not yet sent in a message.
    device_queue_max = models.PositiveIntegerField(null=True)
    attachment_storage_quota_bytes = models.BigIntegerField(null=True)
    unsent_upload_quota_bytes = models.BigIntegerField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="messaging_policy_singleton")
        ]


class AttachmentStorage(models.Model):
    """The bytes of the org's completed attachments, kept as a running total (one row per
    org schema, pk always 1) so the storage quota costs no SUM over every attachment per
    upload. Changed only by messaging.services.attachments, in the transaction that
    completes or deletes attachments."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    used_bytes = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="attachment_storage_singleton")
        ]


class LegalHold(models.Model):
    """A legal hold on a user or a conversation: while active (`released_at` null), the
    retention purge keeps everything it covers. Several holds (one per legal matter) may
    cover the same target; each is released on its own."""

    USER = "user"
    CONVERSATION = "conversation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.PROTECT, null=True, related_name="+")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.PROTECT, null=True, related_name="+"
    )
    reason = models.CharField(max_length=500, blank=True)
    placed_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    placed_at = models.DateTimeField()
    released_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    released_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["placed_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, conversation__isnull=True)
                | models.Q(user__isnull=True, conversation__isnull=False),
                name="legal_hold_one_target",
            )
        ]
        indexes = [
            models.Index(
                fields=["placed_at"],
                name="legal_hold_active",
                condition=models.Q(released_at__isnull=True),
            )
        ]

    @property
    def kind(self) -> str:
        return self.USER if self.user_id else self.CONVERSATION
