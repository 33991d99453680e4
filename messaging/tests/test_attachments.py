"""Attachments over the real server: streamed upload of an encrypted blob, the org's size
limit (413, nothing left behind), binding through a message, download only by members."""

import hashlib
import os
import uuid
from pathlib import Path

from messaging.models import Attachment, Message
from siphera.tenancy import in_tenant
from tests.fixtures import Api, host_of, server_with_env

from .helpers import send_body, start_conversation

OCTETS = {"Content-Type": "application/octet-stream"}


def upload(session, data, **headers):
    return session.api.post("/api/v1/attachments", content=data, headers={**OCTETS, **headers})


def blob_files(media_root: Path, org) -> set[str]:
    root = media_root / org.schema_name / "attachments"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def attachment_rows(org, user) -> int:
    return in_tenant(org, Attachment.objects.filter(uploader=user).count)


def test_an_upload_is_stored_and_described_by_size_and_sha256(org_a, new_session, media_root):
    alice = new_session(org_a)
    data = os.urandom(300 * 1024 + 7)

    response = upload(alice, data)

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "size", "sha256"}
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    stored = media_root / org_a.schema_name / "attachments" / body["id"].replace("-", "")[:2]
    assert (stored / body["id"]).read_bytes() == data


def test_a_chunked_upload_without_content_length_is_counted_while_streaming(org_a, new_session):
    alice = new_session(org_a)
    chunks = [os.urandom(64 * 1024) for _ in range(5)]

    response = upload(alice, iter(chunks))

    assert response.status_code == 201, response.text
    assert response.json()["size"] == 5 * 64 * 1024
    download = alice.api.get(f"/api/v1/attachments/{response.json()['id']}")
    assert download.content == b"".join(chunks)


def test_members_download_an_attachment_sent_in_their_conversation(org_a, new_session):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    data = os.urandom(70_000)
    attachment = upload(alice, data).json()
    url = f"/api/v1/attachments/{attachment['id']}"

    # Before it is sent, only the uploader may read it.
    assert alice.api.get(url).status_code == 200
    assert bob.api.get(url).status_code == 404

    sent = send_body(alice, cid, b"caption", attachments=[attachment["id"]])
    assert sent.status_code == 201, sent.text

    download = bob.api.get(url)
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-length"] == str(len(data))
    assert download.headers["etag"] == f'"{attachment["sha256"]}"'
    assert "no-store" in download.headers["cache-control"]
    # Not a member of the conversation: the same 404 as for an id that does not exist.
    assert carol.api.get(url).status_code == 404
    assert carol.api.get(url).json()["error"]["code"] == "not_found"

    # Frames and history list the attachment.
    queued = bob.api.get("/api/v1/messages").json()
    assert queued[-1]["attachments"] == [attachment]
    history = bob.api.get(f"/api/v1/conversations/{cid}/messages").json()
    assert history[-1]["attachments"] == [attachment]


def test_another_org_and_strangers_get_404(org_a, org_b, new_session, server):
    alice, bob = new_session(org_a), new_session(org_a)
    mallory = new_session(org_b)
    cid = start_conversation(alice, bob)["id"]
    attachment = upload(alice, b"ciphertext" * 100).json()
    send_body(alice, cid, attachments=[attachment["id"]])
    url = f"/api/v1/attachments/{attachment['id']}"

    assert mallory.api.get(url).status_code == 404
    # Org B's token on org A's host is not a token at all there.
    assert Api(server, host_of(org_a), mallory.token).get(url).status_code == 401
    assert Api(server, host_of(org_a)).get(url).status_code == 401
    assert alice.api.get(f"/api/v1/attachments/{uuid.uuid4()}").status_code == 404
    assert alice.api.get("/api/v1/attachments/not-a-uuid").status_code == 404
    assert Api(server, host_of(org_a)).post("/api/v1/attachments", content=b"x").status_code == 401


