"""Messaging API serializers. Key shapes are the ones device registration uses
(orgs.api.serializers), so a key looks the same wherever it is sent or returned."""

from rest_framework import serializers

from messaging.services import keys
from orgs.api.fields import Base64Field
from orgs.api.serializers import OneTimeKeySerializer, SignedKeySerializer


class KeyUploadSerializer(serializers.Serializer):
    """PUT /api/v1/keys. Counts, duplicate ids and signatures are checked by the service
    (messaging.services.keys.check_upload_keys), which answers with specific codes."""

    signed_prekey = SignedKeySerializer(required=False)
    one_time_prekeys = OneTimeKeySerializer(many=True, required=False, default=list)
    pq_prekeys = SignedKeySerializer(many=True, required=False, default=list)

    def to_upload(self) -> keys.KeyUpload:
        data = self.validated_data
        signed = data.get("signed_prekey")
        return keys.KeyUpload(
            signed_prekey=(
                keys.SignedKey(signed["id"], signed["key"], signed["signature"]) if signed else None
            ),
            one_time_prekeys=[keys.OneTimeKey(k["id"], k["key"]) for k in data["one_time_prekeys"]],
            pq_prekeys=[
                keys.SignedKey(k["id"], k["key"], k["signature"]) for k in data["pq_prekeys"]
            ],
        )


class KeyCountSerializer(serializers.Serializer):
    one_time = serializers.IntegerField()
    pq = serializers.IntegerField()


class _SignedKeyOut(SignedKeySerializer):
    id = serializers.IntegerField(source="key_id")


class _OneTimeKeyOut(OneTimeKeySerializer):
    id = serializers.IntegerField(source="key_id")


class DeviceBundleSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    identity_key = Base64Field()
    signing_key = Base64Field()
    signed_prekey = _SignedKeyOut(allow_null=True)
    one_time_prekey = _OneTimeKeyOut(allow_null=True)
    pq_prekey = _SignedKeyOut(allow_null=True)


class KeyBundlesSerializer(serializers.Serializer):
    user_id = serializers.UUIDField()
    devices = DeviceBundleSerializer(many=True)
