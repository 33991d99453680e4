"""Operator commands: create_org, add_domain, create_user, list_orgs, seed_demo — and their
refusals."""

import json
import subprocess
import sys

import httpx

from orgs.accounts.models import AuditEntry, User
from orgs.models import Domain, Org
from orgs.services import audit
from siphera.tenancy import in_tenant, public_schema
from tests.fixtures import ROOT, child_env, unique


def manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _org(slug):
    with public_schema():
        return Org.objects.filter(slug=slug).first()


def test_create_org_then_create_user_prints_the_user_id():
    slug = unique("c")
    made = manage(
        "create_org",
        "--slug",
        slug,
        "--name",
        "Cmd Org",
        "--domain",
        f"{slug}.test",
        "--domain",
        f"{slug}.example.com",
    )
    assert made.returncode == 0, made.stderr
    org = _org(slug)
    with public_schema():
        assert sorted(Domain.objects.filter(tenant=org).values_list("domain", flat=True)) == [
            f"{slug}.example.com",
            f"{slug}.test",
        ]

    user = manage(
        "create_user",
        "--org",
        slug,
        "--username",
        "Alice",
        "--password",
        "S3cret-pass!",
        "--role",
        "owner",
    )
    assert user.returncode == 0, user.stderr
    user_id = user.stdout.strip()
    created = in_tenant(org, User.objects.get, pk=user_id)
    assert created.username == "alice" and created.role == "owner"
    assert created.password.startswith("argon2")


def test_duplicate_and_invalid_input_exit_non_zero_and_write_nothing():
    slug = unique("d")
    assert (
        manage("create_org", "--slug", slug, "--name", "X", "--domain", f"{slug}.test").returncode
        == 0
    )

    again = manage("create_org", "--slug", slug, "--name", "X", "--domain", f"{slug}2.test")
    assert again.returncode != 0 and "already exists" in again.stderr

    taken = manage("create_org", "--slug", unique("e"), "--name", "X", "--domain", f"{slug}.test")
    assert taken.returncode != 0 and "Domain already in use" in taken.stderr

    bad_slug = manage("create_org", "--slug", "Bad Slug!", "--name", "X", "--domain", "x.test")
    assert bad_slug.returncode != 0 and "Invalid slug" in bad_slug.stderr
    bad_domain = manage("create_org", "--slug", unique("f"), "--name", "X", "--domain", "no pe")
    assert bad_domain.returncode != 0 and "Invalid domain" in bad_domain.stderr

    ok = manage("create_user", "--org", slug, "--username", "bob", "--password", "S3cret-pass!")
    assert ok.returncode == 0
    dup = manage("create_user", "--org", slug, "--username", "BOB", "--password", "S3cret-pass!")
    assert dup.returncode != 0 and "already taken" in dup.stderr
    weak = manage("create_user", "--org", slug, "--username", "carl", "--password", "short")
    assert weak.returncode != 0 and "too short" in weak.stderr
    no_org = manage(
        "create_user", "--org", "nope-" + slug, "--username", "x", "--password", "S3cret-pass!"
    )
    assert no_org.returncode != 0 and "No org" in no_org.stderr
    bad_role = manage(
        "create_user",
        "--org",
        slug,
        "--username",
        "dan",
        "--password",
        "S3cret-pass!",
        "--role",
        "emperor",
    )
    assert bad_role.returncode != 0

    assert in_tenant(
        _org(slug), lambda: sorted(User.objects.values_list("username", flat=True))
    ) == ["bob"]
    with public_schema():
        assert not Org.objects.filter(name="X").exclude(slug=slug).exists()


def _domains(org) -> list[str]:
    with public_schema():
        return sorted(Domain.objects.filter(tenant=org).values_list("domain", flat=True))


def _domain_entries(org) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event="org.domain_added")))


def test_add_domain_gives_an_org_another_host_at_once_and_audits_it(server):
    # Given an org answering at one host
    slug = unique("g")
    made = manage("create_org", "--slug", slug, "--name", "G", "--domain", f"{slug}.test")
    assert made.returncode == 0, made.stderr
    org = _org(slug)
    extra = f"chat.{slug}.example.com"
    assert httpx.get(f"{server.url}/api/v1/me", headers={"Host": extra}).status_code == 404
    # When the operator adds a second one
    added = manage("add_domain", "--org", slug, "--domain", extra.upper())
    # Then it is stored (lower-cased, not primary), audited, and served straight away
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"Added {extra} to org {slug}"
    assert _domains(org) == [extra, f"{slug}.test"]
    with public_schema():
        assert not Domain.objects.get(domain=extra).is_primary
    [entry] = _domain_entries(org)
    assert entry.actor_label == "command:add_domain" and entry.actor_id is None
    assert entry.target_type == "org" and entry.target_id == slug
    assert entry.data == {"domain": extra}
    answer = httpx.get(f"{server.url}/api/v1/me", headers={"Host": extra})
    assert answer.status_code == 401  # the org's API, not `unknown_org`
    assert in_tenant(org, audit.verify_chain).ok


def test_add_domain_refuses_taken_invalid_and_unknown_input_writing_nothing():
    slug = unique("h")
    assert (
        manage("create_org", "--slug", slug, "--name", "H", "--domain", f"{slug}.test").returncode
        == 0
    )
    other = unique("i")
    assert (
        manage("create_org", "--slug", other, "--name", "I", "--domain", f"{other}.test").returncode
        == 0
    )
    org = _org(slug)

    own = manage("add_domain", "--org", slug, "--domain", f"{slug}.test")
    assert own.returncode != 0 and "Domain already in use" in own.stderr
    theirs = manage("add_domain", "--org", slug, "--domain", f"{other}.test")
    assert theirs.returncode != 0 and "Domain already in use" in theirs.stderr
    bad = manage("add_domain", "--org", slug, "--domain", "no pe")
    assert bad.returncode != 0 and "Invalid domain" in bad.stderr
    nobody = manage("add_domain", "--org", "nope-" + slug, "--domain", f"x.{slug}.test")
    assert nobody.returncode != 0 and "No org" in nobody.stderr

    assert _domains(org) == [f"{slug}.test"]
    assert _domains(_org(other)) == [f"{other}.test"]
    assert _domain_entries(org) == [] and _domain_entries(_org(other)) == []


def test_list_orgs_and_seed_demo_are_repeatable():
    first = manage("seed_demo", "--domain", "demo-seed.test")
    assert first.returncode == 0, first.stderr
    assert "Created user admin (owner)" in first.stdout
    second = manage("seed_demo", "--domain", "demo-seed.test")
    assert second.returncode == 0 and "exists; keeping it" in second.stdout

    listed = manage("list_orgs", "--json")
    rows = {row["slug"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["demo"]["users"] == 4 and rows["demo"]["domains"] == ["demo-seed.test"]
