"""SCIM provisioning benchmark: an identity provider's initial push of 10,000 users and 200
groups (with their memberships) over HTTP, against the real ASGI app (uvicorn),
PostgreSQL and Redis.

    python bench/scim.py                          # 10,000 users, 200 groups, 16 connections
    python bench/scim.py --users 2000 --groups 40 --concurrency 8

The load generator pushes what Okta and Entra ID push, the way they push it: one
`POST /scim/v2/Users` per user (Okta's body: name, work e-mail, externalId, active) from
`--concurrency` connections at once, then per group a `POST /Groups` and `PATCH`es adding
its members (`{"op": "add", "path": "members", ...}`, `--batch` members each). Every create
writes its audit entry (the org's hash chain), as in production. The org's default SCIM
rate limit (`scim.token`) stays in force: the push must not be refused by it.

Figures: user creates per second and their latency, the group phase's time, and the full
sync time (first create to last membership), plus the server's, PostgreSQL's and the load
generator's CPU per user create. Like bench/relay.py it uses its own database
(`siphera_bench_scim`, created afresh), its own org (`bench` at bench.localhost), starts
the server itself (127.0.0.1 only) and writes bench/results/scim-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import relay  # noqa: E402  (bench/relay.py: database, server, CPU meters)


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument(
        "--members-per-group", type=int, default=50, help="each user is in users*this/... groups"
    )
    parser.add_argument("--batch", type=int, default=25, help="members added per group PATCH")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel connections")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--database", default="siphera_bench_scim")
    args = parser.parse_args()
    if not 1 <= args.users <= 200_000 or not 0 <= args.groups <= 10_000:
        parser.error("--users is 1 to 200000, --groups 0 to 10000")
    if not 1 <= args.concurrency <= 256 or not 1 <= args.batch <= 1000:
        parser.error("--concurrency is 1 to 256, --batch 1 to 1000")
    return args


def prepare_token() -> str:
    """The bench org and a fresh SCIM token for it."""
    import django

    django.setup()

    from orgs.scim import tokens
    from orgs.services import audit
    from siphera.tenancy import in_tenant

    actor = audit.Actor.system("bench")
    org = relay.bench_org(actor)
    _, secret = in_tenant(org, tokens.do_rotate_token, label="bench-idp", actor=actor)
    return secret


def user_body(i: int) -> dict:
    name = f"bench.user{i:06d}@example.com"
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
        "externalId": f"00u{i:017d}",
        "name": {"givenName": "Bench", "familyName": f"User {i}"},
        "displayName": f"Bench User {i}",
        "emails": [{"primary": True, "value": name, "type": "work"}],
        "locale": "en-US",
        "active": True,
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def push(port: int, token: str, args) -> dict:
    import httpx

    headers = {
        "Host": relay.HOST,
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/scim+json",
    }
    limits = httpx.Limits(max_connections=args.concurrency)
    failures: dict[str, int] = {}
    latencies: list[float] = []
    ids: list[str | None] = [None] * args.users

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/scim/v2", headers=headers, limits=limits, timeout=60
    ) as client:

        async def call(method: str, path: str, body: dict, expect: int):
            started = time.perf_counter()
            response = await client.request(method, path, json=body)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != expect:
                key = f"{method} {path.split('/')[1]} {response.status_code}"
                failures[key] = failures.get(key, 0) + 1
                return None, elapsed
            return response.json(), elapsed

        queue: asyncio.Queue = asyncio.Queue()
        for i in range(args.users):
            queue.put_nowait(i)

        async def user_worker():
            while not queue.empty():
                i = queue.get_nowait()
                body, elapsed = await call("POST", "/Users", user_body(i), 201)
                latencies.append(elapsed)
                if body:
                    ids[i] = body["id"]

        print(
            f"pushing {args.users} users over {args.concurrency} connections ...", file=sys.stderr
        )
        meter = relay.CpuMeter(proc=PROC)
        started = time.perf_counter()
        await asyncio.gather(*(user_worker() for _ in range(args.concurrency)))
        users_s = time.perf_counter() - started
        cpu = meter.per_message(len([i for i in ids if i]))
        # PostgreSQL's CPU is read from its live processes: backends that served one
        # request and exited (no persistent connections under ASGI) are not counted, so
        # a negative or tiny figure means "not measured".
        if (cpu.get("postgres_cpu_ms_per_message") or 0) <= 0:
            cpu["postgres_cpu_ms_per_message"] = None

        # Groups: members spread evenly, each user in (groups * members / users) groups.
        made = [i for i in ids if i]
        group_queue: asyncio.Queue = asyncio.Queue()
        for g in range(args.groups):
            start = (g * args.members_per_group) % max(len(made), 1)
            members = [made[(start + k) % len(made)] for k in range(args.members_per_group)]
            group_queue.put_nowait((g, members if made else []))
        memberships = 0
        group_latencies: list[float] = []

        async def group_worker():
            nonlocal memberships
            while not group_queue.empty():
                g, members = group_queue.get_nowait()
                body = {
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": f"Bench Group {g}",
                    "members": [],
                }
                created, elapsed = await call("POST", "/Groups", body, 201)
                group_latencies.append(elapsed)
                if not created:
                    continue
                for k in range(0, len(members), args.batch):
                    batch = [{"value": m} for m in members[k : k + args.batch]]
                    patch = {
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "add", "path": "members", "value": batch}],
                    }
                    done, elapsed = await call("PATCH", f"/Groups/{created['id']}", patch, 200)
                    group_latencies.append(elapsed)
                    if done:
                        memberships += len(batch)

        print(f"pushing {args.groups} groups and their members ...", file=sys.stderr)
        groups_started = time.perf_counter()
        await asyncio.gather(*(group_worker() for _ in range(min(args.concurrency, 8))))
        groups_s = time.perf_counter() - groups_started

        check_users = (await client.get("/Users?count=0")).json()["totalResults"]
        check_groups = (await client.get("/Groups?count=0")).json()["totalResults"]

    created = len([i for i in ids if i])
    return {
        "users": args.users,
        "groups": args.groups,
        "concurrency": args.concurrency,
        "users_created": created,
        "user_creates_per_s": round(created / users_s, 1) if users_s else None,
        "create_p50_ms": percentile(latencies, 0.50),
        "create_p99_ms": percentile(latencies, 0.99),
        "create_mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "users_phase_s": round(users_s, 1),
        "groups_phase_s": round(groups_s, 1),
        "group_requests_p50_ms": percentile(group_latencies, 0.50),
        "memberships": memberships,
        "full_sync_s": round(users_s + groups_s, 1),
        "failed": failures,
        "listed_users": check_users,
        "listed_groups": check_groups,
        **{k.replace("per_message", "per_create"): v for k, v in cpu.items()},
    }


PROC = None


def main():
    global PROC
    args = parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    url = relay.setup_django(args.database)
    relay.ensure_database(url, fresh=True)
    print("preparing the bench org and its SCIM token ...", file=sys.stderr)
    token = prepare_token()
    gc.freeze()
    port = relay.free_port()
    PROC = relay.start_server(port, args.workers)
    setup = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "python": platform.python_version(),
        "cpu_reference_s": relay.cpu_reference_seconds(),
        "workers": args.workers,
        "postgres_autovacuum": relay.autovacuum_on(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        result = asyncio.run(push(port, token, args))
    finally:
        os.killpg(PROC.pid, 15)
        PROC.wait(20)
    print(
        f"SCIM user creates: {result['user_creates_per_s']}/s ({result['users_created']} of"
        f" {result['users']} users, {result['concurrency']} connections; p50"
        f" {result['create_p50_ms']} ms, p99 {result['create_p99_ms']} ms; server CPU"
        f" {result['server_cpu_ms_per_create']} ms, PostgreSQL"
        f" {result['postgres_cpu_ms_per_create']} ms per create)"
    )
    print(
        f"SCIM full sync: {result['full_sync_s']} s for {result['users']} users and"
        f" {result['groups']} groups with {result['memberships']} memberships (users"
        f" {result['users_phase_s']} s, groups {result['groups_phase_s']} s); failed:"
        f" {result['failed'] or 'none'}; listed afterwards: {result['listed_users']} users,"
        f" {result['listed_groups']} groups"
    )
    print(json.dumps({**setup, "result": result}))
    out = ROOT / "bench" / "results" / "scim-latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"push": {**setup, "result": result}}, indent=2) + "\n")
    if result["failed"] or result["users_created"] != result["users"]:
        raise SystemExit("some SCIM requests failed (see above)")


if __name__ == "__main__":
    main()
