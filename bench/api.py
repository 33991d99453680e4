"""HTTP benchmark: requests per second and latency of the REST and portal request path,
against the real ASGI app (uvicorn), PostgreSQL and Redis, with `wrk` as the load
generator (a Python client tops out near 300 requests/s here and would be what is measured).

    python bench/api.py                        # every scenario, 1 web process
    python bench/api.py --workers 1,2          # ... and again with 2 (WEB_WORKERS)
    python bench/api.py --only me --only bare --seconds 4
    python bench/api.py --django-path          # REST sends and /me through Django too

Each run measures, in the same run and under the same uvicorn, a bare Django async view
(bench/ceiling/bare_django.py: no middleware, no database) as the ceiling, and prints every
scenario's rate as a share of it. Scenarios (wrk, 1 thread, `--connections` connections,
`--seconds` each, latency percentiles from wrk's own histogram):

- `bare`: the ceiling;
- `me`: `GET /api/v1/me` with a device token;
- `conversations`: `GET /api/v1/conversations`;
- `claim`: `GET /api/v1/keys/{user_id}`, a key claim (each consumes a one-time prekey);
- `send`: `POST /api/v1/conversations/{id}/messages`, every request a new `client_id`;
- `delivery`: the same sends while every recipient's device is connected over a WebSocket
  and acks what it gets, at full speed and at 250 messages/s offered (paced on one
  schedule: a request every 4 ms, whatever the answers' latency): accepted, delivered
  and acked per second (the server's /metrics counters) and the delivery latency from the
  message's server timestamp to the recipient's socket;
- `messages`: `GET /api/v1/messages` (a device's queue);
- `portal`: the dashboard `/portal/` for a signed-in admin;
- `login`: `POST /api/v1/auth/login` (Argon2 by design: this one is slow on purpose).

Tokens rotate over `--users` users so per-user limits and row locks are spread as in real
use; the rate limits are raised for the run (each still runs on every request). It uses
its own database (`siphera_bench_api`), its own org (bench.localhost) and Redis prefixes,
starts the servers itself, prints one line per figure and writes
bench/results/api-latest.json. `wrk` is installed with apt-get when missing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import relay  # noqa: E402  (bench/relay.py: database, org, server and CPU helpers)

SCENARIOS = [
    "bare",
    "me",
    "conversations",
    "claim",
    "send",
    "delivery",
    "messages",
    "portal",
    "login",
]
PASSWORD = "bench-password-123"  # noqa: S105 (the bench users' password)
LIFTED_LIMITS = ",".join(
    f"{name}=100000000/60"
    for name in ("http.ip", "api.user", "portal.user", "ws.frame.user", "ws.connect.ip")
)


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="repeatable")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=64, help="users the tokens rotate over")
    parser.add_argument(
        "--workers",
        default="1",
        type=lambda text: [int(x) for x in text.split(",")],
        help="web processes (uvicorn workers), comma-separated: each count is run in turn",
    )
    parser.add_argument(
        "--django-path",
        action="store_true",
        help="run the server with FAST_HTTP=false: REST sends and /me through Django's "
        "request machinery like every other request (siphera.fast_http), for comparison",
    )
    parser.add_argument("--database", default="siphera_bench_api")
    parser.add_argument("--keep-db", action="store_true", help="reuse the bench database")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="also sample the server with py-spy during each scenario and write "
        "DIR/<scenario>-<workers>.txt (collapsed stacks, for flamegraph.pl or speedscope) "
        "and print the functions with the most samples; rates are lower while sampling",
    )
    return parser.parse_args()


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing it with apt-get ...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed (Debian/Ubuntu: apt-get install wrk) and could not be had.")
    return found


# --- set-up ------------------------------------------------------------------------------------


def prepare(user_count: int) -> dict:
    """The bench org with `user_count` members, each with a device, a peer whose device has
    one-time prekeys to claim, and a direct conversation with that peer; plus an admin
    with a password (portal and login scenarios)."""
    import django

    django.setup()

    from messaging.services import conversations, keys
    from messaging.services.devices import do_register_device
    from orgs.services import audit
    from orgs.services.users import check_create_user
    from siphera.tenancy import in_tenant

    actor = audit.Actor.system("bench")
    org = relay.bench_org(actor)

    def bundle(one_time: int = 0):
        return keys.DeviceKeys(
            identity_key=os.urandom(32),
            signing_key=os.urandom(32),
            signed_prekey=None,
            one_time_prekeys=[keys.OneTimeKey(i, os.urandom(32)) for i in range(one_time)],
        )

    def build():
        members = []
        for _ in range(user_count):
            a = check_create_user(
                username=f"a{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
            )
            b = check_create_user(
                username=f"b{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
            )
            _, token = do_register_device(a, name="bench", bundle=bundle(), actor=actor)
            _, peer_token = do_register_device(b, name="peer", bundle=bundle(400), actor=actor)
            conv, _ = conversations.check_create_conversation(
                creator=a, kind="direct", member_ids=[str(b.pk)], title=None
            )
            members.append(
                {
                    "token": token,
                    "peer": str(b.pk),
                    "peer_token": peer_token,
                    "conversation": str(conv.pk),
                }
            )
        admins = []
        for _ in range(8):
            admin = check_create_user(
                username=f"adm{uuid.uuid4().hex[:10]}",
                password=PASSWORD,
                role="admin",
                actor=actor,
            )
            admins.append(admin.username)
        return {"members": members, "admins": admins}

    return in_tenant(org, build)


def portal_cookie(port: int, username: str) -> str:
    """A signed-in portal session of `username`: its `sessionid` cookie, and the
    `csrftoken` cookie a browser sends back too (without it, every page would make and
    set a new CSRF secret, which a browser's pages do not)."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Host": relay.HOST}, timeout=30
    ) as http:
        page = http.get("/portal/login")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        done = http.post(
            "/portal/login",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf},
        )
        if done.status_code != 302:
            raise SystemExit(f"portal sign-in for the bench failed: HTTP {done.status_code}")
        return f"sessionid={http.cookies['sessionid']}; csrftoken={http.cookies['csrftoken']}"


