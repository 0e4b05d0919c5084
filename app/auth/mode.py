"""Which authentication mode is in force (``STILLHOUSE_AUTH`` and ``STILLHOUSE_HOST``), and the start-up check.

- ``auto`` (default): keys are not required when the API is bound to a loopback address (127.0.0.0/8, ::1,
  ``localhost``), required otherwise.
- ``required``: every ``/v1`` request needs ``Authorization: Bearer <key>``.
- ``off``: keys are not required; refused at start-up unless the host is loopback.

When keys are not required, a request without a key acts as the built-in tenant ``default``; a request *with*
a key is still checked and acts as the key's tenant.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from dataclasses import dataclass
from functools import lru_cache

from stillhouse.models import DEFAULT_TENANT
from stillhouse.settings import Settings

log = logging.getLogger("stillhouse.auth")


class AuthConfigError(RuntimeError):
    """The configuration would expose the API without keys (``STILLHOUSE_AUTH=off`` on a non-loopback host)."""


@lru_cache(maxsize=4096)
def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1, ::ffff:127.x); False for anything else,
    including ``0.0.0.0``, ``::`` and names other than localhost. Cached per host string (every keyless request asks)."""
    if not host:
        return False
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass(frozen=True)
class AuthMode:
    """The mode in force: ``required`` (keys needed), the ``setting`` it came from, the bound ``host``, and
    ``refused`` (``off`` asked for on a non-loopback host: treated as required, and start-up refuses it)."""

    required: bool
    setting: str
    host: str
    refused: bool = False

    def describe(self) -> str:
        """One line for the start-up log, e.g. "authentication is OFF: bound to loopback 127.0.0.1, ..."."""
        if not self.required:
            return (f"authentication is OFF: bound to loopback {self.host}, every request without a key acts as tenant "
                    f"{DEFAULT_TENANT!r} (STILLHOUSE_AUTH={self.setting}; a request with a key still acts as the key's tenant)")
        why = "STILLHOUSE_AUTH=required" if self.setting == "required" else f"bound to non-loopback {self.host} (STILLHOUSE_AUTH=auto)"
        return (f"authentication is REQUIRED: {why}; every /v1 request needs 'Authorization: Bearer <key>' "
                f"(create tenants and keys with `python -m app tenants create NAME` and `python -m app keys create --tenant NAME`)")


def auth_mode(settings: Settings) -> AuthMode:
    """The mode for ``settings`` (never raises; an ``off`` on a non-loopback host fails safe as required)."""
    return _auth_mode(settings.auth, settings.host)


@lru_cache(maxsize=64)
def _auth_mode(auth: str, host: str) -> AuthMode:
    loopback = is_loopback(host)
    if auth == "required":
        return AuthMode(True, "required", host)
    if auth == "off":
        return AuthMode(not loopback, "off", host, refused=not loopback)
    return AuthMode(not loopback, "auto", host)


def check_auth_config(settings: Settings) -> AuthMode:
    """The mode for ``settings``. Raises AuthConfigError when ``STILLHOUSE_AUTH=off`` is set on a non-loopback host."""
    mode = auth_mode(settings)
    if mode.refused:
        raise AuthConfigError(
            f"STILLHOUSE_AUTH=off is refused: the API would be bound to {settings.host}, which is not a loopback address, "
            f"so anyone who can reach it would act as tenant {DEFAULT_TENANT!r}. Bind to 127.0.0.1 (STILLHOUSE_HOST), or use "
            "STILLHOUSE_AUTH=auto/required and create keys with `python -m app keys create --tenant NAME`.")
    return mode


def announce_auth_mode(settings: Settings) -> AuthMode:
    """Print (to stderr) and log (where logging is configured) which mode is in force; called at API start-up.

    Raises AuthConfigError when ``STILLHOUSE_AUTH=off`` is set on a non-loopback host."""
    mode = check_auth_config(settings)
    line = mode.describe()
    if log.hasHandlers():  # without a handler, logging's last-resort handler would print the line a second time
        (log.warning if not mode.required else log.info)("%s", line)
    print(f"stillhouse: {line}", file=sys.stderr, flush=True)
    return mode
