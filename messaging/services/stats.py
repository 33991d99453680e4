"""Activity figures for the admin dashboard, from message metadata only (no content)."""

from __future__ import annotations

import datetime as dt
import time

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from messaging.models import Message

MAX_DAYS = 90


def messages_per_day(days: int = 14, *, today: dt.date | None = None) -> list[tuple[dt.date, int]]:
    """Messages sent per UTC day over the last `days` days (today included, oldest
    first, days without messages as 0): one grouped query on the created_at index.
    Conversation events (joins, renames) are not counted."""
    days = max(1, min(int(days), MAX_DAYS))
    today = today or timezone.now().astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first, dt.time.min, tzinfo=dt.UTC)
    counts = dict(
        Message.objects.filter(created_at__gte=start, kind=Message.MESSAGE)
        .annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    return [
        (first + dt.timedelta(days=i), counts.get(first + dt.timedelta(days=i), 0))
        for i in range(days)
    ]


ACTIVE_DAYS = 7
CHART_DAYS = 14


# schema -> (monotonic expiry, figures): the database's share of the dashboard, kept in
# each process for DASHBOARD_CACHE_SECONDS (the grouped count reads every message of the
# last CHART_DAYS days, too much to run on every view of the portal's front page).
_figures: dict[str, tuple[float, dict]] = {}


def org_figures() -> dict:
    """The dashboard's counts from the database (accounts, active devices, users seen in
    the last ACTIVE_DAYS days, messages per day over CHART_DAYS days), at most
    DASHBOARD_CACHE_SECONDS old (0: always fresh)."""
    from orgs.services import directory

    schema = connection.schema_name
    ttl = settings.DASHBOARD_CACHE_SECONDS
    now = time.monotonic()
    cached = _figures.get(schema)
    if ttl > 0 and cached is not None and cached[0] > now:
        return cached[1]
    figures = {
        "accounts": directory.count_active_users(),
        "active_devices": directory.count_active_devices(),
        "active_days": ACTIVE_DAYS,
        "active_users": directory.count_recently_seen_users(ACTIVE_DAYS),
        "messages_per_day": [
            {"date": day.isoformat(), "count": count} for day, count in messages_per_day(CHART_DAYS)
        ],
    }
    if ttl > 0:
        _figures[schema] = (now + ttl, figures)
    return figures


def org_activity() -> dict:
    """What the dashboard shows: users seen in the last ACTIVE_DAYS days and messages per
    day over CHART_DAYS days (org_figures: up to DASHBOARD_CACHE_SECONDS old), and the
    sockets open now in every web process (live; None when Redis does not answer)."""
    from orgs.services import presence

    figures = org_figures()
    connected = presence.connected_now()
    return {
        "active_days": figures["active_days"],
        "active_users": figures["active_users"],
        "messages_per_day": figures["messages_per_day"],
        "open_sockets": connected[0] if connected else None,
        "connected_users": connected[1] if connected else None,
    }


def dashboard() -> dict:
    """org_activity() plus the account and device counts the portal's dashboard shows."""
    figures = org_figures()
    return {
        **org_activity(),
        "accounts": figures["accounts"],
        "active_devices": figures["active_devices"],
    }
