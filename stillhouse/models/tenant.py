"""Tenants (the unit of isolation and of limits) and their API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from stillhouse.models.base import Base, UTCDateTime, utcnow

DEFAULT_TENANT = "default"
"""The tenant every request acts as when authentication is off (loopback only); created by migration 0002."""


class Tenant(Base):
    """A team or pipeline: owns files and jobs; nothing of one tenant is visible to another.

    ``max_running_jobs`` (live jobs: queued, running, cancelling) and ``max_storage_bytes`` (uploads +
    artifacts, bytes) override the service-wide defaults when set.
    """

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiKey(Base):
    """An API key of a tenant. Only ``key_hash`` (sha256 hex of the whole key) is stored; ``prefix`` (the
    key's public start, e.g. ``sh_3f9c1a2b``) finds the row and is shown in listings. Revoked keys stay."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
