"""``python -m worker``: start a Celery worker for stillhouse jobs with the settings' queue and concurrency."""

from __future__ import annotations

import sys

from stillhouse.settings import settings_or_exit
from worker.celery_app import celery_app


def main(argv: list[str] | None = None) -> None:
    """Run ``celery worker`` (prefork pool, ``STILLHOUSE_WORKER_CONCURRENCY`` children, no mingle/gossip). Invalid
    ``STILLHOUSE_*`` settings end it with one line each and status 2."""
    s = settings_or_exit()

    args = ["worker", "-Q", s.queue, "-c", str(s.worker_concurrency), "-P", "prefork", "-l", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat", *(argv if argv is not None else sys.argv[1:])]
    celery_app.worker_main(args)


if __name__ == "__main__":
    main()
