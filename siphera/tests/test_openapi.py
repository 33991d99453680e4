"""The OpenAPI schema (drf-spectacular) is generated without a warning or an error, and
what it says about the `message` frames matches what the service builds."""

import datetime
import uuid

from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from messaging.api.conversation_serializers import MessageFrameSerializer
from messaging.models import Message
from messaging.services.delivery import message_frame


def test_schema_generation_emits_no_warnings_or_errors(capsys):
    """What `manage.py spectacular --validate --fail-on-warn` checks: a view drf-spectacular
    cannot describe, or two serializers sharing a component name, fails here."""
    GENERATOR_STATS.reset()
    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)  # raises on a schema that is not valid OpenAPI 3
    assert not GENERATOR_STATS, capsys.readouterr().err
    assert "/api/v1/messages" in schema["paths"]


def test_queue_and_history_are_described_as_message_frames():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    frames = {"type": "array", "items": {"$ref": "#/components/schemas/MessageFrame"}}
    for path in ("/api/v1/messages", "/api/v1/conversations/{conversation_id}/messages"):
        ok = schema["paths"][path]["get"]["responses"]["200"]
        assert ok["content"]["application/json"]["schema"] == frames


def test_message_frame_serializer_lists_the_keys_of_a_frame():
    """The serializer only documents: if message_frame gains or loses a key, so must it."""
    message = Message(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        seq=1,
        kind=Message.EVENT,
        sender_device_id=1,
        body=b"x",
        event={"action": "joined", "user_ids": []},
        created_at=datetime.datetime.now(datetime.UTC),
    )
    assert set(message_frame(message, None)) == set(MessageFrameSerializer().fields)
