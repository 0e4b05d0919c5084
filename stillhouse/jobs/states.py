"""Job states and the allowed transitions, declared once and enforced here (by both API and worker).

``transition`` is a compare-and-set: ``UPDATE jobs SET status=:to WHERE id=:id AND status IN (allowed)``,
so two processes racing (a cancel and a finishing worker, two deliveries of one task) cannot both win.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from stillhouse.models import Job, JobEvent, utcnow
from stillhouse.webhooks import outbox

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
LIVE = frozenset({QUEUED, RUNNING, CANCELLING})

# to-state -> the states it may be entered from
ALLOWED_FROM: dict[str, frozenset[str]] = {
    RUNNING: frozenset({QUEUED, RUNNING}),  # RUNNING -> RUNNING: a redelivered task resuming (attempt + 1)
    CANCELLING: frozenset({RUNNING}),
    CANCELLED: frozenset({QUEUED, RUNNING, CANCELLING}),
    SUCCEEDED: frozenset({RUNNING}),
    FAILED: frozenset({QUEUED, RUNNING, CANCELLING}),
    QUEUED: frozenset({RUNNING}),  # a graceful hand-back: the worker stopped on shutdown and re-sent the job
}


class TransitionRefused(Exception):
    """The job was not in a state from which ``to`` may be entered."""


def transition(session: Session, job_id: str, to: str, *, only_from: set[str] | None = None, event: str | None = None,
               data: dict[str, Any] | None = None, holder: str | None = None, where: Sequence[ColumnElement[bool]] = (),
               **fields: Any) -> bool:
    """Move job ``job_id`` to status ``to`` if its current status allows it; set ``fields`` in the same UPDATE.

    ``only_from`` narrows the allowed source states further (never widens them). ``holder``: only while that
    process holds the job's lease (``stillhouse.jobs.leases``); ``where``: further SQL conditions, all in the same
    compare-and-set. Terminal states also set ``finished_at`` and clear the lease, and add the tenant's webhook
    deliveries (``job.succeeded|failed|cancelled``) to the same transaction. Adds a ``status`` event with
    message ``event`` (default "status -> <to>"). Returns False (and changes nothing) when the current status (or
    a condition) forbids the move. Does not commit. Raises ValueError for an unknown state.
    """
    if to not in ALLOWED_FROM:
        raise ValueError(f"unknown job status {to!r}")
    now = utcnow()
    values: dict[str, Any] = {"status": to, "updated_at": now, **fields}
    if to in TERMINAL:
        values.setdefault("finished_at", now)
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
    sources = ALLOWED_FROM[to] & only_from if only_from is not None else ALLOWED_FROM[to]
    conditions = [Job.id == job_id, Job.status.in_(sources), *where]
    if holder is not None:
        conditions.append(Job.lease_owner == holder)
    res = session.execute(
        update(Job).where(*conditions).values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return False
    session.add(JobEvent(job_id=job_id, type="status", message=event or f"status -> {to}", data={"status": to, **(data or {})}))
    if to in TERMINAL:
        outbox.job_finished(session, job_id, to)
    return True
