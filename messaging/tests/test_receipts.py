"""Receipts are stored and relayed to the other members; typing is relayed, never stored."""

from messaging.models import Member
from siphera.tenancy import in_tenant
from tests.ws import authed_socket, recv, recv_type, send

from .helpers import send_body, start_conversation


async def test_receipts_are_stored_monotonic_and_relayed(server, org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    for _ in range(3):
        send_body(alice, cid)
    async with await authed_socket(server, alice) as a_ws, await authed_socket(server, bob) as b_ws:
        await recv_type(a_ws, "queue.empty")
        await send(b_ws, {"type": "receipt", "conversation": cid, "kind": "read", "up_to_seq": 3})
        receipt = await recv_type(a_ws, "receipt")
        assert receipt == {
            "type": "receipt",
            "conversation": cid,
            "user_id": str(bob.user.pk),
            "kind": "read",
            "up_to_seq": 3,
        }
        await send(
            b_ws, {"type": "receipt", "conversation": cid, "kind": "delivered", "up_to_seq": 1}
        )
        lower = await recv_type(a_ws, "receipt")
        assert lower["up_to_seq"] == 3  # markers never go back
    member = in_tenant(org_a, Member.objects.get, conversation_id=cid, user=bob.user)
    assert (member.delivered_seq, member.read_seq) == (3, 3)


async def test_typing_is_relayed_to_the_other_members_only(server, org_a, org_b, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    async with await authed_socket(server, alice) as a_ws, await authed_socket(server, bob) as b_ws:
        await recv_type(b_ws, "queue.empty")
        await send(a_ws, {"type": "typing", "conversation": cid, "state": "start"})
        typing = await recv_type(b_ws, "typing")
        assert typing["user_id"] == str(alice.user.pk) and typing["state"] == "start"


async def test_receipt_and_typing_frames_for_a_foreign_conversation_are_not_found(
    server, org_a, org_b, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    outsider = new_session(org_b)
    cid = start_conversation(alice, bob)["id"]
    async with await authed_socket(server, outsider) as ws:
        await recv_type(ws, "queue.empty")
        await send(ws, {"type": "typing", "conversation": cid, "state": "start"})
        assert (await recv(ws))["code"] == "not_found"
        await send(ws, {"type": "receipt", "conversation": cid, "kind": "read", "up_to_seq": 1})
        assert (await recv(ws))["code"] == "not_found"
        await send(
            ws,
            {
                "type": "send",
                "conversation": cid,
                "client_id": "7f9c1c1e-0000-4000-8000-000000000000",
                "body": "eA==",
            },
        )
        assert (await recv(ws))["code"] == "not_found"
