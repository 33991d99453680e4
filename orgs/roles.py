"""Permissions are data: one enum of codes, built-in roles as sets of codes, and the one
place that resolves which codes a user holds (`codes_for`).

Every API view, consumer action and portal view names the code it needs; nothing checks
a role name directly. A user's `role` is either a built-in role's name or the slug of one
of the org's custom roles (`accounts.Role`).
"""

from __future__ import annotations

from enum import StrEnum


class Perm(StrEnum):
    PORTAL_ACCESS = "portal.access"  # sign in to the admin portal
    USERS_VIEW = "users.view"  # list users, see their details (admin view: roles, status)
    DIRECTORY_VIEW = "directory.view"  # look up anyone in the org by id (to message them)
    DIRECTORY_CONTACTS = "directory.contacts"  # look up people you share a conversation with
    USERS_MANAGE = "users.manage"  # create/invite, deactivate, reactivate, change role
    ROLES_MANAGE = "roles.manage"  # create, edit and delete custom roles
    DEVICES_VIEW = "devices.view"  # see any user's devices
    DEVICES_REVOKE = "devices.revoke"  # revoke any user's device
    MFA_RESET = "mfa.reset"  # remove another user's second factor (lost phone)
    AUDIT_VIEW = "audit.view"  # read the audit log, verify its chain
    AUDIT_EXPORT = "audit.export"  # download the audit log (CSV / JSON Lines)
    POLICY_MANAGE = "policy.manage"  # org policies: MFA, sessions, login methods, receipts
    ORG_MANAGE = "org.manage"  # the org itself (owners only: owners, SSO/SCIM, domains)
    BILLING_MANAGE = "billing.manage"  # subscription, seats, invoices
    COMPLIANCE_MANAGE = "compliance.manage"  # retention policy, legal holds
    COMPLIANCE_EXPORT = "compliance.export"  # compliance exports, personal-data exports
    USERS_ERASE = "users.erase"  # erase a user's personal data (owners, compliance officers)
    MESSAGING_USE = "messaging.use"  # conversations, messages, keys, receipts, typing
    GROUPS_CREATE = "groups.create"  # start group conversations
    CALLS_USE = "calls.use"  # place and answer calls, join group calls, TURN credentials
    CALLS_VIEW = "calls.view"  # the org's call records (metadata only), every user's
    CALLS_MANAGE = "calls.manage"  # moderate group calls: list and remove participants
    RECORDINGS_READ = "recordings.read"  # compliance call recordings and their transcripts


PERM_LABELS: dict[Perm, str] = {
    Perm.PORTAL_ACCESS: "Sign in to the admin portal",
    Perm.USERS_VIEW: "See users and their details",
    Perm.DIRECTORY_VIEW: "Look up anyone in the organisation's directory",
    Perm.DIRECTORY_CONTACTS: "Look up the people they share a conversation with",
    Perm.USERS_MANAGE: "Create, invite, deactivate and reactivate users; change roles",
    Perm.ROLES_MANAGE: "Create, edit and delete custom roles",
    Perm.DEVICES_VIEW: "See users' devices",
    Perm.DEVICES_REVOKE: "Revoke users' devices",
    Perm.MFA_RESET: "Reset a user's two-factor authentication",
    Perm.AUDIT_VIEW: "Read the audit log and verify its chain",
    Perm.AUDIT_EXPORT: "Download the audit log",
    Perm.POLICY_MANAGE: "Change org policies (MFA, sessions, login methods, receipts)",
    Perm.ORG_MANAGE: "Manage the organisation itself (owners)",
    Perm.BILLING_MANAGE: "Manage billing",
    Perm.COMPLIANCE_MANAGE: "Manage retention and legal holds",
    Perm.COMPLIANCE_EXPORT: "Export message metadata, call records, legal-hold contents and "
    "a user's personal data",
    Perm.USERS_ERASE: "Erase a user's personal data",
    Perm.MESSAGING_USE: "Send and receive messages",
    Perm.GROUPS_CREATE: "Start group conversations",
    Perm.CALLS_USE: "Place and answer voice and video calls",
    Perm.CALLS_VIEW: "See the organisation's call records",
    Perm.CALLS_MANAGE: "Moderate group calls (list and remove participants)",
    Perm.RECORDINGS_READ: "Listen to compliance call recordings and read their transcripts",
}

