"""The server's key ring: which keys exist, which one encrypts, and how keys are added,
promoted and retired (docs/key-rotation.md).

Keys come from two places, newest first:

1. the key-ring file (`KEY_RING_FILE`, JSON, mode 0600), which `manage.py rotate_keys`
   and the scheduled rotation write; then
2. `SECRET_KEYS` from the environment (comma-separated, newest first; an entry written
   `pending:<material>` is decrypt-only). Unset, it is `[SECRET_KEY]`.

Each key is in one of three states:

- **pending**: decrypts and verifies, never encrypts or signs. A new key starts here, so
  every process learns it before anything is encrypted with it (a value encrypted by one
  process with a key another process does not know yet would be undecryptable there);
- **active**: the one key that encrypts and signs (the first key that is not pending);
- **old**: decrypts and verifies what it made, until it is retired.

A retired key is listed (by id) in the file's `retired` list and left out of the ring even
when it is still in `SECRET_KEYS`.

Every process re-reads the file when it changed, checking at most every
`KEY_RING_RELOAD_SECONDS`, and before any use of the ring after that interval, so within
that time of a change every process that encrypts has seen it.

A file that cannot be used (unreadable, not JSON, not a key-ring file, a key without
material, no active key left, open to other users: readable or writable by others, or
writable by its group; or gone, once a process has read it) is refused with a
KeyRingError naming the file and the fault. A process that already holds a ring keeps it
and logs the fault once per version of the file (a hand edit gone wrong must not stop
every process within seconds); a process that has none yet cannot use the ring
(`/ready` reports it, requests that need it get a 503).

Each process also notes in Redis which keys it holds (`seen_by()`), so a promotion can
refuse while a live process does not know the new key (a process reading another file,
or started with other `SECRET_KEYS`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import os
import secrets
import socket
import stat as stat_module
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

__all__ = [
    "ACTIVE",
    "OLD",
    "PENDING",
    "Key",
    "KeyRingError",
    "active",
    "add_pending_key",
    "find",
    "materials",
    "problem",
    "promote",
    "retire_in_file",
    "ring",
    "seen_by",
]

PENDING = "pending"
ACTIVE = "active"
OLD = "old"
_ENV_PENDING_PREFIX = "pending:"
_FILE_VERSION = 1
log = logging.getLogger("siphera.keyring")


class KeyRingError(Exception):
    """A key-ring change that cannot be made (said in words an operator can act on)."""


@dataclass(frozen=True)
class Key:
    """One key of the ring. `id` is public (names the key without revealing it);
    `material` never leaves the process."""

    id: str
    material: str = field(repr=False)
    state: str
    source: str  # "file" or "env"
    added_at: str = ""  # ISO 8601 (file keys)
    promoted_at: str = ""  # when it became active (file keys)

    def since(self) -> datetime | None:
        """When this key started encrypting (or was added), if known."""
        stamp = self.promoted_at or self.added_at
        return datetime.fromisoformat(stamp) if stamp else None


@functools.cache
def key_id(material: str) -> str:
    """The public id of a key: 16 hex digits of SHA-256 over a value derived from it (so
    it names the key without revealing anything usable)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"siphera key id v1")
    return hashlib.sha256(derived.derive(material.encode())).hexdigest()[:16]


# --- the file -------------------------------------------------------------------------


@dataclass
class _Loaded:
    path: str = ""
    signature: tuple | None = None
    body: dict = field(default_factory=dict)
    checked: float = float("-inf")
    refused: tuple | None = None  # the file's version last refused (the body is older)
    problem: str = ""  # why ("": nothing refused)


_lock = threading.Lock()
_loaded = _Loaded()


def file_path() -> Path | None:
    """The key-ring file, or None when the file is turned off (`KEY_RING_FILE=""`)."""
    configured = getattr(settings, "KEY_RING_FILE", "")
    return Path(configured) if configured else None


def _empty() -> dict:
    return {"v": _FILE_VERSION, "keys": [], "retired": []}


_NO_FILE = _empty()  # never changed: stands for "no file" so the ring can be memoised


# Permission bits that refuse the file: others may read or write it, or its group may
# write it (a group-readable 0640 file, say root:siphera, is accepted).
_UNSAFE_MODE = stat_module.S_IRWXO | stat_module.S_IWGRP


def _signature(stat: os.stat_result) -> tuple:
    """What changes when the file is replaced, edited or has its mode changed."""
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size, stat.st_mode)


