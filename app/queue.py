"""Sending jobs to the workers (after the job row is committed) and checking the broker."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from app.settings import get_settings
from worker.celery_app import RUN_JOB_TASK, make_celery

log = logging.getLogger("stillhouse.queue")


@lru_cache
def _celery_for(broker_url: str, data_dir: str) -> Celery:
    return make_celery(get_settings())


def celery() -> Celery:
    """The Celery app for the current settings (cached per broker URL and data directory)."""
    s = get_settings()
    return _celery_for(s.broker_url, str(s.data_dir))


def enqueue_job(job_id: str) -> None:
    """Send the ``run_job`` task carrying only the job id. Raises the broker's error if it is unreachable."""
    celery().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().queue)


def broker_ok(timeout_s: float = 2.0) -> str | None:
    """None when the broker accepts a connection within ``timeout_s`` seconds, else the error text."""
    try:
        with celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not ready"
        return f"{type(e).__name__}: {e}"
