"""The broker side of the job life cycle: the Celery app's configuration (shared by the API, which sends, and the
workers, which receive), sending jobs to the workers (after the job row is committed) and checking the broker.

Routing: a job goes to the GPU queue (``STILLHOUSE_GPU_QUEUE``, default ``gpu``) when its spec says
``training.device: cuda``, else to the CPU queue (``STILLHOUSE_QUEUE``, default ``cpu``); the choice is recorded in
``jobs.queue`` at creation, so a re-send (sweep, hand-back) goes to the same queue. Workers consume the queues given
with ``-Q`` (``python -m worker`` passes ``STILLHOUSE_WORKER_QUEUES``, default by hardware). Both queues are declared
on the Celery app (``task_queues``), so either kind of worker can be started first.

Reliability settings: ``task_acks_late`` + ``task_reject_on_worker_lost`` (a job whose worker child dies is
redelivered and resumes from its last epoch checkpoint), prefetch 1 (a long job never holds a second
one hostage), no result backend (the SQL job row is the truth), and children given ``CHILD_START_TIMEOUT_S``
to start. Redeliveries are harmless: a job runs only under its database lease (``stillhouse.jobs.runner``), and the
sweep (``stillhouse.jobs.sweep``) re-sends what no broker redelivers. No torch here: the API imports it.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from celery import Celery
from kombu import Queue
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from stillhouse.db import session_factory
from stillhouse.models import Job, utcnow
from stillhouse.settings import Settings, get_settings

log = logging.getLogger("stillhouse.queue")

RUN_JOB_TASK = "stillhouse.run_job"
# A prefork child must report "up" within this many seconds or Celery SIGKILLs it and starts another. Celery's default
# (4 s) is shorter than a child's start here (worker_process_init imports torch and the core: 3-8 s on a busy 2-core
# machine), which turned every child restart, e.g. after a killed job, into an endless kill-and-restart loop.
CHILD_START_TIMEOUT_S = 120.0


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings``: Redis (or any Celery broker URL) in production, the filesystem
    transport under ``<data_dir>/broker`` when ``broker_url`` is ``filesystem://``."""
    settings = settings or get_settings()
    app = Celery("stillhouse", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_queues=[Queue(q, routing_key=q) for q in dict.fromkeys([settings.queue, settings.gpu_queue])],
        task_serializer="json",
        accept_content=["json"],
        worker_concurrency=settings.worker_concurrency,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_proc_alive_timeout=CHILD_START_TIMEOUT_S,
    )
    if settings.is_embedded_broker:
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport = "stillhouse.jobs.fs_transport:Transport"  # kombu's, with atomic message files
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
        app.conf.worker_enable_remote_control = False
    else:
        vt = settings.visibility_timeout_s
        app.conf.broker_transport_options = {
            "visibility_timeout": vt,
            # kombu scans for messages to redeliver every interval x throttle seconds (default 10 x 10): keep that well
            # under a short visibility timeout so it means what it says
            "unacked_restore_interval": max(1, min(10, vt // 4)),
            "unacked_restore_throttle": 1 if vt < 1000 else 10,
        }
    return app


@lru_cache
def _celery_for(broker_url: str, data_dir: str) -> Celery:
    return make_celery(get_settings().model_copy(update={"broker_url": broker_url, "data_dir": Path(data_dir)}))


def celery(settings: Settings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: the current settings), cached per broker URL and data directory."""
    s = settings or get_settings()
    return _celery_for(s.broker_url, str(s.data_dir))


def queue_for(spec: dict, settings: Settings | None = None) -> str:
    """The queue of a job with this spec (JSON): the GPU queue for ``training.device: cuda``, else the CPU queue
    (``cpu``, and ``auto``, which uses CUDA when the worker that takes it has it)."""
    s = settings or get_settings()
    device = ((spec or {}).get("training") or {}).get("device", "auto")
    return s.gpu_queue if device == "cuda" else s.queue


def job_queue(job_id: str, settings: Settings | None = None) -> str:
    """The queue recorded for job ``job_id`` (``jobs.queue``); the CPU queue for jobs from before queues existed."""
    s = settings or get_settings()
    with session_factory(s)() as session:
        q = session.scalar(select(Job.queue).where(Job.id == job_id))
    return q or s.queue


def enqueue_job(job_id: str, settings: Settings | None = None, queue: str | None = None) -> None:
    """Send the ``run_job`` task carrying only the job id to ``queue`` (default: the job's recorded queue, read from
    the database). Raises the broker's error if it is unreachable. Callers record the send in ``jobs.enqueued_at``
    afterwards (see ``mark_sent``)."""
    s = settings or get_settings()
    celery(s).send_task(RUN_JOB_TASK, args=[job_id], queue=queue or job_queue(job_id, s))


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
