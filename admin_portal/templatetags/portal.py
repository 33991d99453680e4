"""Template helpers: `{% if request.user|can:"users.view" %}` asks orgs.roles, so templates
show a link or a button only to roles that could use it."""

import functools

from django import template
from django.urls import get_script_prefix, get_urlconf, reverse

from orgs.roles import Perm, has_perm

register = template.Library()


@register.simple_tag
def nav_url(name: str) -> str:
    """`{% url name %}` for a URL without arguments, reversed once per process and URL
    conf: the layout names fifteen of them on every page, and reversing them was a tenth
    of a page's CPU."""
    return _reversed(name, get_urlconf(), get_script_prefix())


@functools.lru_cache(maxsize=256)
def _reversed(name: str, urlconf, prefix: str) -> str:
    return reverse(name, urlconf=urlconf)


@register.simple_tag(takes_context=True)
def portal_nav(context, current: str = "") -> str:
    """The layout's navigation for the signed-in user, `current` marked (rendered once per
    process for each page and set of permission codes: admin_portal.fragments)."""
    from admin_portal import fragments

    return fragments.nav(context["request"].user, current)


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
