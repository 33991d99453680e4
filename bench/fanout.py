"""Fan-out benchmark: org B's 1:1 send latency while org A floods typing frames into a
1,000-member group, against the real ASGI app (uvicorn), PostgreSQL and Redis.

    python bench/fanout.py                          # defaults below
    python bench/fanout.py --members 1000 --typers 20 --typing-rate 40 --seconds 20

Org A (`bench` at bench.localhost) has one group of `--members` users; `--typers` of
them have a device with a socket and send `typing` frames (start/stop alternately),
`--typing-rate` frames/s in all, each relayed to every other member (a channel-layer send
per member). Org B (`benchb` at benchb.localhost) has `--pairs` 1:1 pairs whose senders
offer `--offered-rate` messages/s over their sockets. Two timed runs: org B alone, then org
B during org A's flood. For org B it prints p50/p99 of the `send` -> `sent` reply (what a
DB thread held by someone else's fan-out delays) and of the send -> `message` frame at the
recipient. Uses a database of its own (`siphera_bench_fanout`, recreated unless
--keep-db), Redis prefixes of its own, and relay.py's server start-up;
bench/results/fanout-latest.json keeps the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import relay  # noqa: E402  (bench/relay.py: database, org, server and CPU helpers)

HOST_B = "benchb.localhost"


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=1000, help="members of org A's group")
    parser.add_argument("--typers", type=int, default=20, help="org A sockets that type")
    parser.add_argument(
        "--typing-rate", type=float, default=40.0, help="typing frames/s, all typers together"
    )
    parser.add_argument("--pairs", type=int, default=10, help="org B sender/receiver pairs")
    parser.add_argument("--offered-rate", type=float, default=50.0, help="org B messages/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each timed run")
    parser.add_argument("--database", default="siphera_bench_fanout")
    parser.add_argument("--keep-db", action="store_true", help="reuse the bench database")
    return parser.parse_args()


def prepare(members: int, typers: int, pairs: int) -> dict:
    import django

    django.setup()

    from messaging.services import conversations, keys
    from messaging.services.devices import do_register_device
    from orgs.models import Org
    from orgs.services import audit
    from orgs.services.orgs import check_create_org
    from orgs.services.users import check_create_user
    from siphera.tenancy import in_tenant, public_schema

    actor = audit.Actor.system("bench")
    org_a = relay.bench_org(actor)
    with public_schema():
        org_b = Org.objects.filter(slug="benchb").first()
    if org_b is None:
        org_b = check_create_org(slug="benchb", name="Bench B", domains=[HOST_B], actor=actor)

    def bundle():
        return keys.DeviceKeys(
            identity_key=os.urandom(32), signing_key=os.urandom(32), signed_prekey=None
        )

    def user(prefix):
        return check_create_user(
            username=f"{prefix}{uuid.uuid4().hex[:12]}", password=None, role="member", actor=actor
        )

    def token(u):
        return do_register_device(u, name="bench", bundle=bundle(), actor=actor)[1]

    def build_a():
        people = [user("m") for _ in range(members)]
        group, _ = conversations.check_create_conversation(
            creator=people[0],
            kind="group",
            member_ids=[str(p.pk) for p in people[1:]],
            title=None,
        )
        return {"group": str(group.pk), "typers": [token(p) for p in people[:typers]]}

    def build_b():
        out = []
        for _ in range(pairs):
            a, b = user("s"), user("r")
            conv, _ = conversations.check_create_conversation(
                creator=a, kind="direct", member_ids=[str(b.pk)], title=None
            )
            out.append({"conversation": str(conv.pk), "sender": token(a), "receiver": token(b)})
        return out

    return {"a": in_tenant(org_a, build_a), "b": in_tenant(org_b, build_b)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(p):
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 1)

    return {"count": len(ordered), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


async def run(port: int, data: dict, args, *, flood: bool) -> dict:
    stop = asyncio.Event()
    measuring = False
    sent_latency: list[float] = []
    delivery_latency: list[float] = []
    typing_sent = 0
    tag = b"FAN" + os.urandom(5)

    def on_message(frame):
        body = base64.b64decode(frame["body"])
        if measuring and body[:8] == tag:
            delivery_latency.append(time.perf_counter() - int.from_bytes(body[8:16], "big") / 1e9)

    async def b_sender(pair, rate):
        ws = await relay.connect(port, pair["sender"], HOST_B)
        asked: dict[str, float] = {}

        async def replies():
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] in ("sent", "error") and "ref" in frame:
                    started = asked.pop(frame["ref"], None)
                    if started is not None and measuring:
                        sent_latency.append(time.perf_counter() - started)

        reader = asyncio.create_task(replies())
        interval = 1.0 / rate
        next_at = time.perf_counter() + interval * (hash(pair["conversation"]) % 100) / 100
        while not stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ref = uuid.uuid4().hex
            body = tag + time.perf_counter_ns().to_bytes(8, "big") + os.urandom(48)
            asked[ref] = time.perf_counter()
            frame = {
                "type": "send",
                "ref": ref,
                "conversation": pair["conversation"],
                "client_id": str(uuid.uuid4()),
                "body": base64.b64encode(body).decode(),
            }
            await ws.send(orjson.dumps(frame).decode())
            next_at += interval
        await relay.close_reading([ws], [reader])

    async def typer(token, rate):
        nonlocal typing_sent
        ws = await relay.connect(port, token)

        async def drain():
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        interval = 1.0 / rate
        state = "start"
        while not stop.is_set():
            await ws.send(
                orjson.dumps(
                    {"type": "typing", "conversation": data["a"]["group"], "state": state}
                ).decode()
            )
            typing_sent += 1
            state = "stop" if state == "start" else "start"
            await asyncio.sleep(interval)
        await relay.close_reading([ws], [reader])

    receivers = [await relay.connect(port, p["receiver"], HOST_B) for p in data["b"]]
    recv_tasks = [asyncio.create_task(relay.receiver_loop(ws, on_message)) for ws in receivers]
    tasks = []
    if flood:
        typers = data["a"]["typers"]
        tasks += [asyncio.create_task(typer(t, args.typing_rate / len(typers))) for t in typers]
        await asyncio.sleep(3)  # the flood is under way
    tasks += [
        asyncio.create_task(b_sender(p, args.offered_rate / len(data["b"]))) for p in data["b"]
    ]
    await asyncio.sleep(2)
    measuring = True
    started = time.perf_counter()
    typing_before = typing_sent
    await asyncio.sleep(args.seconds)
    measuring = False
    elapsed = time.perf_counter() - started
    typing_rate = (typing_sent - typing_before) / elapsed
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await relay.close_reading(receivers, recv_tasks)
    return {
        "flood": flood,
        "typing_frames_per_s_offered": round(typing_rate, 1) if flood else 0,
        "b_send_to_sent": percentiles(sent_latency),
        "b_send_to_delivered": percentiles(delivery_latency),
    }


def main():
    args = parse_args()
    (relay.ROOT / "var").mkdir(exist_ok=True)
    os.environ.setdefault("CHANNEL_LAYER_PREFIX", "siphera-bench-fanout")
    os.environ.setdefault("CACHE_KEY_PREFIX", "siphera-bench-fanout")
    url = relay.setup_django(args.database)
    relay.ensure_database(url, fresh=not args.keep_db)
    print(
        f"preparing: org A group of {args.members}, {args.typers} typers; org B {args.pairs}"
        " pairs ...",
        file=sys.stderr,
    )
    data = prepare(args.members, args.typers, args.pairs)
    port = relay.free_port()
    proc = relay.start_server(port, 1, log_name="bench-fanout-server.log")
    results = {
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "cpu_reference_s": relay.cpu_reference_seconds(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "members": args.members,
        "typers": args.typers,
        "typing_rate": args.typing_rate,
        "offered_rate": args.offered_rate,
    }
    try:
        for flood in (False, True):
            figures = asyncio.run(run(port, data, args, flood=flood))
            results["flood" if flood else "alone"] = figures
            sent, delivered = figures["b_send_to_sent"], figures["b_send_to_delivered"]
            print(
                f"org B {'during the typing flood' if flood else 'alone'}"
                + (f" ({figures['typing_frames_per_s_offered']} typing frames/s)" if flood else "")
                + f": send->sent p50 {sent.get('p50_ms')} ms p99 {sent.get('p99_ms')} ms;"
                f" send->delivered p50 {delivered.get('p50_ms')} ms"
                f" p99 {delivered.get('p99_ms')} ms ({delivered.get('count')} messages)"
            )
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
    print(json.dumps(results))
    out = relay.ROOT / "bench" / "results" / "fanout-latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
