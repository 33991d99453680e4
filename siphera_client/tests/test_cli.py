"""The command line, run as a user would: `python -m siphera_client ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.fixtures import PASSWORD, ROOT, host_of, make_user


def cli(server, org, state, *args, timeout=120):
    env = {
        **os.environ,
        "SIPHERA_PASSPHRASE": "cli state passphrase",
        "SIPHERA_PASSWORD": PASSWORD,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "siphera_client",
            "--state",
            str(state),
            "--server",
            server.url,
            "--host",
            host_of(org),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_help_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "siphera_client", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for command in ("register", "send", "listen", "keys", "--state", "--server", "--host"):
        assert command in done.stdout


def test_register_send_and_listen_from_the_command_line(server, org_a, tmp_path):
    # Given two users, each registering a device with the CLI
    alice, bob = make_user(org_a), make_user(org_a)
    (a,) = cli(server, org_a, tmp_path / "a.json", "register", "--username", alice.username)
    (b,) = cli(server, org_a, tmp_path / "b.json", "register", "--username", bob.username)
    assert a["registered"] and a["user_id"] == str(alice.pk)

    # When alice sends to bob, then in a group, and bob listens
    text = f"cli {uuid.uuid4().hex}"
    (sent,) = cli(server, org_a, tmp_path / "a.json", "send", "--to", str(bob.pk), text)
    (group,) = cli(server, org_a, tmp_path / "a.json", "group", "--members", str(bob.pk))
    cli(
        server,
        org_a,
        tmp_path / "a.json",
        "send",
        "--conversation",
        group["created_group"],
        text,
        "(group)",
    )
    lines = cli(server, org_a, tmp_path / "b.json", "listen", "--count", "2", "--timeout", "60")

    # Then bob's device printed both, decrypted, and says how many it read
    messages = [line["message"] for line in lines if "message" in line]
    assert [(m["kind"], m["text"]) for m in messages] == [
        ("text", text),
        ("text", f"{text} (group)"),
    ]
    assert messages[0]["id"] == sent["sent"] and messages[0]["sender_user"] == str(alice.pk)
    assert lines[-1] == {"listened": 2}
    (keys,) = cli(server, org_a, tmp_path / "b.json", "keys")
    assert keys["on_server"]["one_time"] >= 0


def test_a_wrong_passphrase_is_refused_with_a_clear_message(server, org_a, tmp_path):
    carol = make_user(org_a)
    cli(server, org_a, tmp_path / "c.json", "register", "--username", carol.username)
    done = subprocess.run(
        [sys.executable, "-m", "siphera_client", "--state", str(tmp_path / "c.json"), "whoami"],
        cwd=ROOT,
        env={**os.environ, "SIPHERA_PASSPHRASE": "not it"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 1
    assert "Wrong passphrase" in done.stderr


def test_a_refused_login_exits_2_and_leaves_no_state_file(server, org_a, tmp_path):
    dave = make_user(org_a)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "siphera_client",
            "--state",
            str(tmp_path / "d.json"),
            "--server",
            server.url,
            "--host",
            host_of(org_a),
            "register",
            "--username",
            dave.username,
        ],
        cwd=ROOT,
        env={**os.environ, "SIPHERA_PASSPHRASE": "p", "SIPHERA_PASSWORD": "wrong password"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid_credentials" in done.stderr
    assert not (tmp_path / "d.json").exists()
