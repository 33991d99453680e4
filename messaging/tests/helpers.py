"""Helpers for messaging tests: conversations and messages through the real API."""

from __future__ import annotations

import base64
import os
import uuid


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def start_conversation(session, *others, kind: str = "direct") -> dict:
    response = session.api.post(
        "/api/v1/conversations",
        json={
            "kind": kind,
            "members": [str(o.user.pk) if hasattr(o, "user") else str(o.pk) for o in others],
        },
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def send_body(session, conversation_id, body: bytes | None = None, **extra):
    payload = {"client_id": str(uuid.uuid4()), "body": b64(body or os.urandom(16)), **extra}
    return session.api.post(f"/api/v1/conversations/{conversation_id}/messages", json=payload)


def envelope(session, *, body: bytes = b"x", type_: int = 1) -> dict:
    return {
        "user_id": str(session.user.pk),
        "device_id": session.device_id,
        "type": type_,
        "body": b64(body),
    }
