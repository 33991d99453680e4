"""Run the web process: uvicorn serving siphera.asgi:application (HTTP + WebSocket).

    python -m siphera.serve                       # 127.0.0.1:8000, one process
    python -m siphera.serve --host 0.0.0.0 --port 8000 --workers 2

The one place that fixes how uvicorn serves Siphera, used by `make run`, the Docker image,
the test suite and the benchmark alike:
- WebSocket messages up to 1 MiB (the app refuses client frames over WS_MAX_FRAME_BYTES
  itself, with an `error` frame, rather than uvicorn dropping the socket);
- a ping every 20 s, and a socket whose pong does not come within 20 s is closed (1011), so
  a dead peer is noticed within 40 s (DESIGN.md: within 60 s); WS_PING_INTERVAL_SECONDS and
  WS_PING_TIMEOUT_SECONDS change them (the heartbeat test uses 1 s each);
- no permessage-deflate: frames are mostly ciphertext, which does not compress, and
  compressing secrets next to attacker-chosen bytes is how CRIME-style leaks start;
- the web processes' Prometheus metrics in one directory, emptied first
  (siphera.metrics.procdir), so any of them answers a scrape for all;
- no uvicorn access log: the app writes its own JSON access lines (siphera.middleware);
  uvicorn's other lines are JSON too, through the same secret-scrubbing filter
  (siphera.logging.config).
"""

from __future__ import annotations

import argparse
import os

WS_MAX_SIZE = 1024 * 1024
WS_PING_INTERVAL = 20.0  # default of $WS_PING_INTERVAL_SECONDS
WS_PING_TIMEOUT = 20.0  # default of $WS_PING_TIMEOUT_SECONDS


def _seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment. Zero is refused rather than read
    as "off": without pings a dead peer's socket would never be noticed."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value < float("inf"):
        raise SystemExit(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m siphera.serve",
        description="Serve Siphera (HTTP + WebSocket /ws/v1) with uvicorn.",
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_WORKERS", "1")),
        help="web processes sharing the port (default: $WEB_WORKERS or 1)",
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def check_settings() -> None:
    """Load the settings before uvicorn does, so a refused configuration (the placeholder
    SECRET_KEY with DEBUG off, say) ends the process with its message, not a traceback."""
    from django.core.exceptions import ImproperlyConfigured

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "siphera.settings")
    from django.conf import settings

    try:
        settings.SECRET_KEY  # noqa: B018 (importing the settings runs their checks)
    except ImproperlyConfigured as exc:
        raise SystemExit(f"siphera.serve: {exc}") from None


def main(argv=None) -> None:
    import uvicorn

    from siphera.logging import config as logging_config
    from siphera.metrics import procdir

    args = parse_args(argv)
    check_settings()
    # Every web process counts its metrics in one directory (siphera.metrics.procdir).
    procdir.prepare("web")
    uvicorn.run(
        "siphera.asgi:application",
        host=args.host,
        port=args.port,
        workers=args.workers,
        ws_max_size=WS_MAX_SIZE,
        ws_ping_interval=_seconds("WS_PING_INTERVAL_SECONDS", WS_PING_INTERVAL),
        ws_ping_timeout=_seconds("WS_PING_TIMEOUT_SECONDS", WS_PING_TIMEOUT),
        ws_per_message_deflate=False,
        access_log=False,
        backlog=4096,
        log_level=args.log_level,
        log_config=logging_config(os.environ.get("LOG_LEVEL", "INFO")),
    )


if __name__ == "__main__":
    main()
