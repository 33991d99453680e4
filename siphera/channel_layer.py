"""The channels-redis layer, with a connection pool that waits for a free connection.

redis-py's asyncio ConnectionPool allows 100 connections and raises MaxConnectionsError
("Too many connections") at the 101st concurrent command. A burst of WebSocket handshakes
(a reconnect storm after a restart, or 200 clients at once) makes that many concurrent
group_add/group_send calls, and every handshake past the limit died. A
BlockingConnectionPool of the same size makes them wait for a connection instead, up to
REDIS_POOL_TIMEOUT_SECONDS (siphera.settings); only then does a command fail.
"""

from __future__ import annotations

import asyncio
import functools
import weakref

import redis
import redis.asyncio
from channels_redis.core import RedisChannelLayer as _RedisChannelLayer
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from siphera import redis_outage


def blocking_pool(url: str, **kwargs) -> redis.asyncio.BlockingConnectionPool:
    """A pool of at most REDIS_MAX_CONNECTIONS connections to `url` whose callers wait
    for a free one (the process's asyncio Redis clients all use one of these).

    A command that finds its pooled connection closed (Redis restarted since it was last
    used) is sent once more on a new connection: redis-py's asyncio pool does not check
    idle connections before handing them out, and without the retry every connection of
    the pool failed one command after a restart (siphera.redis_outage)."""
    return redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
        retry=AsyncRetry(NoBackoff(), 1),
        retry_on_error=[redis.exceptions.ConnectionError],
        **kwargs,
    )


_loop_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loop_client() -> redis.asyncio.Redis:
    """The running loop's asyncio client of REDIS_URL (an asyncio client belongs to the loop
    it first ran on), on a `blocking_pool` with 2 s timeouts: for the short commands of
    rate limits and cache generations, which a burst of sockets must queue for rather
    than each opening a connection."""
    loop = asyncio.get_running_loop()
    client = _loop_clients.get(loop)
    if client is None:
        pool = blocking_pool(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client = _loop_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return client


class RedisChannelLayer(_RedisChannelLayer):
    def create_pool(self, index):
        host = dict(self.hosts[index])
        if "address" not in host:  # Sentinel or keyword hosts: channels-redis as it is
            return super().create_pool(index)
        return blocking_pool(host.pop("address"), **host)


@functools.cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def groups_with_members(groups: list[str]) -> list[bool]:
    """For each group, whether any socket has joined it (a sync read, for sync code that
    can skip work nobody would receive: presence of a user nobody watches, say).

    Reads channels-redis's own group sets (`_group_key`, `consistent_hash`; pinned
    channels-redis 4.3). A member whose socket died without leaving still counts until
    the layer's group expiry: the answer errs towards "yes", never towards a lost event."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    out = []
    try:
        for group in groups:
            host = layer.hosts[layer.consistent_hash(group)]
            client = _sync_client(host["address"])
            out.append(bool(client.zcard(layer._group_key(group))))
    except redis_outage.REDIS_ERRORS as exc:  # "yes": the send that follows is dropped
        redis_outage.failed(exc, where="channel_layer")
        return [True] * len(groups)
    return out
