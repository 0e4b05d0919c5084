"""Leases and the sweep against the real database and broker (SQLite + filesystem broker, PostgreSQL + Redis):
claiming is one compare-and-set, a second delivery changes nothing, a process that lost its lease writes nothing,
and the sweep sends unsent jobs, re-sends jobs whose worker died (once per expiry) and fails what no worker took up.
The worker processes themselves are exercised in tests/e2e/test_durability_e2e.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select

from stillhouse.db import session_factory
from stillhouse.jobs import leases, states
from stillhouse.models import Job, JobEvent, Metric
from stillhouse.settings import get_settings
from stillhouse.jobs.sweep import sweep
from tests import files as mk
from tests.api.test_files import upload
from tests.durability import ago, commit_unsent_job, dead_pid, drain_queue, queue_depth, set_job
from tests.specs import override
from distill.reporter import MetricRow
from stillhouse.jobs.reporter import LeaseLost, SqlReporter
from stillhouse.jobs.runner import Lease, _claim, execute

OTHER_HOST_A = "worker-a.example:101:aaaa"  # owners on other hosts: only their expiry counts
OTHER_HOST_B = "worker-b.example:202:bbbb"


def spec_for(teacher_id: str, **over) -> dict:
    spec = {"name": "t", "teacher": {"file_id": teacher_id},
            "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [8]}}},
            "data": {"train": {"builtin": "digits"}}, "training": {"epochs": 1}}
    return override(spec, **over)


@pytest.fixture
async def teacher_id(api, tmp_path) -> str:
    return (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]


@pytest.fixture
async def job_id(api, teacher_id) -> str:
    """A job created through the API (committed and sent); the queue is then emptied."""
    jid = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    drain_queue(get_settings())
    return jid


def settings(**over):
    return get_settings().model_copy(update=over)


def row(job_id: str) -> dict:
    with session_factory()() as s:
        job = s.get(Job, job_id)
        return {c.name: getattr(job, c.name) for c in Job.__table__.columns}


def counts(job_id: str) -> tuple[int, int]:
    with session_factory()() as s:
        return (s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)),
                s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id)))


def events(job_id: str) -> list[JobEvent]:
    with session_factory()() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


# ---------------------------------------------------------------------------------------------------- claims


async def test_create_job_records_that_its_message_was_sent(api, teacher_id):
    drain_queue(get_settings())  # what earlier tests in this process left there (e.g. sweep trials' messages)
    jid = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    assert row(jid)["enqueued_at"] is not None
    assert drain_queue(get_settings()) == [jid]


async def test_claim_is_exclusive_and_a_second_delivery_changes_nothing(api, job_id):
    s = settings(lease_ttl_s=30)
    claimed = _claim(session_factory(), job_id, OTHER_HOST_A, s)
    assert claimed is not None and claimed.attempt == 1
    r = row(job_id)
    assert r["status"] == "running" and r["lease_owner"] == OTHER_HOST_A and r["attempt"] == 1
    assert 25 < (r["lease_expires_at"] - r["updated_at"]).total_seconds() <= 30
    assert [e.message for e in events(job_id)][-1].startswith(f"started on {OTHER_HOST_A} (attempt 1)")
    before, n = row(job_id), counts(job_id)
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s) is None
    assert execute(job_id, s) is None  # the real task body, delivered a second time in this process
    assert row(job_id) == before and counts(job_id) == n  # no event, no attempt bump, no write at all


async def test_an_expired_lease_is_taken_over_with_the_next_attempt(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    set_job(s, job_id, lease_expires_at=ago(1))
    claimed = _claim(session_factory(), job_id, OTHER_HOST_B, s)
    assert claimed is not None and claimed.attempt == 2
    assert row(job_id)["lease_owner"] == OTHER_HOST_B
    last = events(job_id)[-1]  # issue 15 case 6: the resume says what happened
    assert f"resumed after the lease of {OTHER_HOST_A} expired" in last.message and "froze" in last.message
    assert last.data["resumed"] == "lease_expired"


async def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(api, job_id):
    s = settings(lease_ttl_s=600)
    here = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _claim(session_factory(), job_id, f"{here}:{live.pid}:cafe", s)
        assert _claim(session_factory(), job_id, OTHER_HOST_B, s) is None  # alive: its lease holds for 10 minutes
        set_job(s, job_id, lease_owner=f"{here}:{dead_pid()}:cafe")
        claimed = _claim(session_factory(), job_id, OTHER_HOST_B, s)
        assert claimed is not None and claimed.attempt == 2  # dead: no need to wait for the expiry
        last = events(job_id)[-1]
        assert last.data["resumed"] == "worker_process_gone" and "worker process" in last.message and "gone" in last.message
    finally:
        live.kill()
        live.wait()


def test_a_killed_child_not_yet_reaped_counts_as_dead():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert leases.process_alive(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while leases.process_alive(p.pid) and time.monotonic() < deadline:  # a zombie until waited for
            time.sleep(0.05)
        assert not leases.process_alive(p.pid) and p.poll() is not None
    finally:
        p.kill()
        p.wait()


async def test_a_redelivery_ends_a_cancelling_job_whose_worker_died(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    set_job(s, job_id, status="cancelling", lease_expires_at=ago(1))
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s) is None
    r = row(job_id)
    assert r["status"] == "cancelled" and r["lease_owner"] is None and r["attempt"] == 1


async def test_a_redelivery_after_max_attempts_fails_worker_lost_but_hand_backs_do_not_count(api, job_id):
    s = settings(max_attempts=2)
    set_job(s, job_id, status="running", attempt=2, handbacks=1, lease_owner=OTHER_HOST_A, lease_expires_at=ago(1))
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s).attempt == 3  # 3 starts, one was a hand-back
    set_job(s, job_id, lease_expires_at=ago(1))
    assert _claim(session_factory(), job_id, OTHER_HOST_A, s) is None
    r = row(job_id)
    assert r["status"] == "failed" and r["error_code"] == "worker_lost" and "died 2 times" in r["error_message"]


# ---------------------------------------------------------------------------------------------------- guarded writes


async def test_a_process_that_lost_its_lease_writes_nothing(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    rep = SqlReporter(session_factory(), job_id, interval_s=0, owner=OTHER_HOST_A)
    rep.metrics([MetricRow("loss/total", "train", 1, 1, 0.5)])
    rep.flush()
    rep.progress(epoch=1, epochs=1, step=1, total_steps=2, fraction=0.5, eta_s=1.0)
    assert counts(job_id)[1] == 1 and row(job_id)["progress_step"] == 1 and not rep.should_stop()

    set_job(s, job_id, lease_expires_at=ago(1))
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s).attempt == 2  # another worker took the job over
    before, n = row(job_id), counts(job_id)
    for write in (lambda: rep.metrics([MetricRow("loss/total", "train", 2, 1, 0.4)]),
                  lambda: rep.progress(epoch=1, epochs=1, step=2, total_steps=2, fraction=1.0, eta_s=0.0),
                  rep.flush, lambda: rep.phase("evaluating"), lambda: rep.event("checkpoint_saved", "x"),
                  lambda: rep.discard_metrics_after(0)):
        with pytest.raises(LeaseLost):
            write()
    assert rep.should_stop() and rep.stop_reason == "lease_lost" and not rep.checkpoint_on_stop()
    with session_factory().begin() as ses:
        assert not states.transition(ses, job_id, states.SUCCEEDED, holder=OTHER_HOST_A)
        assert not states.transition(ses, job_id, states.FAILED, holder=OTHER_HOST_A, error_code="internal_error")
    lease = Lease(session_factory(), job_id, OTHER_HOST_A, 30, 0.0)
    assert lease.renew() is False and lease.lost()
    assert row(job_id) == before and counts(job_id) == n


async def test_the_heartbeat_renews_the_lease_and_records_the_runtime(api, job_id):
    s = settings(lease_ttl_s=0.9)
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    first = row(job_id)["lease_expires_at"]
    lease = Lease(session_factory(), job_id, OTHER_HOST_A, 0.9, runtime_before_s=100.0).start()
    try:
        deadline = time.monotonic() + 30
        while row(job_id)["lease_expires_at"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        r = row(job_id)
        assert r["lease_expires_at"] > first and r["runtime_s"] > 100.0
    finally:
        lease.stop()
    set_job(s, job_id, lease_owner=OTHER_HOST_B)  # taken over: the next renewal says so
    assert lease.renew() is False and lease.lost()


async def test_hand_back_moves_the_job_back_to_queued_and_does_not_count_as_an_attempt(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    with session_factory().begin() as ses:
        assert states.transition(ses, job_id, states.QUEUED, only_from={states.RUNNING}, holder=OTHER_HOST_A, lease_owner=None,
                                 lease_expires_at=None, handbacks=Job.handbacks + 1, event="handed back")
    r = row(job_id)
    assert (r["status"], r["lease_owner"], r["handbacks"], r["attempt"]) == ("queued", None, 1, 1)
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s).attempt == 2
    assert "resumed after a hand-back" in events(job_id)[-1].message
    assert events(job_id)[-1].data["resumed"] == "handback"


async def test_a_job_handed_back_on_a_database_error_resumes_saying_so(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    with session_factory().begin() as ses:
        assert states.transition(ses, job_id, states.QUEUED, only_from={states.RUNNING}, holder=OTHER_HOST_A, lease_owner=None,
                                 lease_expires_at=None, handbacks=Job.handbacks + 1, event="handed back after a database error",
                                 data={"worker": OTHER_HOST_A, "reason": "database_error"})
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s).attempt == 2
    last = events(job_id)[-1]
    assert last.data["resumed"] == "database_error" and "database error" in last.message and OTHER_HOST_A in last.message


# ---------------------------------------------------------------------------------------------------- the sweep


async def test_sweep_sends_a_job_that_was_committed_but_never_sent_once(api, teacher_id):
    s = settings(unsent_grace_s=5)
    drain_queue(s)
    old = commit_unsent_job(s, spec_for(teacher_id))
    young = commit_unsent_job(s, spec_for(teacher_id))
    set_job(s, old, updated_at=ago(60))
    result = sweep(session_factory(s), ago(0), s)
    assert result.sent == [old] and not result.send_errors
    assert drain_queue(s) == [old]  # a real message on the real broker
    assert row(old)["enqueued_at"] is not None and row(young)["enqueued_at"] is None
    assert not sweep(session_factory(s), ago(0), s)  # sent once: the next pass finds nothing to do
    assert queue_depth(s) == 0
    assert [e.type for e in events(old)][-1] == "requeued"


async def test_two_sweepers_racing_send_each_job_exactly_once(api, teacher_id):
    s = settings(unsent_grace_s=1)
    drain_queue(s)
    ids = [commit_unsent_job(s, spec_for(teacher_id)) for _ in range(6)]
    for jid in ids:
        set_job(s, jid, updated_at=ago(60))
    barrier, results = threading.Barrier(2), []

    def one() -> None:
        barrier.wait()
        results.append(sweep(session_factory(s), ago(0), s))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results[0].sent + results[1].sent) == sorted(ids)
    assert sorted(drain_queue(s)) == sorted(ids)


async def test_sweep_resends_a_job_whose_lease_expired_once_per_expiry(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    set_job(s, job_id, lease_expires_at=ago(5), enqueued_at=ago(60))
    assert sweep(session_factory(s), ago(0), s).resent == [job_id]
    assert drain_queue(s) == [job_id]
    assert not sweep(session_factory(s), ago(0), s) and queue_depth(s) == 0  # once per expiry
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s).attempt == 2  # a worker took it up ...
    later = ago(-s.lease_ttl_s - 1)  # ... and died too: a sweep after its lease ran out
    assert sweep(session_factory(s), later, s).resent == [job_id]
    assert drain_queue(s) == [job_id] and row(job_id)["status"] == "running"


async def test_sweep_leaves_live_leases_and_young_jobs_alone(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    before = row(job_id)
    assert not sweep(session_factory(s), ago(0), s)
    assert row(job_id) == before and queue_depth(s) == 0


async def test_sweep_fails_a_job_no_worker_took_up_and_removes_its_checkpoints(api, job_id):
    s = settings(worker_lost_timeout_s=30)
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    work = s.data_dir / "jobs" / job_id / "work"
    work.mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"x")
    set_job(s, job_id, lease_expires_at=ago(10), enqueued_at=ago(5))  # re-sent already, nobody came
    assert not sweep(session_factory(s), ago(0), s)
    set_job(s, job_id, lease_expires_at=ago(31))
    assert sweep(session_factory(s), ago(0), s).worker_lost == [job_id]
    r = row(job_id)
    assert r["status"] == "failed" and r["error_code"] == "worker_lost" and "STILLHOUSE_WORKER_LOST_TIMEOUT_S" in r["error_message"]
    assert r["lease_owner"] is None and r["finished_at"] is not None and not work.exists()


async def test_sweep_fails_a_dead_job_whose_attempts_are_used_up(api, job_id):
    s = settings(max_attempts=2)
    set_job(s, job_id, status="running", attempt=2, handbacks=0, lease_owner=OTHER_HOST_A, lease_expires_at=ago(1))
    assert sweep(session_factory(s), ago(0), s).worker_lost == [job_id]
    assert "died 2 times" in row(job_id)["error_message"]


async def test_sweep_fails_a_dead_job_that_used_up_its_max_runtime(api, teacher_id):
    s = settings()
    jid = (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.max_runtime_s": 5}))).json()["id"]
    drain_queue(s)
    set_job(s, jid, status="running", attempt=1, runtime_s=5.2, lease_owner=OTHER_HOST_A, lease_expires_at=ago(1))
    assert sweep(session_factory(s), ago(0), s).max_runtime == [jid]
    r = row(jid)
    assert r["status"] == "failed" and r["error_code"] == "max_runtime_exceeded" and queue_depth(s) == 0


async def test_sweep_cancels_a_cancelling_job_whose_worker_died(api, job_id):
    s = settings()
    _claim(session_factory(), job_id, OTHER_HOST_A, s)
    set_job(s, job_id, status="cancelling", lease_expires_at=ago(1))
    assert sweep(session_factory(s), ago(0), s).cancelled == [job_id]
    assert row(job_id)["status"] == "cancelled" and (await api.get(f"/v1/jobs/{job_id}/artifacts")).json()["data"] == []


async def test_a_send_the_broker_refuses_is_retried_by_the_next_sweep(api, teacher_id):
    good = settings(unsent_grace_s=1)
    drain_queue(good)
    jid = commit_unsent_job(good, spec_for(teacher_id))
    set_job(good, jid, updated_at=ago(60))
    down = settings(unsent_grace_s=1, broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    result = sweep(session_factory(good), ago(0), down)
    assert result.send_errors == [jid] and not result.sent
    assert row(jid)["enqueued_at"] is None  # still marked unsent ...
    assert sweep(session_factory(good), ago(0), good).sent == [jid]  # ... so the next pass sends it
    assert drain_queue(good) == [jid]


async def test_runtime_of_earlier_attempts_counts_toward_max_runtime(api, teacher_id):
    s = settings()
    jid = (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.max_runtime_s": 5}))).json()["id"]
    drain_queue(s)
    set_job(s, jid, status="running", attempt=1, runtime_s=5.0, lease_owner=OTHER_HOST_A, lease_expires_at=ago(1))
    assert execute(jid, s) == "failed"  # the real task body: attempt 2 has no time left
    r = row(jid)
    assert (r["status"], r["error_code"], r["attempt"], r["lease_owner"]) == ("failed", "max_runtime_exceeded", 2, None)
    assert "already used 5" in r["error_message"] and r["runtime_s"] >= 5.0


@pytest.mark.slow
async def test_a_delivery_that_cannot_reach_the_database_is_retried_not_lost(api, job_id, monkeypatch):
    from celery.exceptions import Retry

    from worker.tasks import DB_RETRY_S, run_job

    real = os.environ.get("STILLHOUSE_DATABASE_URL")
    monkeypatch.setenv("STILLHOUSE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/stillhouse")  # nothing listens
    get_settings.cache_clear()
    with pytest.raises(Retry) as e:
        run_job.apply(args=[job_id], throw=True)
    assert e.value.when == DB_RETRY_S  # the message is sent again, not acknowledged and dropped
    if real is None:
        monkeypatch.delenv("STILLHOUSE_DATABASE_URL")
    else:
        monkeypatch.setenv("STILLHOUSE_DATABASE_URL", real)
    get_settings.cache_clear()
    assert row(job_id)["status"] == "queued" and row(job_id)["attempt"] == 0


async def test_python_m_app_sweep_once_sends_an_unsent_job(api, teacher_id, backend):
    import json
    from pathlib import Path

    s = settings()
    drain_queue(s)
    jid = commit_unsent_job(s, spec_for(teacher_id))
    set_job(s, jid, updated_at=ago(60))
    env = {**os.environ, **backend.env()}
    if backend.database_url is None:
        env.pop("STILLHOUSE_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "stillhouse.jobs.sweep", "--once"], cwd=Path(__file__).resolve().parents[2], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["sent"] == [jid]
    assert drain_queue(s) == [jid]


def add_worker(s, worker_id: str = "w-test", concurrency: int = 1, seen_s_ago: float = 0.0) -> None:
    """A row in ``workers`` as a live worker's heartbeat writes it, consuming the settings' queue."""
    from stillhouse.models import Worker

    with session_factory(s).begin() as session:
        session.add(Worker(id=worker_id, hostname="h", queues=[s.queue], concurrency=concurrency, devices={},
                           started_at=ago(seen_s_ago), last_seen_at=ago(seen_s_ago)))


async def test_sweep_resends_a_sent_but_unclaimed_job_once_per_period_while_a_worker_is_free(api, job_id):
    """Issue 15 case 2: the job's message was sent and then lost (taken off the queue: ``job_id`` drained it)."""
    s = settings(unclaimed_resend_s=60)
    set_job(s, job_id, enqueued_at=ago(30))
    add_worker(s)
    assert not sweep(session_factory(s), ago(0), s)  # younger than the bound
    set_job(s, job_id, enqueued_at=ago(61))
    result = sweep(session_factory(s), ago(0), s)
    assert result.unclaimed == [job_id] and not result.sent and not result.resent
    assert drain_queue(s) == [job_id]  # a real message on the real broker
    assert not sweep(session_factory(s), ago(0), s) and queue_depth(s) == 0  # once per period
    assert sweep(session_factory(s), ago(-61), s).unclaimed == [job_id]  # and again a period later
    assert drain_queue(s) == [job_id]
    requeued = [e for e in events(job_id) if e.type == "requeued"]
    assert [e.data["reason"] for e in requeued] == ["unclaimed", "unclaimed"]
    assert "STILLHOUSE_UNCLAIMED_RESEND_S=60" in requeued[0].message
    assert _claim(session_factory(), job_id, OTHER_HOST_A, s).attempt == 1  # the duplicate delivery: claims once ...
    assert _claim(session_factory(), job_id, OTHER_HOST_B, s) is None  # ... and the second exits


async def test_sweep_does_not_resend_a_waiting_job_when_no_worker_is_free(api, job_id, teacher_id):
    s = settings(unclaimed_resend_s=60)
    set_job(s, job_id, enqueued_at=ago(600))
    assert not sweep(session_factory(s), ago(0), s)  # no live worker
    add_worker(s, "w-gone", seen_s_ago=3600)
    assert not sweep(session_factory(s), ago(0), s)  # only a worker long gone
    add_worker(s)
    other = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    drain_queue(s)
    _claim(session_factory(), other, OTHER_HOST_A, s)  # the one slot is busy
    assert not sweep(session_factory(s), ago(0), s).unclaimed
    assert queue_depth(s) == 0


def test_a_worker_child_connects_to_the_database_before_its_first_job(backend):
    """The pool child's start-up lets go of the parent's connections and opens its own, so a job's claim does not wait
    for the child's first connection."""
    if backend.name != "postgres":
        pytest.skip("SQLite opens a connection per session")
    from stillhouse.db import get_engine
    from worker.tasks import _init_child

    engine = get_engine()
    engine.dispose()
    assert engine.pool.checkedin() == 0
    _init_child()
    assert engine.pool.checkedin() >= 1
