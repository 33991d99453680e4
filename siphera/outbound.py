"""Requests the server makes to addresses an org admin typed in (an IdP's metadata URL, an
OpenID issuer and the endpoints its discovery names), without letting them reach what the
server can reach and the admin cannot (server-side request forgery, OWASP's SSRF cheat
sheet):

- only http(s) URLs without credentials or fragments, https only unless the caller allows
  http (development);
- the host name is resolved here, every address it resolves to must be public unicast
  (not loopback, private, link-local such as the cloud metadata service 169.254.169.254,
  multicast or reserved) or inside `OUTBOUND_ALLOWED_NETWORKS`, and the connection goes to
  the address that was checked (with the name kept for the Host header and TLS), so a DNS
  answer that changes between the check and the connection (rebinding) cannot slip past;
- no redirects, no proxy from the environment, a timeout, and a cap on the body read.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings


class OutboundError(Exception):
    """The request was refused or failed; the message is safe to show an admin."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.OUTBOUND_ALLOWED_NETWORKS]


def check_url(value, what: str, *, allow_http: bool = False) -> str:
    """`value` as an absolute http(s) URL fit to fetch, or OutboundError. `what` names it
    in the message ("metadata_url", "The token endpoint")."""
    if not isinstance(value, str) or not value.strip() or len(value) > 2000:
        raise OutboundError(f"{what} is missing or longer than 2000 characters.")
    value = value.strip()
    parts = urlsplit(value)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.fragment:
        raise OutboundError(f"{what} ({value}) must be an https:// URL without a #fragment.")
    if parts.username or parts.password:
        raise OutboundError(f"{what} must not carry a user name or password.")
    return value


def _is_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in network for network in allowed_networks()):
        return True
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int, what: str) -> str:
    """The address to connect to for `host`: every address it resolves to must be allowed
    (one bad answer among good ones is refused: the OS might pick it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundError(f"The host name of {what} ({host}) does not resolve.") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    refused = [str(a) for a in addresses if not _is_allowed(a)]
    if not addresses or refused:
        raise OutboundError(
            f"{what} ({host}) resolves to an internal address ({', '.join(refused[:3])}); "
            "the server does not fetch from there unless the operator allows that network "
            "(OUTBOUND_ALLOWED_NETWORKS)."
        )
    return str(addresses[0])


def request(
    method: str,
    url: str,
    *,
    what: str,
    timeout: float,
    max_bytes: int,
    allow_http: bool = False,
    headers: dict | None = None,
    **kwargs,
) -> Answer:
    """One request to `url` with the rules above; OutboundError when refused, unreachable,
    too slow or too big. Any status is returned: the caller decides what it means."""
    url = check_url(url, what, allow_http=allow_http)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve(parts.hostname, port, what)
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {**(headers or {}), "Host": parts.netloc}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    too_big = OutboundError(f"{what} is larger than {max_bytes // 1024} KiB.")
    # httpx's timeout is per read: a peer dripping a byte at a time would never trip it.
    deadline = time.monotonic() + 2 * timeout
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                method, target, headers=headers, extensions=extensions, **kwargs
            ) as response,
        ):
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise too_big
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise too_big
                if time.monotonic() > deadline:
                    raise OutboundError(f"{what} did not answer in time.")
            return Answer(response.status_code, response.headers, bytes(body))
    except httpx.TimeoutException:
        raise OutboundError(f"{what} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise OutboundError(f"{what} could not be reached ({type(exc).__name__}).") from None
