"""The workers' Celery application: the service's broker configuration (``stillhouse.jobs.queue.make_celery``) with
this package's task module (``worker.tasks``) to load at worker start."""

from __future__ import annotations

from stillhouse.jobs.queue import RUN_JOB_TASK, make_celery
from stillhouse.settings import settings_or_exit

__all__ = ["RUN_JOB_TASK", "celery_app"]

celery_app = make_celery(settings_or_exit())  # invalid STILLHOUSE_* settings: one line each, exit status 2
celery_app.conf.include = ["worker.tasks"]
