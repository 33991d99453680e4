"""The audit log: append-only in the database, hash-chained, verifiable, exportable — and
written by every service that changes org state.

Tamper tests run on a fresh org each (tampering breaks its log for good) and tamper the
way an attacker with superuser access would: by disabling the trigger first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import subprocess
import sys
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, IntegrityError, close_old_connections, connection

from orgs.accounts.models import AuditEntry, User
from orgs.audit_events import AuditEvent
from orgs.services import audit, audit_export
from orgs.tests.audit_support import fresh_org, tampering, verify, verify_fails
from siphera.tenancy import in_tenant, tenant_context
from tests.fixtures import (
    PASSWORD,
    ROOT,
    DeviceKeys,
    child_env,
    create_org,
    login_grant,
    make_user,
    unique,
)


def entry_ids(org) -> list[int]:
    return in_tenant(org, lambda: list(AuditEntry.objects.values_list("id", flat=True)))


# --- verification and tampering ---------------------------------------------------------


def test_an_untouched_log_verifies_with_its_count_and_head():
    org = fresh_org(users=3)
    head = in_tenant(org, lambda: AuditEntry.objects.last().hash)
    out = verify(org)
    assert f"org {org.slug}: OK: 4 entries, chain intact, head {head}" in out
    assert in_tenant(org, audit.verify_chain).ok


@pytest.mark.parametrize(
    ("column", "sql_value"),
    [
        ("data", """'{"username": "mallory", "role": "owner"}'::jsonb"""),
        ("event", "'member.logged_in'"),
        ("actor_label", "'someone-else'"),
        ("ts", "ts - interval '1 day'"),
    ],
)
def test_altering_one_entry_fails_verification_naming_it(column, sql_value):
    org = fresh_org()
    victim = entry_ids(org)[2]
    with tampering(org) as cursor:
        cursor.execute(
            f"UPDATE accounts_auditentry SET {column} = {sql_value} WHERE id = %s", [victim]
        )
    out = verify_fails(org)
    assert f"BROKEN at entry {victim} (altered)" in out
    report = in_tenant(org, audit.verify_chain)
    assert (report.broken_id, report.problem) == (victim, audit.ALTERED)


def test_altering_content_and_recomputing_its_hash_still_fails_at_the_next_entry():
    org = fresh_org()
    ids = entry_ids(org)
    victim = ids[2]
    with tenant_context(org):
        entry = AuditEntry.objects.get(pk=victim)
        entry.data = {"username": "mallory", "role": "owner"}
        # Even with the key ring (what a database writer does not have)...
        forged = audit.link_hash(entry.prev_hash, audit.entry_fields(entry))
    with tampering(org) as cursor:
        cursor.execute(
            "UPDATE accounts_auditentry SET data = %s::jsonb, hash = %s WHERE id = %s",
            [json.dumps(entry.data), forged, victim],
        )
    out = verify_fails(org)
    # ...the forged entry is self-consistent, but the next one no longer links to it.
    assert f"BROKEN at entry {ids[3]} (missing)" in out


def test_deleting_an_entry_fails_verification_naming_it():
    org = fresh_org()
    ids = entry_ids(org)
    victim = ids[2]
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [victim])
    out = verify_fails(org)
    assert f"BROKEN at entry {ids[3]} (missing)" in out
    assert f"its id was {victim}" in out


def test_deleting_the_first_entry_fails_verification():
    org = fresh_org()
    ids = entry_ids(org)
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [ids[0]])
    out = verify_fails(org)
    assert f"BROKEN at entry {ids[1]} (missing)" in out
    assert f"its id was {ids[0]}" in out


def test_cutting_the_last_entry_is_caught_against_a_noted_head():
    org = fresh_org()
    last = in_tenant(org, lambda: AuditEntry.objects.last())
    # Without anchors (test_audit_keyed covers those), only a noted head catches it.
    verify(org, "--expect-head", last.hash, "--no-anchor")
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [last.id])
    verify(org, "--no-anchor")  # what is left still links...
    out = verify_fails(org, "--expect-head", last.hash)  # ...but the noted head is gone
    assert "(missing)" in out and last.hash in out


def test_swapping_two_entries_ids_fails_verification_as_reordered():
    org = fresh_org()
    ids = entry_ids(org)
    first, second = ids[1], ids[3]
    with tampering(org) as cursor:
        cursor.execute("UPDATE accounts_auditentry SET id = -1 WHERE id = %s", [first])
        cursor.execute("UPDATE accounts_auditentry SET id = %s WHERE id = %s", [first, second])
        cursor.execute("UPDATE accounts_auditentry SET id = %s WHERE id = -1", [second])
    out = verify_fails(org)
    assert f"BROKEN at entry {first} (reordered)" in out


def test_swapping_two_adjacent_entries_contents_fails_verification_as_reordered():
    org = fresh_org()
    ids = entry_ids(org)
    a, b = ids[2], ids[3]
    columns = [
        "ts",
        "event",
        "actor_id",
        "actor_label",
        "ip",
        "user_agent",
        "target_type",
        "target_id",
        "data",
        "prev_hash",
        "hash",
    ]
    assignments = ", ".join(f"{c} = other.{c}" for c in columns)
    with tampering(org) as cursor:
        # Park the unique hashes first so the swap does not collide with itself.
        cursor.execute(
            "CREATE TEMP TABLE swap AS SELECT * FROM accounts_auditentry WHERE id IN (%s, %s)",
            [a, b],
        )
        cursor.execute(
            "UPDATE accounts_auditentry SET prev_hash = 'x' || id, hash = 'y' || id"
            " WHERE id IN (%s, %s)",
            [a, b],
        )
        cursor.execute(
            f"UPDATE accounts_auditentry AS t SET {assignments} FROM swap AS other"
            " WHERE t.id IN (%s, %s) AND other.id <> t.id",
            [a, b],
        )
        cursor.execute("DROP TABLE swap")
    out = verify_fails(org)
    assert f"BROKEN at entry {a} (reordered)" in out


def test_the_database_refuses_update_delete_and_truncate_of_audit_entries():
    org = fresh_org(users=1)
    with tenant_context(org):
        entry = AuditEntry.objects.last()
        with pytest.raises(DatabaseError, match="append-only"):
            AuditEntry.objects.filter(pk=entry.pk).update(data={"forged": True})
        with pytest.raises(DatabaseError, match="append-only"):
            AuditEntry.objects.filter(pk=entry.pk).delete()
        entry.actor_label = "someone-else"
        with pytest.raises(DatabaseError, match="append-only"):
            entry.save()
        with pytest.raises(DatabaseError, match="append-only"), connection.cursor() as cursor:
            cursor.execute("TRUNCATE accounts_auditentry")
        assert AuditEntry.objects.get(pk=entry.pk).actor_label == "tests"
    assert "OK: 2 entries" in verify(org)


def test_the_database_refuses_a_forked_chain():
    org = fresh_org(users=1)
    with tenant_context(org):
        last = AuditEntry.objects.last()
        with pytest.raises(IntegrityError):
            AuditEntry.objects.create(
                ts=last.ts, event=last.event, data={}, prev_hash=last.prev_hash, hash="f" * 64
            )


def test_concurrent_appends_in_one_org_never_fork_the_chain():
    org = fresh_org(users=0)
    per_thread, threads = 25, 4
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def append(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                in_tenant(
                    org,
                    audit.record,
                    AuditEvent.MEMBER_CREATED,
                    actor=audit.Actor.system(f"thread-{n}"),
                    data={"i": i},
                )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    workers = [threading.Thread(target=append, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors
    report = in_tenant(org, audit.verify_chain)
    assert report.ok and report.count == 1 + threads * per_thread


def test_an_orgs_log_holds_only_its_own_entries(org_b):
    org = fresh_org(users=0)
    user = make_user(org)
    assert in_tenant(org, AuditEntry.objects.filter(target_id=str(user.pk)).exists)
    assert not in_tenant(org_b, AuditEntry.objects.filter(target_id=str(user.pk)).exists)


# --- the registry and the documented hash -------------------------------------------------


def test_recording_an_event_type_outside_the_registry_is_refused_and_writes_nothing():
    org = fresh_org(users=0)
    before = entry_ids(org)
    for event in ("member.teleported", "", "MEMBER.CREATED"):
        with pytest.raises(audit.UnknownAuditEvent):
            in_tenant(org, audit.record, event, actor=audit.Actor.system("tests"))
    assert entry_ids(org) == before
    # A registered name is accepted as the enum or as its stable string.
    in_tenant(org, audit.record, "member.created", actor=audit.Actor.system("tests"))
    assert in_tenant(org, lambda: AuditEntry.objects.last().event) == "member.created"


def _documented_key(material: str) -> tuple[str, bytes]:
    """docs/audit.md "The chain": the chain key is HKDF-SHA256 of a SECRET_KEYS entry (no
    salt, info `siphera mac v1: audit chain`, 32 bytes); its id is the first 16 hex
    digits of the key's SHA-256."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"siphera mac v1: audit chain"
    ).derive(material.encode())
    return hashlib.sha256(key).hexdigest()[:16], key


