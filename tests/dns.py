"""A tiny authoritative DNS server for tests (UDP on 127.0.0.1, a free port), built with
dnspython's wire format: the real peer a TXT lookup talks to (orgs.services.domains).
Records are set while it runs; unknown names answer NXDOMAIN."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest


class DnsServer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.txt: dict[str, list[str]] = {}
        self.queries: list[str] = []
        self.silent = False  # True: answer nothing (a resolver that is down)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_txt(self, name: str, *values: str) -> None:
        self.txt[name.lower().rstrip(".")] = list(values)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            question = query.question[0]
            name = question.name.to_text().lower().rstrip(".")
            self.queries.append(name)
            if self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            values = self.txt.get(name)
            if values is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                quoted = ['"' + v.replace('"', '\\"') + '"' for v in values]
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, dns.rdataclass.IN, "TXT", *quoted)
                )
            self.sock.sendto(response.to_wire(), peer)

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@contextlib.contextmanager
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start()
    try:
        yield server
    finally:
        server.stop()


# Named by the decorator: a function called `dns` would hide the dnspython package above.
@pytest.fixture(scope="module", name="dns")
def dns_fixture():
    """A DNS server for the test module (a plugin of conftest.py)."""
    with dns_server() as server:
        yield server


@pytest.fixture(scope="module")
def dns_web(dns, _database, tmp_path_factory):
    """A web process that asks `dns` (with a short timeout) to verify host names."""
    from tests.fixtures import server_with_env

    log = tmp_path_factory.mktemp("dns-web") / "server.log"
    with server_with_env(
        log, DOMAIN_VERIFY_NAMESERVERS=dns.address, DOMAIN_VERIFY_TIMEOUT_SECONDS="2"
    ) as live:
        yield live
