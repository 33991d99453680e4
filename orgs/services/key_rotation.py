"""Key rotation for every secret at rest (docs/key-rotation.md).

- `do_reencrypt`: the job. Moves every registered encrypted field and blob store
  (siphera.encrypted_at_rest) of every org, and of the public schema, to the active key,
  in batches: each batch is one transaction together with its checkpoint
  (KeyRotationCheckpoint, public schema) and its `secrets.reencrypted` audit entry, so a
  job killed at any point resumes exactly after the last committed batch, never
  re-encrypts a row twice and loses nothing. One job at a time (a PostgreSQL advisory
  lock).
- `key_usage`: which key every stored secret is under, per org and field, and which
  chain keys made audit entries no seal covers yet.
- `check_promote` / `do_promote`, `do_add_key`, `check_retire` / `do_retire`: the steps
  of a rotation. A key is retired only when no secret uses it; its audit entries are
  sealed with the active key first (audit.do_seal_key), since an append-only log cannot
  be re-signed.
- `do_rotation_tick`: what beat runs every KEY_ROTATION_CHECK_SECONDS.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from orgs.audit_events import AuditEvent
from orgs.models import KeyRotationCheckpoint, KeyRotationRun, Org
from orgs.services import audit, audit_anchor
from siphera import crypto, keyring, mac_keys
from siphera.encrypted_at_rest import BlobStore, EncryptedField, blob_stores, fields
from siphera.redis_outage import REDIS_ERRORS
from siphera.tenancy import in_tenant, public_schema

log = logging.getLogger("siphera.keyring")
_LOCK = (0x5E1A, 0x4B52)  # advisory lock: one re-encryption job at a time
PUBLIC = "public"
ACTOR = "key-rotation"


class KeyRotationRefused(Exception):
    """A rotation step that must not happen now; the message says why and what to do."""


class AlreadyRunning(KeyRotationRefused):
    """Another re-encryption job holds the lock."""


@dataclass(frozen=True)
class Progress:
    """Where a run is in one target of one org (after each batch)."""

    schema: str
    target: str
    scanned: int
    total: int
    rotated: int
    unreadable: int
    done: bool


ProgressFn = Callable[[Progress], None]


@dataclass
class RunReport:
    """The run's totals (across every process that worked on it) and what this call did
    (`*_now`: a resumed run counts only the batches after the checkpoints)."""

    run_id: int
    key_id: str
    resumed: bool
    scanned: int = 0
    rotated: int = 0
    unreadable: int = 0
    scanned_now: int = 0
    rotated_now: int = 0
    targets: list[Progress] = field(default_factory=list)


# --- what is encrypted, where ------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    name: str
    public: bool
    field: EncryptedField | None = None
    blobs: BlobStore | None = None


def _targets() -> list[_Target]:
    found = [_Target(f.name, f.public, field=f) for f in fields()]
    found += [_Target(f"blobs:{b.name}", b.public, blobs=b) for b in blob_stores()]
    return found


def _orgs() -> list[Org]:
    """Every org, active or not (a suspended org's secrets still use the keys)."""
    with public_schema():
        return list(Org.objects.exclude(schema_name=PUBLIC).order_by("schema_name"))


def _places(scope: list[str] | None = None) -> Iterator[tuple[str, Callable, list[_Target]]]:
    """(schema, run-in-that-schema, its targets), the public schema first; `scope`: only
    these org schemas."""
    targets = _targets()
    public = [t for t in targets if t.public]
    tenant = [t for t in targets if not t.public]
    if public and not scope:
        yield PUBLIC, _in_public, public
    if tenant:
        for org in _orgs():
            if not scope or org.schema_name in scope:
                yield org.schema_name, _in_org(org), tenant


def _in_public(fn, *args, **kwargs):
    with public_schema():
        return fn(*args, **kwargs)


def _in_org(org):
    return lambda fn, *args, **kwargs: in_tenant(org, fn, *args, **kwargs)


def _stored(target: _Target):
    """The target's rows that hold a value ("" and NULL hold none)."""
    name = target.field.field
    return (
        target.field.model_class()
        .objects.filter(**{f"{name}__isnull": False})
        .exclude(**{name: ""})
        .order_by("pk")
    )


# --- the job ---------------------------------------------------------------------------


class _job_lock:
    def __enter__(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", _LOCK)
            if not cursor.fetchone()[0]:
                raise AlreadyRunning(
                    "another re-encryption job is running (a worker or another rotate_keys); "
                    "it resumes where it stopped if killed: run again later"
                )

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", _LOCK)


def _current_run(kid: str, scope: str) -> tuple[KeyRotationRun, bool]:
    """The unfinished run for key `kid` and this scope (resumed) or a new one; unfinished
    runs for other keys are superseded (their rows go straight to the active key)."""
    with public_schema(), transaction.atomic():
        KeyRotationRun.objects.filter(state=KeyRotationRun.RUNNING).exclude(key_id=kid).update(
            state=KeyRotationRun.SUPERSEDED, finished_at=timezone.now()
        )
        run = KeyRotationRun.objects.filter(
            state=KeyRotationRun.RUNNING, key_id=kid, scope=scope
        ).first()
        if run is not None:
            return run, True
        return KeyRotationRun.objects.create(key_id=kid, scope=scope), False


def do_reencrypt(
    *,
    progress: ProgressFn | None = None,
    batch_size: int | None = None,
    schemas: list[str] | None = None,
) -> RunReport:
    """Re-encrypt every registered secret of every org (and of the public schema) that is
    not under the active key, resuming an interrupted run for the same key (and the same
    `schemas`: only these orgs, when given). Raises AlreadyRunning when another job holds
    the lock. Rows no key of the ring opens are left as they are, counted as `unreadable`
    and logged (with org, field and primary key, never the value)."""
    batch_size = batch_size or settings.KEY_ROTATION_BATCH
    scope = sorted(set(schemas or []))
    with public_schema(), _job_lock():
        key = keyring.active()
        run, resumed = _current_run(key.id, ",".join(scope))
        report = RunReport(run.pk, key.id, resumed)
        log.info(
            "key rotation: re-encryption started",
            extra={"run": run.pk, "key_id": key.id, "resumed": resumed},
        )
        for schema, run_in, targets in _places(scope):
            for target in targets:
                step, before = run_in(_reencrypt_target, run, schema, target, batch_size, progress)
                report.targets.append(step)
                report.scanned += step.scanned
                report.rotated += step.rotated
                report.unreadable += step.unreadable
                report.scanned_now += step.scanned - before.scanned
                report.rotated_now += step.rotated - before.rotated
        with public_schema():
            KeyRotationRun.objects.filter(pk=run.pk).update(
                state=KeyRotationRun.DONE, finished_at=timezone.now()
            )
        log.info(
            "key rotation: re-encryption finished",
            extra={
                "run": run.pk,
                "key_id": key.id,
                "scanned": report.scanned,
                "rotated": report.rotated,
                "unreadable": report.unreadable,
            },
        )
        return report


def _reencrypt_target(run, schema, target, batch_size, progress) -> tuple[Progress, Progress]:
    """Work through one target from its checkpoint; returns where it ended and where this
    call found it."""
    checkpoint, _ = KeyRotationCheckpoint.objects.get_or_create(
        run=run, schema=schema, target=target.name
    )
    before = _progress_of(checkpoint)
    if not checkpoint.done and checkpoint.scanned == 0 and not checkpoint.after:
        checkpoint.total = _stored(target).count() if target.field else target.blobs.count()
        checkpoint.save(update_fields=["total"])
    step = _reencrypt_blobs if target.blobs else _reencrypt_rows
    while not checkpoint.done:
        checkpoint = step(checkpoint, target, batch_size)
        if progress is not None:
            progress(_progress_of(checkpoint))
    return _progress_of(checkpoint), before


def _progress_of(cp: KeyRotationCheckpoint) -> Progress:
    return Progress(cp.schema, cp.target, cp.scanned, cp.total, cp.rotated, cp.unreadable, cp.done)


def _reencrypt_rows(checkpoint, target: _Target, batch_size: int) -> KeyRotationCheckpoint:
    """One batch, one transaction: the rows (locked, so a concurrent write to one waits
    instead of being overwritten), their checkpoint and their audit entry."""
    name = target.field.field
    with transaction.atomic():
        checkpoint = KeyRotationCheckpoint.objects.select_for_update().get(pk=checkpoint.pk)
        rows = _stored(target).select_for_update()
        if checkpoint.after:
            rows = rows.filter(pk__gt=checkpoint.after)
        batch = list(rows.only("pk", name)[:batch_size])
        if not batch:
            checkpoint.done = True
            checkpoint.save(update_fields=["done"])
            return checkpoint
        stale, unreadable = [], 0
        for row in batch:
            token = getattr(row, name)
            if not crypto.needs_rotation(token):
                continue
            try:
                setattr(row, name, crypto.rotate(token))
            except crypto.DecryptionError:
                unreadable += 1
                log.error(
                    "key rotation: no key of the ring opens a stored secret",
                    extra={"schema": checkpoint.schema, "target": target.name, "pk": str(row.pk)},
                )
                continue
            stale.append(row)
        if stale:
            target.field.model_class().objects.bulk_update(stale, [name])
        checkpoint.after = str(batch[-1].pk)
        checkpoint.scanned += len(batch)
        checkpoint.rotated += len(stale)
        checkpoint.unreadable += unreadable
        checkpoint.save(update_fields=["after", "scanned", "rotated", "unreadable"])
        if stale and checkpoint.schema != PUBLIC:
            _audit_batch(target.name, len(stale), checkpoint.run.key_id)
    return checkpoint


def _reencrypt_blobs(checkpoint, target: _Target, batch_size: int) -> KeyRotationCheckpoint:
    """One batch of blobs. A blob store is not in the database's transaction: a blob
    re-encrypted just before a kill is found under the active key on resume and skipped
    (so never re-encrypted twice), but is not counted in `rotated`."""
    store = target.blobs
    names = store.names_after(checkpoint.after, batch_size)
    rotated = unreadable = 0
    for name in names:
        token = store.read(name)
        if token is None or not crypto.needs_rotation(token):
            continue
        try:
            store.write(name, crypto.rotate(token))
        except crypto.DecryptionError:
            unreadable += 1
            log.error(
                "key rotation: no key of the ring opens a stored blob",
                extra={"schema": checkpoint.schema, "target": target.name, "blob": name},
            )
            continue
        rotated += 1
    with transaction.atomic():
        checkpoint = KeyRotationCheckpoint.objects.select_for_update().get(pk=checkpoint.pk)
        if names:
            checkpoint.after = names[-1]
            checkpoint.scanned += len(names)
            checkpoint.rotated += rotated
            checkpoint.unreadable += unreadable
        else:
            checkpoint.done = True
        checkpoint.save()
        if rotated and checkpoint.schema != PUBLIC:
            _audit_batch(target.name, rotated, checkpoint.run.key_id)
    return checkpoint


def _audit_batch(target: str, rotated: int, key_id: str) -> None:
    audit.record(
        AuditEvent.SECRETS_REENCRYPTED,
        actor=audit.Actor.system(ACTOR),
        target_type="encrypted_field",
        target_id=target,
        data={"rotated": rotated, "key_id": key_id},
    )


def latest_run() -> KeyRotationRun | None:
    with public_schema():
        return KeyRotationRun.objects.first()


def run_progress(run: KeyRotationRun) -> list[Progress]:
    with public_schema():
        return [_progress_of(cp) for cp in run.checkpoints.all()]


# --- which key is used where -------------------------------------------------------------


@dataclass
class Usage:
    """Ring key id -> {(schema, target): count}; `unreadable` the same for values no key
    opens; `audit` chain-key use per org (ring key id, or the bare chain key id when the
    ring no longer has it) by entries no seal covers."""

    secrets: dict[str, Counter] = field(default_factory=dict)
    unreadable: Counter = field(default_factory=Counter)
    audit: dict[str, Counter] = field(default_factory=dict)

    def secrets_of(self, kid: str) -> Counter:
        return self.secrets.get(kid, Counter())

    def audit_of(self, kid: str) -> Counter:
        return self.audit.get(kid, Counter())


def key_usage() -> Usage:
    """Scan every registered secret (each value is tried against the ring's keys) and
    every org's audit chain. Reads only; as long as the data."""
    usage = Usage()
    chain_ids = {
        mac_keys.purpose_id(audit.CHAIN_PURPOSE, key.material): key.id for key in keyring.ring()
    }
    for schema, run_in, targets in _places():
        for target in targets:
            run_in(_count_target, usage, schema, target)
    for org in _orgs():
        for chain_id, count in in_tenant(org, audit.chain_key_usage).items():
            kid = chain_ids.get(chain_id, chain_id)
            usage.audit.setdefault(kid, Counter())[org.schema_name] += count
    return usage


def _count_target(usage: Usage, schema: str, target: _Target) -> None:
    where = (schema, target.name)
    if target.field:
        tokens = _stored(target).values_list(target.field.field, flat=True).iterator(2000)
    else:
        tokens = _blob_tokens(target.blobs)
    for token in tokens:
        kid = crypto.key_id_of(token)
        if kid is None:
            usage.unreadable[where] += 1
        else:
            usage.secrets.setdefault(kid, Counter())[where] += 1


def _blob_tokens(store: BlobStore) -> Iterator[str]:
    after = ""
    while names := store.names_after(after, 500):
        for name in names:
            token = store.read(name)
            if token is not None:
                yield token
        after = names[-1]


# --- adding, promoting, retiring keys ----------------------------------------------------


def do_add_key() -> keyring.Key:
    """Add a new pending key to the key-ring file (decrypt-only until promoted)."""
    try:
        return keyring.add_pending_key()
    except keyring.KeyRingError as exc:
        raise KeyRotationRefused(str(exc)) from None


def processes_lacking(kid: str) -> dict[str, list[str]]:
    """Live processes (noted in Redis within KEY_RING_SEEN_SECONDS) that do not hold key
    `kid`. Raises KeyRotationRefused when Redis cannot be read."""
    try:
        seen = keyring.seen_by()
    except REDIS_ERRORS as exc:
        raise KeyRotationRefused(
            f"cannot tell which keys the running processes hold (Redis: {exc}); try again "
            "when Redis is back"
        ) from None
    return {name: ids for name, ids in seen.items() if kid not in ids}


def check_promote(kid: str) -> keyring.Key:
    """The pending key `kid`, if it may become active now: it has been in the ring for at
    least twice KEY_RING_RELOAD_SECONDS (every process sharing the file re-read it) and no
    live process lacks it. Otherwise KeyRotationRefused saying which."""
    key = keyring.find(kid)
    if key is None or key.state != keyring.PENDING:
        raise KeyRotationRefused(f"key {kid} is not a pending key of the ring")
    added = key.since()
    wait = timedelta(seconds=2 * settings.KEY_RING_RELOAD_SECONDS)
    if added is not None and timezone.now() < added + wait:
        left = int((added + wait - timezone.now()).total_seconds()) + 1
        raise KeyRotationRefused(
            f"key {kid} was added {added.isoformat()}: wait {left} s more, until every "
            "process has re-read the key ring (2 x KEY_RING_RELOAD_SECONDS)"
        )
    lacking = processes_lacking(kid)
    if lacking:
        names = ", ".join(sorted(lacking)[:10])
        raise KeyRotationRefused(
            f"{len(lacking)} running process(es) do not hold key {kid} yet ({names}): they "
            "could not decrypt what it encrypts. Give them the same KEY_RING_FILE (or "
            "SECRET_KEYS) and restart them, or wait KEY_RING_SEEN_SECONDS for stopped ones "
            "to drop out"
        )
    return key


def do_promote(kid: str) -> keyring.Key:
    """Make pending key `kid` the active key (after check_promote). A key from SECRET_KEYS
    is promoted by editing SECRET_KEYS; KeyRotationRefused says so."""
    key = check_promote(kid)
    if key.source != "file":
        raise KeyRotationRefused(
            f"key {kid} comes from SECRET_KEYS: every process holds it, so it is safe to "
            "promote. Move it to the front of SECRET_KEYS without `pending:` and restart "
            "every process"
        )
    try:
        return keyring.promote(kid)
    except keyring.KeyRingError as exc:
        raise KeyRotationRefused(str(exc)) from None


@dataclass
class RetireReport:
    key: keyring.Key
    sealed: dict[str, int]  # org schema -> audit entries sealed
    in_env: bool  # still listed in SECRET_KEYS (remove it there too)
    file: bool  # retired in the key-ring file (else: SECRET_KEYS must be edited)


def check_retire(kid: str) -> keyring.Key:
    """The old key `kid`, if nothing but audit entries uses it: no stored secret, and no
    live process signs with it. Otherwise KeyRotationRefused saying how many and where."""
    key = keyring.find(kid)
    if key is None:
        raise KeyRotationRefused(f"key {kid} is not in the ring")
    if key.state != keyring.OLD:
        raise KeyRotationRefused(f"key {kid} is {key.state}: only an old key can be retired")
    active = keyring.active()
    since = active.since()
    settle = timedelta(seconds=2 * settings.KEY_RING_RELOAD_SECONDS)
    if since is not None and timezone.now() < since + settle:
        raise KeyRotationRefused(
            f"key {active.id} became active at {since.isoformat()}: wait until every process "
            "has re-read the key ring (2 x KEY_RING_RELOAD_SECONDS)"
        )
    usage = key_usage()
    used = usage.secrets_of(kid)
    if used:
        where = "; ".join(f"{schema} {target}: {n}" for (schema, target), n in sorted(used.items()))
        raise KeyRotationRefused(
            f"key {kid} still encrypts {sum(used.values())} secret(s) ({where}): run "
            "`manage.py rotate_keys` first"
        )
    return key


def do_retire(kid: str) -> RetireReport:
    """Retire old key `kid` (after check_retire): in each org, seal the audit entries it
    made (audit.do_seal_key) and anchor the chain with the active key, then take the key
    out of the ring (the key-ring file lists it as retired). Without a key-ring file the
    operator removes it from SECRET_KEYS; the report says so."""
    key = check_retire(kid)
    sealed: dict[str, int] = {}
    chain_id = mac_keys.purpose_id(audit.CHAIN_PURPOSE, key.material)
    anchor_id = mac_keys.purpose_id(audit_anchor.ANCHOR_PURPOSE, key.material)
    for org in _orgs():
        entry = in_tenant(org, _seal_and_anchor, chain_id, anchor_id)
        if entry is not None:
            sealed[org.schema_name] = entry.data["entries"]
    path = keyring.file_path()
    in_env, in_file = key.source == "env", False
    if path is not None:
        try:
            in_env = keyring.retire_in_file(kid)
            in_file = True
        except keyring.KeyRingError as exc:
            raise KeyRotationRefused(str(exc)) from None
    log.info(
        "key rotation: key retired",
        extra={"key_id": kid, "sealed": sealed, "in_env": in_env, "file": in_file},
    )
    return RetireReport(key, sealed, in_env, in_file)


def _seal_and_anchor(chain_id: str, anchor_id: str):
    """In the current org: seal the entries chain key `chain_id` made, and anchor the head
    with the active key when something was sealed or the latest anchor was made with the
    retiring key (`anchor_id`); other orgs are left as they are."""
    actor = audit.Actor.system(ACTOR)
    entry = (
        audit.do_seal_key(chain_id, actor=actor) if chain_id in audit.chain_key_usage() else None
    )
    latest = audit_anchor.latest(connection.schema_name).anchor
    if entry is None and (latest is None or latest.key_id != anchor_id):
        return None
    report = audit.do_anchor_head(resign=True)
    if not report.ok:
        raise KeyRotationRefused(
            f"org {connection.schema_name}: its audit chain does not verify "
            f"({report.problem} at entry {report.broken_id}), so it cannot be anchored with "
            "the active key; the key was not retired (manage.py verify_audit)"
        )
    return entry


# --- the schedule ------------------------------------------------------------------------


def key_age(key: keyring.Key) -> timedelta | None:
    """How long `key` has been active: from the key-ring file, else from the first
    re-encryption run for it."""
    since = key.since()
    if since is None:
        with public_schema():
            first = KeyRotationRun.objects.filter(key_id=key.id).order_by("id").first()
        since = first.created_at if first else None
    return timezone.now() - since if since else None


def do_rotation_tick() -> dict:
    """Beat, every KEY_ROTATION_CHECK_SECONDS: with a key-ring file and KEY_ROTATION_DAYS,
    add a pending key when the active one is that old, and promote a pending key once
    KEY_ROTATION_PROMOTE_AFTER_SECONDS have passed and every process holds it; then run
    (or resume) the re-encryption job when the active key has no finished run since it
    became active. Never retires a key (that is the operator's `--retire`)."""
    done: dict = {"added": None, "promoted": None, "reencrypted": None}
    auto = settings.KEY_ROTATION_DAYS and keyring.file_path() is not None
    pending = [k for k in keyring.ring() if k.state == keyring.PENDING]
    if auto and pending and pending[0].source == "file":
        key = pending[0]
        due = key.since() + timedelta(seconds=settings.KEY_ROTATION_PROMOTE_AFTER_SECONDS)
        if timezone.now() >= due:
            try:
                done["promoted"] = do_promote(key.id).id
            except KeyRotationRefused as exc:
                log.warning("key rotation: pending key not promoted", extra={"why": str(exc)})
    elif auto and not pending:
        age = key_age(keyring.active())
        if age is not None and age >= timedelta(days=settings.KEY_ROTATION_DAYS):
            done["added"] = do_add_key().id
    active = keyring.active()
    if _needs_run(active):
        try:
            report = do_reencrypt()
            done["reencrypted"] = {"run": report.run_id, "rotated": report.rotated_now}
        except AlreadyRunning:
            pass
    return done


def _needs_run(key: keyring.Key) -> bool:
    since = key.since()
    with public_schema():
        runs = KeyRotationRun.objects.filter(key_id=key.id, state=KeyRotationRun.DONE, scope="")
        if since is not None:
            # Processes still on the previous ring may have encrypted with the old key for
            # up to KEY_RING_RELOAD_SECONDS after the promotion.
            settle = timedelta(seconds=2 * settings.KEY_RING_RELOAD_SECONDS)
            runs = runs.filter(created_at__gte=since + settle)
        return not runs.exists()
