"""``python -m worker``: start a Celery worker for stillhouse jobs with the settings' queue and concurrency."""

from __future__ import annotations

import sys

from stillhouse.settings import settings_or_exit
from worker.celery_app import celery_app


def has_cuda() -> bool:
    """Whether PyTorch sees a CUDA device. ``torch.cuda.device_count`` asks NVML, so the main process does not
    initialise CUDA before it forks its pool children (a child of a process with CUDA initialised cannot use it)."""
    import torch

    return torch.cuda.device_count() > 0


def main(argv: list[str] | None = None) -> None:
    """Run ``celery worker`` on the queues of ``STILLHOUSE_WORKER_QUEUES`` (default: the GPU queue when this machine
    has CUDA, else the CPU queue), prefork pool, ``STILLHOUSE_WORKER_CONCURRENCY`` children, no mingle/gossip.
    Invalid ``STILLHOUSE_*`` settings end it with one line each and status 2."""
    s = settings_or_exit()
    queues = s.consumed_queues(has_cuda=False if s.worker_queues else has_cuda())

    args = ["worker", "-Q", ",".join(queues), "-c", str(s.worker_concurrency), "-P", "prefork", "-l", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat", *(argv if argv is not None else sys.argv[1:])]
    celery_app.worker_main(args)


if __name__ == "__main__":
    main()
