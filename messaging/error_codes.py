"""Machine-readable error codes of the messaging API and frames."""

from enum import StrEnum


class MessagingError(StrEnum):
    NOT_FOUND = "not_found"
    INVALID_MEMBERS = "invalid_members"
    EMPTY_MESSAGE = "empty_message"
    DEVICE_MISMATCH = "device_mismatch"  # 409: envelopes miss or add devices
    STALE_DEVICES = "stale_devices"  # 410: envelopes for revoked devices
    ENVELOPE_TOO_LARGE = "envelope_too_large"  # 413
    UNKNOWN_REFERENCE = "unknown_reference"  # thread/ref not a message of the conversation
    INVALID_MENTION = "invalid_mention"
    NOT_ALLOWED = "not_allowed"
    # group administration
    GROUP_TOO_LARGE = "group_too_large"  # 400: over the org's group size (+max_members)
    LAST_ADMIN = "last_admin"  # 409: the only admin leaves or steps down: promote someone
    # attachments
    ATTACHMENT_TOO_LARGE = "attachment_too_large"  # 413: over the org's size limit
    EMPTY_ATTACHMENT = "empty_attachment"  # 400: no bytes
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415: not application/octet-stream
    INVALID_ATTACHMENT = "invalid_attachment"  # 400: not the sender's, or bound elsewhere
    STORAGE_UNAVAILABLE = "storage_unavailable"  # 503: the blob store failed; try again
    STORAGE_QUOTA_EXCEEDED = "storage_quota_exceeded"  # 413: the org's storage quota
    UNSENT_UPLOAD_QUOTA_EXCEEDED = "unsent_upload_quota_exceeded"  # 413: the user's quota
    # queues
    QUEUE_FULL = "queue_full"  # 409: envelopes for devices whose queue is full
    # retention and legal holds
    INVALID_RETENTION = "invalid_retention"  # 400: days out of range
    RETENTION_EXCEEDS_POLICY = "retention_exceeds_policy"  # 403: longer than the org allows
    INVALID_HOLD = "invalid_hold"  # 400: not exactly one of user / conversation
    REASON_REQUIRED = "reason_required"  # 400: a legal hold is placed with why (a case)
