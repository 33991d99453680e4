"""Call set-up benchmark: the sustained rate of 1:1 call set-ups, set-up latency at fixed
offered rates, and a ping/pong ceiling on the same server, against the real ASGI app
(uvicorn), PostgreSQL and Redis.

    python bench/calls.py                       # ceiling, rate and latency, ~2 minutes
    python bench/calls.py --only rate --seconds 30
    python bench/calls.py --offered-rate 20,50,100 --pairs 80

A set-up is what a client sees from dialling to "connected": the caller's socket sends
`call.invite {call_id, to: {user_id}, media: "audio", sdp}` (the caller gets
`call.invited`), the callee's socket gets `call.incoming` and answers `call.accept
{call_id, sdp}` at once, and the caller gets `call.accept` (sent after the accept's
commit, so the callee's accept was processed). Latency is invite sent -> `call.accept`
received by the caller. Every call is then hung up by the caller (`call.hangup`; the
callee gets `call.ended`) before its pair places the next one: a callee still in an
answered call would answer `busy`. The CPU figures per call include that hang-up.

The ceiling is bare `ping` -> `pong` round trips on the same sockets (each keeps a
window of pings unanswered): no database, the same frame path. The set-up rate divided by
it is the figure to compare across machines, whose speed here varies by twice and more.

Like bench/relay.py it uses its own database (`siphera_bench_calls` by default, created
afresh), its own org (`bench` at bench.localhost) and Redis prefixes, starts the server
itself (127.0.0.1 only), and writes bench/results/calls-latest.json. No Celery worker
runs: a set-up only sends its ring-timeout task to the broker, into a bench-only queue
(`siphera-bench-calls`) that is purged before and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import relay  # noqa: E402  (bench/relay.py: server, CPU meters, sockets)

CELERY_QUEUE = "siphera-bench-calls"
STEP_TIMEOUT = 10.0  # seconds one step of a call (accept, hang-up) may take at most

# An Opus audio offer of the size a browser sends (~1 KB); relayed untouched, never parsed.
OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Bx3Q\r\na=ice-pwd:9mWbFZ0E1u2ZB4c7vOtW1M1r\r\n"
    "a=ice-options:trickle\r\na=fingerprint:sha-256 "
    "5C:7D:1A:0B:2E:9F:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:"
    "AA:BB:CC\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
    "a=sendrecv\r\na=msid:stream track\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n"
    "a=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\na=ssrc:1001 cname:bench\r\n"
)
ANSWER = OFFER.replace("a=setup:actpass", "a=setup:active").replace("Bx3Q", "Ka9z")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=["ceiling", "rate", "latency"],
        action="append",
        help="run only these scenarios (repeatable); default: all",
    )
    parser.add_argument("--pairs", type=int, default=40, help="caller/callee device pairs")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each timed run")
    parser.add_argument(
        "--ceiling-seconds", type=float, default=10.0, help="length of the ping/pong run"
    )
    parser.add_argument(
        "--ping-window", type=int, default=8, help="unanswered pings per socket (ceiling)"
    )
    parser.add_argument(
        "--offered-rate",
        default="20,50",
        type=lambda text: [float(x) for x in text.split(",")],
        help="calls/s offered in the latency test; several, comma-separated, run one after"
        " another (default: 20,50)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--database", default="siphera_bench_calls")
    parser.add_argument("--keep-db", action="store_true", help="reuse the bench database")
    args = parser.parse_args()
    if not 1 <= args.pairs <= 1000:
        parser.error("--pairs is 1 to 1000")
    if not 1 <= args.seconds <= 600 or not 1 <= args.ceiling_seconds <= 600:
        parser.error("--seconds and --ceiling-seconds are 1 to 600")
    if not all(0 < r <= 5000 for r in args.offered_rate):
        parser.error("--offered-rate values are above 0 and at most 5000")
    if not 1 <= args.ping_window <= 256:
        parser.error("--ping-window is 1 to 256")
    return args


# --- setup --------------------------------------------------------------------------------


def prepare_pairs(pair_count: int) -> list[dict]:
    """The bench org with `pair_count` caller/callee pairs, each its own two members with
    one device each (a member may use calls and see the directory)."""
    import django

    django.setup()

    from messaging.services import keys
    from messaging.services.devices import do_register_device
    from orgs.services import audit
    from orgs.services.users import check_create_user
    from siphera.tenancy import in_tenant

    actor = audit.Actor.system("bench")
    org = relay.bench_org(actor)

    def device(prefix):
        user = check_create_user(
            username=f"{prefix}{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
        )
        bundle = keys.DeviceKeys(
            identity_key=os.urandom(32), signing_key=os.urandom(32), signed_prekey=None
        )
        dev, token = do_register_device(user, name=prefix, bundle=bundle, actor=actor)
        return {"user_id": str(user.pk), "device_id": dev.device_id, "token": token}

    return in_tenant(
        org, lambda: [{"caller": device("c"), "callee": device("e")} for _ in range(pair_count)]
    )


def vacuum() -> None:
    """Fresh planner statistics (and, where autovacuum is off, the dead rows of the run
    before gone), as autovacuum keeps them on a live server."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if relay.autovacuum_on() else "VACUUM (ANALYZE)")