# --- wrk -------------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def lua_script(
    requests: list[dict], *, unique_send: bool = False, rate: float | None = None
) -> str:
    """A wrk script cycling through `requests` ({method, path, headers, body}). With
    `unique_send`, each body's CLIENT_ID placeholder becomes a new UUID per request; with
    `rate`, requests are paced to that many per second: each request takes the next slot
    of one schedule shared by the connections (1/rate apart, read from the monotonic clock
    through LuaJIT's ffi), and waits for it; a slot already past is sent at once, so a
    server that falls behind is offered the backlog as fast as the connections allow."""
    run = uuid.uuid4().hex[:8]
    rows = []
    for r in requests:
        headers = ", ".join(f"[{lua_string(k)}]={lua_string(v)}" for k, v in r["headers"].items())
        body = lua_string(r["body"]) if r.get("body") is not None else "nil"
        rows.append(
            f"{{method={lua_string(r['method'])}, path={lua_string(r['path'])}, "
            f"headers={{{headers}}}, body={body}}}"
        )
    return f"""
local reqs = {{{", ".join(rows)}}}
local n = 0
request = function()
  n = n + 1
  local r = reqs[(n % #reqs) + 1]
  local body = r.body
  if {"true" if unique_send else "false"} and body then
    body = string.gsub(body, "CLIENT_ID", string.format("{run}-0000-4000-8000-%012x", n))
  end
  return wrk.format(r.method, r.path, r.headers, body)
end
""" + (_PACING.replace("INTERVAL_MS", repr(1000 / rate)) if rate else "")


_PACING = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *ts);
]]
local clock = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local slot = nil
delay = function()
  local now = now_ms()
  if slot == nil then slot = now end
  local wait = slot - now
  slot = slot + INTERVAL_MS
  if wait > 0 then return wait end
  return 0
