"""Durability faults reproduced for real: a real API server and real Celery worker processes (each in its own
process group), real signals (SIGKILL of a whole worker, SIGTERM to its main process), and the real broker
(filesystem transport, or Redis with a short visibility timeout). Each test starts its own processes with the
settings it needs and its own queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from stillhouse.models import Job, JobEvent
from stillhouse.settings import Settings
from client import Stillhouse
from tests.conftest import REDIS_URL, Backend
from tests.durability import commit_unsent_job, stop_process_groups
from tests.e2e.conftest import ROOT, free_port
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults")]  # never beside each other (tests/conftest.py)

# A Redis database of its own for the short-visibility test: kombu's unacked-message index is per database, so a
# 2 s visibility timeout there must not redeliver the messages of other suites' workers (they use REDIS_URL's).
SHORT_VISIBILITY_REDIS_URL = os.environ.get("STILLHOUSE_TEST_REDIS_SHORT_URL", REDIS_URL.rsplit("/", 1)[0] + "/13")

BASE_ENV = {
    "STILLHOUSE_TORCH_THREADS": "1",
    "STILLHOUSE_PROGRESS_INTERVAL_S": "0.2",
    "STILLHOUSE_LEASE_TTL_S": "4",
    "STILLHOUSE_SWEEP_INTERVAL_S": "0.5",
    "STILLHOUSE_UNSENT_GRACE_S": "5",  # above a first send under load (1 s let the sweep send a job twice)
    "STILLHOUSE_WORKER_LOST_TIMEOUT_S": "120",
}
LONG = {"training.epochs": 40, "export.formats": ["safetensors"],
        "student.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [256, 256]}}}


class Cluster:
    """An API server and any number of worker processes on one backend and a queue of their own."""

    def __init__(self, backend: Backend, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **backend.env(), **BASE_ENV, "STILLHOUSE_QUEUE": f"dur-{uuid.uuid4().hex[:8]}", **env}
        if backend.database_url is None:
            self.env.pop("STILLHOUSE_DATABASE_URL", None)
        self.settings = Settings(**{k.removeprefix("STILLHOUSE_").lower(): v for k, v in self.env.items()
                                    if k.startswith("STILLHOUSE_") and k.removeprefix("STILLHOUSE_").lower() in Settings.model_fields})
        self.procs: dict[str, subprocess.Popen] = {}
        port = free_port()
        self.env["STILLHOUSE_PORT"] = str(port)
        self.client = Stillhouse(f"http://127.0.0.1:{port}", timeout=120)
        self._spawn("api", [sys.executable, "-m", "app", "serve"])
        try:
            self.client.wait_ready(timeout_s=90)
        except Exception:
            self.close()
            raise RuntimeError(f"API did not become ready:\n{self.log('api')}")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        # a process group of its own: os.killpg reaches the worker's main process and all its pool children
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[name]

    def start_worker(self, name: str) -> subprocess.Popen:
        """Start ``python -m worker`` and wait until it consumes."""
        p = self._spawn(name, [sys.executable, "-m", "worker"])
        wait_for(lambda: "ready." in self.log(name) or p.poll() is not None, 120, f"worker {name} to be ready")
        assert p.poll() is None, self.log(name)
        return p

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def job_row(self, job_id: str) -> Job:
        from stillhouse.db import session_factory

        with session_factory(self.settings)() as s:
            return s.get(Job, job_id)

    def events(self, job_id: str, type: str | None = None) -> list[JobEvent]:
        from stillhouse.db import session_factory

        with session_factory(self.settings)() as s:
            q = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            return [e for e in s.scalars(q) if type is None or e.type == type]

    def row_unlocked(self, job_id: str) -> bool:
        """True when no transaction holds the job's row (PostgreSQL) or the database's write lock (SQLite) right
        now: every write of a job's run starts by updating that row."""
        if self.settings.database_url is None:
            import sqlite3

            conn = sqlite3.connect(self.settings.data_dir / "stillhouse.db", timeout=0.3)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError:
                return False
            finally:
                conn.close()
        import sqlalchemy as sa

        from stillhouse.db import get_engine

        with get_engine(self.settings).connect() as conn:
            try:
                with conn.begin():
                    conn.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
                    conn.execute(sa.text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
                return True
            except sa.exc.OperationalError:
                return False

    def freeze(self, name: str, job_id: str) -> None:
        """SIGSTOP a worker's whole process group at a moment when it holds no lock in the database (as a
        machine that stops answering would, without wedging everyone else behind its open transaction)."""
        pgid = self.procs[name].pid
        for _ in range(50):
            os.killpg(pgid, signal.SIGSTOP)
            time.sleep(0.3)
            if self.row_unlocked(job_id):
                return
            os.killpg(pgid, signal.SIGCONT)
            time.sleep(0.1)
        raise AssertionError(f"could not freeze {name} outside a transaction")

    def close(self) -> None:
        """Stop every process (frozen ones too) and the client."""
        stop_process_groups(self.procs.values())
        self.client.close()


@pytest.fixture
def cluster(backend_session: Backend, tmp_path) -> Iterator[callable]:
    """``cluster(**env)`` starts an API with ``env`` on top of ``BASE_ENV``; everything is stopped afterwards."""
    made: list[Cluster] = []

    def make(**env: str) -> Cluster:
        made.append(Cluster(backend_session, tmp_path, env))
        return made[-1]

    yield make
    for c in made:
        c.close()


def assert_one_continuous_history(c: Stillhouse, job_id: str, epochs: int) -> None:
    """Every epoch's validation row exactly once, every logged training step exactly once and in order."""
    assert [m.epoch for m in c.metrics(job_id, name="top1", split="val")] == list(range(1, epochs + 1))
    steps = [m.step for m in c.metrics(job_id, name="loss/total", split="train")]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == epochs * -(-1437 // 64)


def test_a_job_delivered_twice_runs_once(cluster, digits_teacher, backend_session):
    """Two workers; the job's message is delivered a second time while it runs (Redis: a 2 s visibility timeout
    shorter than the job; filesystem broker, which never redelivers: the same message sent again). The second
    delivery finds the live lease and exits without writing anything."""
    redis = backend_session.name != "sqlite"
    cl = cluster(**({"STILLHOUSE_BROKER_URL": SHORT_VISIBILITY_REDIS_URL, "STILLHOUSE_VISIBILITY_TIMEOUT_S": "2"} if redis else {}))
    cl.start_worker("w1")
    cl.start_worker("w2")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    # 150 epochs (3,450 steps, about 15 s of training on a quiet machine): LONG's 40 can finish in about 2 s there,
    # before Redis redelivers the message (visibility 2 s + a restore scan every second), and the second delivery
    # then finds only a finished job (CI saw that as a timeout waiting for the second delivery)
    epochs = 150
    job = c.create_job(spec(teacher.id, **{**LONG, "training.epochs": epochs}))
    wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 1, 120, "training")
    if not redis:
        from stillhouse.jobs.queue import enqueue_job

        enqueue_job(job.id, cl.settings)
    wait_for(lambda: "this delivery exits without side effects" in cl.log("w1") + cl.log("w2"), 120, "the second delivery")
    done = c.wait(job.id, timeout_s=400)
    assert done.status == "succeeded", (done.error, cl.log("w1")[-3000:], cl.log("w2")[-3000:])
    assert done.attempt == 1
    assert [e.data["status"] for e in c.events(job.id) if e.type == "status"] == ["queued", "running", "succeeded"]
    assert len(c.events(job.id)) == len({e.id for e in c.events(job.id)})
    assert [e.type for e in c.events(job.id)].count("phase") == 5
    assert_one_continuous_history(c, job.id, epochs)


def test_whole_worker_killed_then_a_new_worker_resumes_the_job(cluster, digits_teacher):
    """kill -9 of the whole worker (main process and pool child): no broker redelivers the job, the sweep re-sends it
    once its lease expired, and a worker started afterwards resumes it from its last epoch checkpoint."""
    cl = cluster()
    w1 = cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    epochs = 30
    job = c.create_job(spec(teacher.id, **{**LONG, "training.epochs": epochs}))
    # checkpoint_saved is emitted once the epoch's file is complete on disk (it is written in the background)
    wait_for(lambda: any(e.data["epoch"] >= 3 for e in cl.events(job.id, "checkpoint_saved")), 180, "epoch 3's checkpoint")
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait(timeout=30)
    frozen = c.get_job(job.id)
    assert frozen.status == "running" and frozen.attempt == 1
    cl.start_worker("w2")
    done = c.wait(job.id, timeout_s=400)
    assert done.status == "succeeded", (done.error, cl.log("w2")[-3000:], cl.log("api")[-3000:])
    assert done.attempt == 2
    requeued = cl.events(job.id, "requeued")
    assert len(requeued) == 1 and requeued[0].data["reason"] == "lease_expired"
    resumed = [e for e in c.events(job.id) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["epoch"] >= 3
    assert_one_continuous_history(c, job.id, epochs)
    assert c.report(job.id).training.resumed_from_epoch == resumed[0].data["epoch"]
    row = cl.job_row(job.id)
    assert row.lease_owner is None and row.handbacks == 0 and row.runtime_s > 0


@pytest.mark.backend_only("postgres", reason="the lease take-over and fencing are SQL; PostgreSQL is where workers race")
def test_a_frozen_worker_whose_job_was_taken_over_writes_nothing_when_it_wakes(cluster, digits_teacher):
    """SIGSTOP the whole worker (a machine that stops answering: a partition, a long pause) past its lease; the sweep
    re-sends the job and a second worker takes it over. Woken up (SIGCONT), the first worker finds its lease gone
    and stops at its next step without writing: one continuous set of metrics, one result."""
    cl = cluster()
    cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    job = c.create_job(spec(teacher.id, **LONG))
    wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 3, 180, "epoch 3")
    cl.freeze("w1", job.id)
    frozen_owner = cl.job_row(job.id).lease_owner
    cl.start_worker("w2")
    wait_for(lambda: (r := cl.job_row(job.id)).attempt == 2 and r.lease_owner != frozen_owner, 180, "the takeover")
    os.killpg(cl.procs["w1"].pid, signal.SIGCONT)
    wait_for(lambda: "lost its lease; stopped without writing anything more" in cl.log("w1"), 120, "w1 to notice")
    done = c.wait(job.id, timeout_s=400)
    assert done.status == "succeeded", (done.error, cl.log("w1")[-3000:], cl.log("w2")[-3000:])
    assert done.attempt == 2
    statuses = [e.data["status"] for e in c.events(job.id) if e.type == "status"]
    assert statuses == ["queued", "running", "running", "succeeded"]
    assert_one_continuous_history(c, job.id, 40)
    arts = c.artifacts(job.id)
    assert [a.name for a in arts] == ["student.json", "student.safetensors"]
    assert cl.procs["w1"].poll() is None  # the frozen worker lives on and takes other jobs


@pytest.mark.backend_only("postgres", reason="the worker-lost sweep is SQL, the same on both backends")
def test_whole_worker_killed_and_none_comes_back_fails_worker_lost(cluster, digits_teacher):
    cl = cluster(STILLHOUSE_WORKER_LOST_TIMEOUT_S="3")
    w1 = cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    job = c.create_job(spec(teacher.id, **LONG))
    wait_for(lambda: (c.get_job(job.id).progress.step or 0) > 0, 180, "training")
    os.killpg(w1.pid, signal.SIGKILL)
    done = c.wait(job.id, timeout_s=120)
    assert done.status == "failed" and done.error.code == "worker_lost", done
    assert "STILLHOUSE_WORKER_LOST_TIMEOUT_S" in done.error.message
    assert c.artifacts(job.id) == []
    assert not (cl.settings.data_dir / "jobs" / job.id / "work").exists()  # its checkpoints are gone too


def test_sigterm_hands_the_job_back_and_another_worker_resumes_it_at_the_same_step(cluster, digits_teacher):
    cl = cluster()
    w1 = cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    job = c.create_job(spec(teacher.id, **LONG))
    wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 2, 180, "epoch 2")
    t0 = time.monotonic()
    w1.send_signal(signal.SIGTERM)  # to the main process only, as docker stop does
    w1.wait(timeout=60)
    exited_after = time.monotonic() - t0
    assert exited_after < 15, exited_after  # the job stopped at its next step; Celery's warm shutdown did not wait for it
    row = cl.job_row(job.id)
    assert (row.status, row.handbacks, row.attempt, row.lease_owner) == ("queued", 1, 1, None)
    assert row.enqueued_at is not None  # its message was sent again
    handed = [e for e in cl.events(job.id, "status") if "handed back" in e.message]
    assert len(handed) == 1 and handed[0].message.endswith("on shutdown")
    saved = [e for e in cl.events(job.id, "checkpoint_saved") if "steps_done_in_epoch" in (e.data or {})]
    assert len(saved) == 1

    cl.start_worker("w2")
    done = c.wait(job.id, timeout_s=400)
    assert done.status == "succeeded", (done.error, cl.log("w2")[-3000:])
    assert done.attempt == 2 and done.handbacks == 1 and cl.job_row(job.id).handbacks == 1
    resumed = [e for e in c.events(job.id) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["step"] == saved[0].data["step"]  # not a step redone or skipped
    assert resumed[0].data["steps_done_in_epoch"] == saved[0].data["steps_done_in_epoch"]
    statuses = [e.data["status"] for e in c.events(job.id) if e.type == "status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    assert_one_continuous_history(c, job.id, 40)


@pytest.mark.backend_only("sqlite", reason="the unsent-job sweep is SQL and a plain send, the same on both backends")
def test_a_job_committed_but_never_sent_is_sent_by_the_sweep_and_runs(cluster, digits_teacher):
    """The API died between committing the job and sending its message: the row is committed directly here and
    never sent; the API's sweep sends it and the worker runs it."""
    cl = cluster()
    cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    job_id = commit_unsent_job(cl.settings, spec(teacher.id, **{"training.epochs": 1, "export.formats": ["safetensors"]}))
    done = c.wait(job_id, timeout_s=240)
    assert done.status == "succeeded", (done.error, cl.log("w1")[-3000:])
    requeued = cl.events(job_id, "requeued")
    assert len(requeued) == 1 and requeued[0].data["reason"] == "unsent"
    assert done.attempt == 1


@pytest.mark.backend_only("sqlite", reason="the runtime deadline is the trainer's, the same on both backends")
def test_max_runtime_ends_the_job_failed_with_nothing_published(cluster, digits_teacher):
    cl = cluster()
    cl.start_worker("w1")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    # 1,000 epochs (23,000 steps): LONG's 40 epochs can finish inside 2 s on a quiet machine (CI saw it succeed)
    job = c.create_job(spec(teacher.id, **{**LONG, "training.epochs": 1000, "training.max_runtime_s": 2}))
    done = c.wait(job.id, timeout_s=240)
    assert done.status == "failed" and done.error.code == "max_runtime_exceeded", done
    assert "training.max_runtime_s=2" in done.error.message
    assert c.artifacts(job.id) == []
    assert not (cl.settings.data_dir / "jobs" / job.id).exists() or not any((cl.settings.data_dir / "jobs" / job.id).rglob("*.safetensors"))
    # the worker is free again
    follow = c.wait(c.create_job(spec(teacher.id, **{"training.epochs": 1, "export.formats": ["safetensors"]})).id, timeout_s=240)
    assert follow.status == "succeeded"


@pytest.mark.slow
@pytest.mark.backend_only("sqlite", reason="the data-parallel hand-back is the trainer's, the same on both backends")
def test_sigterm_hands_back_a_two_process_job_and_another_worker_resumes_it_at_the_same_step(cluster, tiny_llama_zip, tmp_path):
    """``training.devices: 2``: SIGTERM to the worker's main process reaches rank 0 only (the helper rank has a session
    of its own); rank 0's hand-back flag stops both ranks at the same step, rank 0 writes the partial checkpoint, and
    the next worker resumes both ranks from it."""
    import json

    import psutil

    from distill.training.parallel import usable_cores
    from tests.lm_fixtures import CORPUS

    if usable_cores() < 2:
        pytest.skip("2 processes need 2 usable cores")
    cl = cluster()
    w1 = cl.start_worker("w1")
    c = cl.client
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"{a} {b}"}) + "\n" for a in CORPUS for b in CORPUS))
    teacher, data = c.upload(tiny_llama_zip, "teacher"), c.upload(text, "dataset")
    epochs = 60
    job = c.create_job({"task": "causal_lm", "teacher": {"file_id": teacher.id}, "student": {"from_teacher": {"num_layers": 2}},
                        "data": {"train": {"file_id": data.id}, "validation": {"fraction": 0.2, "seed": 0}, "max_seq_length": 48},
                        "method": {"name": "kd", "alpha": 0.5}, "cache": {"top_k": 16},
                        "training": {"epochs": epochs, "batch_size": 5, "optimizer": {"name": "adamw", "lr": 3e-3}, "seed": 0,
                                     "log_every_steps": 1, "devices": 2},
                        "evaluation": {"speed_repeats": 1}, "export": {"formats": ["safetensors"]}})
    wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 2, 240, "epoch 2")
    helpers = [p for p in psutil.process_iter(["cmdline"]) if "distill.lm.parallel" in " ".join(p.info["cmdline"] or [])
               and job.id in " ".join(p.info["cmdline"] or [])]
    assert len(helpers) == 1
    w1.send_signal(signal.SIGTERM)  # to the main process only, as docker stop does
    w1.wait(timeout=60)
    assert psutil.wait_procs(helpers, timeout=10)[1] == []  # the helper left with its rank 0
    row = cl.job_row(job.id)
    assert (row.status, row.handbacks, row.attempt) == ("queued", 1, 1), cl.log("w1")[-3000:]
    saved = [e for e in cl.events(job.id, "checkpoint_saved") if "steps_done_in_epoch" in (e.data or {})]
    assert len(saved) == 1

    cl.start_worker("w2")
    done = c.wait(job.id, timeout_s=400)
    assert done.status == "succeeded", (done.error, cl.log("w2")[-3000:])
    resumed = [e for e in c.events(job.id) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["step"] == saved[0].data["step"]
    steps = [m.step for m in c.metrics(job.id, name="loss/total", split="train")]
    r = c.report(job.id)
    assert steps == list(range(1, epochs * r.training.steps_per_epoch + 1)) and r.training.devices == 2  # each step once
