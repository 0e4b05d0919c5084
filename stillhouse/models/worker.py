"""Running workers, as each worker's main process records itself: which queues it consumes, on which devices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from stillhouse.models.base import Base, UTCDateTime, utcnow


class Worker(Base):
    """A worker process (``id`` = ``host:pid:random``, as lease owners are) and the Celery queues it consumes.

    Its main process rewrites ``last_seen_at`` every ``STILLHOUSE_WORKER_HEARTBEAT_S`` and deletes the row when it
    stops; a row not seen for three intervals is a worker that is gone (killed, machine lost)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    devices: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
