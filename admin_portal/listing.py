"""Small helpers the portal's list pages share: usernames for the user ids a page shows,
and the link to the next (older) page."""

from __future__ import annotations

from collections.abc import Iterable

from django.http import HttpRequest

from orgs.accounts.models import User


def usernames(ids: Iterable) -> dict[str, str]:
    """user id (as text) -> username, for the ids of this org's users among `ids` (one
    query; empty ids skipped)."""
    wanted = {str(i) for i in ids if i}
    rows = User.objects.filter(pk__in=wanted).values_list("pk", "username")
    return {str(pk): username for pk, username in rows}


def older_query(request: HttpRequest, next_before: str | None) -> str | None:
    """The query string of the next, older page: this page's filters with `before` set
    to the cursor the service returned; None on the last page."""
    if not next_before:
        return None
    query = request.GET.copy()
    query["before"] = next_before
    return query.urlencode()
