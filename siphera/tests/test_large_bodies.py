"""Memory stays flat on large bodies (issue 15 item 1, PITFALLS 28).

Downloads are streamed as the client takes them: the web process's RSS, read from /proc
while parallel downloads of one big attachment are in flight, grows by far less than the
sum of what they would hold if each were read whole first. Request bodies over the limit
are refused with 413 from Content-Length before the body is read, or as a body without
one arrives, on any endpoint, signed in or not (siphera.body_limit).
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading

import httpx

from tests.fixtures import host_of

MIB = 1024 * 1024
BIG = 48 * MIB
PARALLEL = 8


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def peak_rss_during_paused_downloads(
    server, url: str, headers: dict, parallel: int, params: dict | None = None
) -> tuple[int, list[tuple[int, str]]]:
    """Start `parallel` downloads of `url`, pause each after its first piece, take the
    server's peak RSS while all are half read, then finish them. Returns the peak and
    each download's (size, sha256)."""
    started = threading.Barrier(parallel + 1)
    measured = threading.Event()
    results: list[tuple[int, str]] = []

    def download():
        digest, size = hashlib.sha256(), 0
        with httpx.stream("GET", url, params=params, headers=headers, timeout=120) as response:
            assert response.status_code == 200
            pieces = response.iter_bytes(64 * 1024)
            first = next(pieces)  # the download is under way ...
            digest.update(first)
            size += len(first)
            started.wait(timeout=120)
            measured.wait(timeout=120)  # ... and waits, half read, while RSS is taken
            for piece in pieces:
                digest.update(piece)
                size += len(piece)
        results.append((size, digest.hexdigest()))

    threads = [threading.Thread(target=download) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    try:
        started.wait(timeout=120)
        peak = max(rss_bytes(server.pid) for _ in range(20))
    finally:
        measured.set()
        for thread in threads:
            thread.join(timeout=120)
    return peak, results


def test_parallel_downloads_of_a_big_attachment_keep_the_servers_memory_flat(
    server, org_a, new_session
):
    alice = new_session(org_a)
    blob = os.urandom(BIG)
    uploaded = alice.api.post(
        "/api/v1/attachments",
        content=blob,
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert uploaded.status_code == 201, uploaded.text
    url = f"{server.url}/api/v1/attachments/{uploaded.json()['id']}"
    headers = alice.api.headers()
    # One whole download first, so the baseline holds whatever a download leaves behind.
    warm = httpx.get(url, headers=headers, timeout=120)
    assert warm.status_code == 200 and len(warm.content) == BIG
    baseline = rss_bytes(server.pid)

    peak, results = peak_rss_during_paused_downloads(server, url, headers, PARALLEL)
    digests = [digest for _, digest in results]
    assert digests == [hashlib.sha256(blob).hexdigest()] * PARALLEL
    assert [size for size, _ in results] == [BIG] * PARALLEL
    # Read whole first, the downloads would hold PARALLEL * BIG (384 MiB) at this point.
    growth = peak - baseline
    assert growth < PARALLEL * BIG // 4, f"RSS grew by {growth // MIB} MiB"


def _raw_request(server, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head.encode())
    return sock


def _status_line(sock: socket.socket) -> str:
    answer = b""
    while b"\r\n" not in answer:
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    return answer.split(b"\r\n", 1)[0].decode()


def test_a_huge_content_length_without_auth_is_a_413_before_the_body_is_sent(server, org_a):
    for path in ("/api/v1/auth/login", "/api/v1/attachments", "/portal/login/", "/nowhere"):
        sock = _raw_request(
            server,
            f"POST {path} HTTP/1.1\r\nHost: {host_of(org_a)}\r\n"
            "Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n",
        )
        with sock:
            # Not one byte of the body is sent: the answer must come without it.
            assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large", path


def test_a_chunked_body_past_the_limit_is_a_413_while_it_arrives(server, org_a):
    sock = _raw_request(
        server,
        f"POST /api/v1/auth/login HTTP/1.1\r\nHost: {host_of(org_a)}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    chunk = b"x" * (64 * 1024)
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with sock:
        sock.settimeout(10)
        while sent < 256 * MIB:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came
            try:
                sock.sendall(framed)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break  # the server stopped reading: its answer is waiting
            sent += len(chunk)
        assert _status_line(sock) == "HTTP/1.1 413 Request Entity Too Large"
    # Refused near the limit (2.5 MiB), not after the whole body (socket buffers aside).
    assert sent < 64 * MIB, f"{sent // MIB} MiB sent before the answer"
