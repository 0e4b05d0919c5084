"""Issue 15, reproduced with real processes: a pool child killed while idle on the embedded default, a queued job
whose message was taken but never claimed, and the database going away under the API and under a running job.
Each test starts its own API and workers (``tests.e2e.test_durability_e2e.Cluster``) and its own queue."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.e2e.test_durability_e2e import LONG, cluster  # noqa: F401 - the cluster fixture
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = pytest.mark.e2e

SHORT = {"training.epochs": 1, "export.formats": ["safetensors"]}


def pool_children(pid: int) -> list[int]:
    """The pids of the worker main process ``pid``'s pool children."""
    return [p.pid for p in psutil.Process(pid).children()]


def test_an_idle_pool_child_killed_then_the_next_job_runs(cluster, digits_teacher):
    """Issue 15 case 1: a job succeeds, the worker's idle pool child is SIGKILLed, Celery starts a replacement, and
    the next job (and the one after) still runs to ``succeeded``."""
    cl = cluster()
    w1 = cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    first = c.wait(c.create_job(spec(teacher.id, **SHORT)).id, timeout_s=240)
    assert first.status == "succeeded", (first.error, cl.log("w1")[-3000:])
    (child,) = pool_children(w1.pid)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: (kids := pool_children(w1.pid)) and child not in kids, 120, "a replacement pool child")
    wait_for(lambda: "worker child: torch intra-op threads" in cl.log("w1").split("exited with 'signal 9")[-1], 120,
             "the replacement child to start")
    for _ in range(2):
        job = c.create_job(spec(teacher.id, **SHORT))
        done = c.wait(job.id, timeout_s=240)
        assert done.status == "succeeded", (done.status, cl.log("w1")[-4000:])
        assert done.attempt == 1
