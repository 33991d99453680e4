from rest_framework import serializers

from orgs.api.fields import Base64Field


class ConversationCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["direct", "group"])
    members = serializers.ListField(child=serializers.CharField(max_length=64), max_length=1000)
    title = Base64Field(required=False, allow_null=True, max_bytes=4096)


class ConversationUpdateSerializer(serializers.Serializer):
    title = Base64Field(required=False, allow_null=True, max_bytes=4096)
    topic = Base64Field(required=False, allow_null=True, max_bytes=4096)


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["admin", "member"])


class MarkReadSerializer(serializers.Serializer):
    up_to_seq = serializers.IntegerField(min_value=0, max_value=2**63 - 1)


class ReadStateSerializer(serializers.Serializer):
    conversation = serializers.UUIDField()
    last_seq = serializers.IntegerField()
    read_seq = serializers.IntegerField()
    unread_count = serializers.IntegerField(
        help_text="Others' messages after read_seq (not events, not edits/reactions), "
        "counted up to 100 (100: 100 or more)."
    )
    mention_count = serializers.IntegerField(help_text="Messages after read_seq that mention you.")


class MemberSerializer(serializers.Serializer):
    user_id = serializers.UUIDField()
    role = serializers.CharField()


class ConversationSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    title = serializers.CharField(allow_null=True)
    topic = serializers.CharField(allow_null=True)
    members = MemberSerializer(many=True)
    last_seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    retention_days = serializers.IntegerField(allow_null=True)
    read_seq = serializers.IntegerField(help_text="Your read marker.")
    unread_count = serializers.IntegerField(help_text="As in ReadState.")
    mention_count = serializers.IntegerField(help_text="As in ReadState.")


class MembersAddSerializer(serializers.Serializer):
    user_ids = serializers.ListField(
        child=serializers.CharField(max_length=64), min_length=1, max_length=1000
    )


class EnvelopeSerializer(serializers.Serializer):
    user_id = serializers.CharField(max_length=64)
    device_id = serializers.IntegerField(min_value=1)
    type = serializers.IntegerField(min_value=0, max_value=255)
    body = Base64Field()  # size checked by the service: over 96 KiB is a 413


class MessageSendSerializer(serializers.Serializer):
    """A send's fields, as the OpenAPI schema shows them. Only a description: the fields
    are checked by messaging.api.send_form.parse_send, for REST and WebSocket alike."""

    client_id = serializers.UUIDField()
    body = Base64Field(required=False, allow_null=True)
    envelopes = EnvelopeSerializer(many=True, required=False, allow_null=True, max_length=10000)
    thread = serializers.UUIDField(required=False, allow_null=True)
    refers_to = serializers.UUIDField(required=False, allow_null=True)
    mentions = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=1000)
    attachments = serializers.ListField(
        child=serializers.UUIDField(), required=False, max_length=32
    )


class MessageAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    ts = serializers.DateTimeField()


class MessageSenderSerializer(serializers.Serializer):
    user_id = serializers.UUIDField(allow_null=True)
    device_id = serializers.IntegerField(allow_null=True)


class AttachmentRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()


class FrameEnvelopeSerializer(serializers.Serializer):
    type = serializers.IntegerField()
    body = Base64Field()


class MessageFrameSerializer(serializers.Serializer):
    """A `message` frame (messaging.services.delivery.message_frame), as the WebSocket
    pushes it and GET /messages and the history return it. It only describes responses
    in the OpenAPI schema: the views return the frames as the service builds them."""

    type = serializers.CharField(help_text='Always "message".')
    id = serializers.UUIDField()
    conversation = serializers.UUIDField()
    seq = serializers.IntegerField()
    ts = serializers.DateTimeField()
    sender = MessageSenderSerializer()
    thread = serializers.UUIDField(allow_null=True)
    refers_to = serializers.UUIDField(allow_null=True)
    mentions = serializers.ListField(child=serializers.UUIDField())
    attachments = AttachmentRefSerializer(many=True)
    body = Base64Field(allow_null=True)
    envelope = FrameEnvelopeSerializer(
        allow_null=True, help_text="This device's envelope; always null in the history."
    )
    event = serializers.DictField(
        required=False,
        help_text="Events only: {action, by, ...}: member.added / removed / left / "
        "role_changed, title.changed, topic.changed, retention.changed.",
    )


class AckSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.CharField(max_length=64), max_length=1000)


class RetentionSerializer(serializers.Serializer):
    days = serializers.IntegerField(allow_null=True)


class RetentionStateSerializer(serializers.Serializer):
    days = serializers.IntegerField(allow_null=True)
    effective_days = serializers.IntegerField()
