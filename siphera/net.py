"""Client address of a request or a socket, honouring only as many proxies as configured."""

from __future__ import annotations

import ipaddress

from django.conf import settings


def address(text: str | None) -> str | None:
    """`text` as an IP address (PostgreSQL's inet takes it, rate limits key on it), or
    None. Proxies that add the client's port are understood: `203.0.113.9:4711`,
    `[2001:db8::1]:443`."""
    text = (text or "").strip()
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4:port (a bare IPv6 address has two or more)
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def forwarded_client(forwarded: str, peer: str | None) -> str | None:
    """The client's address: with TRUSTED_PROXY_COUNT proxies in front, the entry of
    X-Forwarded-For (`forwarded`) the outermost trusted proxy wrote, else the peer's. An
    entry that is not an address (a proxy misconfigured, or fewer proxies than said) is
    ignored for the peer's address: stored addresses stay valid, and a client cannot pick
    its own rate-limit key."""
    hops = settings.TRUSTED_PROXY_COUNT
    if hops > 0:
        entries = [p.strip() for p in forwarded.split(",")]
        entries = [p for p in entries if p]
        if len(entries) >= hops:
            found = address(entries[-hops])
            if found is not None:
                return found
    return address(peer)


def client_ip(request) -> str | None:
    return forwarded_client(
        request.META.get("HTTP_X_FORWARDED_FOR", ""), request.META.get("REMOTE_ADDR")
    )
