"""CPU and GPU queues: routing by ``training.device``, re-sends to the job's own queue, the workers table, and a queued
job that no running worker consumes saying so in its status. Real brokers (filesystem transport, Redis); no worker
process here (tests/e2e/test_queues_e2e.py runs real ones)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.durability import drain_queue, queue_depth


@pytest.fixture
def gpu_queue(backend, monkeypatch) -> str:
    """A GPU queue name of this test's own (Redis is shared with other suites)."""
    from stillhouse.jobs import workers
    from stillhouse.jobs.queue import _celery_for
    from stillhouse.settings import get_settings

    name = f"gpu-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("STILLHOUSE_GPU_QUEUE", name)
    get_settings.cache_clear()
    _celery_for.cache_clear()
    workers._cache.clear()
    yield name
    workers._cache.clear()


def on(queue: str):
    from stillhouse.settings import get_settings

    return get_settings().model_copy(update={"queue": queue})


def add_worker(queues: list[str], seen_s_ago: float = 0.0, wid: str | None = None) -> str:
    from stillhouse.db import session_scope
    from stillhouse.jobs import workers
    from stillhouse.models import Worker, utcnow

    wid = wid or f"host:{uuid.uuid4().hex[:6]}"
    with session_scope() as s:
        s.add(Worker(id=wid, hostname="host", queues=queues, concurrency=1, devices={"cuda": 0},
                     last_seen_at=utcnow() - timedelta(seconds=seen_s_ago)))
    workers._cache.clear()
    return wid


def test_queue_for_routes_by_device():
    from stillhouse.jobs.queue import queue_for
    from stillhouse.settings import Settings

    s = Settings(queue="c", gpu_queue="g")
    assert queue_for({"training": {"device": "cuda"}}, s) == "g"
    assert queue_for({"training": {"device": "cpu"}}, s) == "c"
    assert queue_for({"training": {"device": "auto"}}, s) == "c"
    assert queue_for({}, s) == "c"
    assert s.consumed_queues(has_cuda=True) == ["g", "c"] and s.consumed_queues(has_cuda=False) == ["c"]
    assert Settings(worker_queues=" gpu, cpu ,").consumed_queues(has_cuda=False) == ["gpu", "cpu"]


async def test_cuda_jobs_go_to_the_gpu_queue_and_resends_follow_them(api, backend, gpu_queue, teacher_id):  # noqa: F811
    from stillhouse.jobs.queue import enqueue_job

    drain_queue(on(backend.queue))  # messages other tests of this session left (no worker reads them)
    cpu = (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.device": "cpu"}))).json()
    gpu = (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.device": "cuda"}))).json()
    auto = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    assert (cpu["queue"], gpu["queue"], auto["queue"]) == (backend.queue, gpu_queue, backend.queue)
    assert drain_queue(on(gpu_queue)) == [gpu["id"]]
    assert drain_queue(on(backend.queue)) == [cpu["id"], auto["id"]]

    enqueue_job(gpu["id"])  # a re-send (sweep, hand-back) reads the job's queue from its row
    assert queue_depth(on(backend.queue)) == 0 and drain_queue(on(gpu_queue)) == [gpu["id"]]


async def test_a_queued_job_no_live_worker_consumes_says_so(api, backend, gpu_queue, teacher_id):  # noqa: F811
    gpu = (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.device": "cuda"}))).json()
    w = gpu["waiting"]
    assert w["code"] == "no_worker_for_queue" and repr(gpu_queue) in w["message"] and "GPU" in w["message"]
    assert f"STILLHOUSE_WORKER_QUEUES={gpu_queue}" in w["message"]

    add_worker([backend.queue])
    add_worker([gpu_queue], seen_s_ago=3600)  # gone: not seen for an hour
    cpu = (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.device": "cpu"}))).json()
    assert cpu["waiting"] is None
    got = (await api.get(f"/v1/jobs/{gpu['id']}")).json()
    assert got["waiting"]["code"] == "no_worker_for_queue" and f"{backend.queue} (1)" in got["waiting"]["message"]
    listed = {j["id"]: j for j in (await api.get("/v1/jobs")).json()["data"]}
    assert listed[gpu["id"]]["waiting"] and listed[cpu["id"]]["waiting"] is None

    add_worker([backend.queue, gpu_queue])
    assert (await api.get(f"/v1/jobs/{gpu['id']}")).json()["waiting"] is None
    cancelled = (await api.post(f"/v1/jobs/{cpu['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled" and cancelled["waiting"] is None  # only queued jobs wait


def test_heartbeat_records_refreshes_and_removes_the_worker(backend):
    from stillhouse.db import session_scope
    from stillhouse.jobs import workers
    from stillhouse.models import Worker
    from stillhouse.settings import get_settings

    old = add_worker(["cpu"], seen_s_ago=workers.PURGE_AFTER_S + 60)
    hb = workers.WorkerHeartbeat(get_settings(), "h:1:abc", "h", ["cpu", "gpu"], 2, {"cuda": 1})
    hb.beat()
    with session_scope() as s:
        first = s.get(Worker, "h:1:abc").last_seen_at
        assert s.get(Worker, old) is None  # long gone: purged
    hb.beat()
    with session_scope() as s:
        row = s.get(Worker, "h:1:abc")
        assert row.last_seen_at >= first and row.queues == ["cpu", "gpu"] and row.concurrency == 2 and row.devices == {"cuda": 1}
    assert [w.id for w in workers.live_workers()] == ["h:1:abc"]
    hb.stop()
    with session_scope() as s:
        assert s.get(Worker, "h:1:abc") is None