end
"""


def run_wrk(wrk: str, port: int, script: str, *, seconds: float, connections: int) -> dict:
    path = ROOT / "var" / "bench-api.lua"
    path.write_text(script)
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(path),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def percentile(p: str) -> float | None:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)

    return {
        "requests_per_s": round(rate, 1),
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
    }


def scenario_requests(name: str, data: dict, cookie: str) -> tuple[list[dict], bool]:
    host = relay.HOST
    members = data["members"]

    def bearer(m):
        return {"Host": host, "Authorization": f"Bearer {m['token']}"}

    json_headers = {"Content-Type": "application/json"}
    if name == "me":
        return [
            {"method": "GET", "path": "/api/v1/me", "headers": bearer(m)} for m in members
        ], False
    if name == "conversations":
        return [
            {"method": "GET", "path": "/api/v1/conversations", "headers": bearer(m)}
            for m in members
        ], False
    if name == "claim":
        return [
            {"method": "GET", "path": f"/api/v1/keys/{m['peer']}", "headers": bearer(m)}
            for m in members
        ], False
    if name == "messages":
        return [
            {"method": "GET", "path": "/api/v1/messages?limit=100", "headers": bearer(m)}
            for m in members
        ], False
    if name == "send":
        body = json.dumps(
            {"client_id": "CLIENT_ID", "body": base64.b64encode(os.urandom(96)).decode()}
        )
        return [
            {
                "method": "POST",
                "path": f"/api/v1/conversations/{m['conversation']}/messages",
                "headers": {**bearer(m), **json_headers},
                "body": body,
            }
            for m in members
        ], True
    if name == "portal":
        return [
            {"method": "GET", "path": "/portal/", "headers": {"Host": host, "Cookie": cookie}}
        ], False
    if name == "login":
        return [
            {
                "method": "POST",
                "path": "/api/v1/auth/login",
                "headers": {"Host": host, **json_headers},
                "body": json.dumps({"username": name_, "password": PASSWORD}),
            }
            for name_ in data["admins"]
        ], False
    raise ValueError(name)


def start_bare(port: int, workers: int) -> subprocess.Popen:
    """The ceiling: bench/ceiling/bare_django.py under the same uvicorn."""
    return relay.start_server(
        port,
        workers,
        program=["-m", "uvicorn", "bench.ceiling.bare_django:application", "--no-access-log"],
        health="/ping",
        log_name="bench-bare.log",
    )


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(20)


def main():
    args = parse_args()
    scenarios = args.only or SCENARIOS
    wrk = ensure_wrk()
    (ROOT / "var").mkdir(exist_ok=True)
    os.environ.setdefault("RATE_LIMITS", LIFTED_LIMITS)
    os.environ.setdefault("LOGIN_RATE_PER_IP", "100000000")
    os.environ.setdefault("LOGIN_RATE_PER_USERNAME", "100000000")
    os.environ.setdefault("KEYS_CLAIM_RATE", "100000000")
    os.environ.setdefault("KEYS_TARGET_CLAIM_RATE", "100000000")
    # The access log stays on (INFO, as in production): one JSON line per request is part
    # of the request path. It goes to var/bench-server.log.
    os.environ["LOG_LEVEL"] = "INFO"
    os.environ["FAST_HTTP"] = "false" if args.django_path else "true"
    url = relay.setup_django(args.database)
    os.environ["RATE_LIMITS"] = LIFTED_LIMITS
    relay.ensure_database(url, fresh=not args.keep_db)
    print(f"preparing org: {args.users} members ...", file=sys.stderr)
    data = prepare(args.users)
    results = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "python": platform.python_version(),
        "cpu_reference_s": relay.cpu_reference_seconds(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "connections": args.connections,
        "seconds": args.seconds,
        "fast_http": not args.django_path,
        "runs": {},
    }
    for workers in args.workers:
        run: dict = {}
        if "bare" in scenarios:
            port = relay.free_port()
            bare = start_bare(port, workers)
            try:
                script = lua_script([{"method": "GET", "path": "/ping", "headers": {}}])
                run_wrk(wrk, port, script, seconds=1, connections=4)  # warm-up, as below
                run["bare"] = run_wrk(
                    wrk, port, script, seconds=args.seconds, connections=args.connections
                )
            finally:
                stop(bare)
            print(f"[{workers} worker(s)] bare Django async view: {describe(run['bare'])}")
        port = relay.free_port()
        proc = relay.start_server(port, workers)
        try:
            cookie = portal_cookie(port, data["admins"][0]) if "portal" in scenarios else ""
            for name in scenarios:
                if name == "bare":
                    continue
                if name == "delivery":
                    for label, rate in (("delivery", None), ("delivery@250", 250)):
                        spy = start_profiler(args.profile, f"{label}-{workers}", proc, args.seconds)
                        run[label] = delivery_run(
                            wrk, port, data, proc, seconds=args.seconds, rate=rate
                        )
                        if spy is not None:
                            print_profile(spy)
                        print(f"[{workers} worker(s)] {label}: {describe_delivery(run[label])}")
                    continue
                requests, unique = scenario_requests(name, data, cookie)
                # Warm up first: the first requests import the URL conf and views, open
                # connections and fill caches (about a second of CPU), which would
                # otherwise be counted against the scenario.
                if not unique:  # one request alone (waits for the imports), then wrk
                    httpx.request(
                        requests[0]["method"],
                        f"http://127.0.0.1:{port}{requests[0]['path']}",
                        headers=requests[0]["headers"],
                        content=requests[0].get("body"),
                        timeout=60,
                    )
                warm_up = lua_script(requests, unique_send=unique)
                run_wrk(wrk, port, warm_up, seconds=1, connections=4)
                meter = relay.CpuMeter(proc)
                spy = start_profiler(args.profile, f"{name}-{workers}", proc, args.seconds)
                figures = run_wrk(
                    wrk,
                    port,
                    lua_script(requests, unique_send=unique),  # new client_ids
                    seconds=args.seconds,
                    # Argon2 takes the CPU it takes: more connections only queue.
                    connections=min(4, args.connections) if name == "login" else args.connections,
                )
                cpu = meter.per_message(figures["requests"])
                if spy is not None:
                    print_profile(spy)
                figures["server_cpu_ms_per_request"] = cpu["server_cpu_ms_per_message"]
                # Backends that exit during the run take their CPU time with them: a
                # negative figure means "not measurable", not a gain.
                pg = cpu["postgres_cpu_ms_per_message"]
                figures["postgres_cpu_ms_per_request"] = pg if pg is None or pg >= 0 else None
                figures["machine_busy_percent"] = cpu["machine_busy_percent"]
                if "bare" in run and run["bare"]["requests_per_s"]:
                    figures["share_of_bare"] = round(
                        figures["requests_per_s"] / run["bare"]["requests_per_s"], 3
                    )
                run[name] = figures
                print(f"[{workers} worker(s)] {name}: {describe(figures)}")
        finally:
            stop(proc)
        results["runs"][str(workers)] = run
    print(json.dumps(results))
    out = ROOT / "bench" / "results" / "api-latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


def delivery_run(wrk: str, port: int, data: dict, proc, *, seconds: float, rate=None) -> dict:
    """REST sends (wrk, each a new client_id) to peers whose devices are connected over
    WebSockets and ack what they get (relay.receiver_loop: in batches of 32 or every 20
    ms), at full speed or at an offered `rate`. Reports what the server says it accepted,
    delivered and had acked (its /metrics counters, as an operator would see them), the
    POST's latency (wrk) and the delivery latency: from the message's server timestamp
    (`ts`, when it was stored) to its arrival at the recipient's socket."""
    import asyncio
    import threading
    from datetime import datetime

    latencies: list[float] = []
    ready, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def on_message(frame: dict) -> None:
        latencies.append(time.time() - datetime.fromisoformat(frame["ts"]).timestamp())

    async def receive() -> None:
        sockets = [await relay.connect(port, m["peer_token"]) for m in data["members"]]
        readers = [asyncio.create_task(relay.receiver_loop(ws, on_message)) for ws in sockets]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await relay.close_reading(sockets, readers)

    def run_receivers() -> None:
        try:
            asyncio.run(receive())
        except BaseException as exc:  # reported by the bench thread
            failure.append(exc)
            ready.set()

    receivers = threading.Thread(target=run_receivers, name="receivers", daemon=True)
    receivers.start()
    ready.wait(120)
    if failure:
        raise SystemExit(f"delivery: receivers failed: {failure[0]!r}")
    time.sleep(2)  # whatever earlier scenarios left queued drains first
    requests, _ = scenario_requests("send", data, "")
    watch = relay.MetricsWatch(port, 0)
    before = watch.scrape()
    latencies.clear()
    meter = relay.CpuMeter(proc)
    figures = run_wrk(
        wrk,
        port,
        lua_script(requests, unique_send=True, rate=rate),
        seconds=seconds,
        connections=32,
    )
    time.sleep(1)  # the last messages' deliveries and acks
    after = watch.scrape()
    stop.set()
    receivers.join(60)
    cpu = meter.per_message(figures["requests"])
    span = max(1, round(seconds))

    def moved(name: str) -> float:
        return round((after.get(name, 0) - before.get(name, 0)) / span, 1)

    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        return (
            round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)
            if ordered
            else None
        )

    figures.update(
        offered_per_s=rate,
        accepted_per_s=moved("siphera_messages_sent_total"),
        delivered_per_s=moved("siphera_messages_delivered_total"),
        acked_per_s=moved("siphera_messages_acked_total"),
        delivery_p50_ms=pct(0.50),
        delivery_p99_ms=pct(0.99),
        received=len(ordered),
        server_cpu_ms_per_request=cpu["server_cpu_ms_per_message"],
        machine_busy_percent=cpu["machine_busy_percent"],
    )
    return figures


