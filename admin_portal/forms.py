"""Portal forms: parsing and field validation only; services decide."""

from django import forms

from admin_portal.units import UNITS, human_bytes, split_bytes, to_bytes
from orgs.accounts.models import OrgPolicy
from orgs.accounts.passwords import MIN_LENGTH_CEILING, MIN_LENGTH_FLOOR
from orgs.roles import PERM_LABELS, Perm
from orgs.services.policy import GROUP_MEMBERS_MAX, GROUP_MEMBERS_MIN


class LoginForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password = forms.CharField(
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class OtpForm(forms.Form):
    otp = forms.CharField(
        label="Authentication code",
        max_length=40,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
        help_text="The 6-digit code from your authenticator app, or a recovery code.",
    )


class SetPasswordForm(forms.Form):
    password = forms.CharField(
        label="New password",
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "autofocus": True}),
    )
    confirm = forms.CharField(
        label="Repeat the password",
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("password") != data.get("confirm"):
            raise forms.ValidationError("The two passwords differ.")
        return data


class UserSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=150, label="Search")


def role_choices(roles) -> list[tuple[str, str]]:
    return [(r.slug, f"{r.name}" + ("" if r.builtin else " (custom)")) for r in roles]


class UserCreateForm(forms.Form):
    INVITE = "invite"
    PASSWORD = "password"  # noqa: S105 (a choice value, not a secret)

    username = forms.CharField(max_length=150)
    display_name = forms.CharField(max_length=200, required=False, label="Display name")
    email = forms.EmailField(required=False)
    role = forms.ChoiceField()
    how = forms.ChoiceField(
        label="Sign-in",
        choices=[
            (INVITE, "Invite: make a link for them to set their password"),
            (PASSWORD, "Set an initial password now"),
        ],
        initial=INVITE,
        widget=forms.RadioSelect,
    )
    password = forms.CharField(
        max_length=1024,
        strip=False,
        required=False,
        label="Initial password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, roles=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = role_choices(roles)
        self.fields["role"].initial = "member"

    def clean(self):
        data = super().clean()
        if data.get("how") == self.PASSWORD and not data.get("password"):
            self.add_error("password", "Enter a password, or choose to invite.")
        return data


class RoleChangeForm(forms.Form):
    role = forms.ChoiceField(label="Role")

    def __init__(self, *args, roles=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = role_choices(roles)


PERM_CHOICES = [(str(p), f"{p} — {PERM_LABELS[p]}") for p in Perm]


class RoleForm(forms.Form):
    slug = forms.CharField(
        max_length=40,
        label="Role id",
        help_text="2-40 of a-z, 0-9 and _, starting with a letter; cannot change later.",
    )
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=300, required=False)
    codes = forms.MultipleChoiceField(
        choices=PERM_CHOICES,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Permissions",
    )


class PolicyForm(forms.Form):
    mfa_policy = forms.ChoiceField(choices=OrgPolicy.MFA_CHOICES, label="Two-factor authentication")
    session_lifetime_minutes = forms.IntegerField(
        min_value=5,
        max_value=30 * 24 * 60,
        required=False,
        label="Portal session lifetime (minutes)",
        help_text="Empty: the server default.",
    )
    password_login = forms.BooleanField(
        required=False,
        label="Allow password sign-in",
        help_text="Owners can always sign in with a password.",
    )
    sso_login = forms.BooleanField(required=False, label="Allow single sign-on")
    read_receipts = forms.BooleanField(required=False, label="Relay read receipts")
    presence_hidden = forms.BooleanField(required=False, label="Hide presence")
    password_min_length = forms.IntegerField(
        min_value=MIN_LENGTH_FLOOR,
        max_value=MIN_LENGTH_CEILING,
        required=False,
        label="Minimum password length",
        help_text="For every password set from now on; breached and common passwords are "
        "always refused.",
    )
    group_max_members = forms.IntegerField(
        min_value=GROUP_MEMBERS_MIN,
        max_value=GROUP_MEMBERS_MAX,
        required=False,
        label="Largest group (members)",
        help_text="Groups already bigger keep their members but take no one new.",
    )

    def clean(self):
        data = super().clean()
        for name in ("password_min_length", "group_max_members"):
            if data.get(name) is None:
                data.pop(name, None)  # left empty: unchanged
        return data


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150, label="Actor")
    event = forms.ChoiceField(required=False, label="Event")
    target_type = forms.CharField(required=False, max_length=40, label="Target type")
    target_id = forms.CharField(required=False, max_length=100, label="Target id")
    since = forms.CharField(
        required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.CharField(
        required=False, label="Until", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )

    def __init__(self, *args, families=(), names=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["event"].choices = [
            ("", "Any event"),
            ("Families", [(f, f) for f in families]),
            ("Events", [(n, n) for n in names]),
        ]


class SsoForm(forms.Form):
    """The org's identity provider. Protocol settings are read by orgs.sso.saml / .oidc;
    empty secret fields keep what is stored."""

    kind = forms.ChoiceField(
        choices=[("saml", "SAML 2.0"), ("oidc", "OpenID Connect")], label="Protocol"
    )
    display_name = forms.CharField(
        max_length=100, label="Button label", help_text='Shown as "Sign in with …".'
    )
    metadata_url = forms.URLField(
        assume_scheme="https",
        required=False,
        max_length=2000,
        label="IdP metadata URL (SAML)",
        help_text="Fetched now and refreshed daily; new signing certificates are picked up.",
    )
    metadata_xml = forms.CharField(
        required=False,
        max_length=1_000_000,
        widget=forms.Textarea(attrs={"rows": 5}),
        label="or IdP metadata XML (SAML)",
    )
    issuer = forms.URLField(
        assume_scheme="https", required=False, max_length=2000, label="Issuer URL (OIDC)"
    )
    client_id = forms.CharField(required=False, max_length=255, label="Client id (OIDC)")
    client_secret = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.PasswordInput(render_value=False),
        label="Client secret (OIDC)",
        help_text="Leave empty to keep the stored one (or for a public client using PKCE only).",
    )
    subject_attribute = forms.CharField(
        required=False,
        max_length=200,
        label="Immutable user id attribute",
        help_text="Empty: the SAML NameID or the OIDC sub. Users are bound to it, never to e-mail.",
    )
    map_username = forms.CharField(required=False, max_length=200, label="Username attribute")
    map_email = forms.CharField(required=False, max_length=200, label="E-mail attribute")
    map_display_name = forms.CharField(
        required=False, max_length=200, label="Display name attribute"
    )
    map_groups = forms.CharField(required=False, max_length=200, label="Groups attribute")
    jit_provisioning = forms.BooleanField(
        required=False, label="Create users at their first sign-in"
    )
    link_by_username = forms.BooleanField(
        required=False, label="Bind existing users by username at their first sign-in"
    )
    allow_idp_initiated = forms.BooleanField(
        required=False, label="Accept IdP-initiated sign-ins (SAML)"
    )
    trust_idp_mfa = forms.BooleanField(
        required=False, label="Trust the IdP's multi-factor authentication instead of TOTP"
    )
    group_roles = forms.CharField(
        required=False,
        max_length=20000,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Group → role",
        help_text="One 'group = role' per line; the first match wins, no match is 'member'. "
        "Empty: roles are managed in Siphera.",
    )

    def settings_payload(self) -> dict:
        """The body of PUT /api/v1/org/sso this form stands for."""
        data = self.cleaned_data
        if data["kind"] == "saml":
            config = {k: data[k].strip() for k in ("metadata_url", "metadata_xml") if data[k]}
        else:
            config = {k: data[k].strip() for k in ("issuer", "client_id") if data[k]}
        payload = {
            "kind": data["kind"],
            "display_name": data["display_name"],
            "config": config,
            "subject_attribute": data["subject_attribute"],
            "attribute_map": {
                key: data[f"map_{key}"] for key in ("username", "email", "display_name", "groups")
            },
            **{
                flag: data[flag]
                for flag in (
                    "jit_provisioning",
                    "link_by_username",
                    "allow_idp_initiated",
                    "trust_idp_mfa",
                )
            },
        }
        if data["kind"] == "oidc" and data["client_secret"]:
            payload["secret"] = data["client_secret"]
        return payload

    def group_role_entries(self) -> list[dict]:
        entries = []
        for number, line in enumerate(self.cleaned_data["group_roles"].splitlines(), 1):
            if not line.strip():
                continue
            group, sep, role = line.rpartition("=")
            if not sep or not group.strip() or not role.strip():
                raise forms.ValidationError(f"Line {number}: write 'group = role'.")
            entries.append({"group": group.strip(), "role": role.strip()})
        return entries


class ProfileForm(forms.Form):
    """The signed-in user's own profile; orgs.services.profiles checks the values."""

    display_name = forms.CharField(max_length=200, required=False, label="Display name")
    title = forms.CharField(max_length=100, required=False, label="Job title")
    time_zone = forms.CharField(
        max_length=64,
        required=False,
        label="Time zone",
        help_text="An IANA name such as Europe/Paris; empty: not set.",
        widget=forms.TextInput(attrs={"list": "time-zones", "autocomplete": "off"}),
    )


class AvatarForm(forms.Form):
    avatar = forms.FileField(
        label="New picture",
        help_text="PNG, JPEG, GIF or WebP; stored as a 256×256 PNG without its metadata.",
        widget=forms.ClearableFileInput(
            attrs={"accept": "image/png,image/jpeg,image/gif,image/webp"}
        ),
    )


class PasswordChangeForm(SetPasswordForm):
    current = forms.CharField(
        label="Current password",
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )
    field_order = ["current", "password", "confirm"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password"].widget.attrs.pop("autofocus", None)


class RetentionPolicyForm(forms.Form):
    retention_days = forms.IntegerField(
        min_value=1,
        max_value=36500,
        required=False,
        label="Keep messages for (days)",
        help_text="Empty: the server default.",
    )


class ConversationRetentionForm(forms.Form):
    conversation = forms.UUIDField(label="Conversation id")
    days = forms.IntegerField(
        min_value=1,
        max_value=36500,
        required=False,
        label="Days",
        help_text="Empty: clear the override (the org's policy applies).",
    )


class HoldForm(forms.Form):
    USER = "user"
    CONVERSATION = "conversation"

    kind = forms.ChoiceField(
        choices=[(USER, "A user"), (CONVERSATION, "A conversation")],
        widget=forms.RadioSelect,
        initial=USER,
        label="Hold",
    )
    username = forms.CharField(max_length=150, required=False, label="Username")
    conversation = forms.UUIDField(required=False, label="Conversation id")
    reason = forms.CharField(
        max_length=500,
        label="Reason",
        help_text="Required: kept with the hold and in the audit log (e.g. a case number).",
    )

    def clean(self):
        data = super().clean()
        if data.get("kind") == self.USER and not data.get("username"):
            self.add_error("username", "Name the user to hold.")
        if data.get("kind") == self.CONVERSATION and not data.get("conversation"):
            self.add_error("conversation", "Give the conversation's id.")
        return data


class HoldReleaseForm(forms.Form):
    reason = forms.CharField(max_length=500, label="Why release it")


class DomainForm(forms.Form):
    domain = forms.CharField(max_length=253, label="Host name", help_text="e.g. chat.example.com")


class QuotaForm(forms.Form):
    """The org's attachment size limit and quotas (messaging.services.retention's policy):
    byte sizes typed as an amount and a binary unit, the queue cap as a count. Empty: the
    platform default. `limits` (the policy payload's) bound each field here, so an error
    is said in the units typed; the service checks again."""

    BYTE_FIELDS = {
        "attachment_max_bytes": "Largest attachment",
        "attachment_storage_quota_bytes": "Attachment storage for the org",
        "unsent_upload_quota_bytes": "Uploads not yet sent, per user",
    }
    device_queue_max = forms.IntegerField(
        required=False,
        min_value=1,
        label="Messages queued per device",
        help_text="A device offline longer than that gets no more until it catches up: "
        "senders are told (409 queue_full), nothing already queued is dropped.",
    )

    def __init__(self, *args, limits: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.fields["device_queue_max"].max_value = limits["device_queue_max"][1]
        self.fields["device_queue_max"].widget.attrs["max"] = limits["device_queue_max"][1]
        for name, label in self.BYTE_FIELDS.items():
            self.fields[f"{name}_amount"] = forms.DecimalField(
                required=False,
                min_value=0,
                max_digits=20,
                decimal_places=3,
                label=label,
                widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
            )
            self.fields[f"{name}_unit"] = forms.ChoiceField(
                choices=[(unit, unit) for unit, _ in UNITS],
                initial="GiB",
                label=f"{label}: unit",
            )

    @classmethod
    def initial_from(cls, payload: dict) -> dict:
        """What the form shows for the policy as set (empty where the default applies)."""
        initial: dict = {"device_queue_max": payload["device_queue_max"]}
        for name in cls.BYTE_FIELDS:
            if payload[name] is None:
                initial[f"{name}_unit"] = split_bytes(payload["defaults"][name])[1]
            else:
                amount, unit = split_bytes(payload[name])
                initial[f"{name}_amount"], initial[f"{name}_unit"] = amount, unit
        return initial

    def byte_field_rows(self, payload: dict) -> list[dict]:
        """Per byte size, its two fields and what the policy payload says of it."""
        return [
            {
                "name": name,
                "amount": self[f"{name}_amount"],
                "unit": self[f"{name}_unit"],
                "set": payload[name] is not None,
                "effective": payload["effective"][name],
                "default": payload["defaults"][name],
                "high": self.limits[name][1],
            }
            for name in self.BYTE_FIELDS
        ]

    def clean(self):
        data = super().clean()
        for name in self.BYTE_FIELDS:
            amount, unit = data.get(f"{name}_amount"), data.get(f"{name}_unit")
            if amount is None or unit is None:
                continue
            size = to_bytes(amount, unit)
            low, high = self.limits[name]
            if not low <= size <= high:
                self.add_error(
                    f"{name}_amount",
                    f"Between {human_bytes(low)} and {human_bytes(high)}; "
                    f"{amount.normalize():f} {unit} is {human_bytes(size)}.",
                )
        return data

    def policy_changes(self) -> dict:
        """The fields of check_set_policy this form stands for (None: the default)."""
        data = self.cleaned_data
        changes = {"device_queue_max": data.get("device_queue_max")}
        for name in self.BYTE_FIELDS:
            amount = data.get(f"{name}_amount")
            changes[name] = None if amount is None else to_bytes(amount, data[f"{name}_unit"])
        return changes


class RecordingPolicyForm(forms.Form):
    """Who the compliance recorder records (calls.services.recording_policy). Usernames
    are turned into user ids by the view; the service checks roles and users."""

    OFF, EVERYONE, CHOSEN = "off", "everyone", "chosen"
    USERNAMES_MAX = 1000

    mode = forms.ChoiceField(
        choices=[
            (OFF, "Off: no call is recorded"),
            (EVERYONE, "Every 1:1 call in the org"),
            (CHOSEN, "1:1 calls of the roles and people chosen below"),
        ],
        widget=forms.RadioSelect,
        label="Record",
    )
    roles = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Roles"
    )
    usernames = forms.CharField(
        required=False,
        max_length=200_000,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="People (usernames)",
        help_text="One per line, or separated by commas or spaces.",
    )

    def __init__(self, *args, roles=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["roles"].choices = role_choices(roles)

    def clean_usernames(self) -> list[str]:
        raw = self.cleaned_data.get("usernames") or ""
        names = list(dict.fromkeys(n.lower() for n in raw.replace(",", " ").split()))
        if len(names) > self.USERNAMES_MAX:
            raise forms.ValidationError(f"At most {self.USERNAMES_MAX} people.")
        return names

    def clean(self):
        data = super().clean()
        if data.get("mode") == self.CHOSEN and not data.get("roles") and not data.get("usernames"):
            raise forms.ValidationError(
                "Choose at least one role or person, or turn recording off."
            )
        return data
