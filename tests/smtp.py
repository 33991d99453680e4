"""A real SMTP server (aiosmtpd) for the test run: every server and worker this run starts
sends its mail there (EMAIL_URL is set before they start), and tests read what arrived."""

from __future__ import annotations

import contextlib
import email
import email.policy
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller


@dataclass
class Mailbox:
    """Every mail the SMTP server received in this run, in arrival order."""

    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition | None = None

    def __post_init__(self):
        self._arrived = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def add(self, message: EmailMessage) -> None:
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    def wait_for(self, to: str, *, subject: str = "", timeout: float = 30) -> EmailMessage:
        """The first mail to `to` (whose subject contains `subject`), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in self.messages:
                    if to.lower() in (message["To"] or "").lower() and subject in (
                        message["Subject"] or ""
                    ):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no mail to {to!r} ({subject!r}) within {timeout}s")
                self._arrived.wait(left)

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if address.lower() in (m["To"] or "").lower()]


def bodies(message: EmailMessage) -> tuple[str, str]:
    """(text, html) of a received mail."""
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return (text.get_content() if text else "", html.get_content() if html else "")


def link_in(message: EmailMessage, pattern: str) -> str:
    """The first URL in the mail's text matching `pattern` (a regex over the URL)."""
    text, _ = bodies(message)
    for url in re.findall(r"https?://\S+", text):
        if re.search(pattern, url):
            return url
    raise AssertionError(f"no link matching {pattern!r} in:\n{text}")


class _Handler:
    def __init__(self, mailbox: Mailbox):
        self.mailbox = mailbox

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mailbox.add(message)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_server(port: int | None = None) -> Iterator[Mailbox]:
    """An aiosmtpd server on 127.0.0.1 (a free port unless given) collecting every mail."""
    box = Mailbox(host="127.0.0.1", port=port or _free_port())
    controller = Controller(_Handler(box), hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture(scope="session", autouse=True)
def mailbox() -> Iterator[Mailbox]:
    """This run's SMTP server. Autouse and session-wide so EMAIL_URL is in the environment
    before any server or worker subprocess starts (they inherit it)."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    with smtp_server() as box:
        os.environ["EMAIL_URL"] = box.url
        yield box