def describe_delivery(f: dict) -> str:
    offered = f"offered {f['offered_per_s']}/s, " if f["offered_per_s"] else ""
    text = (
        f"{offered}sent {f['requests_per_s']} req/s (POST p99 {f['p99_ms']} ms); server: "
        f"accepted {f['accepted_per_s']}/s, delivered {f['delivered_per_s']}/s, acked "
        f"{f['acked_per_s']}/s; delivery (stored -> recipient's socket) p50 "
        f"{f['delivery_p50_ms']} ms, p99 {f['delivery_p99_ms']} ms over {f['received']} "
        f"messages; server CPU {f['server_cpu_ms_per_request']} ms/message"
    )
    if f["non_2xx"] or f["socket_errors"]:
        text += f"; NOT VALID: {f['non_2xx']} non-2xx answers, {f['socket_errors']} socket errors"
    return text


def start_profiler(directory: Path | None, label: str, proc, seconds: float):
    """py-spy sampling the server (every worker) for one scenario, or None."""
    if directory is None:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{label}.txt"
    command = [
        py_spy,
        "record",
        "--pid",
        str(proc.pid),
        "--subprocesses",
        "--nonblocking",
        "--gil",
        "--rate",
        "200",
    ]
    command += ["--duration", str(max(1, int(seconds))), "--format", "raw", "--output", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spy.out = out
    return spy


def print_profile(spy, top: int = 25) -> None:
    """The functions (of any module) present in the most samples, inclusive, and the share
    of samples spent in each, from py-spy's collapsed stacks."""
    spy.wait(60)
    inclusive: dict[str, int] = {}
    total = 0
    for line in spy.out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    print(f"  profile {spy.out} ({total} samples); most present frames:")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * count / max(total, 1):5.1f} %  {frame}")


def describe(f: dict) -> str:
    text = f"{f['requests_per_s']} req/s, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms"
    if "share_of_bare" in f:
        text += f", {round(100 * f['share_of_bare'])} % of the bare view"
    if f.get("server_cpu_ms_per_request") is not None:
        text += (
            f"; server CPU {f['server_cpu_ms_per_request']} ms/request, PostgreSQL "
            f"{f['postgres_cpu_ms_per_request']} ms"
        )
    if f["non_2xx"] or f["socket_errors"]:
        text += f"; NOT VALID: {f['non_2xx']} non-2xx answers, {f['socket_errors']} socket errors"
    return text


if __name__ == "__main__":
    main()
