"""Per-org identity data (tenant schema): users, their devices, login grants, audit log,
MFA factors and the org's policies."""

import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.db import models
from django.utils.crypto import salted_hmac

from orgs.roles import OWNER


class UserManager(BaseUserManager):
    def get_by_natural_key(self, username):
        return self.get(username=username.lower())


class User(AbstractBaseUser):
    """A person of one org. Passwords are argon2 hashes; usernames are lower-case."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    username = models.CharField(max_length=150, unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True)
    # Profile (orgs.services.profiles): a job title, an IANA time zone name ("" = not
    # set) and the storage name of the avatar (a 256x256 PNG made on the server; "" = none).
    title = models.CharField(max_length=100, blank=True)
    time_zone = models.CharField(max_length=64, blank=True)
    avatar = models.CharField(max_length=200, blank=True)
    # A built-in role's name (orgs.roles.BUILTIN_ROLES) or a custom Role's slug.
    role = models.CharField(max_length=40, default="member", db_index=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Raised to end every portal session of the user at once (deactivation): it is part
    # of the session auth hash Django checks on each request.
    session_epoch = models.PositiveIntegerField(default=0)
    # The identity provider's immutable id of this person (SCIM `externalId`, or the SSO
    # subject: SAML NameID / OIDC `sub` / the attribute the org chose). SSO sign-ins and
    # SCIM find the user by it, never by e-mail. Null: not bound to the IdP.
    external_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    LOCAL = "local"
    SCIM = "scim"
    SSO = "sso"
    SOURCES = [
        (LOCAL, "created in Siphera"),
        (SCIM, "provisioned by SCIM"),
        (SSO, "created at SSO sign-in"),
    ]
    source = models.CharField(max_length=10, choices=SOURCES, default=LOCAL)

    USERNAME_FIELD = "username"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    class Meta:
        ordering = ["username"]

    def __str__(self) -> str:
        return self.username

    @property
    def is_owner(self) -> bool:
        return self.role == OWNER

    def get_session_auth_hash(self) -> str:
        """Django ends a session whose stored hash no longer matches: a new password or
        a raised `session_epoch` signs the user out everywhere."""
        return salted_hmac(
            "siphera.accounts.User.get_session_auth_hash",
            f"{self.password}:{self.session_epoch}",
            algorithm="sha256",
        ).hexdigest()


class Role(models.Model):
    """A custom role of this org: a named set of permission codes (orgs.roles.Perm).
    Users hold it by its `slug` in `User.role`; slugs never collide with built-in roles."""

    slug = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    codes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.slug


class Invitation(models.Model):
    """A single-use link for an invited user to set their password. Stored as a hash."""

    user = models.ForeignKey("User", on_delete=models.CASCADE, related_name="invitations")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True)


class PasswordReset(models.Model):
    """A single-use, short-lived link to set a new password, mailed to the user (asked by
    them or sent by an admin: `requested_by`). Stored as a hash (orgs.services.passwords)."""

    user = models.ForeignKey("User", on_delete=models.CASCADE, related_name="password_resets")
    token_hash = models.CharField(max_length=64, unique=True)
    requested_by = models.UUIDField(null=True)  # the admin who sent it; null: the user
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True)


class Device(models.Model):
    """A client installation of one user. `device_id` is small and unique within the user
    and never reused, so a revoked device stays recognisable as stale."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="devices")
    device_id = models.PositiveIntegerField()
    name = models.CharField(max_length=100)
    identity_key = models.BinaryField()
    signing_key = models.BinaryField()
    # sha256 of the bearer token; the token itself is shown once and never stored.
    token_hash = models.CharField(max_length=64, unique=True, null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True)
    # Where it was last seen from (registration, then each socket sign-in), for admins
    # telling a user's devices apart; never used to decide anything.
    last_seen_ip = models.GenericIPAddressField(null=True)
    user_agent = models.CharField(max_length=300, blank=True)
    revoked_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["user_id", "device_id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "device_id"], name="device_id_unique_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.device_id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class PortalSession(models.Model):
    """A portal sign-in, so admins can list and end a user's sessions
    (orgs.services.portal_sessions). The session itself is Django's (its row holds the
    data); this row names it by key and says when and from where it was used. A row whose
    Django session is gone, expired or no longer matches the user's auth hash is not live."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="portal_sessions")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    ip = models.GenericIPAddressField(null=True)
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]


class PendingDomain(models.Model):
    """A host name an org admin asked for, routed only once its DNS proves the org
    controls it (orgs.services.domains): a TXT record `_siphera-verify.<domain>` holding
    `siphera-verify=<token>`. Kept in the org's schema, so two orgs may each claim a name;
    the first to verify gets it (the public `Domain` table stays unique)."""

    domain = models.CharField(max_length=253, unique=True)
    token = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.UUIDField(null=True)
    checked_at = models.DateTimeField(null=True)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["domain"]


class LoginGrant(models.Model):
    """Single-use proof of a login, exchanged for a device token. Stored as a hash."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="grants")
    grant_hash = models.CharField(max_length=64, unique=True)
    method = models.CharField(max_length=20, default="password")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True)