def _documented_hash(prev_hash: str, row: dict) -> str:
    """docs/audit.md "The chain", implemented from the text alone: HMAC-SHA256 with the
    chain key over the previous hash's hex followed by the canonical JSON (sorted keys at
    every level, no whitespace, non-ASCII escaped), as lower-case hex."""
    from django.conf import settings

    key_id, key = _documented_key(settings.SECRET_KEYS[0])
    assert row["key_id"] == key_id
    canonical = json.dumps(
        {
            "ts": row["ts"],
            "event": row["event"],
            "actor_id": row["actor_id"] or None,
            "actor_label": row["actor_label"],
            "ip": row["ip"] or None,
            "user_agent": row["user_agent"],
            "target_type": row["target_type"],
            "target_id": row["target_id"],
            "data": row["data"],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hmac.new(key, (prev_hash + canonical).encode("ascii"), hashlib.sha256).hexdigest()


def test_an_entry_hash_recomputes_from_the_documented_canonical_form(tmp_path):
    # Given an entry with an IP, a user as actor, non-ASCII text and nested data
    org = fresh_org(users=1)
    user = in_tenant(org, lambda: User.objects.get())
    entry = in_tenant(
        org,
        audit.record,
        AuditEvent.ROLE_CREATED,
        actor=audit.Actor(user=user, ip="10.1.2.3", user_agent="Zoë/1.0"),
        target_type="role",
        target_id="café",
        data={"name": "Zoë’s rôle", "codes": ["b", "a"], "n": 3, "z": {"y": None, "x": True}},
    )
    # When its hash is recomputed from the raw columns, as docs/audit.md describes
    with tenant_context(org), connection.cursor() as cursor:
        cursor.execute(
            "SELECT ts, event, actor_id::text, actor_label, host(ip), user_agent,"
            " target_type, target_id, data::text, key_id, prev_hash, hash"
            " FROM accounts_auditentry WHERE id <= %s ORDER BY id DESC LIMIT 2",
            [entry.id],
        )
        (ts, *columns, data_text, key_id, prev_hash, stored_hash), (*_, previous_hash) = (
            cursor.fetchall()
        )
    names = ("event", "actor_id", "actor_label", "ip", "user_agent", "target_type", "target_id")
    row = dict(zip(names, columns, strict=True))
    row["ts"] = ts.astimezone(dt.UTC).isoformat()
    row["data"] = json.loads(data_text)
    row["key_id"] = key_id
    # Then it matches the stored hash, and the entry links to the one before it
    assert row["actor_id"] == str(user.pk) and row["ip"] == "10.1.2.3"
    assert prev_hash == previous_hash
    assert _documented_hash(prev_hash, row) == stored_hash == entry.hash
    # And an exported line re-hashes the same way from its own fields
    path = tmp_path / "audit.jsonl"
    export(org, "jsonl", "--output", str(path))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    [exported] = [line for line in lines if line["id"] == entry.id]
    assert _documented_hash(exported["prev_hash"], exported) == exported["hash"] == stored_hash
    for earlier, later in zip(lines, lines[1:], strict=False):
        assert _documented_hash(later["prev_hash"], later) == later["hash"]
        assert later["prev_hash"] == earlier["hash"]


# --- export -----------------------------------------------------------------------------


def export(org, fmt: str, *extra: str) -> str:
    out = io.StringIO()
    call_command("export_audit", "--org", org.slug, "--format", fmt, "--quiet", *extra, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_holds_every_entry_and_re_verifies(fmt, tmp_path):
    org = fresh_org(users=3)
    path = tmp_path / f"audit.{fmt}"
    export(org, fmt, "--output", str(path))

    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(audit_export.read_export(stream, fmt))
    assert [r["id"] for r in rows] == entry_ids(org)
    # The export was audited, and the export holds its own entry.
    assert rows[-1]["event"] == "audit.exported"
    assert rows[-1]["actor_label"] == "command:export_audit"
    assert rows[-1]["data"]["format"] == fmt
    assert [r["event"] for r in rows[:2]] == ["org.created", "member.created"]

    with path.open(newline="", encoding="utf-8") as stream:
        assert audit_export.verify_export(stream, fmt).ok
    out = io.StringIO()
    call_command("verify_audit", "--file", str(path), "--quiet", stdout=out)
    assert f"OK: {len(rows)} entries" in out.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_edited_export_fails_verification(fmt, tmp_path):
    org = fresh_org(users=2)
    text = export(org, fmt)
    victim = entry_ids(org)[1]
    path = tmp_path / f"audit.{fmt}"
    quote = '""' if fmt == "csv" else '"'  # CSV doubles the quotes inside a cell
    before, after = (f"{quote}role{quote}:{quote}{r}{quote}" for r in ("member", "owner"))
    assert before in text
    path.write_text(text.replace(before, after, 1), encoding="utf-8")
    with pytest.raises(CommandError):
        call_command("verify_audit", "--file", str(path), "--quiet", stdout=io.StringIO())
    with path.open(newline="", encoding="utf-8") as stream:
        report = audit_export.verify_export(stream, fmt)
    assert (report.ok, report.broken_id, report.problem) == (False, victim, audit.ALTERED)


def test_export_filters_by_event_and_time(tmp_path):
    org = fresh_org(users=2)
    rows = [
        json.loads(line) for line in export(org, "jsonl", "--event", "member.created").splitlines()
    ]
    assert [r["event"] for r in rows] == ["member.created", "member.created"]

    everything = [json.loads(line) for line in export(org, "jsonl").splitlines()]
    cut = everything[1]["ts"]
    later = [json.loads(line) for line in export(org, "jsonl", "--since", cut).splitlines()]
    assert later[0]["id"] == everything[1]["id"]
    earlier = [json.loads(line) for line in export(org, "jsonl", "--until", cut).splitlines()]
    assert [r["id"] for r in earlier] == [everything[0]["id"]]

    path = tmp_path / "family.jsonl"
    export(org, "jsonl", "--event", "member.*", "--output", str(path))
    out = io.StringIO()
    call_command("verify_audit", "--file", str(path), "--entries-only", "--quiet", stdout=out)
    assert "OK: 2 entries" in out.getvalue()


def test_export_refuses_unknown_events_and_bad_times():
    org = fresh_org(users=0)
    with pytest.raises(CommandError, match="Unknown audit event"):
        export(org, "csv", "--event", "member.teleported")
    with pytest.raises(CommandError, match="ISO 8601"):
        export(org, "csv", "--since", "yesterday")
    with pytest.raises(CommandError, match="unknown|No org"):
        call_command("export_audit", "--org", unique("nope"), "--format", "csv")


def manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_commands_report_progress_on_stderr_and_exit_non_zero_when_broken(tmp_path):
    org = fresh_org(users=2)
    path = tmp_path / "audit.csv"
    exported = manage("export_audit", "--org", org.slug, "--format", "csv", "--output", str(path))
    assert exported.returncode == 0, exported.stderr
    assert "export_audit: 4/4 entries (100%)" in exported.stderr
    assert f"wrote 4 entries of org {org.slug} as csv to {path}" in exported.stderr
    assert path.read_text().startswith("id,ts,event,")

    good = manage("verify_audit", "--org", org.slug)
    assert good.returncode == 0 and "OK: 4 entries" in good.stdout
    assert "verify_audit: 4/4 entries checked (100%)" in good.stderr

    victim = entry_ids(org)[1]
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [victim])
    broken = manage("verify_audit", "--org", org.slug)
    assert broken.returncode == 1
    assert "(missing)" in broken.stdout and f"its id was {victim}" in broken.stdout
    assert "failed verification" in broken.stderr


# --- every state-changing service writes its audit row ----------------------------------


def entries(org, event: str, **match) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **match)))