def purge_celery_queue() -> int:
    """Drop the ring-timeout tasks the set-ups sent to the bench queue (no worker takes
    them); returns how many there were."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        keys = [k for k in client.scan_iter(match=f"{CELERY_QUEUE}*", count=1000)]
        count = sum(client.llen(k) for k in keys if client.type(k) == b"list")
        if keys:
            client.delete(*keys)
        return count
    finally:
        client.close()


# --- client side --------------------------------------------------------------------------


class CallFailed(Exception):
    pass


class Pair:
    """A caller socket and a callee socket. The callee answers every incoming call at
    once; futures (keyed by call_id) tell the caller when its call was accepted and when
    the callee heard its hang-up."""

    def __init__(self, caller_ws, callee_ws):
        self.caller, self.callee = caller_ws, callee_ws
        self.accepted: dict[str, asyncio.Future] = {}
        self.ended: dict[str, asyncio.Future] = {}
        self.invited = 0
        self.readers = [
            asyncio.create_task(self._read_caller()),
            asyncio.create_task(self._read_callee()),
        ]

    @staticmethod
    def _fail(futures: dict, call_id, why: str) -> None:
        fut = futures.get(call_id)
        if fut is not None and not fut.done():
            fut.set_exception(CallFailed(why))

    async def _read_caller(self):
        async for raw in self.caller:
            frame = orjson.loads(raw)
            kind = frame["type"]
            if kind == "call.accept":
                fut = self.accepted.get(frame["call_id"])
                if fut is not None and not fut.done():
                    fut.set_result(time.perf_counter())
            elif kind == "call.invited":
                self.invited += 1
            elif kind == "call.ended":  # busy, glare, dnd, or ended before the accept
                self._fail(self.accepted, frame["call_id"], f"ended: {frame.get('reason')}")
            elif kind == "error":
                why = f"error: {frame.get('code')}"
                self._fail(self.accepted, frame.get("ref"), why)
                self._fail(self.ended, frame.get("ref"), why)

    async def _read_callee(self):
        async for raw in self.callee:
            frame = orjson.loads(raw)
            kind = frame["type"]
            if kind == "call.incoming":
                call_id = frame["call_id"]
                await self.callee.send(
                    orjson.dumps(
                        {"type": "call.accept", "call_id": call_id, "sdp": ANSWER, "ref": call_id}
                    ).decode()
                )
            elif kind == "call.ended":
                fut = self.ended.get(frame["call_id"])
                if fut is not None and not fut.done():
                    fut.set_result(frame.get("reason"))
            elif kind == "error":
                self._fail(self.accepted, frame.get("ref"), f"callee error: {frame.get('code')}")

    async def call(self, callee_user_id: str) -> float:
        """One call: invite, wait for the caller's `call.accept`, hang up, wait for the
        callee's `call.ended`. Returns the set-up latency in seconds; raises CallFailed."""
        loop = asyncio.get_running_loop()
        call_id = str(uuid.uuid4())
        accepted = self.accepted[call_id] = loop.create_future()
        ended = self.ended[call_id] = loop.create_future()
        try:
            started = time.perf_counter()
            await self.caller.send(
                orjson.dumps(
                    {
                        "type": "call.invite",
                        "call_id": call_id,
                        "to": {"user_id": callee_user_id},
                        "media": "audio",
                        "sdp": OFFER,
                        "ref": call_id,
                    }
                ).decode()
            )
            try:
                latency = await asyncio.wait_for(accepted, STEP_TIMEOUT) - started
            except TimeoutError:
                raise CallFailed("no call.accept") from None
            finally:
                # Whatever happened, the call ends before the pair places another.
                await self.caller.send(
                    orjson.dumps(
                        {"type": "call.hangup", "call_id": call_id, "ref": call_id}
                    ).decode()
                )
            try:
                await asyncio.wait_for(ended, STEP_TIMEOUT)
            except TimeoutError:
                raise CallFailed("no call.ended at the callee") from None
            return latency
        finally:
            del self.accepted[call_id], self.ended[call_id]

    async def close(self):
        await relay.close_reading([self.caller, self.callee], self.readers)