def _read(path: Path) -> tuple[tuple | None, dict]:
    """The file's (signature, body), or (None, empty) when it does not exist; KeyRingError
    when it exists and cannot be used."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None, _empty()
    except OSError as exc:
        raise KeyRingError(f"cannot read the key-ring file {path}: {exc.strerror}") from None
    signature = _signature(stat)
    mode = stat_module.S_IMODE(stat.st_mode)
    if not stat_module.S_ISREG(stat.st_mode):
        raise KeyRingError(f"the key-ring file {path} is not a regular file")
    if mode & _UNSAFE_MODE:
        raise KeyRingError(
            f"the key-ring file {path} is open to other users (mode {mode:04o}): it holds "
            f"every key, so it must be 0600 (or 0640): chmod 600 {path}"
        )
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyRingError(f"cannot read the key-ring file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyRingError(f"the key-ring file {path} is not UTF-8 text") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise KeyRingError(f"the key-ring file {path} is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("v") != _FILE_VERSION:
        raise KeyRingError(f"{path} is not a version {_FILE_VERSION} key-ring file")
    body.setdefault("keys", [])
    body.setdefault("retired", [])
    _check_entries(path, body)
    return signature, body


def _check_entries(path: Path, body: dict) -> None:
    """KeyRingError unless every key has material and a known state, and every retired
    entry an id."""
    keys, retired = body["keys"], body["retired"]
    if not isinstance(keys, list) or not isinstance(retired, list):
        raise KeyRingError(f"{path}: `keys` and `retired` must be lists")
    for index, entry in enumerate(keys):
        material = entry.get("material") if isinstance(entry, dict) else None
        if not isinstance(material, str) or not material.strip():
            raise KeyRingError(f"{path}: key {index} has no `material`")
        if entry.get("state", OLD) not in (PENDING, ACTIVE, OLD):
            raise KeyRingError(
                f"{path}: key {index} has state {entry.get('state')!r} "
                f"(one of {PENDING}, {ACTIVE}, {OLD})"
            )
        for stamp in ("added_at", "promoted_at"):
            if not _is_stamp(entry.get(stamp, "")):
                raise KeyRingError(
                    f"{path}: key {index} has a bad `{stamp}` (ISO 8601 with a time zone)"
                )
    for index, entry in enumerate(retired):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise KeyRingError(f"{path}: retired entry {index} has no `id`")


def _is_stamp(value) -> bool:
    if not isinstance(value, str):
        return False
    if not value:
        return True
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _file_body() -> dict:
    """The file's content, re-read when it changed (checked at most every
    KEY_RING_RELOAD_SECONDS)."""
    global _loaded
    path = file_path()
    if path is None:
        return _NO_FILE
    now = time.monotonic()
    with _lock:
        fresh = _loaded.path == str(path)
        if fresh and now - _loaded.checked < settings.KEY_RING_RELOAD_SECONDS:
            return _loaded.body
        try:
            signature = _signature(path.stat())
        except FileNotFoundError:
            signature = None
        except OSError:
            signature = ()  # _read says why
        unchanged = signature == _loaded.signature
        if fresh and (unchanged or (_loaded.problem and signature == _loaded.refused)):
            _loaded.checked = now  # unchanged (or the same unusable version as before)
            return _loaded.body
        try:
            if fresh and signature is None and _loaded.signature is not None:
                # It was there: a volume not mounted, a file moved away. Its keys may
                # be what opens the stored secrets, so they are not dropped unread.
                raise KeyRingError(f"the key-ring file {path} is gone")
            signature, body = _read(path)
        except KeyRingError as exc:
            if not fresh:
                raise  # no ring to fall back on: nothing may be encrypted or verified
            _refuse(signature, exc)
            _loaded.checked = now
            return _loaded.body
        if fresh and _loaded.signature is not None:
            log.info("key ring file changed: reloaded", extra={"path": str(path)})
        _loaded = _Loaded(str(path), signature, body, now)
        return _loaded.body


def _refuse(signature, exc: KeyRingError) -> None:
    """Keep the ring read before and say why, once per version of the file."""
    _loaded.refused = signature
    _loaded.problem = str(exc)
    log.error(
        "key ring file unusable: keeping the keys read before",
        extra={"path": _loaded.path, "error": str(exc)},
    )


def problem() -> str | None:
    """Why the key ring cannot be used as configured now (the file this process refused,
    or no ring at all), or None. For readiness probes and `rotate_keys --status`."""
    try:
        ring()
    except KeyRingError as exc:
        return str(exc)
    with _lock:
        return _loaded.problem or None


def _write(path: Path, body: dict) -> None:
    """Replace the file atomically (a reader sees the old or the new ring, never half),
    mode 0600, synced to disk."""
    global _loaded
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(body, indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with _lock:
        _loaded = _Loaded()  # this process sees its own change at once


def _writable_path() -> Path:
    path = file_path()
    if path is None:
        raise KeyRingError(
            "KEY_RING_FILE is empty, so keys come only from SECRET_KEYS: add, promote and "
            "retire keys by editing SECRET_KEYS (docs/key-rotation.md)."
        )
    return path


# --- the ring -------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _assemble(body: dict, env: tuple[str, ...]) -> tuple[Key, ...]:
    retired = {entry["id"] for entry in body["retired"]}
    entries: list[tuple[str, str, str, str, str]] = []  # material, state, source, added, promoted
    for entry in body["keys"]:
        entries.append(
            (
                entry["material"],
                entry.get("state", OLD),
                "file",
                entry.get("added_at", ""),
                entry.get("promoted_at", ""),
            )
        )
    for raw in env:
        pending = raw.startswith(_ENV_PENDING_PREFIX)
        material = raw[len(_ENV_PENDING_PREFIX) :] if pending else raw
        entries.append((material, PENDING if pending else OLD, "env", "", ""))
    keys: list[Key] = []
    seen: set[str] = set()
    active_found = False
    for material, state, source, added, promoted in entries:
        kid = key_id(material)
        if kid in seen or kid in retired or not material.strip():
            continue
        seen.add(kid)
        if active_found:
            state = OLD  # anything after the active key is older than it
        elif state != PENDING:
            state, active_found = ACTIVE, True
        keys.append(Key(kid, material, state, source, added, promoted))
    if not active_found:
        raise KeyRingError(
            "the key ring has no active key (every key is pending or retired): promote one "
            "or put a key in SECRET_KEYS"
        )
    return tuple(keys)


_assembled: tuple = (None, (), ())  # (file body, SECRET_KEYS, keys): the last ring built


def ring() -> tuple[Key, ...]:
    """Every key, newest first: pending keys, the active key, old keys."""
    global _assembled
    body = _file_body()
    env = tuple(settings.SECRET_KEYS)
    memo = _assembled
    if memo[0] is body and memo[1] == env:
        keys = memo[2]
    else:
        try:
            keys = _assemble(body, env)
        except KeyRingError as exc:
            if not memo[2] or memo[1] != env:
                raise
            with _lock:  # a file that leaves no active key: as any unusable file
                if _loaded.body is body:
                    _refuse(_loaded.signature, exc)
            keys = memo[2]
        _assembled = (body, env, keys)
    _note_seen(keys)
    return keys


def active() -> Key:
    """The key that encrypts and signs now."""
    return next(key for key in ring() if key.state == ACTIVE)


def find(kid: str) -> Key | None:
    """The key with this id, if the ring has it."""
    return next((key for key in ring() if key.id == kid), None)


def materials() -> tuple[str, ...]:
    """Key material in the order users of the ring try it: the active key first (it
    encrypts and signs), then pending keys, then old keys (they only open and verify)."""
    keys = ring()
    ordered = [k for k in keys if k.state == ACTIVE] + [k for k in keys if k.state != ACTIVE]
    return tuple(k.material for k in ordered)


def new_material() -> str:
    """Fresh key material: 32 random bytes, URL-safe base64 (a valid Fernet key)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def add_pending_key(material: str | None = None) -> Key:
    """Put a new key in front of the file's keys as pending (decrypt-only until promoted).
    Refused while another key is pending: promote or retire that one first."""
    path = _writable_path()
    with _file_lock(path):
        _, body = _read(path)
        if any(entry.get("state") == PENDING for entry in body["keys"]) or any(
            k.state == PENDING for k in ring()
        ):
            raise KeyRingError("a key is already pending: promote it first (--promote)")
        material = material or new_material()
        kid = key_id(material)
        if find(kid) is not None or kid in {entry["id"] for entry in body["retired"]}:
            raise KeyRingError(f"key {kid} is already in the ring (or was retired)")
        body["keys"].insert(0, {"material": material, "state": PENDING, "added_at": _now()})
        _write(path, body)
    log.info("key ring: key added as pending", extra={"key_id": kid})
    return find(kid)


