"""The SSRF guard: a webhook target must be an http(s) URL whose host resolves only to public addresses, unless the
operator allows private ones (``STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS``). Refused: loopback, link-local
(169.254/16, fe80::/10, where cloud metadata services answer), private (10/8, 172.16/12, 192.168/16, fc00::/7),
carrier-grade NAT (100.64/10), multicast, reserved, unspecified, and IPv4-mapped forms of these. The check runs at
registration and again before each delivery, which then connects to the very address checked (no second DNS
lookup an attacker's DNS could answer differently)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class TargetRefused(ValueError):
    """The URL is not a deliverable webhook target; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked target: the URL, its host name, port, and the address to connect to."""

    url: str
    host: str
    port: int
    address: str


def _disallowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    for name in ("is_loopback", "is_link_local", "is_private", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(ip, name):
            return name.removeprefix("is_").replace("_", "-")
    if ip.version == 4 and ip in _CGNAT:
        return "carrier-grade NAT"
    return None


def check_url(url: str) -> tuple[str, int, str]:
    """(scheme, port, host) of an http(s) URL with a host and no credentials. Raises TargetRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise TargetRefused(f"not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"the URL must start with https:// or http://, not {parts.scheme or '(none)'}://")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("the URL must not carry credentials (user:password@); authenticate by the signature")
    return parts.scheme, port or (443 if parts.scheme == "https" else 80), parts.hostname


def resolve(url: str, *, allow_private: bool) -> Target:
    """Check ``url`` and resolve its host (``socket.getaddrinfo``); every address must be public unless
    ``allow_private``. Returns the target with the first address. Raises TargetRefused (bad URL, name that does not
    resolve, or a refused address, naming it and the setting that would allow it)."""
    _, port, host = check_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise TargetRefused(f"the host {host!r} does not resolve ({e})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise TargetRefused(f"the host {host!r} does not resolve")
    if not allow_private:
        for a in addresses:
            why = _disallowed(ipaddress.ip_address(a.split("%", 1)[0]))
            if why:
                raise TargetRefused(f"the host {host!r} resolves to {a}, a {why} address; webhooks go to public addresses only "
                                    "(an operator can allow private ones with STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true)")
    return Target(url=url, host=host, port=port, address=addresses[0])
