"""The distillation core's ``Reporter`` implemented on SQL: phases, progress, metric rows, events and the stop
flags (cancel, hand-back on shutdown, lost lease), written with few round trips (progress and metrics are batched
and throttled).

With an ``owner`` every write is conditional on that process still holding the job's lease: each transaction
starts with ``UPDATE jobs ... WHERE id = :job AND lease_owner = :owner``, and when that matches no row the
transaction is rolled back and ``LeaseLost`` raised, so a process that lost its job writes nothing more.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from stillhouse.jobs.states import CANCELLED, CANCELLING
from stillhouse.metrics import PhaseClock
from stillhouse.models import Job, JobEvent, Metric, utcnow
from distill.reporter import MetricRow

CANCEL, HANDBACK, LEASE_LOST, PRUNED = "cancel", "handback", "lease_lost", "pruned"


class LeaseLost(Exception):
    """This process no longer holds the job's lease (another worker took the job over, or the lease could not be
    renewed in time); it must stop without writing anything more."""


class SqlReporter:
    """Writes a job's progress to SQL. ``interval_s``: least seconds between throttled writes and cancel checks
    (progress, buffered metric rows); phase changes and events flush at once.

    ``owner``: the lease owner id this process holds the job under (None: unguarded writes, for tools and tests).
    ``lease_lost``: a callable that is true once the heartbeat lost the lease; ``handback``: a callable that is true
    once the worker is shutting down (``stillhouse.jobs.handback.requested``). ``prune_check``: for a sweep trial with a
    pruner, a callable given every batch of metric rows that returns why the trial must stop early, or None
    (``stillhouse.sweeps.pruning.TrialPruning.observe``); its message is kept in ``pruned``. ``stop_reason`` says why
    ``should_stop`` turned true: ``lease_lost``, ``cancel``, ``pruned`` or ``handback``, in that order of precedence.
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str, interval_s: float = 0.5, *, owner: str | None = None,
                 lease_lost: Callable[[], bool] | None = None, handback: Callable[[], bool] | None = None,
                 prune_check: Callable[[Sequence[MetricRow]], str | None] | None = None) -> None:
        self.sessions, self.job_id, self.interval_s = sessions, job_id, interval_s
        self.owner = owner
        self._lease_lost = lease_lost or (lambda: False)
        self._handback = handback or (lambda: False)
        self._prune_check = prune_check
        self.pruned: str | None = None
        self._rows: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._last_write = 0.0
        self._last_check = 0.0
        self._cancelled = False
        self._lost = False
        self.lease_taken = False  # True once a write or a check found another owner (not merely a late renewal)
        self.stop_reason: str | None = None
        self.phase_clock = PhaseClock()  # stillhouse_job_phase_duration_seconds; the runner closes it at the job's end

    def _guard(self, session: Session, **values: Any) -> None:
        """First statement of every write: touch the job row while this owner holds it (sets ``values`` too)."""
        q = update(Job).where(Job.id == self.job_id).values(**values, updated_at=utcnow())
        if self.owner is not None:
            q = q.where(Job.lease_owner == self.owner)
        if session.execute(q.execution_options(synchronize_session=False)).rowcount != 1 and self.owner is not None:
            self._lost = self.lease_taken = True
            raise LeaseLost(f"job {self.job_id}: lease of {self.owner} lost")

    def _write(self, session: Session, **values: Any) -> None:
        self._guard(session, **(self._progress or {}), **values)
        self._progress = None
        if self._rows:
            session.execute(insert(Metric), self._rows)
            self._rows = []
        self._last_write = time.monotonic()

    def flush(self) -> None:
        """Write buffered metric rows and progress now. Raises ``LeaseLost``."""
        if self._rows or self._progress is not None:
            with self.sessions.begin() as s:
                self._write(s)

    def phase(self, phase: str) -> None:
        """Record the new phase on the job and as an event. Raises ``LeaseLost``."""
        with self.sessions.begin() as s:
            self._write(s, phase=phase)
            s.add(JobEvent(job_id=self.job_id, type="phase", message=f"phase -> {phase}", data={"phase": phase}))
        self.phase_clock.switch(phase)

    def progress(self, *, epoch: int, epochs: int, step: int, total_steps: int, fraction: float, eta_s: float | None) -> None:
        """Buffer progress; written at most every ``interval_s`` seconds and at epoch ends. Raises ``LeaseLost``."""
        self._progress = {"progress_epoch": epoch, "progress_epochs": epochs, "progress_step": step,
                          "progress_total_steps": total_steps, "progress_fraction": round(float(fraction), 6),
                          "progress_eta_s": None if eta_s is None else round(float(eta_s), 2)}
        if step == total_steps or time.monotonic() - self._last_write >= self.interval_s:
            self.flush()

    def metrics(self, rows: Sequence[MetricRow]) -> None:
        """Buffer metric rows; epoch-level rows (split 'val') flush at once with the progress; then, for a trial with a
        pruner, ask ``prune_check`` (written rows first, so a pruned trial's last epoch is in its metrics). Raises
        ``LeaseLost``."""
        self._rows.extend({"job_id": self.job_id, "name": r.name, "split": r.split, "step": int(r.step),
                           "epoch": int(r.epoch), "value": float(r.value)} for r in rows)
        if any(r.split == "val" for r in rows) or time.monotonic() - self._last_write >= self.interval_s:
            self.flush()
        if self._prune_check is not None and self.pruned is None:
            self.pruned = self._prune_check(rows)

    def event(self, type: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Record an event (flushing buffered rows first, so a checkpoint event follows its metrics). Raises ``LeaseLost``."""
        with self.sessions.begin() as s:
            self._write(s)
            s.add(JobEvent(job_id=self.job_id, type=type, message=message, data=data))

    def discard_metrics_after(self, epoch: int, splits: Sequence[str] | None = None, step: int | None = None) -> None:
        """Delete this job's metric rows after a checkpoint (only of ``splits`` when given): those of epochs after
        ``epoch``, or, with ``step`` (a checkpoint taken within an epoch), those of steps after ``step``. They are the
        work of an attempt that did not reach that checkpoint. Raises ``LeaseLost``."""
        def after(r: dict[str, Any]) -> bool:
            return (r["step"] > step if step is not None else r["epoch"] > epoch) and (splits is None or r["split"] in splits)

        self._rows = [r for r in self._rows if not after(r)]
        query = delete(Metric).where(Metric.job_id == self.job_id, Metric.step > step if step is not None else Metric.epoch > epoch)
        if splits is not None:
            query = query.where(Metric.split.in_(list(splits)))
        with self.sessions.begin() as s:
            self._guard(s)
            s.execute(query)

    def should_stop(self) -> bool:
        """True once the job must stop: its lease is lost, it is cancelling/cancelled (the status is read at most every
        ``interval_s`` seconds), its sweep's pruner stopped it (``pruned``), or its worker is shutting down (checked at
        every call). Sets ``stop_reason``."""
        if self._lost or self._lease_lost():
            self._lost = True
            self.stop_reason = LEASE_LOST
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._last_check >= self.interval_s:
            self._last_check = now
            with self.sessions() as s:
                row = s.execute(select(Job.status, Job.lease_owner).where(Job.id == self.job_id)).first()
            if row is None or (self.owner is not None and row.lease_owner != self.owner):
                self._lost = self.lease_taken = True
                self.stop_reason = LEASE_LOST
                return True
            self._cancelled = row.status in (CANCELLING, CANCELLED)
        if self._cancelled:
            self.stop_reason = CANCEL
            return True
        if self.pruned is not None:
            self.stop_reason = PRUNED
            return True
        if self._handback():
            self.stop_reason = HANDBACK
            return True
        return False

    def cancel_requested(self) -> bool:
        """``should_stop`` without the hand-back flag: true when the job was cancelled or its lease lost (a job that
        finished training publishes its result even while its worker shuts down)."""
        return self.should_stop() and self.stop_reason != HANDBACK

    def checkpoint_on_stop(self) -> bool:
        """True when the current stop is a hand-back, which keeps a checkpoint of the step reached; a cancel keeps none."""
        return self.stop_reason == HANDBACK

