"""API keys and tenants: key generation and hashing, authentication of a request's key, and the admin
operations behind ``python -m app tenants …`` / ``keys …``.

A key looks like ``sh_3f9c1a2b_<43 url-safe characters>``: ``sh_3f9c1a2b`` is its public *prefix* (stored,
shown in listings, used to find the row); the rest is 256 bits from ``secrets``. Only the sha256 hex of the
whole key is stored. A slow password hash (bcrypt, scrypt, argon2) exists to make guessing *low-entropy*
human passwords expensive; a 256-bit random token cannot be guessed whatever the hash costs, so one sha256
is enough, and it keeps every request cheap. Hashes are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, Unauthorized, Unprocessable
from stillhouse.models import DEFAULT_TENANT, ApiKey, Tenant, new_id, utcnow

log = logging.getLogger("stillhouse.auth")

KEY_RE = re.compile(r"^(sh_[0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
"""A whole key: group 1 is the prefix, group 2 the secret (``secrets.token_urlsafe(32)``: 43 characters)."""
PREFIX_RE = re.compile(r"^sh_[0-9a-f]{8}$")
TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LAST_USED_RESOLUTION_S = 60
"""``api_keys.last_used_at`` is written at most once per this many seconds per key (not once per request)."""
KEEP = object()
"""Passed to ``set_limits``: leave this limit as it is."""


@dataclass(frozen=True)
class AuthTenant:
    """Who a request acts as: tenant ``id`` and ``name``; ``key_id``/``key_prefix`` of the key used (None when
    authentication is off and the request carried no key)."""

    id: str
    name: str
    key_id: str | None = None
    key_prefix: str | None = None


DEFAULT_PRINCIPAL = AuthTenant(id=DEFAULT_TENANT, name=DEFAULT_TENANT)
"""What a request without a key acts as when authentication is off."""


def generate_key() -> tuple[str, str]:
    """A new random key and its prefix: (``sh_<8 hex>_<43 url-safe chars>``, ``sh_<8 hex>``)."""
    prefix = f"sh_{secrets.token_hex(4)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(key: str) -> str:
    """The stored form of a key: sha256 hex (64 characters) of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def authenticate(session: Session, token: str) -> AuthTenant:
    """The tenant a bearer ``token`` belongs to; refreshes the key's ``last_used_at`` when it is older than
    ``LAST_USED_RESOLUTION_S`` seconds (in its own short transaction, so the request's session is untouched).

    Raises Unauthorized (401) for a malformed, unknown or revoked key (the same message for malformed and unknown).
    """
    m = KEY_RE.match(token)
    digest = hash_key(token)
    row = None
    if m:
        row = session.execute(
            select(ApiKey.id, ApiKey.prefix, ApiKey.key_hash, ApiKey.revoked_at, ApiKey.last_used_at, Tenant.id.label("tenant_id"),
                   Tenant.name.label("tenant_name"))
            .join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.prefix == m.group(1))
        ).first()
    if row is None or not hmac.compare_digest(digest, row.key_hash):
        raise Unauthorized("invalid API key (keys look like sh_XXXXXXXX_…; an operator creates them with "
                           "`python -m app keys create --tenant NAME`)", invalid_token=True)
    if row.revoked_at is not None:
        raise Unauthorized(f"API key {row.prefix} was revoked on {row.revoked_at:%Y-%m-%d %H:%M} UTC", invalid_token=True)
    now = utcnow()
    if row.last_used_at is None or row.last_used_at < now - timedelta(seconds=LAST_USED_RESOLUTION_S):
        _touch(session, row.id, now)
    return AuthTenant(id=row.tenant_id, name=row.tenant_name, key_id=row.id, key_prefix=row.prefix)


def _touch(session: Session, key_id: str, now: datetime) -> None:
    """Set ``last_used_at`` = ``now`` unless another request did within the resolution (a conditional UPDATE, so
    processes racing write once). Bookkeeping only: a failure is logged, never denies the request."""
    cutoff = now - timedelta(seconds=LAST_USED_RESOLUTION_S)
    try:
        with session.get_bind().begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < cutoff))
                         .values(last_used_at=now))
    except SQLAlchemyError as e:
        log.warning("could not record the use of key %s: %s", key_id, e)


# -- admin: tenants --------------------------------------------------------------------------------------------------
MAX_JOBS_LIMIT = 2**31 - 1  # jobs.max_running_jobs is a 32-bit INTEGER
MAX_BYTES_LIMIT = 2**63 - 1  # tenants.max_storage_bytes is a 64-bit BIGINT


def _check_limits(max_running_jobs: int | None, max_storage_bytes: int | None) -> None:
    """Raises Unprocessable when a limit is below 1 or beyond what its column holds."""
    if max_running_jobs is not None and not 1 <= max_running_jobs <= MAX_JOBS_LIMIT:
        raise Unprocessable(f"max_running_jobs must be between 1 and {MAX_JOBS_LIMIT:,} (or unset for the service default); "
                            f"got {max_running_jobs}", param="max_running_jobs")
    if max_storage_bytes is not None and not 1 <= max_storage_bytes <= MAX_BYTES_LIMIT:
        raise Unprocessable(f"max_storage_bytes must be between 1 byte and {MAX_BYTES_LIMIT:,} bytes (or unset for the service "
                            f"default); got {max_storage_bytes}", param="max_storage_bytes")