class AuditEntry(models.Model):
    """Append-only, hash-chained record of what admins and the platform did in this org.

    `hash` = HMAC-SHA256 (key `key_id`, from the key ring) of prev_hash + canonical JSON of
    this entry's fields, or plain SHA-256 for entries from before the chain was keyed
    (`key_id` "sha256"); see orgs.services.audit.
    """

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField()
    event = models.CharField(max_length=64, db_index=True)
    actor_id = models.UUIDField(null=True)
    actor_label = models.CharField(max_length=200, blank=True)
    ip = models.GenericIPAddressField(null=True)
    user_agent = models.CharField(max_length=300, blank=True)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    data = models.JSONField(default=dict)
    # Which key of the ring made `hash` (orgs.services.audit): no default, so a row
    # written without naming its key is refused.
    key_id = models.CharField(max_length=16)
    # Unique: each entry has exactly one successor, so the chain cannot fork.
    prev_hash = models.CharField(max_length=64, unique=True)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]


class OrgPolicy(models.Model):
    """The org's security policies: one row per org schema (pk is always 1).

    Read and changed only through orgs.services.policy (the MFA policy also through
    orgs.services.mfa).
    """

    MFA_OFF = "off"
    MFA_REQUIRED_FOR_ADMINS = "required_for_admins"
    MFA_REQUIRED_FOR_ALL = "required_for_all"
    MFA_CHOICES = [
        (MFA_OFF, "Off: each user decides"),
        (MFA_REQUIRED_FOR_ADMINS, "Required for users with portal access"),
        (MFA_REQUIRED_FOR_ALL, "Required for everyone"),
    ]

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    mfa_policy = models.CharField(max_length=30, choices=MFA_CHOICES, default=MFA_OFF)
    # Portal sessions end this long after sign-in (null: SESSION_COOKIE_AGE).
    session_lifetime_minutes = models.PositiveIntegerField(null=True)
    # Allowed login methods. Owners may always use a password (break-glass), so turning
    # passwords off cannot lock the org out while SSO is being set up.
    password_login = models.BooleanField(default=True)
    sso_login = models.BooleanField(default=False)
    # Whether read markers are relayed to the other members of a conversation.
    read_receipts = models.BooleanField(default=True)
    # When on, nobody is told anyone else's presence (orgs.services.presence).
    presence_hidden = models.BooleanField(default=False)
    # Shortest password anyone of the org may set (every path: orgs.accounts.passwords).
    password_min_length = models.PositiveSmallIntegerField(default=8)
    # Most members a group conversation may have (messaging checks it on create and add;
    # lowering it leaves bigger groups as they are, but they take no one new).
    group_max_members = models.PositiveIntegerField(default=1000)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="org_policy_singleton")
        ]


class PresenceStatus(models.Model):
    """A status the user set on themselves: do not disturb or away, until `until` (null:
    until they clear it). No row, or one whose `until` has passed: no status.

    Changed only through orgs.services.presence; what is connected lives in Redis."""

    DND = "dnd"
    AWAY = "away"
    CHOICES = [(DND, "Do not disturb"), (AWAY, "Away")]

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, primary_key=True, related_name="presence_status"
    )
    status = models.CharField(max_length=10, choices=CHOICES)
    until = models.DateTimeField(null=True)
    updated_at = models.DateTimeField(auto_now=True)


class TotpFactor(models.Model):
    """A user's TOTP (RFC 6238) authenticator. The seed is encrypted with the key ring
    (siphera.crypto); `confirmed_at` is null while enrolment awaits its first code."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="totp")
    secret_encrypted = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True)
    # The newest time step a code was accepted for: a code is good once (no replay).
    last_step = models.BigIntegerField(null=True)


class RecoveryCode(models.Model):
    """A one-time recovery code, stored as sha256 (80 random bits: no slow hash needed)."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "code_hash"], name="recovery_code_unique")
        ]