async def open_pairs(port, pairs) -> list[Pair]:
    opened = []
    for p in pairs:
        caller, callee = await asyncio.gather(
            relay.connect(port, p["caller"]["token"]), relay.connect(port, p["callee"]["token"])
        )
        opened.append(Pair(caller, callee))
    await asyncio.sleep(0.5)  # past the queue drain (`queue.empty`) of every socket
    return opened


def per_call(meter: relay.CpuMeter, calls: int) -> dict:
    return {k.replace("_per_message", "_per_call"): v for k, v in meter.per_message(calls).items()}


def describe(figures: dict, unit: str = "call") -> str:
    return (
        f"server CPU {figures[f'server_cpu_ms_per_{unit}']} ms per {unit}, PostgreSQL"
        f" {figures[f'postgres_cpu_ms_per_{unit}']} ms, load generator"
        f" {figures[f'load_generator_cpu_ms_per_{unit}']} ms; machine"
        f" {figures['machine_busy_percent']} % busy, {figures['machine_steal_percent']} %"
        " stolen"
    )


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def pct(p):
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 1)

    return {
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


async def ceiling_test(port, pairs, *, window: int, seconds: float, proc) -> dict:
    """Every socket of every pair keeps `window` pings unanswered; count pongs."""
    stop = asyncio.Event()
    pongs = 0

    async def pinger(ws):
        nonlocal pongs
        credits = asyncio.Semaphore(window)

        async def read():
            nonlocal pongs
            async for raw in ws:
                if orjson.loads(raw)["type"] == "pong":
                    pongs += 1
                    credits.release()

        reader = asyncio.create_task(read())
        while not stop.is_set():
            await credits.acquire()
            await ws.send('{"type":"ping"}')
        await relay.close_reading([ws], [reader])

    sockets = []
    for p in pairs:
        sockets += await asyncio.gather(
            relay.connect(port, p["caller"]["token"]), relay.connect(port, p["callee"]["token"])
        )
    await asyncio.sleep(0.5)
    tasks = [asyncio.create_task(pinger(ws)) for ws in sockets]
    await asyncio.sleep(2)  # warm-up
    start_pongs, start = pongs, time.perf_counter()
    meter = relay.CpuMeter(proc)
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - start
    measured = pongs - start_pongs
    cpu = {
        k.replace("_per_message", "_per_ping"): v for k, v in meter.per_message(measured).items()
    }
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return {
        "pongs_per_s": round(measured / elapsed, 1),
        "sockets": len(sockets),
        "window": window,
        "seconds": round(elapsed, 1),
        **cpu,
    }


async def rate_test(port, pairs, *, seconds: float, proc) -> dict:
    """Every pair places calls one after another, as fast as they complete; count the
    set-ups (caller saw `call.accept`) in the timed window."""
    stop = asyncio.Event()
    done = 0
    latencies: list[float] = []
    failures: dict[str, int] = {}
    measuring = False
    opened = await open_pairs(port, pairs)

    async def loop(pair: Pair, callee_user_id: str):
        nonlocal done
        while not stop.is_set():
            try:
                latency = await pair.call(callee_user_id)
            except CallFailed as exc:
                failures[str(exc)] = failures.get(str(exc), 0) + 1
                await asyncio.sleep(0.1)  # no spinning on a call that cannot be set up
                continue
            if measuring:
                done += 1
                latencies.append(latency)

    tasks = [
        asyncio.create_task(loop(pair, p["callee"]["user_id"]))
        for pair, p in zip(opened, pairs, strict=True)
    ]
    await asyncio.sleep(2)  # warm-up
    measuring = True
    start = time.perf_counter()
    meter = relay.CpuMeter(proc)
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - start
    cpu = per_call(meter, done)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2 * STEP_TIMEOUT + 5)
    for pair in opened:
        await pair.close()
    return {
        "calls_per_s": round(done / elapsed, 1),
        "pairs": len(pairs),
        "seconds": round(elapsed, 1),
        "failed": failures,
        **{f"setup_{k}": v for k, v in percentiles(latencies).items()},
        **cpu,
    }


