"""Uploaded files: teachers, datasets and student initialisations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from stillhouse.models.base import Base, UTCDateTime, utcnow
from stillhouse.models.tenant import DEFAULT_TENANT


class File(Base):
    """One stored upload. ``storage_key`` is server-generated; ``filename`` is the client's name, metadata only.
    (tenant_id, sha256) is indexed: an upload of content the tenant already has returns the existing file."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_id_sha256", "tenant_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True, default=DEFAULT_TENANT)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(20))
    parameters: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    input_shape: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    output_shape: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    storage_key: Mapped[str] = mapped_column(String(255))
