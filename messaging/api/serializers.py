"""Messaging API serializers: device registration with its keys, key uploads and
bundles. One shape per key, so a key looks the same wherever it is sent or returned."""

from rest_framework import serializers

from messaging.services import keys
from orgs.api.fields import Base64Field

KEY_MAX = 4096  # generous: room for post-quantum KEM public keys (ML-KEM-1024: 1568 bytes)


class SignedKeySerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    key = Base64Field(max_bytes=KEY_MAX)
    signature = Base64Field(max_bytes=64)

    def to_key(self, data) -> keys.SignedKey:
        return keys.SignedKey(key_id=data["id"], key=data["key"], signature=data["signature"])


class OneTimeKeySerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    key = Base64Field(max_bytes=KEY_MAX)


def _unique_ids(items, what):
    ids = [item["id"] for item in items]
    if len(ids) != len(set(ids)):
        raise serializers.ValidationError(f"Duplicate {what} id.")
    return items


class DeviceRegistrationSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    identity_key = Base64Field(max_bytes=KEY_MAX)
    signing_key = Base64Field(max_bytes=32)
    signed_prekey = SignedKeySerializer()
    one_time_prekeys = OneTimeKeySerializer(many=True, required=False, default=list)
    pq_prekeys = SignedKeySerializer(many=True, required=False, default=list)

    def validate_one_time_prekeys(self, value):
        if len(value) > keys.MAX_ONE_TIME_PER_REQUEST:
            raise serializers.ValidationError(
                f"At most {keys.MAX_ONE_TIME_PER_REQUEST} keys per request."
            )
        return _unique_ids(value, "one-time prekey")

    def validate_pq_prekeys(self, value):
        if len(value) > keys.MAX_ONE_TIME_PER_REQUEST:
            raise serializers.ValidationError(
                f"At most {keys.MAX_ONE_TIME_PER_REQUEST} keys per request."
            )
        return _unique_ids(value, "pq prekey")

    def to_bundle(self) -> keys.DeviceKeys:
        data = self.validated_data
        signed = data["signed_prekey"]
        return keys.DeviceKeys(
            identity_key=data["identity_key"],
            signing_key=data["signing_key"],
            signed_prekey=keys.SignedKey(signed["id"], signed["key"], signed["signature"]),
            one_time_prekeys=[keys.OneTimeKey(k["id"], k["key"]) for k in data["one_time_prekeys"]],
            pq_prekeys=[
                keys.SignedKey(k["id"], k["key"], k["signature"]) for k in data["pq_prekeys"]
            ],
        )


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
