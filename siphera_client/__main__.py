"""Command line of the reference client: `python -m siphera_client --help`.

Secrets never go on the command line: the state passphrase comes from the environment
variable named by --passphrase-env (default SIPHERA_PASSPHRASE) or a prompt, the account
password from SIPHERA_PASSWORD or a prompt. Results are printed as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import uuid

from siphera_client.api import ApiError, SocketClosed
from siphera_client.client import Client
from siphera_client.crypto import CryptoError
from siphera_client.store import StoreError


def _secret(env: str, prompt: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise SystemExit(f"error: set {env} (no terminal to prompt on).")
    return getpass.getpass(prompt)


def _print(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _open(args) -> Client:
    client = Client.open(
        args.state,
        _secret(args.passphrase_env, "State passphrase: "),
        auto_top_up=not getattr(args, "no_top_up", False),
    )
    if args.server:
        client.api.server = args.server.rstrip("/")
        client.api.http.base_url = client.api.server
    if args.host:
        client.api.host = args.host
    return client


def _open_browser(url: str) -> None:
    """Single sign-on: the person signs in in their browser; the URL is printed too, for a
    machine without one (open it anywhere that reaches the server and this machine)."""
    import webbrowser

    print(f"Sign in in your browser: {url}", file=sys.stderr, flush=True)
    webbrowser.open(url)


async def cmd_register(args) -> None:
    if not args.server:
        raise SystemExit("error: register needs --server.")
    if not args.sso and not args.username:
        raise SystemExit("error: register needs --username (or --sso).")
    client = await Client.register(
        server=args.server,
        host=args.host,
        username=args.username or "",
        password=None
        if args.sso
        else _secret("SIPHERA_PASSWORD", f"Password for {args.username}: "),
        sso=_open_browser if args.sso else None,
        state_path=args.state,
        passphrase=_secret(args.passphrase_env, "New state passphrase: "),
        device_name=args.device_name,
        otp=args.otp,
    )
    async with client:
        _print(
            {
                "registered": True,
                "user_id": client.user_id,
                "device_id": client.device_id,
                "identity_key": client.crypto.identity_key,
                "state": str(args.state),
            }
        )


async def cmd_whoami(args) -> None:
    async with _open(args) as client:
        me = await client.api.me()
        _print({**me, "identity_key": client.crypto.identity_key})


async def cmd_devices(args) -> None:
    async with _open(args) as client:
        for device in await client.api.my_devices():
            _print({**device, "this": device["device_id"] == client.device_id})


async def cmd_keys(args) -> None:
    async with _open(args) as client:
        uploaded = await client.top_up_keys(force=args.top_up) if args.top_up else None
        counts = await client.api.key_count()
        _print({"on_server": counts, **({"uploaded": uploaded} if uploaded else {})})


async def cmd_group(args) -> None:
    async with _open(args) as client:
        _print({"created_group": await client.create_group(args.members)})


async def cmd_send(args) -> None:
    text = " ".join(args.text)
    async with _open(args) as client:
        if args.to:
            result = await client.send_direct(args.to, text)
            conversation = client.store.data["direct"][args.to]
        else:
            result = await client.send(args.conversation, text)
            conversation = args.conversation
        _print({"sent": result["id"], "conversation": conversation, "seq": result["seq"]})


async def cmd_listen(args) -> None:
    async with _open(args) as client:
        await client.connect()
        received = 0
        while args.count is None or received < args.count:
            try:
                (message,) = await client.receive(1, timeout=args.timeout)
            except TimeoutError:
                break
            received += 1
            _print({"message": message.__dict__})
            if message.kind == "text" and not args.no_read_receipts:
                await client.mark_read(message.conversation, message.seq)
            while not client.notices.empty():
                _print({"notice": client.notices.get_nowait()})
        _print({"listened": received})


async def _user_id(api, target: str) -> str:
    """A user id as given, or the id of the user with this username (that lookup is
    `GET /api/v1/users?q=`, which needs `users.view`)."""
    try:
        return str(uuid.UUID(target))
    except ValueError:
        pass
    try:
        users = await api.find_users(target)
    except ApiError as exc:
        if exc.status != 403:
            raise
        raise SystemExit(
            f"error: finding {target!r} by username needs the users.view permission; "
            "pass their user id instead (`whoami` on their device prints it)."
        ) from None
    for user in users:
        if user["username"].casefold() == target.casefold():
            return user["user_id"]
    raise SystemExit(f"error: no user named {target!r}.")


async def cmd_call(args) -> int:
    from siphera_client.calls import Phone

    async with _open(args) as client:
        user_id = await _user_id(client.api, args.target)
        async with await Phone.open(client.api) as phone:
            report = await phone.call(
                user_id,
                seconds=args.seconds,
                relay_only=args.relay_only,
                tone_hz=args.tone_hz,
                ring_timeout=args.ring_timeout,
                on_event=_print,
            )
    _print({"call": report.as_dict()})
    return 0 if report.outcome == "completed" else 3


async def cmd_answer(args) -> int:
    from siphera_client.calls import CallFailed, Phone

    async with _open(args) as client:
        async with await Phone.open(client.api) as phone:
            _print({"waiting": {"user_id": client.user_id, "device_id": client.device_id}})
            try:
                report = await phone.answer(
                    seconds=args.seconds,
                    relay_only=args.relay_only,
                    tone_hz=args.tone_hz,
                    wait=args.wait,
                    on_event=_print,
                )
            except CallFailed as exc:
                if exc.code != "no_incoming_call":
                    raise
                _print({"call": None, "outcome": exc.code})
                return 3
    _print({"call": report.as_dict()})
    return 0 if report.outcome == "completed" else 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m siphera_client",
        description="Siphera reference client: end-to-end encrypted messages (Olm/Megolm).",
    )
    p.add_argument("--state", required=True, help="this device's state file (JSON)")
    p.add_argument("--server", help="server URL, e.g. http://127.0.0.1:8000 (saved at register)")
    p.add_argument("--host", help="the org's host name sent as Host (default: from --server)")
    p.add_argument(
        "--passphrase-env",
        default="SIPHERA_PASSPHRASE",
        help="environment variable holding the state passphrase (else prompted)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    for name in ("register", "login"):
        r = sub.add_parser(
            name, help="log in and register this device (password: $SIPHERA_PASSWORD)"
        )
        r.add_argument("--username", help="needed for a password login")
        r.add_argument(
            "--sso",
            action="store_true",
            help="sign in through the org's single sign-on in the browser instead",
        )
        r.add_argument("--device-name", default="siphera-client")
        r.add_argument("--otp", help="TOTP code when the org requires MFA")
        r.set_defaults(func=cmd_register)

    sub.add_parser("whoami", help="this device's user and ids").set_defaults(func=cmd_whoami)
    sub.add_parser("devices", help="this user's devices").set_defaults(func=cmd_devices)

    k = sub.add_parser("keys", help="one-time prekeys left on the server; --top-up uploads")
    k.add_argument("--top-up", action="store_true")
    k.set_defaults(func=cmd_keys)

    g = sub.add_parser("group", help="create a group conversation")
    g.add_argument("--members", nargs="+", required=True, metavar="USER_ID")
    g.set_defaults(func=cmd_group)

    s = sub.add_parser("send", help="send an encrypted message")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="USER_ID", help="a direct message to this user")
    target.add_argument("--conversation", metavar="ID", help="a direct or group conversation")
    s.add_argument("text", nargs="+")
    s.set_defaults(func=cmd_send)

    listen = sub.add_parser("listen", help="receive, decrypt and acknowledge messages")
    listen.add_argument("--count", type=int, help="stop after this many messages")
    listen.add_argument(
        "--timeout", type=float, default=30.0, help="stop after this many idle seconds"
    )
    listen.add_argument("--no-read-receipts", action="store_true")
    listen.add_argument("--no-top-up", action="store_true", help="do not upload keys")
    listen.set_defaults(func=cmd_listen)

    call = sub.add_parser(
        "call", help="place a 1:1 voice call (needs aiortc): send a tone, count what comes back"
    )
    call.add_argument("target", metavar="USER", help="a user id, or a username (users.view)")
    call.add_argument("--ring-timeout", type=float, default=60.0, help="give up after (s)")
    answer = sub.add_parser("answer", help="wait for a 1:1 voice call and answer it (needs aiortc)")
    answer.add_argument("--wait", type=float, default=60.0, help="wait this long for a call (s)")
    for command, hz in ((call, 440.0), (answer, 660.0)):
        command.add_argument(
            "--seconds", type=float, default=5.0, help="talk this long once connected"
        )
        command.add_argument(
            "--relay-only", action="store_true", help="media only through TURN (ICE policy relay)"
        )
        command.add_argument(
            "--tone-hz", type=float, default=hz, help=f"tone to send (default {hz:g}; 0: silence)"
        )
    call.set_defaults(func=cmd_call)
    answer.set_defaults(func=cmd_answer)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from siphera_client.calls import CallFailed, CallsUnavailable

    try:
        return asyncio.run(args.func(args)) or 0
    except (ApiError, CallFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, CryptoError, SocketClosed, CallsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
