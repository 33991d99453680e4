"""Attachments in an S3-compatible bucket (ATTACHMENTS_S3_*, django-storages), against a
real S3 API server (moto's, over HTTP on a local port): an upload streams to the bucket in
8 MiB parts, downloads come back whole, nothing is left behind by a refused upload, a purged
message takes its object with it, and an unreachable bucket is a clear 503 with no row left.
"""

import hashlib
import os
import subprocess
import sys
from datetime import timedelta

import boto3
import pytest
from botocore.config import Config
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from messaging.models import Attachment, Member, Message
from messaging.services import retention
from orgs.services import audit
from siphera.tenancy import in_tenant
from tests.fixtures import Api, _free_port, _wait_http, host_of, server_with_env

from .helpers import send_body, start_conversation

OCTETS = {"Content-Type": "application/octet-stream"}
BUCKET = "siphera-test-attachments"
REGION = "us-east-1"
KEYS = {"aws_access_key_id": "siphera-test", "aws_secret_access_key": "siphera-test-secret"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server in its own process, with an empty private bucket."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{endpoint}/moto-api/", proc, log_path)
        _client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def _client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        **KEYS,
    )


def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "ATTACHMENTS_S3_BUCKET": BUCKET,
        "ATTACHMENTS_S3_ENDPOINT_URL": endpoint,
        "ATTACHMENTS_S3_REGION": REGION,
        "ATTACHMENTS_S3_ADDRESSING_STYLE": "path",
        "ATTACHMENTS_S3_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
        "ATTACHMENTS_S3_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"],
        # One try per request: the unreachable-bucket test should not wait out retries.
        "AWS_MAX_ATTEMPTS": "1",
    }


@pytest.fixture(scope="module")
def s3_server(s3_endpoint, tmp_path_factory):
    """A Siphera web process whose attachments go to the bucket."""
    log_path = tmp_path_factory.mktemp("s3-web") / "server.log"
    with server_with_env(log_path, **_s3_env(s3_endpoint)) as live:
        yield live


@pytest.fixture
def s3(s3_endpoint):
    return _client(s3_endpoint)


def _api(live, session) -> Api:
    return Api(live, host_of(session.org), session.token)


def _key(org, attachment_id: str) -> str:
    return f"{org.schema_name}/attachments/{attachment_id.replace('-', '')[:2]}/{attachment_id}"


