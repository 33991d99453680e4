"""Activity figures for the admin dashboard, from message metadata only (no content)."""

from __future__ import annotations

import datetime as dt

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


def org_activity() -> dict:
    """What the dashboard shows: users seen in the last ACTIVE_DAYS days, messages per
    day over CHART_DAYS days, and the sockets open now in every web process (None when
    Redis does not answer)."""
    from orgs.services import directory, presence

    connected = presence.connected_now()
    return {
        "active_days": ACTIVE_DAYS,
        "active_users": directory.count_recently_seen_users(ACTIVE_DAYS),
        "messages_per_day": [
            {"date": day.isoformat(), "count": count} for day, count in messages_per_day(CHART_DAYS)
        ],
        "open_sockets": connected[0] if connected else None,
        "connected_users": connected[1] if connected else None,
    }