OWNER = "owner"
MEMBER = "member"

_ALL = frozenset(Perm)
# Members hold directory.contacts as well as the wider directory.view, so every role that
# manages guests also holds every code a guest has (nobody changes a user holding a code
# they lack).
_MEMBER = frozenset(
    {
        Perm.MESSAGING_USE,
        Perm.GROUPS_CREATE,
        Perm.DIRECTORY_VIEW,
        Perm.DIRECTORY_CONTACTS,
        Perm.CALLS_USE,
    }
)
_PORTAL = _MEMBER | {Perm.PORTAL_ACCESS}

BUILTIN_ROLES: dict[str, frozenset[Perm]] = {
    OWNER: _ALL,
    # Everything but `org.manage`: an admin cannot make, demote or deactivate an owner;
    # nor `users.erase`: erasing a person is for owners and compliance officers; nor
    # `recordings.read`: recorded calls are for owners and compliance officers.
    "admin": _ALL - {Perm.ORG_MANAGE, Perm.USERS_ERASE, Perm.RECORDINGS_READ},
    "user_manager": _PORTAL
    | {
        Perm.USERS_VIEW,
        Perm.USERS_MANAGE,
        Perm.DEVICES_VIEW,
        Perm.DEVICES_REVOKE,
        Perm.MFA_RESET,
    },
    "billing_admin": _PORTAL | {Perm.BILLING_MANAGE},
    "compliance_officer": _PORTAL
    | {
        Perm.USERS_VIEW,
        Perm.AUDIT_VIEW,
        Perm.AUDIT_EXPORT,
        Perm.COMPLIANCE_MANAGE,
        Perm.COMPLIANCE_EXPORT,
        Perm.USERS_ERASE,
        Perm.CALLS_VIEW,
        Perm.RECORDINGS_READ,
    },
    "security_desk": _PORTAL
    | {
        Perm.USERS_VIEW,
        Perm.DEVICES_VIEW,
        Perm.DEVICES_REVOKE,
        Perm.MFA_RESET,
        Perm.AUDIT_VIEW,
    },
    "member": _MEMBER,
    # Guests talk to the people they were put in touch with, and see no one else.
    "guest": frozenset({Perm.MESSAGING_USE, Perm.DIRECTORY_CONTACTS, Perm.CALLS_USE}),
}

BUILTIN_LABELS: dict[str, str] = {
    OWNER: "Owner",
    "admin": "Admin",
    "user_manager": "User Manager",
    "billing_admin": "Billing Admin",
    "compliance_officer": "Compliance Officer",
    "security_desk": "Security Desk",
    "member": "Member",
    "guest": "Guest",
}

_VALID_CODES = frozenset(str(p) for p in Perm)


def parse_codes(codes) -> frozenset[Perm]:
    """Stored codes as Perms; codes no longer in the enum are ignored (fail closed)."""
    return frozenset(Perm(c) for c in codes or () if c in _VALID_CODES)


def role_codes(role: str) -> frozenset[Perm]:
    """The codes of a role name in the current org: a built-in role, else a custom role
    (`accounts.Role`, looked up in the current schema), else none."""
    if role in BUILTIN_ROLES:
        return BUILTIN_ROLES[role]
    from orgs.accounts.models import Role

    stored = Role.objects.filter(slug=role).values_list("codes", flat=True).first()
    return parse_codes(stored)


def codes_for(user) -> frozenset[Perm]:
    """Every code `user` holds: none unless active, else their role's codes.

    The one place a user's codes are resolved. Memoised on the user object per role name,
    so a request (or a socket) asks the database for a custom role at most once; callers
    that outlive a change (sockets) refresh the user.
    """
    if not user or not getattr(user, "is_active", False):
        return frozenset()
    cached = getattr(user, "_role_codes", None)
    if cached is not None and cached[0] == user.role:
        return cached[1]
    codes = role_codes(user.role)
    user._role_codes = (user.role, codes)
    return codes


def has_perm(user, perm: Perm) -> bool:
    """Whether an active user's role grants `perm`."""
    return perm in codes_for(user)
