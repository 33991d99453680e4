"""Read-side views of an org's users and devices (run inside the org's schema).

Nothing here changes state; the portal and reports read through these so that no other app
queries orgs' tables directly.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

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


def count_recently_seen_users(days: int = 7) -> int:
    """Active users seen in the last `days` days: signed in to or used the portal, or
    connected a device (its socket sign-in)."""
    from datetime import timedelta

    from django.utils import timezone

    from orgs.accounts.models import PortalSession

    since = timezone.now() - timedelta(days=days)
    # EXISTS rather than joins: a user with many devices and sessions is still one row
    return (
        User.objects.filter(is_active=True)
        .filter(
            Q(last_login__gte=since)
            | Exists(Device.objects.filter(user=OuterRef("pk"), last_seen_at__gte=since))
            | Exists(PortalSession.objects.filter(user=OuterRef("pk"), last_seen_at__gte=since))
        )
        .count()
    )


def users_with_device_counts(search: str = "", *, after: str = "") -> QuerySet[User]:
    """All users by username, each annotated with `device_count` (live devices only);
    `search` matches username, display name or email, case-insensitively; `after` keeps
    the usernames after it (the next page)."""
    rows = User.objects.annotate(
        device_count=Count("devices", filter=Q(devices__revoked_at__isnull=True))
    ).order_by("username")
    if after:
        rows = rows.filter(username__gt=after)
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


def can_see(viewer: User, user: User, codes=None) -> bool:
    """Whether `viewer` may look `user` up: `directory.view` sees everyone in the org;
    `directory.contacts` alone (guests) sees only themselves and the people they are in
    touch with (orgs.hooks.are_contacts: messaging says, they share a conversation)."""
    codes = codes_for(viewer) if codes is None else codes
    if Perm.DIRECTORY_VIEW in codes or user.pk == viewer.pk:
        return True
    return Perm.DIRECTORY_CONTACTS in codes and hooks.are_contacts.any(viewer, user)


def access_directory_user(viewer: User, user_id) -> User:
    """The user with this id as `viewer` may look them up (`can_see`), or a 404 (the same
    answer as for an unknown id, so nothing confirms that a hidden user exists)."""
    from orgs.services.users import access_user

    user = access_user(user_id)
    if can_see(viewer, user):
        return user
    raise not_found("No such user.")


def sees_all(viewer: User, user_ids) -> bool:
    """Whether `viewer` may look up every one of `user_ids`. Without `directory.view`, an
    unknown or malformed id counts as one they may not see, so a caller refusing on False
    gives the same answer for a hidden user as for one that does not exist."""
    codes = codes_for(viewer)
    if Perm.DIRECTORY_VIEW in codes:
        return True
    wanted = {str(i) for i in user_ids}
    try:
        users = list(User.objects.filter(pk__in=list(wanted)))
    except (ValidationError, ValueError):
        return False
    return len(users) == len(wanted) and all(can_see(viewer, u, codes) for u in users)


DIRECTORY_SCAN = 500  # candidates a contacts-only page looks at, at most


def search_directory(viewer: User, q: str = "", *, after: str = "", limit: int = 50):
    """Active users `viewer` may see (`can_see`), by username, whose username, display
    name or title contains `q` (case-insensitive); `after` keeps the usernames after it.
    Returns (page, next_after): next_after is the username to pass for the next page, or
    None at the end. E-mail addresses are not searched: the directory does not show them.
    A viewer with `directory.contacts` only (guests) finds only themselves and their
    contacts; at most DIRECTORY_SCAN candidates are looked at per page, so a sparse page
    may come back short with a next_after to go on from."""
    codes = codes_for(viewer)
    rows = User.objects.filter(is_active=True).order_by("username")
    if after:
        rows = rows.filter(username__gt=after)
    q = (q or "").strip()
    if q:
        rows = rows.filter(
            Q(username__icontains=q) | Q(display_name__icontains=q) | Q(title__icontains=q)
        )
    if Perm.DIRECTORY_VIEW in codes:
        page = list(rows[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return page, (page[-1].username if more and page else None)
    candidates = list(rows[:DIRECTORY_SCAN])
    page: list[User] = []
    for index, user in enumerate(candidates):
        if can_see(viewer, user, codes):
            page.append(user)
            if len(page) == limit:
                more = index + 1 < len(candidates) or len(candidates) == DIRECTORY_SCAN
                return page, (user.username if more else None)
    if len(candidates) == DIRECTORY_SCAN:
        return page, candidates[-1].username
    return page, None
