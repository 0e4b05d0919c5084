"""Webhook endpoints of a tenant, and the deliveries (one per event and endpoint) with their attempts.

A delivery row is written in the same transaction as the event it announces (an outbox): it cannot be lost
between a job's final status and the HTTP call; the workers' dispatcher (``stillhouse.webhooks.dispatch``) claims
due rows and sends them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stillhouse.models.base import Base, UTCDateTime, utcnow


class WebhookEndpoint(Base):
    """A URL of a tenant that receives signed events (Standard Webhooks). ``secret`` (``whsec_`` + base64 of 32
    random bytes) signs them; it is shown once, at creation or rotation, and stored because signing needs it.
    After a rotation ``previous_secret`` also signs until ``previous_secret_expires_at``. ``events``: the event
    types it receives. ``enabled`` turns false when the receiver answers 410 Gone (``disabled_reason`` says so)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint. ``id`` (``msg_…``) is the ``webhook-id`` header, the same on every retry;
    ``body`` is the exact JSON sent. ``status``: pending -> succeeded | failed (retries used up, or the endpoint
    disabled or deleted). ``next_attempt_at``: when a pending delivery is due; ``locked_until``: a dispatcher
    that claimed it holds it until then (another one takes it over after that)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
                      Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: when, the answer's status code (None: no answer) or the error, how long
    it took (ms), and the first characters of the answer's body."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
    response_excerpt: Mapped[str | None] = mapped_column(String(500), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