def test_creating_an_org_is_audited():
    org = create_org(unique("audit"))
    [entry] = entries(org, "org.created")
    assert entry.actor_label == "tests" and entry.target_id == org.slug
    assert entry.data == {"name": org.name, "domains": [f"{org.slug}.test"]}
    assert entry.prev_hash == audit.GENESIS


def test_creating_a_user_is_audited(org_a):
    user = make_user(org_a, role="admin")
    [entry] = entries(org_a, "member.created", target_id=str(user.pk))
    assert entry.target_type == "user"
    assert entry.data == {"username": user.username, "role": "admin"}


def test_logging_in_is_audited_with_ip_and_user_agent(org_a, api_for):
    user = make_user(org_a)
    api = api_for(org_a)
    response = api.post(
        "/api/v1/auth/login",
        json={"username": user.username, "password": PASSWORD},
        headers={"User-Agent": "audit-test/1.0"},
    )
    assert response.status_code == 200
    [entry] = entries(org_a, "member.logged_in", target_id=str(user.pk))
    assert entry.actor_id == user.pk and entry.actor_label == user.username
    assert entry.ip == "127.0.0.1" and entry.user_agent == "audit-test/1.0"
    assert entry.data == {"method": "password"}


def test_a_failed_login_is_audited_without_the_password(org_a, api_for):
    user = make_user(org_a)
    response = api_for(org_a).post(
        "/api/v1/auth/login", json={"username": user.username, "password": "Wr0ng-secret!"}
    )
    assert response.status_code == 401
    [entry] = entries(org_a, "member.login_failed", target_id=str(user.pk))
    assert entry.data == {"reason": "password"} and entry.ip == "127.0.0.1"
    assert "Wr0ng-secret!" not in json.dumps(entry.data)


def test_registering_and_revoking_a_device_are_audited(org_a, api_for, new_session):
    user = make_user(org_a)
    api = api_for(org_a)
    grant = login_grant(api, user.username)
    created = api.post(
        "/api/v1/devices",
        json=DeviceKeys.generate().registration("phone"),
        headers={"Authorization": f"Grant {grant}"},
    )
    assert created.status_code == 201
    device_id = created.json()["device_id"]
    target = f"{user.pk}:{device_id}"
    [registered] = entries(org_a, "device.registered", target_id=target)
    assert registered.actor_id == user.pk and registered.data == {"name": "phone"}

    laptop = new_session(org_a, user)
    assert laptop.api.delete(f"/api/v1/devices/{device_id}").status_code == 204
    [revoked] = entries(org_a, "device.revoked", target_id=target)
    assert revoked.actor_id == user.pk and revoked.ip == "127.0.0.1"
    assert revoked.data == {"name": "phone"}
