"""Sweeps (a search over students and distillation settings, each trial an ordinary job) and their trials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stillhouse.models.base import Base, UTCDateTime, utcnow
from stillhouse.models.tenant import DEFAULT_TENANT


class Sweep(Base):
    """A sweep. ``spec``: the validated sweep request (base job spec, search space, sampler, objectives, budget).
    ``status``: running → succeeded | failed | cancelled (``stillhouse.sweeps.scheduler`` moves it). ``study_name``:
    its Optuna study in the service's database (Optuna's RDB storage). ``version``: bumped by every scheduler step
    (a compare-and-set: of processes racing to advance a sweep, one wins each step). ``front``: the non-dominated
    trials' summary once finished. ``stop_reason``: why it stopped creating trials (max_trials, max_runtime_s,
    search_space_exhausted, cancelled, invalid_search_space)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True, default=DEFAULT_TENANT)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    study_name: Mapped[str] = mapped_column(String(80))
    version: Mapped[int] = mapped_column(Integer, default=0)
    trials_created: Mapped[int] = mapped_column(Integer, default=0)
    stop_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    front: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SweepTrial(Base):
    """One trial of a sweep: Optuna's trial ``number``, its ``params`` (the sampled values by spec path) and the job
    that runs it. ``told``: its result was given to Optuna (``values``: the objective values, in the sweep's order;
    ``state``: complete, failed or cancelled)."""

    __tablename__ = "sweep_trials"

    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    told: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    values: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    training_time_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
