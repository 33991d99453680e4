"""The key directory over HTTP against the real server: uploads, counts, claims under
concurrency, `keys.low`, rate limits — and what another org sees of it."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from nacl.signing import VerifyKey

from tests.fixtures import Api, b64, host_of, make_user, server_with_env
from tests.ws import authed_socket, recv_type

REGISTERED_ONE_TIME = 5  # tests.fixtures.DeviceKeys.registration() uploads ids 0..4


def one_time(ids) -> list[dict]:
    return [{"id": i, "key": b64(os.urandom(32))} for i in ids]


def pq(session, ids) -> list[dict]:
    # ML-KEM-1024 public keys are 1568 bytes; the server treats them as opaque.
    return [session.keys.signed(i, os.urandom(1568)) for i in ids]


def counts(session) -> dict:
    response = session.api.get("/api/v1/keys/count")
    assert response.status_code == 200, response.text
    return response.json()


def upload(session, **body) -> httpx.Response:
    return session.api.put("/api/v1/keys", json=body)


def claim(claimer, target_user, **params) -> httpx.Response:
    return claimer.api.get(f"/api/v1/keys/{target_user.pk}", params=params)


def bundle_of(response: httpx.Response, device_id: int) -> dict:
    assert response.status_code == 200, response.text
    return next(d for d in response.json()["devices"] if d["device_id"] == device_id)


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# --- upload and count ------------------------------------------------------------------------


def test_count_reports_the_keys_registered_with_the_device(org_a, new_session):
    session = new_session(org_a)
    assert counts(session) == {"one_time": REGISTERED_ONE_TIME, "pq": 0}


def test_upload_adds_one_time_and_pq_prekeys(org_a, new_session):
    session = new_session(org_a)
    response = upload(
        session, one_time_prekeys=one_time(range(100, 150)), pq_prekeys=pq(session, range(10))
    )
    assert response.status_code == 204, response.text
    assert counts(session) == {"one_time": REGISTERED_ONE_TIME + 50, "pq": 10}


def test_upload_replaces_the_signed_prekey(org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    new_key = os.urandom(32)
    signed = target.keys.signed(2, new_key)
    assert upload(target, signed_prekey=signed).status_code == 204

    bundle = bundle_of(claim(claimer, target.user), target.device_id)
    assert bundle["signed_prekey"] == signed
    assert counts(target)["one_time"] == REGISTERED_ONE_TIME - 1  # only the claim took one


def test_an_empty_upload_changes_nothing(org_a, new_session):
    session = new_session(org_a)
    assert upload(session).status_code == 204
    assert counts(session) == {"one_time": REGISTERED_ONE_TIME, "pq": 0}


@pytest.mark.parametrize("kind", ["one_time_prekeys", "pq_prekeys"])
def test_more_than_100_keys_of_a_kind_in_one_request_is_refused(org_a, new_session, kind):
    session = new_session(org_a)
    batch = one_time(range(10, 111)) if kind == "one_time_prekeys" else pq(session, range(101))
    response = upload(session, **{kind: batch})
    assert response.status_code == 400
    assert error_code(response) == "too_many_keys_in_request"
    assert counts(session) == {"one_time": REGISTERED_ONE_TIME, "pq": 0}


def test_a_device_holds_at_most_500_one_time_prekeys_and_an_upload_past_it_stores_nothing(
    org_a, new_session
):
    session = new_session(org_a)
    for start in range(100, 500, 100):
        response = upload(session, one_time_prekeys=one_time(range(start, start + 100)))
        assert response.status_code == 204, response.text
    assert counts(session)["one_time"] == 405

    over = upload(
        session,
        signed_prekey=session.keys.signed(7),
        one_time_prekeys=one_time(range(1000, 1100)),
        pq_prekeys=pq(session, range(3)),
    )
    assert over.status_code == 400
    assert error_code(over) == "too_many_keys"
    assert over.json()["held"] == 405 and over.json()["max"] == 500
    assert counts(session) == {"one_time": 405, "pq": 0}  # nothing of the request stored

    assert upload(session, one_time_prekeys=one_time(range(1000, 1095))).status_code == 204
    assert counts(session)["one_time"] == 500


def test_a_device_holds_at_most_500_pq_prekeys(org_a, new_session):
    session = new_session(org_a)
    for start in range(0, 500, 100):
        response = upload(session, pq_prekeys=pq(session, range(start, start + 100)))
        assert response.status_code == 204, response.text
    over = upload(session, pq_prekeys=pq(session, [900]))
    assert over.status_code == 400 and error_code(over) == "too_many_keys"
    assert counts(session)["pq"] == 500


def test_an_identical_reupload_is_a_no_op(org_a, new_session):
    session = new_session(org_a)
    body = {"one_time_prekeys": one_time(range(10, 20)), "pq_prekeys": pq(session, range(3))}
    assert upload(session, **body).status_code == 204
    assert upload(session, **body).status_code == 204
    assert counts(session) == {"one_time": REGISTERED_ONE_TIME + 10, "pq": 3}


def test_a_reused_one_time_id_with_other_bytes_is_a_conflict_and_nothing_is_stored(
    org_a, new_session
):
    session = new_session(org_a)
    assert upload(session, one_time_prekeys=one_time([10])).status_code == 204
    response = upload(session, one_time_prekeys=one_time([11, 10, 12]))
    assert response.status_code == 400
    assert error_code(response) == "key_id_conflict"
    assert response.json()["key_ids"] == [10]
    assert counts(session)["one_time"] == REGISTERED_ONE_TIME + 1  # 11 and 12 not stored


def test_a_reused_pq_id_with_other_bytes_is_a_conflict(org_a, new_session):
    session = new_session(org_a)
    assert upload(session, pq_prekeys=pq(session, [1])).status_code == 204
    response = upload(session, pq_prekeys=pq(session, [1, 2]))
    assert response.status_code == 400 and error_code(response) == "key_id_conflict"
    assert counts(session)["pq"] == 1


def test_the_same_id_twice_in_one_request_is_refused(org_a, new_session):
    session = new_session(org_a)
    response = upload(session, one_time_prekeys=one_time([50, 50]))
    assert response.status_code == 400 and error_code(response) == "duplicate_key_id"
    assert counts(session)["one_time"] == REGISTERED_ONE_TIME


def test_a_bad_signed_prekey_signature_is_422_and_nothing_is_stored(org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    forged = target.keys.signed(9)
    forged["signature"] = b64(os.urandom(64))
    response = upload(target, signed_prekey=forged, one_time_prekeys=one_time(range(10, 20)))
    assert response.status_code == 422 and error_code(response) == "bad_signature"
    assert counts(target)["one_time"] == REGISTERED_ONE_TIME
    assert bundle_of(claim(claimer, target.user), target.device_id)["signed_prekey"]["id"] == 1


def test_a_pq_prekey_signed_by_another_key_is_422_and_nothing_is_stored(org_a, new_session):
    session, other = new_session(org_a), new_session(org_a)
    batch = pq(session, range(5)) + pq(other, [5])  # the last one signed by another device
    response = upload(session, pq_prekeys=batch, one_time_prekeys=one_time([30]))
    assert response.status_code == 422 and error_code(response) == "bad_signature"
    assert counts(session) == {"one_time": REGISTERED_ONE_TIME, "pq": 0}


def test_invalid_base64_is_a_400_naming_the_field(org_a, new_session):
    session = new_session(org_a)
    response = upload(session, one_time_prekeys=[{"id": 1, "key": "***"}])
    assert response.status_code == 400 and error_code(response) == "invalid_request"
    assert "one_time_prekeys" in response.json()["fields"]


# --- claims ------------------------------------------------------------------------------------


def test_a_claim_returns_one_bundle_per_current_device_in_the_protocol_shape(org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    assert upload(phone, pq_prekeys=pq(phone, [3, 4])).status_code == 204
    claimer = new_session(org_a)

    response = claim(claimer, laptop.user)
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == str(laptop.user.pk)
    assert [d["device_id"] for d in body["devices"]] == [laptop.device_id, phone.device_id]
    for session, bundle in zip((laptop, phone), body["devices"], strict=True):
        assert set(bundle) == {
            "device_id",
            "identity_key",
            "signing_key",
            "signed_prekey",
            "one_time_prekey",
            "pq_prekey",
        }
        assert base64.b64decode(bundle["identity_key"]) == session.keys.identity_key
        signing_key = base64.b64decode(bundle["signing_key"])
        assert signing_key == bytes(session.keys.signing.verify_key)
        spk = bundle["signed_prekey"]
        assert set(spk) == {"id", "key", "signature"} and spk["id"] == 1
        # A client can check the signature itself: the server relays it untouched.
        VerifyKey(signing_key).verify(
            base64.b64decode(spk["key"]), base64.b64decode(spk["signature"])
        )
        assert set(bundle["one_time_prekey"]) == {"id", "key"}
        assert bundle["one_time_prekey"]["id"] == 0  # oldest upload first
    assert body["devices"][0]["pq_prekey"] is None
    phone_pq = body["devices"][1]["pq_prekey"]
    assert phone_pq["id"] == 3 and set(phone_pq) == {"id", "key", "signature"}
    assert counts(laptop) == {"one_time": REGISTERED_ONE_TIME - 1, "pq": 0}
    assert counts(phone) == {"one_time": REGISTERED_ONE_TIME - 1, "pq": 1}


def test_claims_hand_out_oldest_first_then_only_the_signed_prekey(org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    assert upload(target, one_time_prekeys=one_time([77, 55])).status_code == 204
    handed = []
    for _ in range(REGISTERED_ONE_TIME + 2):
        handed.append(bundle_of(claim(claimer, target.user), target.device_id)["one_time_prekey"])
    assert [k["id"] for k in handed] == [0, 1, 2, 3, 4, 77, 55]  # upload order, not id order

    last_resort = bundle_of(claim(claimer, target.user), target.device_id)
    assert last_resort["one_time_prekey"] is None and last_resort["pq_prekey"] is None
    assert last_resort["signed_prekey"]["id"] == 1
    assert counts(target) == {"one_time": 0, "pq": 0}


def test_a_claimed_key_comes_back_with_the_bytes_uploaded(org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    for _ in range(REGISTERED_ONE_TIME):
        claim(claimer, target.user)
    keys = one_time([42])
    assert upload(target, one_time_prekeys=keys).status_code == 204
    assert bundle_of(claim(claimer, target.user), target.device_id)["one_time_prekey"] == keys[0]


def test_revoked_devices_are_not_in_bundles(org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    claimer = new_session(org_a)
    assert laptop.api.delete(f"/api/v1/devices/{phone.device_id}").status_code == 204

    response = claim(claimer, laptop.user)
    assert [d["device_id"] for d in response.json()["devices"]] == [laptop.device_id]
    only_phone = claim(claimer, laptop.user, device_id=phone.device_id)
    assert only_phone.status_code == 404 and error_code(only_phone) == "not_found"


def test_the_requesting_device_gets_its_other_devices_but_not_itself(org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    response = claim(laptop, laptop.user)
    assert [d["device_id"] for d in response.json()["devices"]] == [phone.device_id]
    assert counts(laptop)["one_time"] == REGISTERED_ONE_TIME


def test_a_claim_can_name_one_device(org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    claimer = new_session(org_a)
    response = claim(claimer, laptop.user, device_id=phone.device_id)
    assert [d["device_id"] for d in response.json()["devices"]] == [phone.device_id]
    assert counts(laptop)["one_time"] == REGISTERED_ONE_TIME
    for bad in ("99", "x"):
        missing = claim(claimer, laptop.user, device_id=bad)
        assert missing.status_code == 404 and error_code(missing) == "not_found"


def test_a_user_without_devices_has_an_empty_bundle_list(org_a, new_session):
    claimer = new_session(org_a)
    lonely = make_user(org_a)
    response = claim(claimer, lonely)
    assert response.status_code == 200
    assert response.json() == {"user_id": str(lonely.pk), "devices": []}


def test_unknown_or_malformed_user_ids_are_404(org_a, new_session):
    claimer = new_session(org_a)
    for user_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        response = claimer.api.get(f"/api/v1/keys/{user_id}")
        assert response.status_code == 404 and error_code(response) == "not_found"


@pytest.mark.slow
def test_50_concurrent_claims_against_20_one_time_prekeys_never_hand_out_a_key_twice(
    org_a, new_session, server
):
    """The acceptance test of PITFALLS 14: 20 distinct keys, 30 last-resort answers."""
    target = new_session(org_a)
    assert upload(target, one_time_prekeys=one_time(range(5, 20))).status_code == 204
    assert counts(target)["one_time"] == 20
    claimers = [new_session(org_a) for _ in range(5)]  # 10 claims each, all at once
    host = host_of(org_a)  # looked up here: the threads below must not open DB connections
    start = threading.Barrier(50)

    def one_claim(i: int) -> httpx.Response:
        claimer = claimers[i % len(claimers)]
        with httpx.Client(base_url=server.url, timeout=30) as http:
            start.wait()
            return http.get(
                f"/api/v1/keys/{target.user.pk}",
                headers={"Host": host, "Authorization": f"Bearer {claimer.token}"},
            )

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(one_claim, range(50)))

    assert [r.status_code for r in responses] == [200] * 50
    bundles = [bundle_of(r, target.device_id) for r in responses]
    handed = [b["one_time_prekey"]["id"] for b in bundles if b["one_time_prekey"]]
    assert sorted(handed) == list(range(20))  # 20 answers, each key exactly once
    last_resort = [b for b in bundles if b["one_time_prekey"] is None]
    assert len(last_resort) == 30
    assert all(b["signed_prekey"]["id"] == 1 for b in last_resort)
    assert counts(target)["one_time"] == 0


def test_concurrent_claims_in_one_process_never_share_a_key(org_a, new_session):
    """The same guarantee at the service level, with 16 threads (16 connections) racing on
    every one of 40 keys."""
    from django.db import connection

    from messaging.services import keys
    from orgs.accounts.models import Device
    from siphera.tenancy import in_tenant

    target = new_session(org_a)
    assert upload(target, one_time_prekeys=one_time(range(5, 40))).status_code == 204
    device = in_tenant(org_a, Device.objects.get, user=target.user, device_id=target.device_id)
    start = threading.Barrier(16)

    def claims() -> list[int | None]:
        start.wait()
        try:
            got = []
            for _ in range(5):
                [bundle] = in_tenant(org_a, keys.do_claim_bundles, [device])
                got.append(bundle.one_time_prekey and bundle.one_time_prekey.key_id)
            return got
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = [k for got in pool.map(lambda _: claims(), range(16)) for k in got]
    handed = [k for k in results if k is not None]
    assert sorted(handed) == list(range(40))
    assert results.count(None) == 16 * 5 - 40


# --- keys.low ----------------------------------------------------------------------------------


async def test_a_claim_leaving_few_keys_pushes_keys_low_to_that_device(server, org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    async with await authed_socket(server, target) as ws:
        await asyncio.to_thread(claim, claimer, target.user)
        frame = await recv_type(ws, "keys.low")
    assert frame == {"type": "keys.low", "one_time": REGISTERED_ONE_TIME - 1, "pq": 0}


async def test_no_keys_low_while_enough_keys_are_left(server, org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    assert upload(target, one_time_prekeys=one_time(range(5, 20))).status_code == 204
    async with await authed_socket(server, target) as ws:
        await asyncio.to_thread(claim, claimer, target.user)  # 19 left: above the threshold
        with pytest.raises(TimeoutError):
            await recv_type(ws, "keys.low", timeout=1.5)


async def test_keys_low_is_sent_once_per_burst_and_rearmed_by_an_upload(server, org_a, new_session):
    target, claimer = new_session(org_a), new_session(org_a)
    async with await authed_socket(server, target) as ws:
        for _ in range(3):
            await asyncio.to_thread(claim, claimer, target.user)
        assert (await recv_type(ws, "keys.low"))["one_time"] == REGISTERED_ONE_TIME - 1
        with pytest.raises(TimeoutError):
            await recv_type(ws, "keys.low", timeout=1.5)

        response = await asyncio.to_thread(upload, target, one_time_prekeys=one_time([90]))
        assert response.status_code == 204
        await asyncio.to_thread(claim, claimer, target.user)
        assert (await recv_type(ws, "keys.low"))["one_time"] == REGISTERED_ONE_TIME - 3


async def test_keys_low_reaches_only_the_claimed_device(server, org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    claimer = new_session(org_a)
    async with await authed_socket(server, phone) as ws:
        await asyncio.to_thread(claim, claimer, laptop.user, device_id=laptop.device_id)
        with pytest.raises(TimeoutError):
            await recv_type(ws, "keys.low", timeout=1.5)


# --- authentication and the other org --------------------------------------------------------


def test_unauthenticated_calls_are_refused(org_a, api_for, new_session):
    target = new_session(org_a)
    api = api_for(org_a)
    for method, path in (
        ("PUT", "/api/v1/keys"),
        ("GET", "/api/v1/keys/count"),
        ("GET", f"/api/v1/keys/{target.user.pk}"),
    ):
        response = api.request(method, path, json={})
        assert response.status_code == 401, path
        assert error_code(response) == "unauthenticated"
    assert counts(target)["one_time"] == REGISTERED_ONE_TIME  # nothing was claimed


def test_org_b_cannot_claim_or_confirm_a_user_of_org_a(org_a, org_b, new_session):
    alice = new_session(org_a)
    bob = new_session(org_b)
    response = claim(bob, alice.user)
    assert response.status_code == 404 and error_code(response) == "not_found"
    unknown = bob.api.get("/api/v1/keys/00000000-0000-4000-8000-000000000000")
    assert response.json() == unknown.json()  # indistinguishable from a user that never was
    assert counts(alice)["one_time"] == REGISTERED_ONE_TIME


def test_a_token_of_org_a_does_nothing_on_org_b(org_a, org_b, new_session, server):
    alice = new_session(org_a)
    bob = new_session(org_b)
    make_user(org_b, alice.user.username)  # the same username exists in org B
    on_b = Api(server, host_of(org_b), alice.token)
    for response in (
        on_b.put("/api/v1/keys", json={"one_time_prekeys": one_time([99])}),
        on_b.get("/api/v1/keys/count"),
        on_b.get(f"/api/v1/keys/{bob.user.pk}"),
        on_b.get(f"/api/v1/keys/{alice.user.pk}"),
    ):
        assert response.status_code == 401
    assert counts(alice)["one_time"] == REGISTERED_ONE_TIME
    assert counts(bob)["one_time"] == REGISTERED_ONE_TIME


# --- rate limits (a second server started with low limits) ----------------------------------


@pytest.fixture(scope="module")
def limited_server(_database, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("limited") / "server.log"
    with server_with_env(
        log_path, KEYS_CLAIM_RATE="3", KEYS_UPLOAD_RATE="2", KEYS_TARGET_CLAIM_RATE="4"
    ) as live:
        yield live


def test_claims_are_rate_limited_per_requesting_device(org_a, new_session, limited_server):
    target, claimer, other = new_session(org_a), new_session(org_a), new_session(org_a)
    api = Api(limited_server, host_of(org_a), claimer.token)
    for _ in range(3):
        assert api.get(f"/api/v1/keys/{target.user.pk}").status_code == 200
    response = api.get(f"/api/v1/keys/{target.user.pk}")
    assert response.status_code == 429 and error_code(response) == "rate_limited"
    assert int(response.headers["Retry-After"]) > 0
    assert counts(target)["one_time"] == REGISTERED_ONE_TIME - 3  # the refused one took none
    # another device still has its own budget
    other_api = Api(limited_server, host_of(org_a), other.token)
    assert other_api.get(f"/api/v1/keys/{target.user.pk}").status_code == 200


def test_one_time_prekeys_handed_out_per_target_device_are_limited_whoever_claims(
    org_a, new_session, limited_server
):
    # One member must not drain everyone's one-time prekeys through many claiming devices:
    # past the target device's budget a claim still opens a session, with the signed
    # (last-resort) prekey alone.
    target = new_session(org_a)
    first, second = new_session(org_a), new_session(org_a)
    upload(target, pq_prekeys=pq(target, range(10)))
    for claimer, times in ((first, 3), (second, 1)):
        api = Api(limited_server, host_of(org_a), claimer.token)
        for _ in range(times):
            full = bundle_of(api.get(f"/api/v1/keys/{target.user.pk}"), target.device_id)
            assert full["one_time_prekey"] is not None and full["pq_prekey"] is not None
    api = Api(limited_server, host_of(org_a), second.token)
    spent = bundle_of(api.get(f"/api/v1/keys/{target.user.pk}"), target.device_id)
    assert spent["one_time_prekey"] is None and spent["pq_prekey"] is None
    assert spent["signed_prekey"] == full["signed_prekey"]
    assert spent["identity_key"] == full["identity_key"]
    assert counts(target) == {"one_time": REGISTERED_ONE_TIME - 4, "pq": 10 - 4}
    # The budget is the target device's: another device is claimed as usual.
    other = new_session(org_a)
    fresh = bundle_of(api.get(f"/api/v1/keys/{other.user.pk}"), other.device_id)
    assert fresh["one_time_prekey"] is not None


def test_uploads_are_rate_limited_per_device(org_a, new_session, limited_server):
    session = new_session(org_a)
    api = Api(limited_server, host_of(org_a), session.token)
    for start in (10, 20):
        response = api.put(
            "/api/v1/keys", json={"one_time_prekeys": one_time(range(start, start + 5))}
        )
        assert response.status_code == 204
    response = api.put("/api/v1/keys", json={"one_time_prekeys": one_time([30])})
    assert response.status_code == 429 and error_code(response) == "rate_limited"
    assert int(response.headers["Retry-After"]) > 0
    assert counts(session)["one_time"] == REGISTERED_ONE_TIME + 10


async def test_a_guest_claims_keys_and_lists_devices_only_of_people_it_shares_a_conversation_with(
    org_a, new_session, server
):
    from messaging.tests.helpers import start_conversation
    from tests.ws import send

    owner = new_session(org_a, role="owner")
    guest = new_session(org_a, role="guest")
    stranger = new_session(org_a)
    start_conversation(owner, guest, kind="group")

    assert claim(guest, owner.user).status_code == 200
    hidden = claim(guest, stranger.user)
    assert hidden.status_code == 404 and error_code(hidden) == "not_found"
    assert claim(owner, stranger.user).status_code == 200  # members see the whole directory

    async with await authed_socket(server, guest) as ws:
        await send(ws, {"type": "devices", "user_id": str(stranger.user.pk), "ref": 1})
        refused = await recv_type(ws, "error")
        assert refused["code"] == "not_found"
        await send(ws, {"type": "devices", "user_id": str(owner.user.pk), "ref": 2})
        listed = await recv_type(ws, "devices")
        assert [d["device_id"] for d in listed["devices"]] == [owner.device_id]
