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
