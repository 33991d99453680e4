"""The channels-redis layer, with a connection pool that waits for a free connection.

redis-py's asyncio ConnectionPool allows 100 connections and raises MaxConnectionsError
("Too many connections") at the 101st concurrent command. A burst of WebSocket handshakes
(a reconnect storm after a restart, or 200 clients at once) makes that many concurrent
group_add/group_send calls, and every handshake past the limit died. A
BlockingConnectionPool of the same size makes them wait for a connection instead, up to
REDIS_POOL_TIMEOUT_SECONDS (siphera.settings); only then does a command fail.
"""

from __future__ import annotations

import redis.asyncio
from channels_redis.core import RedisChannelLayer as _RedisChannelLayer
from django.conf import settings


def blocking_pool(url: str, **kwargs) -> redis.asyncio.BlockingConnectionPool:
    """A pool of at most REDIS_MAX_CONNECTIONS connections to `url` whose callers wait
    for a free one (the process's asyncio Redis clients all use one of these)."""
    return redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
        **kwargs,
    )


class RedisChannelLayer(_RedisChannelLayer):
    def create_pool(self, index):
        host = dict(self.hosts[index])
        if "address" not in host:  # Sentinel or keyword hosts: channels-redis as it is
            return super().create_pool(index)
        return blocking_pool(host.pop("address"), **host)
