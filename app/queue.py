"""Sending jobs to the workers (after the job row is committed) and checking the broker."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.models import Job, utcnow
from app.settings import Settings, get_settings
from worker.celery_app import RUN_JOB_TASK, make_celery

log = logging.getLogger("stillhouse.queue")


@lru_cache
def _celery_for(broker_url: str, data_dir: str) -> Celery:
    return make_celery(get_settings().model_copy(update={"broker_url": broker_url, "data_dir": Path(data_dir)}))


def celery(settings: Settings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: the current settings), cached per broker URL and data directory."""
    s = settings or get_settings()
    return _celery_for(s.broker_url, str(s.data_dir))


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    """Send the ``run_job`` task carrying only the job id to ``settings.queue``. Raises the broker's error if it is
    unreachable. Callers record the send in ``jobs.enqueued_at`` afterwards (see ``mark_sent``)."""
    s = settings or get_settings()
    celery(s).send_task(RUN_JOB_TASK, args=[job_id], queue=s.queue)


def mark_sent(session: Session, job_id: str, *, only_if_unsent: bool = True) -> bool:
    """Record that the job's message was sent now (``jobs.enqueued_at``), while the job is still queued and, with
    ``only_if_unsent``, still marked unsent. Commits. Returns whether the row was updated."""
    q = update(Job).where(Job.id == job_id, Job.status == "queued")
    if only_if_unsent:
        q = q.where(Job.enqueued_at.is_(None))
    res = session.execute(q.values(enqueued_at=utcnow()).execution_options(synchronize_session=False))
    session.commit()
    return res.rowcount == 1


def broker_ok(timeout_s: float = 2.0) -> str | None:
    """None when the broker accepts a connection within ``timeout_s`` seconds, else the error text."""
    try:
        with celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not ready"
        return f"{type(e).__name__}: {e}"
