"""Who is connected, and the last presence each user was shown with: Redis state shared by
every web process (orgs.services.presence reads and writes it; nothing else does).

Keys, under `<CACHE_KEY_PREFIX>:pr:`:

- `s:<schema>:<user>` hash, socket -> "a" (active) | "i" (idle). A socket is named
  `<process>:<n>`, `process` being the id of the web process (event loop) holding it.
- `c:<schema>` set of the `s:` keys of the org's users with a socket (or who had one
  since the org's sockets were last counted: `open_sockets` drops the empty ones), so
  counting an org's sockets reads its connected users, not the whole keyspace.
- `alive:<process>`, set with a TTL of PRESENCE_TTL_SECONDS and renewed by that process
  every tick. A socket counts only while its process's key lives, so the sockets of a
  process that crashed stop counting when the key expires, before anything cleans up.
- `procs` set of process ids, and `u:<process>` set of "<schema>:<user>" that process holds
  sockets of: the first live process to find a dead one's key gone claims it (SREM),
  deletes its sockets from those users' hashes and has their presence published again.
- `v:<schema>:<user>` hash: `n` counts the user's changes (a version; it starts at the
  Redis clock in microseconds, so it still grows after the key expired), `sv` and `f` hold
  the version and frame last published, so a change is pushed once and never older over
  newer, whichever process computes it.
- `exp` sorted set of "<schema>:<user>" by the epoch second their dnd/away status ends.

All functions are sync (DB threads, tasks, requests) and cost one or two round trips.
"""

from __future__ import annotations

import functools
import time
import uuid

import redis
from django.conf import settings

ACTIVE = "a"
IDLE = "i"
VERSION_TTL = 7 * 24 * 3600  # seconds a user's version key outlives its last change


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )


def _key(*parts) -> str:
    return ":".join([settings.CACHE_KEY_PREFIX, "pr", *(str(p) for p in parts)])


def _user_key(schema: str, user_id) -> str:
    return _key("s", schema, _hex(user_id))


def _member(schema: str, user_id) -> str:
    return f"{schema}:{_hex(user_id)}"


def _hex(user_id) -> str:
    return user_id.hex if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id)).hex


def _parse_member(member: str) -> tuple[str, uuid.UUID]:
    schema, _, user = member.rpartition(":")
    return schema, uuid.UUID(user)


# --- sockets ---------------------------------------------------------------------------


def set_socket(process: str, schema: str, user_id, socket: str, state: str | None) -> None:
    """Record a socket's state ("a"/"i"), or drop it (None)."""
    pipe = _client().pipeline(transaction=False)
    if state is None:
        pipe.hdel(_user_key(schema, user_id), socket)
    else:
        pipe.hset(_user_key(schema, user_id), socket, state)
        pipe.sadd(_key("u", process), _member(schema, user_id))
        pipe.sadd(_key("c", schema), _user_key(schema, user_id))
    pipe.execute()


def forget_user(process: str, schema: str, user_id) -> None:
    """`process` holds no more sockets of this user."""
    _client().srem(_key("u", process), _member(schema, user_id))


def rewrite(process: str, sockets: list[tuple[str, str, uuid.UUID, str]]) -> None:
    """Write again every socket `process` holds, (socket, schema, user, state) each: after
    its heartbeat key was found gone (Redis lost its data, or the process stalled so long
    that another one cleaned up after it)."""
    pipe = _client().pipeline(transaction=False)
    for socket, schema, user_id, state in sockets:
        pipe.hset(_user_key(schema, user_id), socket, state)
        pipe.sadd(_key("u", process), _member(schema, user_id))
        pipe.sadd(_key("c", schema), _user_key(schema, user_id))
    pipe.execute()


def connection_states(schema: str, user_ids: list) -> dict:
    """user id -> "online" (a live socket is active), "idle" (all idle), "offline" (none
    in a live process)."""
    client = _client()
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.hgetall(_user_key(schema, user_id))
    sockets = pipe.execute()
    processes = sorted({name.split(":", 1)[0] for found in sockets for name in found})
    alive = dict(zip(processes, _alive(client, processes), strict=True))
    states = {}
    for user_id, found in zip(user_ids, sockets, strict=True):
        live = [state for name, state in found.items() if alive[name.split(":", 1)[0]]]
        states[user_id] = (
            "offline" if not live else "online" if ACTIVE in live else "idle"  # all idle
        )
    return states


# KEYS[1]: the org's `c:` set; ARGV[1]: the `alive:` key prefix. Counts the live sockets
# and the users holding one, and drops the users left with no socket, in one atomic step
# (a socket added meanwhile is either seen or re-adds its user after).
_COUNT_OPEN = """
local sockets, users, alive = 0, 0, {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local names = redis.call('HKEYS', key)
  if #names == 0 then
    redis.call('SREM', KEYS[1], key)
  else
    local live = 0
    for _, name in ipairs(names) do
      local process = string.match(name, '^[^:]*')
      if alive[process] == nil then
        alive[process] = redis.call('EXISTS', ARGV[1] .. process) == 1
      end
      if alive[process] then live = live + 1 end
    end
    sockets = sockets + live
    if live > 0 then users = users + 1 end
  end
end
return {sockets, users}
"""