def promote(kid: str) -> Key:
    """Make the pending key `kid` (from the file) the active key; the previous active key
    becomes old. The caller checks first that every process knows it (`seen_by`)."""
    path = _writable_path()
    with _file_lock(path):
        _, body = _read(path)
        target = next((e for e in body["keys"] if key_id(e["material"]) == kid), None)
        if target is None or target.get("state") != PENDING:
            raise KeyRingError(f"key {kid} is not a pending key of {path}")
        for entry in body["keys"]:
            if entry.get("state") == ACTIVE:
                entry["state"] = OLD
        target["state"], target["promoted_at"] = ACTIVE, _now()
        body["keys"].remove(target)
        body["keys"].insert(0, target)
        _write(path, body)
    log.info("key ring: key promoted to active", extra={"key_id": kid})
    return find(kid)


def retire_in_file(kid: str) -> bool:
    """Take key `kid` out of the ring for good: removed from the file and listed as
    retired (so a copy left in SECRET_KEYS is ignored too). Returns whether the key
    also sits in SECRET_KEYS (the operator should remove it there). The caller checks
    first that nothing uses it."""
    key = find(kid)
    if key is None:
        raise KeyRingError(f"key {kid} is not in the ring")
    if key.state != OLD:
        raise KeyRingError(f"key {kid} is {key.state}: only an old key can be retired")
    path = _writable_path()
    with _file_lock(path):
        _, body = _read(path)
        body["keys"] = [e for e in body["keys"] if key_id(e["material"]) != kid]
        body["retired"].append({"id": kid, "retired_at": _now()})
        _write(path, body)
    log.info("key ring: key retired", extra={"key_id": kid})
    in_env = any(
        key_id(raw.removeprefix(_ENV_PENDING_PREFIX)) == kid for raw in settings.SECRET_KEYS
    )
    return in_env