def test_an_upload_over_the_org_limit_is_413_and_leaves_nothing(org_a, new_session, media_root):
    admin, alice = new_session(org_a, role="admin"), new_session(org_a)
    assert (
        admin.api.request(
            "PATCH", "/api/v1/compliance/policy", json={"attachment_max_bytes": 1000}
        ).status_code
        == 200
    )
    try:
        files_before = blob_files(media_root, org_a)

        declared = upload(alice, os.urandom(1001))
        streamed = upload(alice, iter([os.urandom(600), os.urandom(600)]))  # no length

        for response in (declared, streamed):
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "attachment_too_large"
            assert response.json()["max_bytes"] == 1000
        assert blob_files(media_root, org_a) == files_before
        assert attachment_rows(org_a, alice.user) == 0
        assert upload(alice, os.urandom(1000)).status_code == 201  # exactly the limit
    finally:
        admin.api.request("PATCH", "/api/v1/compliance/policy", json={"attachment_max_bytes": None})


def test_the_platform_default_limit_comes_from_attachment_max_bytes(org_a, new_session, tmp_path):
    alice = new_session(org_a)
    with server_with_env(tmp_path / "small.log", ATTACHMENT_MAX_BYTES="4096") as small:
        api = Api(small, host_of(org_a), alice.token)
        over = api.post("/api/v1/attachments", content=os.urandom(4097), headers=OCTETS)
        fits = api.post("/api/v1/attachments", content=os.urandom(4096), headers=OCTETS)
    assert over.status_code == 413 and over.json()["max_bytes"] == 4096
    assert fits.status_code == 201
    assert attachment_rows(org_a, alice.user) == 1


def test_bad_uploads_get_clear_4xx_and_store_nothing(org_a, new_session, media_root):
    alice = new_session(org_a)
    files_before = blob_files(media_root, org_a)

    as_json = alice.api.post("/api/v1/attachments", json={"data": "x"})
    no_type = alice.api.post("/api/v1/attachments", content=b"abc")
    empty = upload(alice, b"")
    empty_chunked = upload(alice, iter([b""]))

    assert as_json.status_code == 415
    assert as_json.json()["error"]["code"] == "unsupported_media_type"
    assert no_type.status_code == 415
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == "empty_attachment"
    assert empty_chunked.status_code == 400
    assert blob_files(media_root, org_a) == files_before
    assert attachment_rows(org_a, alice.user) == 0


def test_only_the_uploader_may_send_an_attachment_and_only_to_one_conversation(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    first = start_conversation(alice, bob)["id"]
    second = start_conversation(alice, bob, kind="group")["id"]
    attachment = upload(alice, b"blob").json()["id"]

    stolen = send_body(bob, first, attachments=[attachment])
    assert stolen.status_code == 400
    assert stolen.json()["error"]["code"] == "invalid_attachment"
    assert stolen.json()["invalid"] == [attachment]
    assert send_body(alice, first, attachments=[str(uuid.uuid4())]).status_code == 400
    assert send_body(alice, first, attachments=[attachment, attachment]).status_code == 400
    assert in_tenant(org_a, Message.objects.filter(conversation_id=first).count) == 0

    assert send_body(alice, first, attachments=[attachment]).status_code == 201
    # Sent again in the same conversation (e.g. an edit): fine; in another: refused.
    assert send_body(alice, first, attachments=[attachment]).status_code == 201
    elsewhere = send_body(alice, second, attachments=[attachment])
    assert elsewhere.status_code == 400
    assert elsewhere.json()["error"]["code"] == "invalid_attachment"
    assert in_tenant(org_a, Message.objects.filter(conversation_id=second).count) == 0
    row = in_tenant(org_a, Attachment.objects.get, pk=attachment)
    assert str(row.conversation_id) == first


def test_a_message_lists_its_attachments_in_the_senders_order(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    uploads = [upload(alice, os.urandom(10 + i)).json() for i in range(3)]
    order = [uploads[2], uploads[0], uploads[1]]

    assert send_body(alice, cid, attachments=[a["id"] for a in order]).status_code == 201

    assert bob.api.get("/api/v1/messages").json()[-1]["attachments"] == order
