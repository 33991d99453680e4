"""The keyed audit chain and its anchors: what someone who can write to the database (but
holds neither the key ring nor the anchor directory) can no longer hide.

Tampering is done the way such a writer would: plain SQL, an INSERT (which the
append-only trigger allows), or, as a superuser, with that trigger disabled. Every
detection below needs no hash noted by an operator: the key and the latest anchor do it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from django.db import connection

from orgs import tasks
from orgs.accounts.models import AuditEntry
from orgs.services import audit, audit_anchor
from orgs.tests.audit_support import fresh_org, tampering, verify, verify_fails
from siphera import mac_keys
from siphera.tenancy import in_tenant, tenant_context
from tests.fixtures import make_user, unique


def stored(org) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.order_by("id")))


def report(org) -> audit.ChainReport:
    return in_tenant(org, audit.verify_chain)


@contextmanager
def db_writer(org):
    """A cursor in the org's schema, as the application's database user has one."""
    with tenant_context(org), connection.cursor() as cursor:
        yield cursor


def sha256_link(prev_hash: str, fields: dict) -> str:
    """The unkeyed link anyone can compute from the documented canonical form."""
    canonical = json.dumps(
        {name: fields[name] for name in audit.HASHED_FIELDS},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def insert_entry(cursor, prev_hash: str, *, key_id: str = "sha256", **changes) -> tuple[int, str]:
    """INSERT an entry after `prev_hash` with a correct unkeyed SHA-256 hash."""
    fields = {
        "ts": "2026-12-01T10:00:00+00:00",
        "event": "member.role_changed",
        "actor_id": None,
        "actor_label": "command:create_user",
        "ip": None,
        "user_agent": "",
        "target_type": "user",
        "target_id": "mallory",
        "data": {"username": "mallory", "before": "member", "after": "owner"},
        **changes,
    }
    digest = sha256_link(prev_hash, fields)
    cursor.execute(
        "INSERT INTO accounts_auditentry (ts, event, actor_id, actor_label, ip, user_agent,"
        " target_type, target_id, data, key_id, prev_hash, hash)"
        " VALUES (%s, %s, NULL, %s, NULL, '', %s, %s, %s::jsonb, %s, %s, %s) RETURNING id",
        [
            fields["ts"],
            fields["event"],
            fields["actor_label"],
            fields["target_type"],
            fields["target_id"],
            json.dumps(fields["data"]),
            key_id,
            prev_hash,
            digest,
        ],
    )
    return cursor.fetchone()[0], digest


def anchors(org) -> list[dict]:
    path = audit_anchor.anchor_path(org.schema_name)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chain_key_id() -> str:
    return mac_keys.newest(audit.CHAIN_PURPOSE).id


# --- the keyed chain ------------------------------------------------------------------------


def test_every_entry_names_the_key_that_made_its_hmac_and_the_log_verifies():
    org = fresh_org()
    entries = stored(org)
    assert {e.key_id for e in entries} == {chain_key_id()}
    # The link is not the unkeyed hash anyone could compute.
    first = audit.entry_fields(entries[0])
    assert entries[0].hash != sha256_link(audit.GENESIS, first)
    result = report(org)
    assert result.ok and result.count == len(entries) and result.note == "no anchor yet"


@pytest.mark.parametrize(
    ("key_id", "problem"),
    [
        ("sha256", "unkeyed"),  # marked as a legacy entry
        (None, "altered"),  # claims the real key id, but its hash is not that key's HMAC
        ("0123456789abcdef", "unknown_key"),  # names a key nobody has
    ],
)
def test_a_forged_tail_entry_with_a_correct_sha256_hash_is_detected(key_id, problem):
    org = fresh_org()
    head = stored(org)[-1]
    # A database writer appends an entry (INSERT is allowed: the log is append-only).
    with db_writer(org) as cursor:
        forged_id, _ = insert_entry(cursor, head.hash, key_id=key_id or chain_key_id())
    out = verify_fails(org)
    assert f"BROKEN at entry {forged_id} ({problem})" in out
    result = report(org)
    assert (result.ok, result.broken_id, result.problem) == (False, forged_id, problem)
    # Nothing is anchored over a forged entry.
    assert anchors(org) == []


def test_a_modified_row_with_the_trigger_disabled_is_detected():
    org = fresh_org()
    entries = stored(org)
    victim = entries[-1]
    changed = dict(audit.entry_fields(victim), data={"username": "mallory", "role": "owner"})
    # A superuser disables the trigger, edits the newest entry and recomputes its hash the
    # only way they can: unkeyed (marking it legacy, or keeping its key id).
    for key_id, problem in (("sha256", "unkeyed"), (victim.key_id, "altered")):
        with tampering(org) as cursor:
            cursor.execute(
                "UPDATE accounts_auditentry SET data = %s::jsonb, key_id = %s, hash = %s"
                " WHERE id = %s",
                [
                    json.dumps(changed["data"]),
                    key_id,
                    sha256_link(victim.prev_hash, changed),
                    victim.id,
                ],
            )
        assert f"BROKEN at entry {victim.id} ({problem})" in verify_fails(org)


# --- anchors --------------------------------------------------------------------------------


def test_verify_anchors_the_head_outside_the_database_and_checks_it_next_time():
    org = fresh_org()
    head = stored(org)[-1]
    out = verify(org)
    assert f"head {head.hash}; no anchor yet" in out
    path = audit_anchor.anchor_path(org.schema_name)
    assert f"head entry {head.id} anchored in {path}" in out
    [line] = anchors(org)
    assert (line["schema"], line["entry_id"], line["hash"]) == (org.schema_name, head.id, head.hash)
    assert line["key_id"] == mac_keys.newest(audit_anchor.ANCHOR_PURPOSE).id
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # The next verification checks against it; an unchanged head is not anchored again.
    again = verify(org)
    assert f"anchored entry {head.id} ({line['anchored_at']}) present" in again
    assert len(anchors(org)) == 1
    # --no-anchor only reads.
    make_user(org)
    verify(org, "--no-anchor")
    assert len(anchors(org)) == 1


def test_a_truncated_tail_after_an_anchor_is_detected_without_a_noted_head():
    org = fresh_org(users=4)
    verify(org)  # anchors the head
    entries = stored(org)
    anchored = entries[-1]
    # A superuser disables the trigger and deletes the two newest entries; what is left
    # still links, and the application goes on appending to the shorter chain.
    with tampering(org) as cursor:
        cursor.execute(
            "DELETE FROM accounts_auditentry WHERE id = ANY(%s)", [[entries[-1].id, entries[-2].id]]
        )
    make_user(org)
    out = verify_fails(org)
    assert f"BROKEN at entry {anchored.id} (truncated)" in out
    assert anchored.hash in out and "deleted from the end of the log" in out
    result = report(org)
    assert (result.problem, result.broken_id) == (audit.TRUNCATED, anchored.id)
    # The periodic job refuses to anchor the cut log, so the evidence stays the latest.
    refused = in_tenant(org, audit.do_anchor_head)
    assert not refused.ok and refused.problem == audit.TRUNCATED
    assert [a["entry_id"] for a in anchors(org)] == [anchored.id]


def test_a_rewritten_anchored_entry_is_reported_as_not_matching_its_anchor():
    org = fresh_org()
    verify(org)
    anchored = stored(org)[-1]
    # Swap the anchored entry for a different one under the same id (same predecessor).
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [anchored.id])
    with tenant_context(org):
        replacement = audit.record(audit.AuditEvent.ROLE_CREATED, actor=audit.Actor.system("x"))
    with tampering(org) as cursor:
        cursor.execute(
            "UPDATE accounts_auditentry SET id = %s WHERE id = %s", [anchored.id, replacement.id]
        )
    assert f"BROKEN at entry {anchored.id} (anchor_mismatch)" in verify_fails(org)


def test_new_entries_since_an_anchor_must_link_to_it_before_the_next_anchor():
    org = fresh_org()
    in_tenant(org, audit.do_anchor_head)
    head = stored(org)[-1]
    with db_writer(org) as cursor:
        forged_id, _ = insert_entry(cursor, head.hash)
    refused = in_tenant(org, audit.do_anchor_head)
    assert (refused.ok, refused.broken_id, refused.problem) == (False, forged_id, "unkeyed")
    assert [a["entry_id"] for a in anchors(org)] == [head.id]


def test_unreadable_anchors_are_reported_not_taken_for_a_clean_log():
    org = fresh_org()
    audit_anchor.anchor_path(org.schema_name).mkdir(parents=True)  # not a file
    result = report(org)
    assert result.ok and result.note.startswith("anchors could not be read")
    assert "a log cut short is not detected" in verify(org, "--no-anchor")


# --- key rotation -----------------------------------------------------------------------------


def test_a_new_key_in_front_of_the_ring_keeps_old_entries_and_anchors_verifying(settings):
    org = fresh_org()
    verify(org)  # anchored with the old key
    old_ids = {e.id for e in stored(org)}
    old_key = chain_key_id()
    # Rotation: a new key in front of SECRET_KEYS.
    settings.SECRET_KEYS = [f"rotated-{unique('k')}-{'x' * 40}", *settings.SECRET_KEYS]
    assert chain_key_id() != old_key
    make_user(org)
    entries = stored(org)
    assert {e.key_id for e in entries if e.id in old_ids} == {old_key}
    assert {e.key_id for e in entries if e.id not in old_ids} == {chain_key_id()}
    out = verify(org)
    assert "chain intact" in out and f"anchored entry {max(old_ids)}" in out
    assert anchors(org)[-1]["key_id"] == mac_keys.newest(audit_anchor.ANCHOR_PURPOSE).id
    # Removing the old key too early is reported, not taken for a valid log.
    settings.SECRET_KEYS = settings.SECRET_KEYS[:1]
    assert f"BROKEN at entry {min(old_ids)} (unknown_key)" in verify_fails(org, "--no-anchor")


# --- isolation ------------------------------------------------------------------------------


def test_one_orgs_chain_and_anchors_are_independent_of_the_others():
    cut, other = fresh_org(), fresh_org()
    verify(cut)
    verify(other)
    other_lines = anchors(other)
    victim = stored(cut)[-1]
    with tampering(cut) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [victim.id])
    # The other org's own (valid) anchor line, appended to this org's file, does not count
    # for it, and neither does a line with a made-up signature.
    path = audit_anchor.anchor_path(cut.schema_name)
    forged = dict(anchors(cut)[-1], entry_id=stored(cut)[-1].id, hash=stored(cut)[-1].hash)
    with path.open("a") as stream:
        stream.write(json.dumps(other_lines[-1]) + "\n" + json.dumps(forged) + "\n")
    out = verify_fails(cut)
    assert f"BROKEN at entry {victim.id} (truncated)" in out
    assert "2 newer anchor line(s) did not verify" in out
    # The other org verifies against its own anchor, whose file nothing touched.
    assert "chain intact" in verify(other) and anchors(other) == other_lines
    assert report(other).anchor_id == other_lines[-1]["entry_id"]


# --- legacy (unkeyed) entries -------------------------------------------------------------


def test_an_unkeyed_log_is_refused_until_the_migration_seals_it_then_it_verifies():
    org = fresh_org(users=0)
    # The log as it was before migration 0008 (plain SHA-256 links, key id "sha256"), or
    # as a superuser without the key would rewrite a keyed one: the same rows.
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry")
        prev = audit.GENESIS
        for n in range(3):
            _, prev = insert_entry(cursor, prev, target_id=f"legacy-{n}")
    legacy_head = prev
    legacy_ids = [e.id for e in stored(org)]
    # Its links hold, but a log that ends unkeyed is what someone who rewrote a keyed log
    # without the key would leave behind: refused until the upgrade has sealed it.
    unsealed = report(org)
    assert unsealed.count == 3 and (unsealed.problem, unsealed.broken_id) == (
        "unkeyed",
        legacy_ids[-1],
    )

    seal = importlib.import_module("orgs.accounts.migrations.0008_audit_keyed_chain")
    with tenant_context(org):
        seal.seal_legacy_chain(None, SimpleNamespace(connection=connection))
        seal.seal_legacy_chain(None, SimpleNamespace(connection=connection))  # a no-op now
    entries = stored(org)
    assert len(entries) == 4
    sealed = entries[-1]
    assert (sealed.event, sealed.key_id, sealed.prev_hash) == (
        "audit.chain_keyed",
        chain_key_id(),
        legacy_head,
    )
    assert sealed.data["legacy_entries"] == 3
    make_user(org)
    assert report(org).ok and report(org).count == 5
    # From the seal on, an unkeyed entry is a forgery.
    with db_writer(org) as cursor:
        forged_id, _ = insert_entry(cursor, stored(org)[-1].hash)
    assert f"BROKEN at entry {forged_id} (unkeyed)" in verify_fails(org)


# --- the periodic job -----------------------------------------------------------------------


def _latest_anchor_id(org):
    latest = audit_anchor.latest(org.schema_name).anchor
    return latest.entry_id if latest else None


def test_beats_dispatcher_anchors_every_orgs_head_through_a_worker(celery_worker, org_a, org_b):
    make_user(org_a)
    make_user(org_b)
    heads = {org.schema_name: stored(org)[-1].id for org in (org_a, org_b)}

    tasks.dispatch_anchor_audit_chains.delay()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(_latest_anchor_id(org) == heads[org.schema_name] for org in (org_a, org_b)):
            break
        time.sleep(0.2)
    assert {org.schema_name: _latest_anchor_id(org) for org in (org_a, org_b)} == heads
    log = celery_worker.read_text()
    assert "dispatched anchor_audit_chain" in log
    # Each anchor is also a JSON log line.
    lines = [json.loads(line) for line in log.splitlines() if "audit anchor written" in line]
    logged = {(line["anchor"]["schema"], line["anchor"]["entry_id"]) for line in lines}
    assert set(heads.items()) <= logged
