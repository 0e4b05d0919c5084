"""Jobs and what they record: the files they use, events, metric rows and artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stillhouse.models.base import Base, UTCDateTime, utcnow
from stillhouse.models.tenant import DEFAULT_TENANT


class Job(Base):
    """A distillation job. ``status`` only changes through ``stillhouse.jobs.states.transition``.

    Durability columns: ``lease_owner`` / ``lease_expires_at`` (the worker that holds the job, renewed by its
    heartbeat; a second delivery finds a live lease and exits), ``enqueued_at`` (when the last message for it
    was sent; NULL = committed but never sent, which the sweep repairs), ``handbacks`` (graceful hand-backs,
    not counted as worker deaths), ``runtime_s`` (seconds the job has run on workers, summed over attempts; written by the
    heartbeat, checked against ``training.max_runtime_s``). ``idempotency_key`` + ``request_sha256``: the ``Idempotency-Key`` of the
    creating request and the sha256 of its body (unique per tenant). ``queue``: the Celery queue its messages go to
    (``cpu`` or ``gpu``, from ``training.device``). ``registry_export``: the model-registry export's outcome
    (``{"mlflow": {"status": "pending"|"registered"|"failed", ...}}``), when the spec asks for one. ``job_metadata`` (column ``metadata``): the
    caller's string map (at most 16 keys of ≤ 64 characters, values ≤ 512 characters), filterable in ``GET /v1/jobs``. ``sweep_id``: the sweep this job is a trial of (``stillhouse.sweeps``), else NULL.
    """

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True, default=DEFAULT_TENANT)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    handbacks: Mapped[int] = mapped_column(Integer, default=0)
    runtime_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    progress_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)
    registry_export: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    job_metadata: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    sweep_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class JobFile(Base):
    """Which uploads a job uses, and in which role (teacher, data.train, ...)."""

    __tablename__ = "job_files"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), index=True)


class JobEvent(Base):
    """An ordered event of a job (status and phase changes, resumes, errors); ``id`` is the cursor."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    type: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Metric(Base):
    """One metric value: ``name`` (e.g. 'loss/kd', 'top1'), ``split`` ('train', 'train_epoch', 'val'; a job's second passes prefix
    them: 'baseline_train_epoch', 'prune_val'), global ``step``, ``epoch``."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    """A published output of a succeeded job (student weights, spec, ONNX)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))
    storage_key: Mapped[str] = mapped_column(String(255))
