"""The layout's navigation and the dashboard's chart are rendered once per process per
value (admin_portal.fragments): a role change, an edited custom role or new counts show on
the very next page, and each org's dashboard shows its own counts."""

from __future__ import annotations

import re

from admin_portal.tests.conftest import Portal
from messaging.tests.helpers import send_body, start_conversation
from tests.fixtures import create_org, make_user, unique


def _nav(page) -> str:
    return page.text.split('aria-label="Main">')[1].split("</nav>")[0]


def _signed_in(server, org, user) -> Portal:
    client = Portal(server, org)
    assert client.login(user.username).status_code == 302
    return client


def _today_count(page) -> int:
    chart = page.text.split('data-testid="messages-chart"')[1].split("</table>")[0]
    counts = [int(n) for n in re.findall(r'data-testid="count-[0-9-]+">(\d+)<', chart)]
    assert len(counts) == 14
    return counts[-1]  # oldest first: today is the last row


def test_a_role_change_shows_in_the_navigation_on_the_next_page(server):
    # Given an admin whose pages list the admin's links (cached by this process)
    org = create_org(unique("nav"))
    owner = _signed_in(server, org, make_user(org, role="owner"))
    user = make_user(org, role="admin")
    client = _signed_in(server, org, user)
    before = _nav(client.get("/portal/"))
    assert 'href="/portal/roles/"' in before and 'href="/portal/policies/"' in before
    # When an owner makes them security desk, through the same server process
    owner.get(f"/portal/users/{user.pk}/")
    assert owner.post(f"/portal/users/{user.pk}/role", {"role": "security_desk"}).status_code == 302
    # Then their next page lists the security desk's links only
    after = _nav(client.get("/portal/"))
    assert 'href="/portal/roles/"' not in after and 'href="/portal/policies/"' not in after
    assert 'href="/portal/audit/"' in after and 'href="/portal/users/"' in after
    # And the owner's own navigation still lists everything
    assert 'href="/portal/domains/"' in _nav(owner.get("/portal/"))


def test_an_edited_custom_role_changes_the_navigation_at_once(server):
    # Given a user of a custom role that may see users but not the audit log
    org = create_org(unique("nav"))
    owner = _signed_in(server, org, make_user(org, role="owner"))
    owner.get("/portal/roles/")
    codes = ["portal.access", "users.view"]
    created = owner.post("/portal/roles/", {"slug": "desk", "name": "Desk", "codes": codes})
    assert created.status_code == 302
    client = _signed_in(server, org, make_user(org, role="desk"))
    first = _nav(client.get("/portal/"))
    assert 'href="/portal/users/"' in first and 'href="/portal/audit/"' not in first
    # When the owner adds audit.view to the role
    owner.get("/portal/roles/desk/")
    edited = owner.post("/portal/roles/desk/", {"name": "Desk", "codes": [*codes, "audit.view"]})
    assert edited.status_code == 302
    # Then the user's next page links the audit log, and the page opens
    assert 'href="/portal/audit/"' in _nav(client.get("/portal/"))
    assert client.get("/portal/audit/").status_code == 200
    # And when the role loses users.view, the link goes as the page is refused
    owner.get("/portal/roles/desk/")
    owner.post("/portal/roles/desk/", {"name": "Desk", "codes": ["portal.access"]})
    assert 'href="/portal/users/"' not in _nav(client.get("/portal/"))
    assert client.get("/portal/users/").status_code == 403


def test_each_orgs_dashboard_shows_its_own_counts(server, new_session):
    # Given two orgs with different numbers of messages today
    orgs = [create_org(unique("chart")), create_org(unique("chart"))]
    sessions = {}
    for org, sends in zip(orgs, (2, 1), strict=True):
        alice, bob = new_session(org), new_session(org)
        conversation = start_conversation(alice, bob)["id"]
        for _ in range(sends):
            assert send_body(alice, conversation).status_code == 201
        sessions[org.pk] = (alice, conversation)
    admins = [_signed_in(server, org, make_user(org, role="admin")) for org in orgs]
    # Then each admin's dashboard, rendered by the same process, shows its org's count
    assert [_today_count(admin.get("/portal/")) for admin in admins] == [2, 1]
    assert _today_count(admins[0].get("/portal/")) == 2
    # And a new message shows on the next page (DASHBOARD_CACHE_SECONDS is 0 in tests):
    # the chart rendered for the old counts is not served for the new ones
    alice, conversation = sessions[orgs[1].pk]
    assert send_body(alice, conversation).status_code == 201
    assert [_today_count(admin.get("/portal/")) for admin in admins] == [2, 2]