async def latency_test(port, pairs, *, rate: float, seconds: float, proc) -> dict:
    """Offer `rate` calls/s (evenly spaced), each on a pair that is free (not in a call);
    latency = invite sent -> `call.accept` received by the caller."""
    opened = await open_pairs(port, pairs)
    free = deque(zip(opened, (p["callee"]["user_id"] for p in pairs), strict=True))
    latencies: list[float] = []
    failures: dict[str, int] = {}
    no_free_pair = 0
    in_flight: set[asyncio.Task] = set()

    async def one(pair, callee_user_id, timed):
        try:
            latency = await pair.call(callee_user_id)
            if timed:
                latencies.append(latency)
        except CallFailed as exc:
            if timed:
                failures[str(exc)] = failures.get(str(exc), 0) + 1
        finally:
            free.append((pair, callee_user_id))

    interval = 1.0 / rate
    warmup = 2.0
    begin = time.perf_counter()
    next_at = begin
    meter = None
    offered = 0
    while True:
        now = time.perf_counter()
        if meter is None and now >= begin + warmup:
            meter = relay.CpuMeter(proc)
        if now >= begin + warmup + seconds:
            break
        delay = next_at - now
        if delay > 0:
            await asyncio.sleep(delay)
        timed = next_at >= begin + warmup
        next_at += interval
        offered += timed
        if not free:
            no_free_pair += timed
            continue
        task = asyncio.create_task(one(*free.popleft(), timed))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    elapsed = time.perf_counter() - begin - warmup
    if in_flight:
        await asyncio.wait(set(in_flight), timeout=2 * STEP_TIMEOUT + 5)
    cpu = per_call(meter, len(latencies))
    for pair in opened:
        await pair.close()
    return {
        "offered_per_s": rate,
        "offered": offered,
        "set_up_per_s": round(len(latencies) / elapsed, 1),
        "failed": failures,
        "no_free_pair": no_free_pair,
        **percentiles(latencies),
        **cpu,
    }


