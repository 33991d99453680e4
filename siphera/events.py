"""Wake-ups over the channel layer, sent only after the transaction commits.

The channel layer is never a store (PITFALLS 6): it only tells live sockets that something
changed. Group names come from siphera.tenancy.group_name and carry the org's schema.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def send_now(group: str, payload: dict) -> None:
    async_to_sync(get_channel_layer().group_send)(group, payload)


def notify_on_commit(group: str, payload: dict) -> None:
    """Send `payload` (with a `type` naming the consumer handler) to `group` after commit."""
    transaction.on_commit(lambda: send_now(group, payload))
