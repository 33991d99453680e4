"""Serializer fields shared by the API: strict standard base64."""

import base64
import binascii

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


@extend_schema_field(OpenApiTypes.BYTE)
class Base64Field(serializers.Field):
    """Standard-alphabet base64 <-> bytes. Rejects anything else instead of guessing."""

    default_error_messages = {
        "invalid": "Not valid standard base64.",
        "too_long": "At most {max} bytes after decoding.",
    }

    def __init__(self, *, max_bytes: int | None = None, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            raw = from_b64(data)
        except ValueError:
            self.fail("invalid")
        if self.max_bytes is not None and len(raw) > self.max_bytes:
            self.fail("too_long", max=self.max_bytes)
        return raw

    def to_representation(self, value):
        return base64.b64encode(bytes(value)).decode("ascii")


def from_b64(data) -> bytes:
    """The bytes of a standard base64 string; ValueError for anything else."""
    if not isinstance(data, str):
        raise ValueError("not a string")
    try:
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from None


def b64(value) -> str | None:
    return None if value is None else base64.b64encode(bytes(value)).decode("ascii")