def _keys(s3, org) -> set[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{org.schema_name}/")
    return {item["Key"] for item in listing.get("Contents", [])}


def _open_multipart_uploads(s3) -> list:
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def _rows(org, user) -> int:
    return in_tenant(org, Attachment.objects.filter(uploader=user).count)


def test_an_upload_streams_to_the_bucket_in_parts_and_downloads_whole(
    org_a, new_session, s3_server, s3, media_root
):
    alice = new_session(org_a)
    chunks = [os.urandom(MIB) for _ in range(20)] + [b"tail!"]
    data = b"".join(chunks)

    response = _api(s3_server, alice).post(
        "/api/v1/attachments", content=iter(chunks), headers=OCTETS
    )

    assert response.status_code == 201, response.text
    attachment = response.json()
    assert attachment["size"] == len(data)
    assert attachment["sha256"] == hashlib.sha256(data).hexdigest()
    stored = s3.get_object(Bucket=BUCKET, Key=_key(org_a, attachment["id"]))
    # 20 MiB + 5 bytes in 8 MiB parts: a multipart upload of 3 parts (ETag "<md5>-3").
    assert stored["ETag"].strip('"').endswith("-3")
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == attachment["sha256"]
    assert not list(media_root.rglob(attachment["id"]))  # nothing on the local disk
    assert _open_multipart_uploads(s3) == []

    download = _api(s3_server, alice).get(f"/api/v1/attachments/{attachment['id']}")

    assert download.status_code == 200
    assert download.headers["content-length"] == str(len(data))
    assert download.content == data


def test_an_upload_over_the_limit_leaves_no_object_and_no_open_multipart_upload(
    org_a, new_session, s3_server, s3
):
    admin, alice = new_session(org_a, role="admin"), new_session(org_a)
    policy = {"attachment_max_bytes": 9 * MIB}
    assert admin.api.request("PATCH", "/api/v1/compliance/policy", json=policy).status_code == 200
    try:
        keys_before, rows_before = _keys(s3, org_a), _rows(org_a, alice.user)

        # No Content-Length: the limit is found while the first 8 MiB part is in the bucket.
        response = _api(s3_server, alice).post(
            "/api/v1/attachments",
            content=iter([os.urandom(MIB) for _ in range(10)]),
            headers=OCTETS,
        )

        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "attachment_too_large"
        assert response.json()["max_bytes"] == 9 * MIB
        assert _keys(s3, org_a) == keys_before
        assert _open_multipart_uploads(s3) == []
        assert _rows(org_a, alice.user) == rows_before
    finally:
        admin.api.request("PATCH", "/api/v1/compliance/policy", json={"attachment_max_bytes": None})


def test_members_download_from_the_bucket_and_a_purged_message_takes_its_object(
    org_a, org_b, new_session, s3_server, s3, s3_endpoint
):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    mallory = new_session(org_b)
    cid = start_conversation(alice, bob)["id"]
    in_tenant(
        org_a,
        lambda: Member.objects.filter(conversation_id=cid).update(
            joined_at=timezone.now() - timedelta(days=400)
        ),
    )
    blob = os.urandom(3 * MIB + 1)
    attachment = _api(s3_server, alice).post("/api/v1/attachments", content=blob, headers=OCTETS)
    attachment_id = attachment.json()["id"]
    sent = send_body(alice, cid, attachments=[attachment_id])
    assert sent.status_code == 201, sent.text
    url = f"/api/v1/attachments/{attachment_id}"

    assert _api(s3_server, bob).get(url).content == blob
    assert _api(s3_server, carol).get(url).status_code == 404  # not a member
    assert Api(s3_server, host_of(org_b), mallory.token).get(url).status_code == 404
    assert Api(s3_server, host_of(org_a), mallory.token).get(url).status_code == 401

    in_tenant(
        org_a,
        lambda: Message.objects.filter(pk=sent.json()["id"]).update(
            created_at=timezone.now() - timedelta(days=31)
        ),
    )
    s3_storages = {
        **settings.STORAGES,
        "attachments": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_endpoint,
                "region_name": REGION,
                "access_key": KEYS["aws_access_key_id"],
                "secret_key": KEYS["aws_secret_access_key"],
                "addressing_style": "path",
            },
        },
    }
    with override_settings(STORAGES=s3_storages):
        report = in_tenant(org_a, retention.do_purge, actor=audit.Actor.system("tests"))

    assert report.attachments >= 1
    assert _key(org_a, attachment_id) not in _keys(s3, org_a)
    assert _api(s3_server, bob).get(url).status_code == 404


def test_an_unreachable_bucket_is_a_503_and_stores_nothing(org_a, new_session, s3_server, tmp_path):
    alice = new_session(org_a)
    stored = _api(s3_server, alice).post("/api/v1/attachments", content=b"kept", headers=OCTETS)
    assert stored.status_code == 201
    rows_before = _rows(org_a, alice.user)
    nobody = f"http://127.0.0.1:{_free_port()}"  # nothing listens there

    with server_with_env(tmp_path / "down.log", **_s3_env(nobody)) as down:
        upload = _api(down, alice).post("/api/v1/attachments", content=b"x" * 100, headers=OCTETS)
        download = _api(down, alice).get(f"/api/v1/attachments/{stored.json()['id']}")
        log = down.log_text()

    for response in (upload, download):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert int(response.headers["retry-after"]) > 0
    assert "attachment storage failed" in log
    # The failed upload's partial blob could not be deleted either: its row stays,
    # incomplete (never listed, never downloadable), for the purge of unsent uploads.
    leftover = in_tenant(
        org_a,
        lambda: list(
            Attachment.objects.filter(uploader=alice.user).exclude(pk=stored.json()["id"])
        ),
    )
    assert _rows(org_a, alice.user) == rows_before + 1
    assert [a.completed_at for a in leftover] == [None]
    assert alice.api.get(f"/api/v1/attachments/{leftover[0].pk}").status_code == 404
