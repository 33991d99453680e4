"""Relay benchmark: sustained 1:1 message rate, latency at a fixed offered load, and idle
socket capacity, against the real ASGI app (uvicorn), PostgreSQL and Redis.

    python bench/relay.py                       # all three scenarios, default sizes
    python bench/relay.py --only rate --seconds 30
    python bench/relay.py --idle-sockets 2000   # smaller idle test

It uses its own database (`siphera_bench` by default, created if missing), its own org
(`bench` at bench.localhost) and its own Redis prefixes, starts the server itself, and prints
one line per figure plus a JSON summary; bench/results/relay-latest.json keeps the latest
figure of each scenario. Every `--metrics-every` seconds (5) it prints how the server's
/metrics counters moved (sent, delivered, acked per second; open sockets; queue depth).

Messages go through the whole path a client sees: `send` frame over the WebSocket ->
validation and storage in PostgreSQL (message row, per-device queue row, seq) -> wake-up
(direct when the recipient's socket is in the same web process, else over the channel
layer; `--workers 2` exercises the latter) -> `message` frame to the recipient device ->
`ack` (queue row deleted). The load generator runs on the same machine as the server and
the databases. Each timed run also reports the CPU time per delivered message of the
server, PostgreSQL and the load generator, and how busy the machine was (and how much of
it the hypervisor took: "stolen"). Where PostgreSQL's autovacuum is off, each scenario
starts with a VACUUM of the bench database, which autovacuum would have done.
Per-user frame limits are raised for the run (each bench user sends far more than a
person); the limiter still runs on every frame.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import platform
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "bench.localhost"


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=["rate", "latency", "idle"],
        action="append",
        help="run only these scenarios (repeatable); default: all",
    )
    parser.add_argument("--pairs", type=int, default=20, help="sender/receiver device pairs")
    parser.add_argument(
        "--window",
        type=int,
        default=16,
        help="unanswered `send` frames per sender in the rate test",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each timed run")
    parser.add_argument(
        "--offered-rate",
        default="500,100",
        type=lambda text: [float(x) for x in text.split(",")],
        help="messages/s offered in the latency test; several, comma-separated,"
        " run one after another (default: 500,100)",
    )
    parser.add_argument("--idle-sockets", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--database", default="siphera_bench")
    parser.add_argument("--keep-db", action="store_true", help="reuse the bench database")
    parser.add_argument(
        "--metrics-every",
        type=float,
        default=5.0,
        help="scrape the server's /metrics this often and print how its counters moved (0: never)",
    )
    return parser.parse_args()


# --- setup: database, org, users and devices --------------------------------------------


def setup_django(database: str) -> str:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/siphera")
    url = base.rsplit("/", 1)[0] + "/" + database
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("CHANNEL_LAYER_PREFIX", "siphera-bench")
    os.environ.setdefault("CACHE_KEY_PREFIX", "siphera-bench")
    os.environ["DJANGO_SETTINGS_MODULE"] = "siphera.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # DEBUG is off: the placeholder SECRET_KEY would be refused (siphera/settings.py).
    os.environ.setdefault("SECRET_KEY", "bench-only-" + secrets.token_urlsafe(32))
    # The server's /metrics, scraped during the run (MetricsWatch) as Prometheus would.
    os.environ.setdefault("METRICS_TOKEN", "bench-only-" + secrets.token_urlsafe(16))
    # Each bench user sends hundreds of frames a second, far past the per-user flood limit a
    # person never meets; the limiter still runs (and costs) on every frame, it just never
    # refuses here.
    os.environ.setdefault(
        "RATE_LIMITS",
        "ws.frame.user=100000000/60,ws.connect.ip=100000000/60,http.ip=100000000/60",
    )
    return url


def ensure_database(url: str, *, fresh: bool) -> None:
    import psycopg

    admin_url, name = url.rsplit("/", 1)
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def bench_org(actor):
    """The bench org (created on first use), with the public schema migrated."""
    from django.core.management import call_command

    from orgs.models import Org
    from orgs.services.orgs import check_create_org
    from siphera.tenancy import public_schema

    call_command("migrate_schemas", shared=True, verbosity=0)
    with public_schema():
        org = Org.objects.filter(slug="bench").first()
    if org is None:
        org = check_create_org(slug="bench", name="Bench", domains=[HOST], actor=actor)
    return org


def prepare_org(device_count: int, pair_count: int):
    """Create the bench org with `pair_count` sender/receiver pairs (1:1 conversations) and
    enough extra devices for the idle test. Returns (pairs, idle_tokens)."""
    import django

    django.setup()

    from messaging.services import conversations, keys
    from messaging.services.devices import do_register_device
    from orgs.services import audit
    from orgs.services.users import check_create_user
    from siphera.tenancy import in_tenant

    actor = audit.Actor.system("bench")
    org = bench_org(actor)

    def bundle():
        return keys.DeviceKeys(
            identity_key=os.urandom(32), signing_key=os.urandom(32), signed_prekey=None
        )

    def make_device(user, name):
        device, token = do_register_device(user, name=name, bundle=bundle(), actor=actor)
        return {"user_id": str(user.pk), "device_id": device.device_id, "token": token}

    def build():
        pairs = []
        for _ in range(pair_count):
            a = check_create_user(
                username=f"s{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
            )
            b = check_create_user(
                username=f"r{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
            )
            conv, _ = conversations.check_create_conversation(
                creator=a, kind="direct", member_ids=[str(b.pk)], title=None
            )
            pairs.append(
                {
                    "conversation": str(conv.pk),
                    "sender": make_device(a, "s"),
                    "receiver": make_device(b, "r"),
                }
            )
        idle = []
        per_user = 50
        for start in range(0, device_count, per_user):
            user = check_create_user(
                username=f"i{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
            )
            for _ in range(min(per_user, device_count - start)):
                idle.append(make_device(user, "idle")["token"])
        return pairs, idle

    return in_tenant(org, build)


def clear_queues() -> None:
    """Start a scenario with empty device queues: what the one before left undelivered
    would otherwise be drained first and compete with the new load."""
    from messaging.models import QueuedMessage
    from orgs.models import Org
    from siphera.tenancy import in_tenant, public_schema

    with public_schema():
        org = Org.objects.get(slug="bench")
    in_tenant(org, lambda: QueuedMessage.objects.all().delete())
    # Fresh planner statistics, as autovacuum keeps them on a live server: the bench
    # creates its users, devices and conversations just before measuring. Where
    # autovacuum is off (CI machines), the dead rows of the scenario before are vacuumed
    # away too, as it would have done.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if autovacuum_on() else "VACUUM (ANALYZE)")


def autovacuum_on() -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        return cursor.fetchone()[0] == "on"


# --- server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    port: int,
    workers: int,
    *,
    program: list[str] | None = None,
    health: str = "/health",
    log_name: str = "bench-server.log",
) -> subprocess.Popen:
    """Start the server (or `program`, run with the same host/port/workers/log-level
    arguments, e.g. bench/api.py's bare Django ceiling) and wait until `health` answers."""
    log = open(ROOT / "var" / log_name, "wb")  # noqa: SIM115
    # BENCH_SERVER replaces `-m siphera.serve`, e.g. with a script that wraps it in a
    # profiler; it gets the same arguments.
    program = program or os.environ.get("BENCH_SERVER", "-m siphera.serve").split()
    proc = subprocess.Popen(
        [
            sys.executable,
            *program,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start; see var/{log_name}")


def server_pids(proc: subprocess.Popen) -> list[int]:
    pids = [proc.pid]
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return pids


def server_cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time (user + system) the server and its worker processes have used so far."""
    ticks = 0
    for pid in server_pids(proc):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float | None:
    """CPU time of this machine's PostgreSQL processes (server, backends, WAL writer...),
    or None when none can be read (PostgreSQL elsewhere)."""
    ticks, seen = 0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"postgres"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
        seen = True
    return ticks / os.sysconf("SC_CLK_TCK") if seen else None


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, all) clock ticks of this machine so far, from /proc/stat. Steal is
    time the hypervisor gave this VM's cores to someone else."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


class CpuMeter:
    """CPU used during a timed run: the server's, PostgreSQL's and the load generator's
    (this process) per message, and how busy the machine was."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.server = server_cpu_seconds(proc)
        self.postgres = postgres_cpu_seconds()
        self.load = time.process_time()
        self.machine = machine_ticks()

    def per_message(self, messages: int) -> dict:
        server = server_cpu_seconds(self.proc) - self.server
        end_pg = postgres_cpu_seconds()
        load = time.process_time() - self.load
        busy, steal, total = (b - a for a, b in zip(self.machine, machine_ticks(), strict=True))

        def ms(seconds):
            return round(seconds * 1000 / messages, 2) if messages and seconds is not None else None

        return {
            "server_cpu_ms_per_message": ms(server),
            "postgres_cpu_ms_per_message": ms(
                end_pg - self.postgres if self.postgres is not None and end_pg is not None else None
            ),
            "load_generator_cpu_ms_per_message": ms(load),
            "machine_busy_percent": round(100 * busy / total, 1) if total else None,
            "machine_steal_percent": round(100 * steal / total, 1) if total else None,
        }

    @staticmethod
    def describe(figures: dict) -> str:
        return (
            f"server CPU {figures['server_cpu_ms_per_message']} ms per message, PostgreSQL"
            f" {figures['postgres_cpu_ms_per_message']} ms, load generator"
            f" {figures['load_generator_cpu_ms_per_message']} ms; machine"
            f" {figures['machine_busy_percent']} % busy, {figures['machine_steal_percent']} %"
            " stolen"
        )


def cpu_reference_seconds() -> float:
    """Seconds one core takes for a fixed pure-Python loop, the best of three: machines of
    one kind here differ by more than twice in speed, so a figure is read with this one."""
    best = float("inf")
    for _ in range(3):
        started, total = time.process_time(), 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.process_time() - started)
    return round(best, 2)


def server_rss_mib(proc: subprocess.Popen) -> float:
    """Resident memory of the server and its worker processes."""
    total_kib = 0
    for pid in server_pids(proc):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total_kib / 1024


# --- client side --------------------------------------------------------------------------


class MetricsWatch:
    """Scrapes the server's /metrics (with METRICS_TOKEN, as Prometheus would) every
    `every` seconds on a thread while the scenarios run, and prints how the relay's
    counters moved: the figures an operator's dashboard shows during the same load."""

    SHOWN = {
        "siphera_messages_sent_total": "sent",
        "siphera_messages_delivered_total": "delivered",
        "siphera_messages_acked_total": "acked",
    }

    def __init__(self, port: int, every: float) -> None:
        import threading

        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="metrics-watch", daemon=True)

    def start(self) -> MetricsWatch:
        if self.every > 0:
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(10)

    def scrape(self) -> dict[str, float]:
        """Unlabelled samples by name, read with prometheus-client's own parser."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        token = os.environ["METRICS_TOKEN"]
        response = httpx.get(self.url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        response.raise_for_status()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if not sample.labels
        }

    def _run(self) -> None:
        try:
            before, then = self.scrape(), time.monotonic()
            while not self.stopped.wait(self.every):
                now, at = self.scrape(), time.monotonic()
                moved = ", ".join(
                    f"{label} {now.get(name, 0):.0f} "
                    f"(+{(now.get(name, 0) - before.get(name, 0)) / (at - then):.0f}/s)"
                    for name, label in self.SHOWN.items()
                )
                print(
                    f"/metrics: {moved}; open sockets "
                    f"{now.get('siphera_websockets_open', 0):.0f}, queue depth "
                    f"{now.get('siphera_message_queue_depth', 0):.0f}",
                    file=sys.stderr,
                )
                before, then = now, at
        except Exception as exc:  # a watch that fails must not fail the bench
            print(f"/metrics: scrape failed: {exc!r}", file=sys.stderr)


async def connect(port: int, token: str, host: str = HOST):
    from websockets.asyncio.client import connect as ws_connect

    ws = await ws_connect(
        f"ws://{host}:{port}/ws/v1",
        host="127.0.0.1",
        port=port,
        max_size=None,
        open_timeout=60,
        ping_interval=None,
    )
    await ws.send(json.dumps({"type": "auth", "token": token}))
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "ready":
            return ws


async def receiver_loop(ws, on_message):
    """Read frames, report messages, ack in batches (every 32 messages or 20 ms), until
    the socket closes (`close_reading`)."""
    from websockets.exceptions import ConnectionClosed

    pending: list[str] = []

    async def ack():
        nonlocal pending
        ids, pending = pending, []
        with contextlib.suppress(ConnectionClosed):  # closing: the rest stays queued
            await ws.send(orjson.dumps({"type": "ack", "ids": ids}).decode())

    async def ack_late():
        while True:
            await asyncio.sleep(0.02)
            if pending:
                await ack()

    timer = asyncio.create_task(ack_late())
    try:
        async for raw in ws:
            frame = orjson.loads(raw)
            if frame["type"] == "message":
                on_message(frame)
                pending.append(frame["id"])
                if len(pending) >= 32:
                    await ack()
    finally:
        timer.cancel()


async def close_reading(sockets, readers) -> None:
    """Close `sockets` while their `readers` still read them, then wait for the readers.

    A socket whose reader stopped first never closes: once its client holds max_queue
    unread frames it reads no more, so the server's close frame, behind the messages
    still in flight, never arrives (the rate scenario hung so with 256 in flight)."""
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)


def send_frame(conversation: str, body: bytes) -> str:
    return orjson.dumps(
        {
            "type": "send",
            "conversation": conversation,
            "client_id": str(uuid.uuid4()),
            "body": base64.b64encode(body).decode(),
        }
    ).decode()


async def rate_test(port, pairs, *, window: int, seconds: float, proc) -> dict:
    """Each sender keeps `window` sends unanswered; count messages delivered end to end."""
    stop = asyncio.Event()
    delivered = 0
    sent = 0

    def on_message(frame):
        nonlocal delivered
        delivered += 1

    async def sender(pair):
        nonlocal sent
        ws = await connect(port, pair["sender"]["token"])
        credits = asyncio.Semaphore(window)

        async def read_replies():
            nonlocal sent
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "sent":
                    sent += 1
                    credits.release()
                elif frame["type"] == "error":
                    credits.release()

        reader = asyncio.create_task(read_replies())
        while not stop.is_set():
            await credits.acquire()
            await ws.send(send_frame(pair["conversation"], os.urandom(64)))
        await close_reading([ws], [reader])

    receivers = [await connect(port, p["receiver"]["token"]) for p in pairs]
    recv_tasks = [asyncio.create_task(receiver_loop(ws, on_message)) for ws in receivers]
    await asyncio.sleep(0.5)
    send_tasks = [asyncio.create_task(sender(p)) for p in pairs]
    await asyncio.sleep(2)  # warm-up
    start_delivered, start = delivered, time.perf_counter()
    meter = CpuMeter(proc)
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - start
    measured = delivered - start_delivered
    cpu = meter.per_message(measured)
    stop.set()
    await asyncio.gather(*send_tasks, return_exceptions=True)
    await close_reading(receivers, recv_tasks)
    return {
        "delivered_per_s": round(measured / elapsed, 1),
        "seconds": round(elapsed, 1),
        "sent_total": sent,
        **cpu,
    }


async def latency_test(port, pairs, *, rate: float, seconds: float, proc) -> dict:
    """Offer `rate` messages/s spread over the pairs; latency = send to receipt of the
    `message` frame at the recipient (the body carries the send time)."""
    stop = asyncio.Event()
    latencies: list[float] = []
    measuring = False
    # Bodies carry this run's tag and the send time; anything else a receiver gets (the
    # backlog of an earlier scenario, drained first) is not timed.
    tag = b"LAT" + os.urandom(5)

    def on_message(frame):
        body = base64.b64decode(frame["body"])
        if measuring and body[:8] == tag:
            latencies.append(time.perf_counter() - int.from_bytes(body[8:16], "big") / 1e9)

    async def sender(pair, per_sender_rate):
        ws = await connect(port, pair["sender"]["token"])

        async def drain():
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        interval = 1.0 / per_sender_rate
        next_at = time.perf_counter() + interval * (hash(pair["conversation"]) % 100) / 100
        while not stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = tag + time.perf_counter_ns().to_bytes(8, "big") + os.urandom(48)
            await ws.send(send_frame(pair["conversation"], body))
            next_at += interval
        await close_reading([ws], [reader])

    receivers = [await connect(port, p["receiver"]["token"]) for p in pairs]
    recv_tasks = [asyncio.create_task(receiver_loop(ws, on_message)) for ws in receivers]
    await asyncio.sleep(0.5)
    send_tasks = [asyncio.create_task(sender(p, rate / len(pairs))) for p in pairs]
    await asyncio.sleep(2)
    measuring = True
    start = time.perf_counter()
    meter = CpuMeter(proc)
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - start
    cpu = meter.per_message(len(latencies))
    stop.set()
    await asyncio.gather(*send_tasks, return_exceptions=True)
    await close_reading(receivers, recv_tasks)
    if not latencies:
        return {"offered_per_s": rate, "error": "no messages delivered"}
    ordered = sorted(latencies)

    def pct(p):
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 1)

    return {
        "offered_per_s": rate,
        "delivered_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
        **cpu,
    }


async def idle_test(port, tokens, proc) -> dict:
    """Hold `len(tokens)` authenticated sockets; report server RSS before and after."""
    before = server_rss_mib(proc)
    sockets = []
    started = time.perf_counter()
    batch = 200
    for i in range(0, len(tokens), batch):
        sockets += await asyncio.gather(*[connect(port, t) for t in tokens[i : i + batch]])
        print(f"  idle sockets open: {len(sockets)}", file=sys.stderr, flush=True)
    opened = time.perf_counter() - started
    await asyncio.sleep(5)
    after = server_rss_mib(proc)
    # all still alive?
    pongs = await asyncio.gather(
        *[s.send('{"type":"ping"}') for s in sockets[:100]], return_exceptions=True
    )
    for s in sockets:
        await s.close()
    return {
        "sockets": len(sockets),
        "server_rss_mib": round(after, 1),
        "server_rss_before_mib": round(before, 1),
        "open_seconds": round(opened, 1),
        "ping_errors": sum(isinstance(p, Exception) for p in pongs),
    }


def main():
    args = parse_args()
    scenarios = args.only or ["rate", "latency", "idle"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    (ROOT / "var").mkdir(exist_ok=True)
    url = setup_django(args.database)
    ensure_database(url, fresh=not args.keep_db)
    idle_count = args.idle_sockets if "idle" in scenarios else 0
    print(f"preparing org: {args.pairs} pairs, {idle_count} idle devices ...", file=sys.stderr)
    pairs, idle_tokens = prepare_org(idle_count, args.pairs)
    # The load generator holds Django and the org it just made: its full garbage
    # collections took 90 ms each, and one landing in a latency window added 90 ms to the
    # messages it stalled. Frozen, they are not walked again (the server does the same).
    gc.freeze()
    port = free_port()
    proc = start_server(port, args.workers)
    results = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "python": platform.python_version(),
        "cpu_reference_s": cpu_reference_seconds(),
        "workers": args.workers,
        "postgres_autovacuum": autovacuum_on(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"CPU reference: {results['cpu_reference_s']} s for 10 million loop steps"
        " (lower is faster; compares this machine with the one of another run)",
        file=sys.stderr,
    )
    watch = MetricsWatch(port, args.metrics_every).start()
    try:
        if "rate" in scenarios:
            clear_queues()
            results["rate"] = asyncio.run(
                rate_test(port, pairs, window=args.window, seconds=args.seconds, proc=proc)
            )
            print(
                f"sustained 1:1 rate: {results['rate']['delivered_per_s']} messages/s "
                f"delivered+acked ({args.pairs} pairs, window {args.window}; "
                f"{CpuMeter.describe(results['rate'])})"
            )
        if "latency" in scenarios:
            results["latency"] = []
            for rate in args.offered_rate:
                clear_queues()
                lat = asyncio.run(
                    latency_test(port, pairs, rate=rate, seconds=args.seconds, proc=proc)
                )
                results["latency"].append(lat)
                print(
                    f"latency at {rate:g} msg/s offered: p50 {lat.get('p50_ms')} ms,"
                    f" p95 {lat.get('p95_ms')} ms, p99 {lat.get('p99_ms')} ms "
                    f"(delivered {lat.get('delivered_per_s')}/s"
                    + (f"; {CpuMeter.describe(lat)})" if "p50_ms" in lat else ")")
                )
        if "idle" in scenarios:
            results["idle"] = asyncio.run(idle_test(port, idle_tokens, proc))
            idle = results["idle"]
            print(
                f"idle: {idle['sockets']} authenticated sockets, server RSS "
                f"{idle['server_rss_mib']} MiB (opened in {idle['open_seconds']} s)"
            )
    finally:
        watch.stop()
        os.killpg(proc.pid, 15)
        proc.wait(20)
    print(json.dumps(results))
    # The file keeps the latest figure of each scenario: a run of some scenarios replaces
    # those and leaves the others (each says when and on what it was measured).
    out = ROOT / "bench" / "results" / "relay-latest.json"
    out.parent.mkdir(exist_ok=True)
    latest = json.loads(out.read_text()) if out.exists() else {}
    if "result" not in latest.get("rate", {"result": None}):
        latest = {}  # the older one-run layout
    setup = {
        k: results[k]
        for k in ("machine", "python", "cpu_reference_s", "workers", "postgres_autovacuum", "date")
    }
    for scenario in scenarios:
        latest[scenario] = {**setup, "result": results[scenario]}
    out.write_text(json.dumps(latest, indent=2) + "\n")


if __name__ == "__main__":
    main()