def open_sockets(schema: str) -> tuple[int, int]:
    """(sockets, users) of the org connected now, through any live web process: every
    process writes its sockets here, so two processes' sockets are all counted. One round
    trip, reading only the org's connected users."""
    sockets, users = _client().eval(_COUNT_OPEN, 1, _key("c", schema), _key("alive", ""))
    return int(sockets), int(users)


def _alive(client: redis.Redis, processes: list[str]) -> list[bool]:
    if not processes:
        return []
    return [value is not None for value in client.mget([_key("alive", p) for p in processes])]


# --- versions and what was last published ----------------------------------------------

_BUMP = """
if redis.call('HEXISTS', KEYS[1], 'n') == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'n', t[1] .. string.format('%06d', tonumber(t[2])))
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""

# Store `frame` as published at version ARGV[1] unless a newer version was published;
# 1 if it differs from what was published before (so it is to be sent), else 0.
_PUBLISH = """
local sv = tonumber(redis.call('HGET', KEYS[1], 'sv') or '0')
if tonumber(ARGV[1]) <= sv then return 0 end
local old = redis.call('HGET', KEYS[1], 'f')
redis.call('HSET', KEYS[1], 'sv', ARGV[1], 'f', ARGV[2])
if old == ARGV[2] then return 0 end
return 1
"""


@functools.cache
def _scripts(client: redis.Redis):
    return client.register_script(_BUMP), client.register_script(_PUBLISH)


def bump(schema: str, user_id) -> int:
    """A new version for the user's presence: call after changing anything it is made of,
    then compute it and `publish_if_newer`."""
    client = _client()
    return int(_scripts(client)[0](keys=[_key("v", schema, _hex(user_id))], args=[VERSION_TTL]))


def versions(schema: str, user_ids: list) -> dict:
    """user id -> current version (0 for a user with none), read *before* computing a
    snapshot: any change after it has a higher version."""
    pipe = _client().pipeline(transaction=False)
    for user_id in user_ids:
        pipe.hget(_key("v", schema, _hex(user_id)), "n")
    return {
        user_id: int(found or 0) for user_id, found in zip(user_ids, pipe.execute(), strict=True)
    }


def publish_if_newer(schema: str, user_id, version: int, frame: str) -> bool:
    """Whether `frame`, computed after version `version`, is news to send: no newer version
    was published, and it differs from the last one published."""
    client = _client()
    script = _scripts(client)[1]
    return bool(script(keys=[_key("v", schema, _hex(user_id))], args=[version, frame]))


# --- web processes ----------------------------------------------------------------------


def heartbeat(process: str, ttl: int) -> bool:
    """Renew `process`'s heartbeat; True if it had lapsed, or another process cleaned up
    after it (or it is new), so whatever the process holds must be written again."""
    client = _client()
    pipe = client.pipeline(transaction=False)
    pipe.set(_key("alive", process), "1", ex=ttl, get=True)
    pipe.sadd(_key("procs"), process)
    pipe.expire(_key("u", process), ttl * 10)
    previous, added, _ = pipe.execute()
    return previous is None or added == 1


def sweep_dead(process: str) -> list[tuple[str, uuid.UUID]]:
    """Clean up after web processes whose heartbeat lapsed: delete their sockets and return
    the (schema, user) whose presence may have changed. Each dead process is claimed by
    one caller only."""
    client = _client()
    others = [p for p in client.smembers(_key("procs")) if p != process]
    affected: list[tuple[str, uuid.UUID]] = []
    for dead, live in zip(others, _alive(client, others), strict=True):
        if live or not client.srem(_key("procs"), dead):
            continue
        members = client.smembers(_key("u", dead))
        for member in members:
            schema, user_id = _parse_member(member)
            key = _user_key(schema, user_id)
            stale = [name for name in client.hkeys(key) if name.startswith(f"{dead}:")]
            if stale:
                client.hdel(key, *stale)
            affected.append((schema, user_id))
        client.delete(_key("u", dead))
    return affected


# --- ends of dnd/away statuses ---------------------------------------------------------


def schedule_end(schema: str, user_id, until_epoch: float | None) -> None:
    """Publish the user's presence again at `until_epoch` (None: nothing to end)."""
    if until_epoch is None:
        _client().zrem(_key("exp"), _member(schema, user_id))
    else:
        _client().zadd(_key("exp"), {_member(schema, user_id): until_epoch})


def due_ends(limit: int = 500) -> list[tuple[str, uuid.UUID]]:
    """The (schema, user) whose status ended by now, each claimed by one caller only."""
    client = _client()
    due = client.zrangebyscore(_key("exp"), "-inf", time.time(), start=0, num=limit)
    return [_parse_member(m) for m in due if client.zrem(_key("exp"), m)]
