"""Parts of portal pages that are a function of a few values alone, rendered once per web
process for each set of values: the layout's navigation (from the current page and the
signed-in user's permission codes) and the dashboard's chart (from its counts).

They are cached by those values themselves, never by user, role name or org, so nothing
is ever stale and nothing needs invalidating: a role change or an edited custom role gives
the next request other codes, hence another entry; new counts are another entry; and a
fragment cannot carry one org's figures to another org's page (the figures are the key).
Rendering them was about a third of the dashboard's CPU (the chart alone is 14 rows of
nine localised values, the navigation 22 permission checks).
"""

from __future__ import annotations

import functools

from django.template.loader import render_to_string
from django.urls import get_script_prefix, get_urlconf
from django.utils.safestring import SafeString

from orgs.roles import Perm, codes_for


def nav(user, current: str) -> SafeString:
    """The layout's <nav>: the links `user`'s codes open (none without portal.access),
    `current` marked as the page shown."""
    codes = codes_for(user)
    if Perm.PORTAL_ACCESS not in codes:
        codes = frozenset()
    return _nav(current, codes, get_urlconf(), get_script_prefix())


@functools.lru_cache(maxsize=256)
def _nav(current: str, codes: frozenset, urlconf, prefix: str) -> SafeString:
    # urlconf and prefix: the links are reversed in them ({% nav_url %}).
    return render_to_string("portal/_nav.html", {"nav": current, "codes": codes})


def messages_chart(days: list[dict]) -> SafeString:
    """The dashboard's "Messages per day" section for `days` ({"date", "count"}, oldest
    first, as messaging.services.stats.org_figures gives them)."""
    return _chart(tuple((day["date"], day["count"]) for day in days))


@functools.lru_cache(maxsize=256)
def _chart(days: tuple[tuple[str, int], ...]) -> SafeString:
    counts = [count for _, count in days]
    return render_to_string(
        "portal/_messages_chart.html",
        {
            "days": [{"date": date, "count": count} for date, count in days],
            "peak": max([*counts, 1]),
            "total": sum(counts),
        },
    )
