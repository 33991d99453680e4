"""Read-side views of an org's users and devices (run inside the org's schema).

Nothing here changes state; the portal and reports read through these so that no other app
queries orgs' tables directly.
"""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from orgs import hooks
from orgs.accounts.models import Device, User
from orgs.roles import Perm, codes_for
from siphera.api_errors import not_found


def count_active_users() -> int:
    """Users who can sign in (not deactivated)."""
    return User.objects.filter(is_active=True).count()


def count_active_devices() -> int:
    """Devices whose token works: not revoked, and their user is active."""
    return Device.objects.filter(revoked_at__isnull=True, user__is_active=True).count()


def users_with_device_counts(search: str = "") -> QuerySet[User]:
    """All users by username, each annotated with `device_count` (live devices only);
    `search` matches username, display name or email, case-insensitively."""
    rows = User.objects.annotate(
        device_count=Count("devices", filter=Q(devices__revoked_at__isnull=True))
    ).order_by("username")
    search = (search or "").strip()
    if search:
        rows = rows.filter(
            Q(username__icontains=search)
            | Q(display_name__icontains=search)
            | Q(email__icontains=search)
        )
    return rows


def all_user_devices(user: User) -> QuerySet[Device]:
    """Every device of `user`, revoked ones included (newest id last)."""
    return Device.objects.filter(user=user).order_by("device_id")


def access_directory_user(viewer: User, user_id) -> User:
    """The user with this id as `viewer` may look them up, or a 404 (the same answer as
    for an unknown id, so nothing confirms that a hidden user exists).

    `directory.view` sees everyone in the org; `directory.contacts` alone (guests) sees
    only themselves and the people they are in touch with (orgs.hooks.are_contacts:
    messaging says, they share a conversation).
    """
    from orgs.services.users import access_user

    user = access_user(user_id)
    codes = codes_for(viewer)
    if Perm.DIRECTORY_VIEW in codes or user.pk == viewer.pk:
        return user
    if Perm.DIRECTORY_CONTACTS in codes and hooks.are_contacts.any(viewer, user):
        return user
    raise not_found("No such user.")
