"""The legal-hold archive streams (PITFALLS 28): parallel downloads of an archive holding a
big encrypted attachment keep the web process's memory flat, and each archive carries the
attachment byte for byte, as its manifest says."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from datetime import timedelta

import httpx
from django.utils import timezone

from messaging.services import retention
from messaging.tests.helpers import send_body, start_conversation
from orgs.services import audit
from orgs.services.compliance_archive import verify_archive
from siphera.tenancy import in_tenant
from siphera.tests.test_large_bodies import MIB, peak_rss_during_paused_downloads, rss_bytes
from tests.fixtures import create_org, unique

BIG = 32 * MIB
PARALLEL = 4


def test_parallel_archive_downloads_keep_memory_flat_and_carry_the_held_blob(server, new_session):
    org = create_org(unique("ar"), f"{unique('h')}.test")
    alice, bob = new_session(org), new_session(org)
    officer = new_session(org, role="compliance_officer")
    blob = os.urandom(BIG)
    uploaded = alice.api.post(
        "/api/v1/attachments",
        content=blob,
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert uploaded.status_code == 201, uploaded.text
    attachment = uploaded.json()["id"]
    conversation = start_conversation(alice, bob)["id"]
    sent = send_body(alice, conversation, b"caption", attachments=[attachment])
    assert sent.status_code == 201, sent.text
    in_tenant(
        org,
        lambda: retention.check_place_hold(
            conversation_id=conversation, reason="matter 3", actor=audit.Actor.system("t")
        ),
    )
    params = {
        "format": "zip",
        "since": (timezone.now() - timedelta(hours=1)).isoformat(),
        "until": (timezone.now() + timedelta(hours=1)).isoformat(),
    }
    url = f"{server.url}/api/v1/compliance/export"
    headers = officer.api.headers()
    warm = httpx.get(url, params=params, headers=headers, timeout=120)
    assert warm.status_code == 200
    with zipfile.ZipFile(io.BytesIO(warm.content)) as archive:
        assert archive.read(f"attachments/{attachment}") == blob
        manifest = json.loads(archive.read("manifest.json"))
    listed = {f["name"]: f for f in manifest["files"]}
    assert listed[f"attachments/{attachment}"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert listed[f"attachments/{attachment}"]["ciphertext"] is True
    assert verify_archive(io.BytesIO(warm.content)) == []
    baseline = rss_bytes(server.pid)

    peak, results = peak_rss_during_paused_downloads(server, url, headers, PARALLEL, params)
    sizes = [size for size, _ in results]
    # Whole archives (their manifests' times differ, so sizes may by a few bytes).
    assert len(sizes) == PARALLEL and all(abs(s - len(warm.content)) < 64 for s in sizes)
    growth = peak - baseline
    assert growth < PARALLEL * BIG // 4, f"RSS grew by {growth // MIB} MiB"
