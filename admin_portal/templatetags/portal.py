"""Template helpers: `{% if request.user|can:"users.view" %}` asks orgs.roles, so templates
show a link or a button only to roles that could use it."""

from django import template

from orgs.roles import Perm, has_perm

register = template.Library()


@register.filter
def can(user, code: str) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    return has_perm(user, Perm(code)) and has_perm(user, Perm.PORTAL_ACCESS)


@register.filter
def bytes_human(size) -> str:
    """A byte count as "1.5 GiB" (admin_portal.units)."""
    from admin_portal.units import human_bytes

    return human_bytes(size)


@register.filter
def duration_ms(value) -> str:
    """Milliseconds as "1:02:03" or "2:03" (a recording's length)."""
    if value is None:
        return "—"
    seconds = int(value) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
