"""A live socket never outlives its rights (issue 15, item 8): when the org's rights
generation moved and the socket missed the event that should have told it (a lost
wake-up, a revoke committed while it was authenticating), its next frame checks again."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.utils import timezone

from siphera.tenancy import in_tenant
from tests.ws import authed_socket, recv, recv_type, send, wait_closed


def _revoke_without_telling(org, device_id: int, user) -> None:
    """Revoke the device as a lost event would leave it: the row says revoked and the
    org's rights generation moved, but no `device.revoked` reached the socket."""
    from orgs.accounts.models import Device
    from orgs.services.auth import forget_cached_auth

    def revoke() -> None:
        Device.objects.filter(user=user, device_id=device_id).update(revoked_at=timezone.now())
        forget_cached_auth()

    in_tenant(org, revoke)


def _demote_without_telling(org, user) -> None:
    from orgs.accounts.models import User
    from orgs.services.auth import forget_cached_auth

    def demote() -> None:
        User.objects.filter(pk=user.pk).update(role="guest")
        forget_cached_auth()

    in_tenant(org, demote)


async def test_a_frame_from_a_device_revoked_behind_its_sockets_back_is_refused(
    server, org_a, org_b, new_session
):
    alice = new_session(org_a)
    bob = new_session(org_b)  # another org's socket: its rights did not move
    ws = await authed_socket(server, alice)
    other = await authed_socket(server, bob)
    await send(ws, {"type": "devices", "ref": "before"})
    assert (await recv_type(ws, "devices"))["ref"] == "before"

    await sync_to_async(_revoke_without_telling)(org_a, alice.device_id, alice.user)

    # The next frame that needs a right finds the device gone: told, and closed (4403)
    await send(ws, {"type": "devices", "ref": "after"})
    assert (await recv(ws))["type"] == "device.revoked"
    assert await wait_closed(ws) == 4403
    # The other org's socket goes on
    await send(other, {"type": "devices", "ref": "b"})
    assert (await recv_type(other, "devices"))["ref"] == "b"
    await other.close()


async def test_a_role_lost_behind_the_sockets_back_takes_its_rights_with_it(
    server, org_a, new_session
):
    alice, carol = new_session(org_a), new_session(org_a)
    ws = await authed_socket(server, alice)
    ask = {"type": "devices", "user_id": str(carol.user.pk)}
    await send(ws, {**ask, "ref": "member"})
    assert (await recv_type(ws, "devices"))["ref"] == "member"  # anyone in the directory

    await sync_to_async(_demote_without_telling)(org_a, alice.user)

    # A guest sees only people it shares a conversation with: the socket followed the row
    await send(ws, {**ask, "ref": "guest"})
    reply = await recv_type(ws, "error")
    assert reply["ref"] == "guest", reply
    await send(ws, {"type": "ping", "ref": "p"})  # and the socket stays open
    assert (await recv_type(ws, "pong"))["ref"] == "p"
    await ws.close()
