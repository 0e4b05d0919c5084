"""The distillation core's ``Reporter`` implemented on SQL: phases, progress, metric rows, events
and the cancel flag, written with few round trips (progress and metrics are batched and throttled)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.states import CANCELLED, CANCELLING
from app.models import Job, JobEvent, Metric, utcnow
from worker.distill.reporter import MetricRow


class SqlReporter:
    """Writes a job's progress to SQL. ``interval_s``: least seconds between throttled writes and
    cancel checks (progress, buffered metric rows); phase changes and events flush at once."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, interval_s: float = 0.5) -> None:
        self.sessions, self.job_id, self.interval_s = sessions, job_id, interval_s
        self._rows: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._last_write = 0.0
        self._last_check = 0.0
        self._stop = False

    def _flush(self, session: Session) -> None:
        if self._rows:
            session.execute(insert(Metric), self._rows)
            self._rows = []
        if self._progress is not None:
            session.execute(update(Job).where(Job.id == self.job_id).values(**self._progress, updated_at=utcnow()))
            self._progress = None
        self._last_write = time.monotonic()

    def flush(self) -> None:
        """Write buffered metric rows and progress now."""
        if self._rows or self._progress is not None:
            with self.sessions.begin() as s:
                self._flush(s)

    def phase(self, phase: str) -> None:
        """Record the new phase on the job and as an event."""
        with self.sessions.begin() as s:
            self._flush(s)
            s.execute(update(Job).where(Job.id == self.job_id).values(phase=phase, updated_at=utcnow()))
            s.add(JobEvent(job_id=self.job_id, type="phase", message=f"phase -> {phase}", data={"phase": phase}))

    def progress(self, *, epoch: int, epochs: int, step: int, total_steps: int, fraction: float, eta_s: float | None) -> None:
        """Buffer progress; written at most every ``interval_s`` seconds and at epoch ends."""
        self._progress = {"progress_epoch": epoch, "progress_epochs": epochs, "progress_step": step,
                          "progress_total_steps": total_steps, "progress_fraction": round(float(fraction), 6),
                          "progress_eta_s": None if eta_s is None else round(float(eta_s), 2)}
        if step == total_steps or time.monotonic() - self._last_write >= self.interval_s:
            self.flush()

    def metrics(self, rows: Sequence[MetricRow]) -> None:
        """Buffer metric rows; epoch-level rows (split 'val') flush at once with the progress."""
        self._rows.extend({"job_id": self.job_id, "name": r.name, "split": r.split, "step": int(r.step),
                           "epoch": int(r.epoch), "value": float(r.value)} for r in rows)
        if any(r.split == "val" for r in rows) or time.monotonic() - self._last_write >= self.interval_s:
            self.flush()

    def event(self, type: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Record an event (flushing buffered rows first, so a checkpoint event follows its metrics)."""
        with self.sessions.begin() as s:
            self._flush(s)
            s.add(JobEvent(job_id=self.job_id, type=type, message=message, data=data))

    def discard_metrics_after(self, epoch: int, splits: Sequence[str] | None = None) -> None:
        """Delete this job's metric rows of epochs after ``epoch`` (only of ``splits`` when given): the work of an
        attempt that did not reach its checkpoint."""
        self._rows = [r for r in self._rows if r["epoch"] <= epoch or (splits is not None and r["split"] not in splits)]
        query = delete(Metric).where(Metric.job_id == self.job_id, Metric.epoch > epoch)
        if splits is not None:
            query = query.where(Metric.split.in_(list(splits)))
        with self.sessions.begin() as s:
            s.execute(query)

    def should_stop(self) -> bool:
        """True once the job is cancelling/cancelled; the status is read at most every ``interval_s`` seconds."""
        if self._stop:
            return True
        now = time.monotonic()
        if now - self._last_check >= self.interval_s:
            self._last_check = now
            with self.sessions() as s:
                status = s.scalar(select(Job.status).where(Job.id == self.job_id))
            self._stop = status in (CANCELLING, CANCELLED)
        return self._stop
