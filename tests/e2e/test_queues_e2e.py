"""CPU and GPU queues with real worker processes (``python -m worker`` with ``STILLHOUSE_WORKER_QUEUES``): each takes
only its own queue's jobs, a GPU job waits (and says why) until a worker consumes the GPU queue, and workers appear in
and leave the workers table."""

from __future__ import annotations

import signal
import uuid

import pytest
import torch
from sqlalchemy import select

from stillhouse.models import Worker
from tests.e2e.test_durability_e2e import Cluster
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = pytest.mark.e2e


class QueueCluster(Cluster):
    """A ``Cluster`` whose workers can each get settings of their own."""

    def start_worker_with(self, name: str, **env: str):
        shared = self.env
        self.env = {**shared, **env}
        try:
            return self.start_worker(name)
        finally:
            self.env = shared

    def worker_rows(self) -> list[Worker]:
        """The rows of this cluster's workers (those consuming its CPU or GPU queue), oldest first. The session's
        database is shared by the module's tests and may still hold rows of workers other tests killed with
        SIGKILL (such a row stays until it is seen stale), so rows of other queues are left out."""
        from stillhouse.db import session_factory

        mine = {self.env["STILLHOUSE_QUEUE"], self.gpu_queue}
        with session_factory(self.settings)() as s:
            return [w for w in s.scalars(select(Worker).order_by(Worker.started_at)) if mine & set(w.queues or [])]


@pytest.fixture
def qcluster(backend_session, tmp_path):
    gpu = f"gpu-{uuid.uuid4().hex[:8]}"
    cl = QueueCluster(backend_session, tmp_path, {"STILLHOUSE_GPU_QUEUE": gpu, "STILLHOUSE_WORKER_HEARTBEAT_S": "1"})
    cl.gpu_queue = gpu
    yield cl
    cl.close()


def test_each_worker_takes_only_its_queue_and_a_gpu_job_waits_for_a_gpu_worker(qcluster, digits_teacher):
    cl, c = qcluster, qcluster.client
    cpu_q, gpu_q = cl.env["STILLHOUSE_QUEUE"], cl.gpu_queue
    w_cpu = cl.start_worker_with("cpu-worker", STILLHOUSE_WORKER_QUEUES=cpu_q)
    wait_for(lambda: [w.queues for w in cl.worker_rows()] == [[cpu_q]], 120, "the CPU worker's row")
    teacher = c.upload(digits_teacher, "teacher")
    gpu_job = c.create_job(spec(teacher.id, **{"training.device": "cuda", "training.epochs": 1}))
    assert gpu_job.queue == gpu_q
    waiting = wait_for(lambda: c.get_job(gpu_job.id).waiting, 30, "the GPU job to say it waits")
    assert waiting["code"] == "no_worker_for_queue" and repr(gpu_q) in waiting["message"] and f"{cpu_q} (1)" in waiting["message"]

    cpu_job = c.wait(c.create_job(spec(teacher.id, **{"training.device": "cpu", "training.epochs": 2})).id, timeout_s=240)
    assert cpu_job.status == "succeeded", (cpu_job.error, cl.log("cpu-worker")[-3000:])
    assert cpu_job.queue == cpu_q and cpu_job.waiting is None
    still = c.get_job(gpu_job.id)
    assert (still.status, still.attempt) == ("queued", 0)  # the CPU worker never took it

    cl.start_worker_with("gpu-worker", STILLHOUSE_WORKER_QUEUES=gpu_q)
    done = c.wait(gpu_job.id, timeout_s=240)
    assert done.attempt == 1  # taken by the GPU-queue worker
    if torch.cuda.is_available():
        assert done.status == "succeeded", done.error
    else:  # this machine has no CUDA: the GPU-queue worker says so
        assert done.status == "failed" and done.error.code == "invalid_spec" and "no CUDA" in done.error.message
    assert sorted(w.queues[0] for w in cl.worker_rows()) == sorted([cpu_q, gpu_q])

    w_cpu.send_signal(signal.SIGTERM)
    w_cpu.wait(timeout=60)
    assert [w.queues for w in cl.worker_rows()] == [[gpu_q]]  # a stopped worker removes its row
