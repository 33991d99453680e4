"""Operator commands: create_org, create_user, list_orgs, seed_demo — and their refusals."""

import json
import subprocess
import sys

from orgs.accounts.models import User
from orgs.models import Domain, Org
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


def test_list_orgs_and_seed_demo_are_repeatable():
    first = manage("seed_demo", "--domain", "demo-seed.test")
    assert first.returncode == 0, first.stderr
    assert "Created user admin (owner)" in first.stdout
    second = manage("seed_demo", "--domain", "demo-seed.test")
    assert second.returncode == 0 and "exists; keeping it" in second.stdout

    listed = manage("list_orgs", "--json")
    rows = {row["slug"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["demo"]["users"] == 4 and rows["demo"]["domains"] == ["demo-seed.test"]
