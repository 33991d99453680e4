"""The portal's call log over real HTTP: admins see the org's calls (metadata only, every
view audited), members are refused, and the calling configuration is shown."""

from __future__ import annotations

import uuid

from calls.services import signaling
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import make_user


def _completed_call(org, caller, callee) -> str:
    call_id = str(uuid.uuid4())

    def run():
        signaling.check_invite(
            user=caller,
            device_id=1,
            call_id=call_id,
            to={"user_id": str(callee.pk)},
            media="video",
            sdp="v=0 sdp-marker",
        )
        signaling.check_accept(user=callee, device_id=1, call_id=call_id, sdp="v=0 answer")
        signaling.check_hangup(user=caller, device_id=1, call_id=call_id)

    in_tenant(org, run)
    return call_id


def test_an_admin_sees_the_call_log_and_each_view_is_audited(org_p, signed_in_admin):
    alice, bob = make_user(org_p), make_user(org_p)
    call_id = _completed_call(org_p, alice, bob)
    page = signed_in_admin.get("/portal/calls/")
    assert page.status_code == 200
    assert f'data-call-id="{call_id}"' in page.text
    assert alice.username in page.text and bob.username in page.text
    assert "sdp-marker" not in page.text
    assert 'data-testid="media-status"' in page.text and "TURN relay" in page.text

    filtered = signed_in_admin.get("/portal/calls/", params={"user": bob.username})
    assert f'data-call-id="{call_id}"' in filtered.text
    unknown = signed_in_admin.get("/portal/calls/", params={"user": "nobody-here"})
    assert unknown.status_code == 400 and "No user is called" in unknown.text
    bad = signed_in_admin.get("/portal/calls/", params={"before": "soon"})
    assert bad.status_code == 400

    views = in_tenant(
        org_p,
        lambda: list(
            AuditEntry.objects.filter(event="call.records_viewed", actor_id=signed_in_admin.user.pk)
        ),
    )
    assert len(views) == 2  # the two pages that were shown
    assert {v.data["user_id"] for v in views} == {None, str(bob.pk)}


def test_a_member_cannot_open_the_call_log(org_p, portal):
    member = make_user(org_p, role="user_manager")
    client = portal(org_p)
    assert client.login(member.username).status_code == 302
    response = client.get("/portal/calls/")
    assert response.status_code == 403
    assert 'href="/portal/calls/"' not in client.get("/portal/").text
