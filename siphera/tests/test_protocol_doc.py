"""docs/protocol.md stays honest about the WebSocket: every client frame handler, server
frame type, error-frame code and close code in the code is documented, and the frame
table names no handler that does not exist.

Read from the code, not from a list kept here: the frame types of the socket's registry
(siphera.sockets, filled by every app), the `CLOSE_*` constants of the socket modules, and
the frames and error codes the modules of the registered extensions build.
Needs no server.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import messaging.consumers
import siphera.consumer
import siphera.ws
from siphera import sockets

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
CONSUMER_MODULES = tuple(
    dict.fromkeys(
        [siphera.ws, siphera.consumer]
        + [inspect.getmodule(cls) for cls in sockets.registry.extensions]
    )
)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text under the heading that starts with `title`, up to the next heading of the
    same or a higher level."""
    lines = _doc().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(#+)\s+(.*)", line)
        if match and match.group(2).strip().startswith(title):
            level = len(match.group(1))
            body = []
            for following in lines[i + 1 :]:
                heading = re.match(r"(#+)\s", following)
                if heading and len(heading.group(1)) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    raise AssertionError(f"docs/protocol.md has no section {title!r}")


def _table_rows(section: str) -> dict[str, str]:
    """First-column name (in backticks) -> the whole row, for a section's tables."""
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def _frame_handlers() -> dict[str, sockets.FrameSpec]:
    """frame type -> its registration, for every client frame the socket dispatches."""
    return dict(sockets.frames())


def _trees():
    for module in CONSUMER_MODULES:
        yield module, ast.parse(inspect.getsource(module))


def _server_frame_types() -> set[str]:
    """`type` values of the dicts the consumers build, except channel-layer events (the
    dicts inside a `group_send(...)` call), which never reach a client."""
    types = set()
    for _, tree in _trees():
        internal = {
            id(node)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "group_send"
            for node in ast.walk(call)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict) or id(node) in internal:
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "type"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and not value.value.startswith("websocket.")  # ASGI messages, not frames
                ):
                    types.add(value.value)
    return types | {"message"}  # built by messaging.services.delivery.message_frame


def _error_codes() -> set[str]:
    """Codes the consumers put in `error` frames themselves: FrameError("code", ...),
    send_error("code", ...) and literal {"code": "..."} dicts."""
    codes = set()
    for _, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in {"FrameError", "send_error"} and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        codes.add(first.value)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)  # not an ASGI close code
                    ):
                        codes.add(value.value)
    return codes


def _close_codes() -> dict[str, int]:
    codes = {}
    for module in CONSUMER_MODULES:
        for name, value in vars(module).items():
            if name.startswith("CLOSE_") and isinstance(value, int):
                codes[name] = value
    return codes


def test_the_harvest_finds_what_it_should():
    """Guards the test itself: an empty harvest would pass everything below."""
    assert {"auth", "ping", "ack", "send", "devices"} <= set(_frame_handlers())
    assert messaging.consumers in CONSUMER_MODULES
    assert {"ready", "queue.empty", "error", "device.revoked"} <= _server_frame_types()
    assert "session.takeover" not in _server_frame_types()  # a channel-layer event
    assert {"malformed_json", "unknown_frame_type", "rate_limited"} <= _error_codes()
    assert _close_codes()["CLOSE_UNAUTHENTICATED"] == 4401


def test_every_client_frame_handler_is_in_the_client_frame_table():
    documented = _table_rows(_section("5.4 Client → server frames"))
    missing = [frame_type for frame_type in _frame_handlers() if frame_type not in documented]
    assert not missing, f"handlers not documented in docs/protocol.md §5.4: {missing}"


def test_the_client_frame_table_lists_only_real_handlers():
    documented = _table_rows(_section("5.4 Client → server frames"))
    ghosts = [t for t in documented if t not in _frame_handlers()]
    assert not ghosts, f"docs/protocol.md §5.4 lists frames nothing handles: {ghosts}"


@pytest.mark.parametrize("frame_type", sorted(_frame_handlers()))
def test_the_client_frame_table_names_each_frames_permission(frame_type):
    perm = _frame_handlers()[frame_type].perm
    row = _table_rows(_section("5.4 Client → server frames"))[frame_type]
    cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
    expected = "none" if perm is None else f"`{perm}`"
    assert cells[2] == expected, f"{frame_type}: permission column {cells[2]!r}, code says {perm!r}"


def test_every_server_frame_type_is_in_the_server_frame_table():
    documented = _table_rows(_section("5.5 Server → client frames"))
    missing = sorted(_server_frame_types() - set(documented))
    assert not missing, f"server frames not documented in docs/protocol.md §5.5: {missing}"


def test_every_error_frame_code_is_in_the_error_table():
    documented = _table_rows(_section("5.7 Error frames"))
    missing = sorted(_error_codes() - set(documented))
    assert not missing, f"error codes not documented in docs/protocol.md §5.7: {missing}"


@pytest.mark.parametrize(("name", "code"), sorted(_close_codes().items()))
def test_every_close_code_is_in_the_close_code_table(name, code):
    rows = _table_rows(_section("5.8 Close codes"))
    assert str(code) in rows, f"{name} = {code} missing from docs/protocol.md §5.8"
    assert f"`{name}`" in rows[str(code)], f"the {code} row should name {name}"


def test_the_window_and_heartbeat_defaults_match_the_code():
    from siphera import serve

    doc = _doc()
    assert f"**{messaging.consumers.MAX_IN_FLIGHT}** (`MAX_IN_FLIGHT`)" in doc
    assert f"every {serve.WS_PING_INTERVAL:g} s" in doc
    assert f"{serve.WS_PING_TIMEOUT:g} s after a ping" in doc
    assert f"{serve.WS_MAX_SIZE // (1024 * 1024)} MiB" in doc