class _file_lock:
    """An exclusive lock on `<file>.lock` around a read-change-write of the file, so two
    commands (or a command and the scheduled job) never lose each other's change."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


# --- which process knows which keys ----------------------------------------------------

_seen_lock = threading.Lock()
_seen_sent: tuple[tuple[str, ...], float] = ((), float("-inf"))


def _seen_key(ident: str = "") -> str:
    return f"{settings.CACHE_KEY_PREFIX}:keyring:seen:{ident}"


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _note_seen(keys: tuple[Key, ...]) -> None:
    """Tell Redis which keys this process holds (when they change, and at least every
    KEY_RING_SEEN_SECONDS / 3 while the ring is used). Never from an event loop's thread
    (a blocking call there would stall every socket) and never fatal: Redis being away
    only means a promotion cannot confirm this process."""
    global _seen_sent
    ids = tuple(key.id for key in keys)
    now = time.monotonic()
    ttl = settings.KEY_RING_SEEN_SECONDS
    with _seen_lock:
        if _seen_sent[0] == ids and now - _seen_sent[1] < ttl / 3:
            return
        try:
            asyncio.get_running_loop()
            return
        except RuntimeError:
            pass
        _seen_sent = (ids, now)
    try:
        from siphera.redis_outage import REDIS_ERRORS

        try:
            _redis().set(_seen_key(_process_name()), json.dumps(ids), ex=ttl)
        except REDIS_ERRORS as exc:
            log.warning("key ring: could not note the keys in Redis", extra={"error": str(exc)})
    except Exception:  # noqa: BLE001 (reporting must never break encryption)
        log.exception("key ring: could not note the keys in Redis")


@functools.cache
def _redis():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def seen_by() -> dict[str, list[str]]:
    """Process name -> key ids it held when it last used the ring (within
    KEY_RING_SEEN_SECONDS). Raises a Redis error when Redis cannot be read."""
    client = _redis()
    found: dict[str, list[str]] = {}
    prefix = _seen_key()
    for name in client.scan_iter(match=prefix + "*", count=500):
        raw = client.get(name)
        if raw is not None:
            found[name.decode()[len(prefix) :]] = json.loads(raw)
    return found


def forget_cached() -> None:
    """Drop this process's cached file and Redis note (tests that swap KEY_RING_FILE)."""
    global _loaded, _seen_sent
    with _lock:
        _loaded = _Loaded()
    with _seen_lock:
        _seen_sent = ((), float("-inf"))
