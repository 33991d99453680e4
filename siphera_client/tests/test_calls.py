"""1:1 voice calls of the reference client (siphera_client.calls, aiortc) between two
clients through the real server and a real coturn, relay-only: as a library, and from the
command line in two processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

import siphera_client
from calls.models import Call
from siphera.tenancy import in_tenant
from siphera_client.calls import CallFailed, CallsUnavailable, Phone, require_aiortc
from siphera_client.client import Client
from siphera_client.tests.conftest import PASSPHRASE
from tests.fixtures import PASSWORD, ROOT, host_of, make_user

WAIT = 60.0  # seconds: the bound of every wait
MIN_FRAMES = 20  # 0.4 s of audio, of the 2-3 s each call lasts


@pytest.fixture
async def relay_clients(turn_deployment, org_a, tmp_path):
    """Factory: a connected client of a new user of org A, on the server that hands out
    credentials the test's coturn accepts."""
    made: list[Client] = []

    async def make(name: str, **user) -> Client:
        person = make_user(org_a, **user)
        client = await Client.register(
            server=turn_deployment.server.url,
            host=host_of(org_a),
            username=person.username,
            password=PASSWORD,
            state_path=tmp_path / f"{name}.json",
            passphrase=PASSPHRASE,
            device_name=name,
        )
        made.append(client)
        await client.connect()
        return client

    yield make
    for client in made:
        await client.close()


def call_record(org, call_id) -> Call:
    return in_tenant(org, Call.objects.get, pk=call_id)


async def test_two_clients_talk_relay_only_through_coturn(relay_clients, org_a):
    # Given two connected clients, each with a phone
    alice, bob = await relay_clients("alice"), await relay_clients("bob")
    events: list[dict] = []
    # When bob waits for a call and alice calls him, relay-only, for 2 seconds
    answering = asyncio.create_task(
        Phone.of_client(bob).answer(seconds=WAIT, relay_only=True, wait=WAIT)
    )
    placed = await asyncio.wait_for(
        Phone.of_client(alice).call(
            bob.user_id, seconds=2, relay_only=True, on_event=events.append
        ),
        WAIT,
    )
    answered = await asyncio.wait_for(answering, WAIT)

    # Then both connected over coturn, heard the other's tone, and alice hung up
    for report in (placed, answered):
        assert report.connected and report.outcome == "completed", report
        assert (report.local_candidate, report.remote_candidate) == ("relay", "relay")
        assert report.frames_received >= MIN_FRAMES and report.frames_sent >= MIN_FRAMES
        assert report.peak > 1000, report  # a tone, not silence
    assert (placed.ended_by, answered.ended_by) == ("me", "peer")
    assert answered.end_reason == "hangup"
    assert placed.call_id == answered.call_id
    assert placed.peer == {"user_id": bob.user_id, "device_id": bob.device_id}
    assert answered.peer == {"user_id": alice.user_id, "device_id": alice.device_id}
    assert [next(iter(event)) for event in events] == ["calling", "ringing", "connected"]
    # And the server recorded an answered, completed call
    call = call_record(org_a, placed.call_id)
    assert (call.outcome, call.end_reason) == ("completed", "hangup")
    assert call.answered_at is not None


async def test_answer_without_a_call_gives_up_after_its_wait(relay_clients):
    carol = await relay_clients("carol")
    with pytest.raises(CallFailed) as nothing:
        await Phone.of_client(carol).answer(wait=0.5)
    assert nothing.value.code == "no_incoming_call"


async def test_calling_an_unknown_user_is_refused_by_the_server(relay_clients):
    dave = await relay_clients("dave")
    with pytest.raises(CallFailed) as refused:
        await Phone.of_client(dave).call("00000000-0000-4000-8000-000000000000", seconds=1)
    assert refused.value.code == "not_found"


def test_without_aiortc_calls_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiortc", None)  # an import of it fails
    monkeypatch.delitem(sys.modules, "siphera_client.media", raising=False)
    monkeypatch.delattr(siphera_client, "media", raising=False)
    with pytest.raises(CallsUnavailable) as missing:
        require_aiortc()
    assert "pip install aiortc" in str(missing.value)


# --- the command line ----------------------------------------------------------------------


def command(live, org, state, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "siphera_client",
        "--state",
        str(state),
        "--server",
        live.url,
        "--host",
        host_of(org),
        *args,
    ]


CLI_ENV = {**os.environ, "SIPHERA_PASSPHRASE": "cli calls", "SIPHERA_PASSWORD": PASSWORD}


async def run(args: list[str]) -> tuple[int, list[dict], str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env=CLI_ENV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


async def test_call_and_answer_from_the_command_line(turn_deployment, org_a, tmp_path):
    live = turn_deployment.server
    # Given alice (an admin: she may look bob up by username) and bob, registered by the CLI
    alice, bob = make_user(org_a, role="admin"), make_user(org_a)
    for person, state in ((alice, "a.json"), (bob, "b.json")):
        code, _, err = await run(
            command(live, org_a, tmp_path / state, "register", "--username", person.username)
        )
        assert code == 0, err
    # When bob runs `answer` and, once it waits, alice runs `call bob --relay-only`
    answering = await asyncio.create_subprocess_exec(
        *command(live, org_a, tmp_path / "b.json", "answer", "--relay-only", "--seconds", "60"),
        cwd=ROOT,
        env=CLI_ENV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        waiting = json.loads(await asyncio.wait_for(answering.stdout.readline(), WAIT))
        assert waiting["waiting"]["user_id"] == str(bob.pk)
        code, caller_lines, err = await run(
            command(
                live,
                org_a,
                tmp_path / "a.json",
                "call",
                bob.username,
                "--relay-only",
                "--seconds",
                "3",
            )
        )
        assert code == 0, err
        rest, err = await asyncio.wait_for(answering.communicate(), WAIT)
        assert answering.returncode == 0, err.decode()
    finally:
        if answering.returncode is None:
            answering.kill()
            await answering.wait()
    callee_lines = [json.loads(line) for line in rest.decode().splitlines()]

    # Then each printed its progress and a report of a relayed call with audio both ways
    assert [next(iter(line)) for line in caller_lines] == [
        "calling",
        "ringing",
        "connected",
        "call",
    ]
    assert [next(iter(line)) for line in callee_lines] == ["incoming", "connected", "call"]
    placed, answered = caller_lines[-1]["call"], callee_lines[-1]["call"]
    for report in (placed, answered):
        assert report["outcome"] == "completed" and report["relay_only"]
        assert (report["local_candidate"], report["remote_candidate"]) == ("relay", "relay")
        assert report["frames_received"] >= MIN_FRAMES and report["peak"] > 1000
    assert placed["peer"]["user_id"] == str(bob.pk)
    assert answered["peer"]["user_id"] == str(alice.pk)
    assert call_record(org_a, placed["call_id"]).outcome == "completed"


async def test_a_member_calling_by_username_is_told_to_use_the_user_id(
    turn_deployment, org_a, tmp_path
):
    erin, frank = make_user(org_a), make_user(org_a)
    state = tmp_path / "e.json"
    code, _, err = await run(
        command(turn_deployment.server, org_a, state, "register", "--username", erin.username)
    )
    assert code == 0, err
    code, lines, err = await run(
        command(turn_deployment.server, org_a, state, "call", frank.username, "--seconds", "1")
    )
    assert code == 1 and not lines
    assert "users.view" in err and "user id" in err
