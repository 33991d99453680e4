"""Key-ring rotation of every secret at rest (orgs.services.key_rotation, siphera.keyring;
docs/key-rotation.md): add a key as pending, promote it, re-encrypt, retire the old one.

Each test gets a key-ring file of its own (the run's file stays as the servers know it) and
a Redis prefix of its own for the processes' key notes. The job walks every org; the orgs
made here are deactivated at the end, and their secrets stay under the test's keys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO

import pytest
from cryptography.fernet import InvalidToken
from django.core.management import CommandError, call_command

from orgs.accounts.models import AuditEntry, TotpFactor
from orgs.models import KeyRotationCheckpoint, KeyRotationRun, Org
from orgs.services import audit, key_rotation, mfa
from orgs.sso import provider
from orgs.sso.models import IdentityProvider
from siphera import crypto, keyring
from siphera.encrypted_at_rest import (
    BlobStore,
    register_encrypted_blobs,
    unregister_encrypted_blobs,
)
from siphera.tenancy import in_tenant, public_schema
from tests.fixtures import (
    ROOT,
    child_env,
    create_org,
    eventually,
    make_user,
    unique,
    worker_with_env,
)

SYSTEM = audit.Actor.system("tests")


@pytest.fixture
def ring(settings, tmp_path):
    """A key-ring file of the test's own holding one test key (active), and no other key:
    the run's other orgs, under the run's SECRET_KEY, are unreadable here and so never
    rewritten or sealed by these tests. Yields a maker of orgs (deactivated after)."""
    settings.KEY_RING_FILE = str(tmp_path / "key_ring.json")
    settings.KEY_RING_RELOAD_SECONDS = 0
    settings.SECRET_KEYS = []
    settings.CACHE_KEY_PREFIX = unique("keyring-test")
    keyring.forget_cached()
    first = {"material": keyring.new_material(), "state": "active", "added_at": keyring._now()}
    keyring._write(keyring.file_path(), {"v": 1, "keys": [first], "retired": []})
    made: list[Org] = []

    def org() -> Org:
        made.append(create_org(unique("kr")))
        return made[-1]

    yield org
    with public_schema():
        Org.objects.filter(pk__in=[o.pk for o in made]).update(is_active=False)
    keyring.forget_cached()


def command(*args: str) -> str:
    out = StringIO()
    call_command("rotate_keys", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def new_active_key() -> keyring.Key:
    """Add and promote a key (the test's processes are all this one)."""
    added = command("--new-key")
    kid = added.split()[2]
    command("--promote", kid)
    assert keyring.active().id == kid
    return keyring.find(kid)


def secrets_of(org) -> dict[str, str]:
    """Every stored secret of the org: TOTP seeds and the IdP secret (tokens)."""

    def read():
        found = {f"totp:{f.pk}": f.secret_encrypted for f in TotpFactor.objects.all()}
        idp = IdentityProvider.objects.filter(pk=1).first()
        if idp is not None and idp.secret_encrypted:
            found["idp"] = idp.secret_encrypted
        return found

    return in_tenant(org, read)


def plaintexts(org) -> dict[str, bytes]:
    return {name: crypto.decrypt(token) for name, token in secrets_of(org).items()}


def chain_rows(org) -> list[dict]:
    return in_tenant(
        org, lambda: [audit.entry_fields(e) for e in AuditEntry.objects.order_by("id")]
    )


def with_secrets(org, users: int = 3) -> None:
    for _ in range(users):
        in_tenant(org, mfa.check_start_enrollment, make_user(org), actor=SYSTEM)
    in_tenant(org, provider.do_configure, "oidc", {"secret": f"client-{unique()}"}, actor=SYSTEM)


def opens_with_only(key: keyring.Key, token: str) -> bytes:
    """Decrypt with this key alone (no ring)."""
    return crypto._derive(key.material).decrypt(token.encode())


def test_a_new_key_starts_pending_and_encrypts_only_once_promoted(ring):
    org = ring()
    old = keyring.active()
    added = command("--new-key")
    assert "as pending" in added
    pending = next(k for k in keyring.ring() if k.state == keyring.PENDING)
    # Pending: it opens values, but new values are still made with the active key.
    with_secrets(org, users=1)
    assert all(not crypto.needs_rotation(t) for t in secrets_of(org).values())
    assert keyring.active() == old
    token = crypto._derive(pending.material).encrypt(b"made elsewhere").decode()
    assert crypto.decrypt(token) == b"made elsewhere"
    # A second pending key is refused until the first is promoted.
    with pytest.raises(CommandError, match="already pending"):
        command("--new-key")
    command("--promote", pending.id)
    assert keyring.active().id == pending.id
    assert {k.id: k.state for k in keyring.ring()}[old.id] == keyring.OLD
    # The file holds the keys (0600), newest first.
    path = keyring.file_path()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    body = json.loads(path.read_text())
    assert [e["state"] for e in body["keys"][:2]] == ["active", "old"]


def test_rotation_moves_every_secret_of_both_orgs_to_the_new_key_and_retires_the_old(ring):
    # Given TOTP seeds and IdP secrets in two orgs under the active key
    acme, globex = ring(), ring()
    for org in (acme, globex):
        with_secrets(org)
    before = {org: secrets_of(org) for org in (acme, globex)}
    plain = {org: {k: crypto.decrypt(v) for k, v in s.items()} for org, s in before.items()}
    old = keyring.active()

    # When a new key is promoted, the stored secrets still decrypt (old key) ...
    new = new_active_key()
    assert all(crypto.needs_rotation(t) for s in before.values() for t in s.values())
    # ... and the old key cannot retire while they use it: the refusal says where
    with pytest.raises(CommandError) as refused:
        command("--retire", old.id)
    message = str(refused.value)
    assert "run `manage.py rotate_keys` first" in message
    assert f"{acme.schema_name} accounts.TotpFactor.secret_encrypted: 3" in message
    assert f"{globex.schema_name} sso.IdentityProvider.secret_encrypted: 1" in message

    # When the job runs
    out = command("--org", acme.slug, "--org", globex.slug)
    assert "8 secret(s) re-encrypted under key " + new.id in out

    # Then every secret decrypts, and with the new key alone
    for org in (acme, globex):
        after = secrets_of(org)
        assert after.keys() == before[org].keys()
        for name, token in after.items():
            assert token != before[org][name]
            assert crypto.decrypt(token) == plain[org][name]
            assert opens_with_only(new, token) == plain[org][name]
            with pytest.raises(InvalidToken):
                opens_with_only(old, token)
        # one audit entry per batch, in the org's own log
        [entry] = in_tenant(
            org,
            lambda: list(
                AuditEntry.objects.filter(
                    event="secrets.reencrypted", target_id="accounts.TotpFactor.secret_encrypted"
                )
            ),
        )
        assert entry.data == {"rotated": 3, "key_id": new.id}
        assert entry.actor_label == "key-rotation"

    # A second run finds nothing to do
    assert "0 secret(s) re-encrypted" in command("--org", acme.slug, "--org", globex.slug)

    # When the old key retires: its audit entries are sealed, it leaves the ring
    out = command("--retire", old.id)
    assert f"org {acme.schema_name}: sealed" in out and f"key {old.id} retired" in out
    assert keyring.find(old.id) is None
    # Then every secret still decrypts, the audit chains verify without the old key, and
    # the status shows no use of any key but the active one
    for org in (acme, globex):
        assert {k: crypto.decrypt(v) for k, v in secrets_of(org).items()} == plain[org]
        report = in_tenant(org, audit.verify_chain)
        assert report.ok, report.describe()
        assert report.anchor_id is not None
    status = command("--status")
    assert old.id not in status
    assert f"key {new.id}  active" in status


def test_a_sealed_entry_edited_after_its_key_retired_fails_verification(ring):
    org = ring()
    make_user(org)
    old = keyring.active()
    new_active_key()
    command("--retire", old.id)
    rows = in_tenant(
        org, lambda: [audit.entry_fields(e) for e in AuditEntry.objects.order_by("id")]
    )
    assert audit.walk_chain(rows).ok
    # The entries of the retired key are checked against the seal: editing one shows.
    sealed = next(r for r in rows if r["event"] == "member.created")
    sealed["data"] = {**sealed["data"], "role": "owner"}
    report = audit.walk_chain(rows)
    assert not report.ok and report.problem == audit.ALTERED
    assert "retired key" in report.detail
    # An entry claiming the retired key after its seal (forged) is unknown.
    rows = in_tenant(
        org, lambda: [audit.entry_fields(e) for e in AuditEntry.objects.order_by("id")]
    )
    forged = dict(rows[0], id=rows[-1]["id"] + 1, prev_hash=rows[-1]["hash"], hash="f" * 64)
    report = audit.walk_chain([*rows, forged])
    assert not report.ok and report.problem == audit.UNKNOWN_KEY


def test_only_an_old_key_unused_by_any_secret_can_retire(ring):
    org = ring()
    with_secrets(org, users=1)
    active = keyring.active()
    with pytest.raises(CommandError, match="only an old key"):
        command("--retire", active.id)
    with pytest.raises(CommandError, match="not in the ring"):
        command("--retire", "0123456789abcdef")
    old = active
    new_active_key()
    with pytest.raises(CommandError, match="still encrypts 2 secret"):
        command("--retire", old.id)
    assert keyring.find(old.id) is not None


def test_an_empty_key_id_is_refused_not_taken_for_a_re_encryption(ring):
    # `rotate_keys --promote "$KEY"` with KEY unset: no such key, and no job run.
    with public_schema():
        runs = KeyRotationRun.objects.count()
    for option, says in (("--promote", "is not a pending key"), ("--retire", "not in the ring")):
        with pytest.raises(CommandError, match=says):
            command(option, "")
    with public_schema():
        assert KeyRotationRun.objects.count() == runs


def test_a_job_killed_half_way_resumes_without_double_work_or_loss(ring):
    # Given 2 x 60 seeds under the old key and a rotation run one row per batch
    acme, globex = ring(), ring()
    for org in (acme, globex):
        users = [make_user(org) for _ in range(60)]
        for user in users:
            in_tenant(org, mfa.check_start_enrollment, user, actor=SYSTEM)
    plain = {
        org: {k: crypto.decrypt(v) for k, v in secrets_of(org).items()} for org in (acme, globex)
    }
    new_active_key()
    from django.conf import settings

    env = child_env(
        KEY_RING_FILE=settings.KEY_RING_FILE,
        CACHE_KEY_PREFIX=settings.CACHE_KEY_PREFIX,
        KEY_RING_RELOAD_SECONDS="0",
    )
    args = [sys.executable, "manage.py", "rotate_keys", "--batch-size", "1"]
    args += ["--org", acme.slug, "--org", globex.slug]

    def checkpoints():
        with public_schema():
            return list(KeyRotationCheckpoint.objects.filter(run__key_id=keyring.active().id))

    # When the command process is killed (SIGKILL) after some batches committed
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while sum(cp.scanned for cp in checkpoints()) < 20:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done_before = sum(cp.rotated for cp in checkpoints())
    assert 0 < done_before < 120
    stale = sum(
        crypto.needs_rotation(t) for org in (acme, globex) for t in secrets_of(org).values()
    )
    # the checkpoints agree with the rows: every committed batch is counted, nothing else
    assert stale == 120 - done_before

    # Then running again resumes the same run from its checkpoints
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resumed" in out.stdout
    assert f"{stale} secret(s) re-encrypted" in out.stdout
    assert "rotate_keys: " in out.stderr  # plain progress lines (not a terminal)
    with public_schema():
        run = KeyRotationRun.objects.get(key_id=keyring.active().id)
    assert run.state == KeyRotationRun.DONE
    steps = checkpoints()
    # every row looked at exactly once across both processes, each re-encrypted once
    assert [(cp.scanned, cp.rotated, cp.total) for cp in steps if "Totp" in cp.target] == [
        (60, 60, 60),
        (60, 60, 60),
    ]
    for org in (acme, globex):
        after = secrets_of(org)
        assert {k: crypto.decrypt(v) for k, v in after.items()} == plain[org]
        assert not any(crypto.needs_rotation(t) for t in after.values())
        logged = in_tenant(
            org,
            lambda: sum(
                e.data["rotated"] for e in AuditEntry.objects.filter(event="secrets.reencrypted")
            ),
        )
        assert logged == 60  # one audit entry per committed batch: none twice, none lost


def test_promotion_waits_for_every_running_process_to_hold_the_key(ring, tmp_path):
    from django.conf import settings

    org = ring()
    make_user(org)
    # A worker that reads another key-ring file (misconfigured) and uses the ring
    other = tmp_path / "elsewhere.json"
    other.write_text(keyring.file_path().read_text())
    other.chmod(0o600)  # a key-ring file open to others is refused
    with worker_with_env(
        tmp_path / "worker.log",
        KEY_RING_FILE=str(other),
        CACHE_KEY_PREFIX=settings.CACHE_KEY_PREFIX,
    ) as queue:
        from orgs.tasks import anchor_audit_chain

        me = keyring._process_name()
        anchor_audit_chain.apply_async(headers={"_schema_name": org.schema_name}, queue=queue)
        eventually(lambda: set(keyring.seen_by()) - {me}, within=60)
        added = command("--new-key").split()[2]
        with pytest.raises(CommandError, match="1 running process"):
            command("--promote", added)
        assert keyring.active().id != added
    # Once it is gone and its note has expired (here: removed, KEY_RING_SEEN_SECONDS is at
    # least a minute), the promotion goes through.
    for name in set(keyring.seen_by()) - {me}:
        keyring._redis().delete(keyring._seen_key(name))
    command("--promote", added)
    assert keyring.active().id == added


def test_a_worker_runs_the_enqueued_job(ring, tmp_path):
    from django.conf import settings

    org = ring()
    with_secrets(org, users=2)
    new_active_key()
    with worker_with_env(
        tmp_path / "worker.log",
        KEY_RING_FILE=settings.KEY_RING_FILE,
        CACHE_KEY_PREFIX=settings.CACHE_KEY_PREFIX,
    ) as queue:
        from orgs.tasks import reencrypt_secrets

        reencrypt_secrets.apply_async(
            kwargs={"batch_size": 1, "schemas": [org.schema_name]}, queue=queue
        )

        def finished() -> bool:
            with public_schema():
                return KeyRotationRun.objects.filter(
                    key_id=keyring.active().id, state=KeyRotationRun.DONE
                ).exists()

        eventually(finished, within=120)
    assert not any(crypto.needs_rotation(t) for t in secrets_of(org).values())
    assert in_tenant(org, AuditEntry.objects.filter(event="secrets.reencrypted").count) == 3


def test_a_registered_blob_store_is_re_encrypted_and_counted(ring, tmp_path):
    org = ring()
    folder = tmp_path / "blobs"
    folder.mkdir()
    for n in range(5):
        (folder / f"b{n}").write_text(crypto.encrypt(f"recording {n}"))

    def write(name: str, token: str) -> None:
        tmp = folder / f".{name}.tmp"
        tmp.write_text(token)
        tmp.replace(folder / name)

    store = BlobStore(
        name="test-recordings",
        names_after=lambda after, limit: sorted(
            p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name > after
        )[:limit],
        count=lambda: len(list(folder.iterdir())),
        read=lambda name: (folder / name).read_text(),
        write=write,
    )
    register_encrypted_blobs(store)
    try:
        old = keyring.active()
        new = new_active_key()
        with pytest.raises(CommandError, match="blobs:test-recordings: 5"):
            command("--retire", old.id)
        command("--org", org.slug, "--batch-size", "2")
        for n in range(5):
            token = (folder / f"b{n}").read_text()
            assert opens_with_only(new, token) == f"recording {n}".encode()
    finally:
        unregister_encrypted_blobs("test-recordings")


def test_the_schedule_adds_then_promotes_a_key_and_re_encrypts(ring, settings):
    org = ring()
    with_secrets(org, users=1)
    first = keyring.active()
    settings.KEY_ROTATION_DAYS = 90
    settings.KEY_ROTATION_PROMOTE_AFTER_SECONDS = 0
    # A key younger than KEY_ROTATION_DAYS stays active
    assert key_rotation.do_rotation_tick()["added"] is None
    # One older gets a pending successor, promoted at the next tick (every process here
    # holds it), and the job moves the secrets
    body = json.loads(keyring.file_path().read_text())
    body["keys"][0]["promoted_at"] = "2000-01-01T00:00:00+00:00"
    keyring.file_path().write_text(json.dumps(body))
    added = key_rotation.do_rotation_tick()["added"]
    assert added and keyring.find(added).state == keyring.PENDING
    assert keyring.active().id == first.id
    tick = key_rotation.do_rotation_tick()
    assert tick["promoted"] == added and tick["reencrypted"]["rotated"] == 2
    assert not any(crypto.needs_rotation(t) for t in secrets_of(org).values())
