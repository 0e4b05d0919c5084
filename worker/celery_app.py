"""The Celery application, configured from ``Settings`` (importable by the API: no torch here).

Reliability settings: ``task_acks_late`` + ``task_reject_on_worker_lost`` (a job whose worker child dies is
redelivered and resumes from its last epoch checkpoint), prefetch 1 (a long job never holds a second
one hostage), no result backend (the SQL job row is the truth), and children given ``CHILD_START_TIMEOUT_S``
to start. Redeliveries are harmless: a job runs only under its database lease (``worker.runner``), and the
sweep (``app.sweep``) re-sends what no broker redelivers.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

RUN_JOB_TASK = "stillhouse.run_job"
# A prefork child must report "up" within this many seconds or Celery SIGKILLs it and starts another. Celery's default
# (4 s) is shorter than a child's start here (worker_process_init imports torch and the core: 3-8 s on a busy 2-core
# machine), which turned every child restart, e.g. after a killed job, into an endless kill-and-restart loop.
CHILD_START_TIMEOUT_S = 120.0


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings``: Redis (or any Celery broker URL) in production, the filesystem
    transport under ``<data_dir>/broker`` when ``broker_url`` is ``filesystem://``."""
    settings = settings or get_settings()
    app = Celery("stillhouse", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
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
        app.conf.broker_transport = "worker.fs_transport:Transport"  # kombu's, with atomic message files
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


celery_app = make_celery()
