"""Request and response shapes of the admin endpoints: users, roles, policy, audit."""

from rest_framework import serializers

from orgs.accounts.passwords import MIN_LENGTH_CEILING, MIN_LENGTH_FLOOR
from orgs.services.mfa import MFA_POLICIES
from orgs.services.policy import (
    GROUP_MEMBERS_MAX,
    GROUP_MEMBERS_MIN,
    SESSION_MINUTES_MAX,
    SESSION_MINUTES_MIN,
)


class AdminUserSerializer(serializers.Serializer):
    user_id = serializers.UUIDField(source="pk")
    username = serializers.CharField()
    display_name = serializers.CharField()
    email = serializers.CharField()
    role = serializers.CharField()
    is_active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    last_login = serializers.DateTimeField(allow_null=True)


class UserCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(
        max_length=1024,
        required=False,
        trim_whitespace=False,
        help_text="Omit to invite: the answer carries a single-use link to set one.",
    )
    role = serializers.CharField(max_length=40, default="member")
    display_name = serializers.CharField(max_length=200, required=False, default="")
    email = serializers.EmailField(required=False, default="")


class UserCreatedSerializer(AdminUserSerializer):
    invitation_url = serializers.CharField(required=False, help_text="Shown once.")
    invitation_expires_in = serializers.IntegerField(required=False, help_text="Seconds.")


class RoleChangeSerializer(serializers.Serializer):
    role = serializers.CharField(max_length=40)


class RoleSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    codes = serializers.ListField(child=serializers.CharField())
    builtin = serializers.BooleanField()
    users = serializers.IntegerField(help_text="Active users holding the role.")


class RoleCreateSerializer(serializers.Serializer):
    slug = serializers.CharField(max_length=40)
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=300, required=False, default="")
    codes = serializers.ListField(child=serializers.CharField(max_length=40), max_length=100)


class RoleUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    description = serializers.CharField(max_length=300, required=False, allow_blank=True)
    codes = serializers.ListField(
        child=serializers.CharField(max_length=40), max_length=100, required=False
    )


class PermissionSerializer(serializers.Serializer):
    code = serializers.CharField()
    label = serializers.CharField()


class PolicySerializer(serializers.Serializer):
    mfa_policy = serializers.ChoiceField(choices=list(MFA_POLICIES))
    session_lifetime_minutes = serializers.IntegerField(
        min_value=SESSION_MINUTES_MIN,
        max_value=SESSION_MINUTES_MAX,
        allow_null=True,
        help_text="Portal sessions end this long after sign-in; null: the server default.",
    )
    password_login = serializers.BooleanField(help_text="Owners may always use a password.")
    sso_login = serializers.BooleanField()
    read_receipts = serializers.BooleanField()
    presence_hidden = serializers.BooleanField(
        help_text="Nobody sees anyone else's presence (own status still settable)."
    )
    password_min_length = serializers.IntegerField(
        min_value=MIN_LENGTH_FLOOR,
        max_value=MIN_LENGTH_CEILING,
        help_text="Shortest password anyone of the org may set (new passwords only).",
    )
    group_max_members = serializers.IntegerField(
        min_value=GROUP_MEMBERS_MIN,
        max_value=GROUP_MEMBERS_MAX,
        help_text="Most members a group conversation may have (groups already bigger keep "
        "their members but take no one new).",
    )


class AuditEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ts = serializers.CharField()
    event = serializers.CharField()
    actor_id = serializers.CharField(allow_null=True)
    actor_label = serializers.CharField()
    ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    data = serializers.JSONField()
    key_id = serializers.CharField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()


class AuditPageSerializer(serializers.Serializer):
    entries = AuditEntrySerializer(many=True)
    next_before = serializers.IntegerField(allow_null=True)


class ChainReportSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    count = serializers.IntegerField()
    head = serializers.CharField()
    broken_id = serializers.IntegerField(allow_null=True)
    problem = serializers.CharField(allow_null=True)
    detail = serializers.CharField()
    # The latest anchor (signed head kept outside the database) the log matched, if any.
    anchor_id = serializers.IntegerField(allow_null=True)
    anchored_at = serializers.CharField(allow_blank=True)
