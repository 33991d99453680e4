"""Request and response shapes of the MFA and org-policy endpoints."""

from rest_framework import serializers

from orgs.services.mfa import MFA_POLICIES


class OtpSerializer(serializers.Serializer):
    otp = serializers.CharField(
        max_length=40, help_text="A 6-digit TOTP code, or (where allowed) a recovery code."
    )


class MfaStatusSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    pending = serializers.BooleanField(help_text="Enrolment started, not confirmed yet.")
    confirmed_at = serializers.DateTimeField(allow_null=True)
    recovery_codes_left = serializers.IntegerField()
    required = serializers.BooleanField(help_text="The org's policy requires MFA for you.")


class EnrollmentSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="Base32 seed, for typing into an app.")
    otpauth_uri = serializers.CharField(help_text="otpauth://totp/... for a QR code.")


class ConfirmedSerializer(serializers.Serializer):
    recovery_codes = serializers.ListField(child=serializers.CharField())
    grant = serializers.CharField(required=False, help_text="Only with an enrolment token.")
    expires_in = serializers.IntegerField(required=False)


class RecoveryCodesSerializer(serializers.Serializer):
    recovery_codes = serializers.ListField(child=serializers.CharField())


class OrgPolicySerializer(serializers.Serializer):
    mfa_policy = serializers.ChoiceField(choices=list(MFA_POLICIES))
