"""Request and response shapes of profiles, passwords and the directory."""

from django.urls import reverse
from rest_framework import serializers

from orgs.accounts.passwords import MAX_LENGTH
from siphera.api_errors import ApiError


def avatar_url(user) -> str | None:
    return reverse("user-avatar", args=[user.pk]) if user.avatar else None


def profile_changes(request) -> dict:
    """The JSON object of a profile PATCH, checked by orgs.services.profiles (types,
    unknown fields, lengths): DRF's CharField would turn 42 into "42" and drop unknowns."""
    if not isinstance(request.data, dict):
        raise ApiError(400, "invalid_profile", "Send a JSON object of profile fields.")
    return dict(request.data)


class ProfileSerializer(serializers.Serializer):
    """A person as the directory shows them (no e-mail address, no role)."""

    user_id = serializers.UUIDField(source="pk")
    username = serializers.CharField()
    display_name = serializers.CharField()
    title = serializers.CharField()
    time_zone = serializers.CharField(help_text='IANA name, e.g. "Europe/Paris"; "" if unset')
    avatar_url = serializers.SerializerMethodField()
    is_active = serializers.BooleanField()

    def get_avatar_url(self, user) -> str | None:
        return avatar_url(user)


class ProfileUpdateSerializer(serializers.Serializer):
    """Fields are checked by orgs.services.profiles (lengths, control characters, zone)."""

    display_name = serializers.CharField(
        max_length=200, required=False, allow_blank=True, trim_whitespace=False
    )
    title = serializers.CharField(
        max_length=100, required=False, allow_blank=True, trim_whitespace=False
    )
    time_zone = serializers.CharField(max_length=64, required=False, allow_blank=True)


class DirectoryPageSerializer(serializers.Serializer):
    users = ProfileSerializer(many=True)
    next_after = serializers.CharField(
        allow_null=True, help_text="Pass as `after` for the next page; null: no more."
    )


class PasswordChangeSerializer(serializers.Serializer):
    current_password = serializers.CharField(max_length=MAX_LENGTH, trim_whitespace=False)
    new_password = serializers.CharField(max_length=MAX_LENGTH, trim_whitespace=False)


class PasswordResetRequestSerializer(serializers.Serializer):
    username = serializers.CharField(
        max_length=254, required=False, help_text="Username or e-mail address"
    )
    email = serializers.CharField(max_length=254, required=False)

    def validate(self, attrs):
        if not (attrs.get("username") or attrs.get("email")):
            raise serializers.ValidationError("Give a username or an e-mail address.")
        return attrs


class PasswordResetConfirmSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200)
    password = serializers.CharField(max_length=MAX_LENGTH, trim_whitespace=False)


class AcceptedSerializer(serializers.Serializer):
    detail = serializers.CharField()


class AdminResetSentSerializer(serializers.Serializer):
    sent_to = serializers.CharField()
    expires_in = serializers.IntegerField()