def get_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name`` (or with id ``name``). Raises NotFound."""
    row = session.scalars(select(Tenant).where(or_(Tenant.name == name, Tenant.id == name))).first()
    if row is None:
        raise NotFound(f"no tenant {name!r} (list them with `python -m app tenants list`)", param="tenant")
    return row


def create_tenant(session: Session, name: str, *, max_running_jobs: int | None = None, max_storage_bytes: int | None = None) -> Tenant:
    """Create and commit a tenant. ``max_running_jobs`` (live jobs) and ``max_storage_bytes`` (bytes) override the
    service-wide defaults; None keeps the default. Raises Unprocessable (bad name or limits), Conflict (name taken)."""
    if not TENANT_NAME_RE.match(name):
        raise Unprocessable(f"tenant name {name!r}: 1-100 characters, letters, digits, '.', '_' or '-', starting with a letter "
                            "or digit", param="name")
    _check_limits(max_running_jobs, max_storage_bytes)
    if session.scalars(select(Tenant.id).where(or_(Tenant.name == name, Tenant.id == name))).first():
        raise Conflict(f"tenant {name!r} exists", param="name", code="tenant_exists")
    row = Tenant(id=new_id("ten"), name=name, max_running_jobs=max_running_jobs, max_storage_bytes=max_storage_bytes)
    session.add(row)
    try:
        session.commit()
    except IntegrityError as e:
        session.rollback()
        raise Conflict(f"tenant {name!r} exists", param="name", code="tenant_exists") from e
    return row


def list_tenants(session: Session) -> list[Tenant]:
    """Every tenant, oldest first."""
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)))


def set_limits(session: Session, name: str, *, max_running_jobs: int | None | object = KEEP,
               max_storage_bytes: int | None | object = KEEP) -> Tenant:
    """Change a tenant's limits and commit: an int sets it, None restores the service default, leaving an argument
    out keeps the current value. Raises NotFound, Unprocessable (a limit below 1)."""
    row = get_tenant(session, name)
    _check_limits(None if max_running_jobs is KEEP else max_running_jobs,  # type: ignore[arg-type]
                  None if max_storage_bytes is KEEP else max_storage_bytes)  # type: ignore[arg-type]
    if max_running_jobs is not KEEP:
        row.max_running_jobs = max_running_jobs  # type: ignore[assignment]
    if max_storage_bytes is not KEEP:
        row.max_storage_bytes = max_storage_bytes  # type: ignore[assignment]
    row.updated_at = utcnow()
    session.commit()
    return row


# -- admin: keys -----------------------------------------------------------------------------------------------------
def create_key(session: Session, tenant: str, *, name: str | None = None) -> tuple[ApiKey, str]:
    """Create and commit a key of tenant ``tenant`` (name or id) with an optional label ``name`` (≤ 100 chars).

    Returns (row, the whole key); the key is not stored and cannot be shown again. Raises NotFound (tenant),
    Unprocessable (label too long)."""
    if name is not None and len(name) > 100:
        raise Unprocessable("the key's name is at most 100 characters", param="name")
    t = get_tenant(session, tenant)
    for _ in range(5):  # prefixes are 32 random bits: a clash is rare, and retried
        key, prefix = generate_key()
        row = ApiKey(id=new_id("key"), tenant_id=t.id, name=name, prefix=prefix, key_hash=hash_key(key))
        session.add(row)
        try:
            session.commit()
            return row, key
        except IntegrityError:
            session.rollback()
    raise Conflict("could not find a free key prefix in 5 tries; try again", code="key_prefix_clash")


def list_keys(session: Session, tenant: str | None = None) -> list[tuple[ApiKey, str]]:
    """(key row, tenant name) of every key, or of one tenant's (name or id), oldest first. Raises NotFound."""
    q = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        q = q.where(ApiKey.tenant_id == get_tenant(session, tenant).id)
    return [(k, n) for k, n in session.execute(q).all()]


def find_key(session: Session, ref: str) -> ApiKey:
    """A key by its id (``key_…``), its prefix (``sh_XXXXXXXX``) or the whole key. Raises NotFound."""
    m = KEY_RE.match(ref)
    prefix = m.group(1) if m else ref if PREFIX_RE.match(ref) else None
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first() if prefix else session.get(ApiKey, ref)
    if row is None or (m and not hmac.compare_digest(hash_key(ref), row.key_hash)):
        raise NotFound(f"no API key {ref[:20]!r} (give its id key_… or its prefix sh_XXXXXXXX; see `python -m app keys list`)",
                       param="key")
    return row


def revoke_key(session: Session, ref: str) -> tuple[ApiKey, bool]:
    """Revoke a key (id, prefix or whole key) and commit; requests with it get 401 from then on. Returns (row,
    True) when it was revoked now, (row, False) when it already was. Raises NotFound."""
    row = find_key(session, ref)
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = utcnow()
    session.commit()
    return row, True
