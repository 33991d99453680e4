"""The fields of a send, for POST .../messages and the `send` frame alike.

Checked in plain Python rather than by a DRF serializer: the WebSocket parses hundreds of
sends a second, and DRF's field machinery was 8 % of a web process's CPU at full rate.
`MessageSendSerializer` only describes these fields in the OpenAPI schema
(messaging.api.conversation_serializers); this is what checks them.
"""

from __future__ import annotations

import uuid

from messaging.services.delivery import Envelope
from orgs.api.fields import from_b64
from siphera.params import INT_MAX

MAX_ENVELOPES = 10000
MAX_MENTIONS = 1000
MAX_ATTACHMENTS = 32


class SendFormError(Exception):
    """A malformed field: `field` is its path (`envelopes[2].device_id`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def parse_send(data) -> dict:
    """check_send_message's keyword arguments from a send's JSON object (other keys, such
    as a frame's `type` and `conversation`, are left alone). Raises SendFormError."""
    if not isinstance(data, dict):
        raise SendFormError("non_field_errors", "Expected an object.")
    if "client_id" not in data:
        raise SendFormError("client_id", "This field is required.")
    return {
        "client_id": _uuid(data["client_id"], "client_id"),
        "body": _b64_or_none(data.get("body"), "body"),
        "envelopes": _envelopes(data.get("envelopes")),
        "thread": _uuid_or_none(data.get("thread"), "thread"),
        "refers_to": _uuid_or_none(data.get("refers_to"), "refers_to"),
        # Each user once, in the order given (a user named twice is one mention: the
        # count and the frame are per message), as the database spells the id.
        "mentions": list(
            dict.fromkeys(map(str, _uuids(data.get("mentions", []), "mentions", MAX_MENTIONS)))
        ),
        "attachments": [
            str(a) for a in _uuids(data.get("attachments", []), "attachments", MAX_ATTACHMENTS)
        ],
    }


def _uuid(value, field: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise SendFormError(field, "Must be a valid UUID.")


def _uuid_or_none(value, field: str) -> uuid.UUID | None:
    return None if value is None else _uuid(value, field)


def _uuids(values, field: str, most: int) -> list[uuid.UUID]:
    _list(values, field, most)
    return [_uuid(v, f"{field}[{i}]") for i, v in enumerate(values)]


def _list(values, field: str, most: int) -> None:
    if not isinstance(values, list):
        raise SendFormError(field, "Expected a list.")
    if len(values) > most:
        raise SendFormError(field, f"Ensure this field has no more than {most} elements.")


def _b64(value, field: str) -> bytes:
    try:
        return from_b64(value)
    except ValueError:
        raise SendFormError(field, "Not valid standard base64.") from None


def _b64_or_none(value, field: str) -> bytes | None:
    return None if value is None else _b64(value, field)


def _int(value, field: str, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SendFormError(field, "A valid integer is required.")
    if value < lo:
        raise SendFormError(field, f"Ensure this value is greater than or equal to {lo}.")
    if hi is not None and value > hi:
        raise SendFormError(field, f"Ensure this value is less than or equal to {hi}.")
    return value


def _envelopes(values) -> list[Envelope] | None:
    if values is None:
        return None
    _list(values, "envelopes", MAX_ENVELOPES)
    envelopes = []
    for i, item in enumerate(values):
        at = f"envelopes[{i}]"
        if not isinstance(item, dict):
            raise SendFormError(at, "Expected an object.")
        for name in ("user_id", "device_id", "type", "body"):
            if name not in item:
                raise SendFormError(f"{at}.{name}", "This field is required.")
        user_id = item["user_id"]
        if not isinstance(user_id, str) or not user_id or len(user_id) > 64:
            raise SendFormError(f"{at}.user_id", "A user id: a string of 1 to 64 characters.")
        envelopes.append(
            Envelope(
                user_id=user_id,
                device_id=_int(item["device_id"], f"{at}.device_id", 1, INT_MAX),
                type=_int(item["type"], f"{at}.type", 0, 255),
                body=_b64(item["body"], f"{at}.body"),
            )
        )
    return envelopes