def main():
    args = parse_args()
    scenarios = args.only or ["ceiling", "rate", "latency"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    (ROOT / "var").mkdir(exist_ok=True)
    os.environ["CELERY_QUEUE"] = CELERY_QUEUE  # the server inherits it
    url = relay.setup_django(args.database)
    relay.ensure_database(url, fresh=not args.keep_db)
    print(f"preparing org: {args.pairs} caller/callee pairs ...", file=sys.stderr)
    pairs = prepare_pairs(args.pairs)
    purge_celery_queue()
    gc.freeze()  # as relay.py: no full collections of Django's objects mid-measurement
    port = relay.free_port()
    proc = relay.start_server(port, args.workers)
    results = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "python": platform.python_version(),
        "cpu_reference_s": relay.cpu_reference_seconds(),
        "workers": args.workers,
        "pairs": args.pairs,
        "postgres_autovacuum": relay.autovacuum_on(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(
        f"CPU reference: {results['cpu_reference_s']} s for 10 million loop steps"
        " (lower is faster; compares this machine with the one of another run)",
        file=sys.stderr,
    )
    try:
        if "ceiling" in scenarios:
            ceiling = results["ceiling"] = asyncio.run(
                ceiling_test(
                    port,
                    pairs,
                    window=args.ping_window,
                    seconds=args.ceiling_seconds,
                    proc=proc,
                )
            )
            print(
                f"ceiling: {ceiling['pongs_per_s']} ping/pong round trips/s "
                f"({ceiling['sockets']} sockets, window {ceiling['window']}; "
                f"{describe(ceiling, 'ping')})"
            )
        if "rate" in scenarios:
            vacuum()
            rate = results["rate"] = asyncio.run(
                rate_test(port, pairs, seconds=args.seconds, proc=proc)
            )
            print(
                f"sustained call set-up rate: {rate['calls_per_s']} calls/s "
                f"invite -> accept -> caller saw call.accept, then hung up ({args.pairs} pairs;"
                f" set-up p50 {rate.get('setup_p50_ms')} ms, p99 {rate.get('setup_p99_ms')} ms;"
                f" failed {sum(rate['failed'].values())}; {describe(rate)})"
            )
            if "ceiling" in results and results["ceiling"]["pongs_per_s"]:
                ratio = rate["calls_per_s"] / results["ceiling"]["pongs_per_s"]
                results["rate_to_ceiling"] = round(ratio, 4)
                print(f"set-up rate / ping ceiling: {ratio:.4f} (1 call per {1 / ratio:.0f} pings)")
        if "latency" in scenarios:
            results["latency"] = []
            for offered in args.offered_rate:
                vacuum()
                lat = asyncio.run(
                    latency_test(port, pairs, rate=offered, seconds=args.seconds, proc=proc)
                )
                results["latency"].append(lat)
                print(
                    f"set-up latency at {offered:g} calls/s offered: p50 {lat.get('p50_ms')} ms,"
                    f" p95 {lat.get('p95_ms')} ms, p99 {lat.get('p99_ms')} ms, max"
                    f" {lat.get('max_ms')} ms ({lat['set_up_per_s']}/s set up, failed"
                    f" {sum(lat['failed'].values())}, no free pair {lat['no_free_pair']};"
                    f" {describe(lat)})"
                )
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
        results["ring_timeout_tasks_purged"] = purge_celery_queue()
    print(json.dumps(results))
    # As relay.py: the file keeps the latest figure of each scenario.
    out = ROOT / "bench" / "results" / "calls-latest.json"
    out.parent.mkdir(exist_ok=True)
    latest = json.loads(out.read_text()) if out.exists() else {}
    setup = {
        k: results[k]
        for k in (
            "machine",
            "python",
            "cpu_reference_s",
            "workers",
            "pairs",
            "postgres_autovacuum",
            "date",
        )
    }
    for scenario in scenarios:
        latest[scenario] = {**setup, "result": results[scenario]}
    if "rate_to_ceiling" in results:
        latest["rate_to_ceiling"] = {**setup, "result": results["rate_to_ceiling"]}
    out.write_text(json.dumps(latest, indent=2) + "\n")


if __name__ == "__main__":
    main()
