"""scim2-tester (the SCIM RFCs' conformance checker, PyPI) against the live server: every
check it runs for Users and Groups, discovery included, must pass."""

from __future__ import annotations

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from orgs.tests.scim_support import scim_token
from tests.fixtures import create_org, host_of, unique


@pytest.fixture
def conformance_org():
    return create_org(unique("c"), f"{unique('h')}.test")


def test_scim2_tester_finds_no_failed_check_for_users_and_groups(server, conformance_org):
    client = httpx2.Client(
        base_url=f"{server.url}/scim/v2/",
        headers={
            "Host": host_of(conformance_org),
            "Authorization": f"Bearer {scim_token(conformance_org)}",
        },
        timeout=30,
    )
    results = check_server(SyncSCIMClient(client), raise_exceptions=False)

    counts: dict[str, int] = {}
    for r in results:
        counts[r.status.name] = counts.get(r.status.name, 0) + 1
    print(f"scim2-tester: {counts}")  # shown with -s / -rP
    for r in results:
        if r.status == Status.SKIPPED:
            print(f"  skipped {r.title} [{r.resource_type}]: {r.reason}")
    failed = [r for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
    ran = [r for r in results if r.status == Status.SUCCESS]
    report = "\n".join(f"{r.status.name} {r.title} [{r.resource_type}]: {r.reason}" for r in failed)
    assert not failed, f"{len(failed)} failed checks:\n{report}"
    kinds = {r.resource_type for r in ran}
    assert {"User", "Group"} <= kinds, kinds
    assert len(ran) > 50, [r.title for r in ran]
