"""Issue 15, reproduced with real processes: a pool child killed while idle on the embedded default, a queued job
whose message was taken but never claimed, and the database going away under the API and under a running job.
Each test starts its own API and workers (``tests.e2e.test_durability_e2e.Cluster``) and its own queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from client import Stillhouse
from tests.durability import ThrowawayPostgres, drain_queue
from tests.e2e.conftest import ROOT, free_port
from tests.e2e.test_durability_e2e import LONG, cluster  # noqa: F401 - the cluster fixture
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults")]  # never beside each other (tests/conftest.py)

SHORT = {"training.epochs": 1, "export.formats": ["safetensors"]}


def pool_children(pid: int) -> list[int]:
    """The pids of the worker main process ``pid``'s pool children."""
    return [p.pid for p in psutil.Process(pid).children()]


@pytest.mark.backend_only("sqlite", reason="the wedge was the embedded broker's (billiard Pool without AsynPool)")
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



def test_a_sent_job_whose_message_was_lost_is_sent_again_and_runs_once(cluster, digits_teacher):
    """Issue 15 case 2, on the embedded broker and on Redis: a job is created (its message sent), the message is then
    taken off the broker and lost (as by a worker group killed between ``received`` and the claim); once a worker is
    up and free, the sweep sends it again after ``STILLHOUSE_UNCLAIMED_RESEND_S`` and the job runs, once."""
    # unsent grace 30 s: with BASE_ENV's 1 s the API's own sweep may send a job whose first send took over 1 s a second time
    cl = cluster(STILLHOUSE_UNCLAIMED_RESEND_S="4", STILLHOUSE_WORKER_HEARTBEAT_S="1", STILLHOUSE_UNSENT_GRACE_S="30")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    job = c.create_job(spec(teacher.id, **SHORT))
    assert drain_queue(cl.settings) == [job.id]  # the message is gone; the row says it was sent
    assert cl.job_row(job.id).enqueued_at is not None
    cl.start_worker("w1")
    done = c.wait(job.id, timeout_s=240)
    assert done.status == "succeeded", (done.status, cl.log("w1")[-3000:])
    assert done.attempt == 1
    requeued = cl.events(job.id, "requeued")
    assert requeued and {e.data["reason"] for e in requeued} == {"unclaimed"}
    assert [e.data["status"] for e in c.events(job.id) if e.type == "status"] == ["queued", "running", "succeeded"]

# -- the database goes away under the API -------------------------------------------------------------------------

def serve_api(tmp_path, database_url: str, name: str = "api") -> tuple[subprocess.Popen, str]:
    """``python -m app serve`` on ``database_url`` (embedded broker and artifacts under ``tmp_path``); returns the
    process and its base URL once ``/healthz`` answers (``/readyz`` cannot while the database is down)."""
    port = free_port()
    env = {**os.environ, "STILLHOUSE_DATA_DIR": str(tmp_path / "data"), "STILLHOUSE_DATABASE_URL": database_url,
           "STILLHOUSE_BROKER_URL": "filesystem://", "STILLHOUSE_PORT": str(port), "STILLHOUSE_QUEUE": f"q-{port}"}
    log = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, 90, "the API to answer /healthz")
    return proc, url


def stop_api(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def operations() -> list[tuple[str, str]]:
    """Every (method, path template) of the API's OpenAPI document."""
    from app.main import create_app

    paths = create_app(auto_migrate=False).openapi()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() for m in ops]


IDS = {"job_id": "job_0123456789abcdef", "file_id": "file_0123456789abcdef", "endpoint_id": "whe_0123456789abcdef",
       "sweep_id": "swp_0123456789abcdef",
       "name": "student.safetensors"}
NO_DATABASE = {("GET", "/healthz"), ("GET", "/metrics")}


def call(client: httpx.Client, method: str, template: str, teacher_id: str = IDS["file_id"]) -> httpx.Response:
    """One request to ``template`` with ids filled in and a body that passes validation (so the route reaches the database)."""
    path = template.format(**IDS)
    if (method, template) == ("POST", "/v1/files"):
        return client.post(path, data={"purpose": "teacher"}, files={"file": ("t.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")})
    if (method, template) == ("POST", "/v1/jobs"):
        return client.post(path, json=spec(teacher_id, **SHORT))
    if (method, template) == ("POST", "/v1/sweeps"):
        return client.post(path, json={"base": spec(teacher_id, **SHORT), "budget": {"max_trials": 2},
                                       "search_space": {"method.temperature": {"type": "float", "low": 2.0, "high": 4.0}}})
    if (method, template) == ("POST", "/v1/webhooks"):
        return client.post(path, json={"url": "https://93.184.216.34/stillhouse"})
    if (method, template) == ("GET", "/v1/reports"):
        return client.get(path, params={"job_ids": f"{IDS['job_id']},job_fedcba9876543210"})
    if method == "PATCH":
        return client.patch(path, json={"description": "x"})
    return client.request(method, path)


def assert_database_unavailable(r: httpx.Response, what: str) -> None:
    assert r.status_code == 503, (what, r.status_code, r.text[:500])
    if r.request.method != "HEAD":
        assert r.json()["error"]["code"] == "database_unavailable", (what, r.text[:500])
    assert int(r.headers["Retry-After"]) > 0, (what, dict(r.headers))


def test_every_route_answers_503_database_unavailable_on_a_closed_port(tmp_path):
    """Issue 15 case 3, a URL on a closed port: every operation of the OpenAPI document answers 503
    ``database_unavailable`` with ``Retry-After`` (never 500, never a dropped connection), except the two that
    never touch the database and ``/readyz`` (503 ``unavailable`` naming the database)."""
    proc, url = serve_api(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres")
    try:
        ops = operations()
        assert len(ops) >= 25
        with httpx.Client(base_url=url, timeout=30) as client:
            for method, template in ops:
                r = call(client, method, template)
                what = f"{method} {template}"
                if (method, template) in NO_DATABASE:
                    assert r.status_code == 200, (what, r.status_code)
                elif template == "/readyz":
                    assert r.status_code == 503 and "database" in r.json()["error"]["message"], r.text
                    assert int(r.headers["Retry-After"]) > 0
                else:
                    assert_database_unavailable(r, what)
        assert "Traceback" not in (tmp_path / "api.log").read_text()
    finally:
        stop_api(proc)


@pytest.fixture
def throwaway_pg():
    """A migrated PostgreSQL server of the test's own (``tests.durability.ThrowawayPostgres``), removed afterwards."""
    from stillhouse.db import migrate
    from stillhouse.settings import Settings

    try:
        pg = ThrowawayPostgres()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot make a PostgreSQL cluster here: {e}")
    try:
        pg.start()
        migrate(Settings(database_url=pg.url))
        yield pg
    finally:
        pg.remove()


def test_postgresql_stopped_mid_request_answers_503_never_500(tmp_path, throwaway_pg, digits_teacher):
    """Issue 15 case 3, a real PostgreSQL stopped (``pg_ctl stop -m fast``, as a restart does) while 6 clients poll
    and create jobs and an event stream is open: every answer is 200/201 or 503 ``database_unavailable`` with
    ``Retry-After``; none is a 500 and no connection is dropped; the stream ends with an ``error`` event; once the
    server is back every request succeeds again."""
    proc, url = serve_api(tmp_path, throwaway_pg.url)
    try:
        c = Stillhouse(url, timeout=30)
        teacher = c.upload(digits_teacher, "teacher")
        job = c.create_job(spec(teacher.id, **SHORT))
        stop = threading.Event()
        answers: list[tuple[str, int, str | None, str | None]] = []
        dropped: list[str] = []
        reads = ["/v1/jobs", "/v1/files", f"/v1/jobs/{job.id}", f"/v1/jobs/{job.id}/events", f"/v1/files/{teacher.id}",
                 "/v1/webhooks", f"/v1/jobs/{job.id}/metrics"]

        def poll(k: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        if k == 0 and i % 3 == 0:
                            r = client.post("/v1/jobs", json=spec(teacher.id, **SHORT))
                        else:
                            r = client.get(reads[(i + k) % len(reads)])
                    except httpx.TransportError as e:
                        dropped.append(f"{type(e).__name__}: {e}")
                        continue
                    code = r.json()["error"]["code"] if r.status_code >= 400 else None
                    answers.append((r.request.url.path, r.status_code, code, r.headers.get("Retry-After")))

        stream_lines: list[str] = []

        def stream() -> None:
            try:
                with httpx.Client(base_url=url, timeout=60) as client, client.stream("GET", f"/v1/jobs/{job.id}/events/stream") as r:
                    stream_lines.extend(r.iter_lines())
            except httpx.TransportError as e:
                dropped.append(f"stream: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=poll, args=(k,)) for k in range(6)] + [threading.Thread(target=stream)]
        for t in threads:
            t.start()
        time.sleep(2)
        before = len(answers)
        throwaway_pg.stop("fast")
        time.sleep(3)
        during = len(answers)
        throwaway_pg.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not dropped, dropped[:5]
        assert before > 10 and during > before
        bad = [a for a in answers if a[1] not in (200, 201, 503)]
        assert not bad, bad[:10]
        unavailable = [a for a in answers if a[1] == 503]
        assert len(unavailable) >= 5, len(unavailable)
        assert all(a[2] == "database_unavailable" and int(a[3]) > 0 for a in unavailable), unavailable[:5]
        assert all(a[1] in (200, 201) for a in answers[-20:]), answers[-20:]  # back to normal
        assert "event: error" in stream_lines and any('"database_unavailable"' in line for line in stream_lines), stream_lines[-5:]
        assert c.get_job(job.id).status == "queued"
        c.close()
    finally:
        stop_api(proc)


def test_a_worker_that_loses_postgresql_mid_job_hands_it_back_and_it_resumes(tmp_path, throwaway_pg, digits_teacher):
    """Issue 15 cases 4 and 6: a real PostgreSQL stopped for longer than the lease while a job trains (Redis broker):
    the job is not failed; once the database answers, its worker hands it back (``database_error``) and resumes it
    from its last checkpoint, with one continuous history; the resume says it followed a database error."""
    from tests.conftest import REDIS_URL, Backend, services_or_skip
    from tests.e2e.test_durability_e2e import Cluster, assert_one_continuous_history

    services_or_skip()
    backend = Backend("pg-throwaway", tmp_path / "data", throwaway_pg.url, REDIS_URL, "unused")
    (tmp_path / "data").mkdir()
    cl = Cluster(backend, tmp_path, {})
    try:
        cl.start_worker("w1")
        c = cl.client
        teacher = c.upload(digits_teacher, "teacher")
        job = c.create_job(spec(teacher.id, **LONG))
        wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 2, 240, "epoch 2")
        throwaway_pg.stop("fast")
        time.sleep(3 * float(cl.env["STILLHOUSE_LEASE_TTL_S"]))  # past the lease: the heartbeat cannot renew it either
        throwaway_pg.start()
        done = c.wait(job.id, timeout_s=600)
        assert done.status == "succeeded", (done.error, cl.log("w1")[-4000:])
        assert done.error is None and done.handbacks >= 1
        statuses = [(e.data["status"], e.data.get("reason"), e.data.get("resumed")) for e in c.events(job.id) if e.type == "status"]
        # handed back on the failed write (database_error), or, had the heartbeat noticed first, on the lease (lease_expired)
        assert statuses[:2] == [("queued", None, None), ("running", None, None)], statuses
        assert statuses[2][:2] in {("queued", "database_error"), ("queued", "lease_expired")}, statuses
        assert statuses[3] == ("running", None, statuses[2][1]), statuses
        assert statuses[-1][0] == "succeeded" and "failed" not in [s[0] for s in statuses]
        resumed = [e for e in c.events(job.id) if e.type == "resumed"]
        assert resumed and resumed[0].data["epoch"] >= 1
        assert_one_continuous_history(c, job.id, 40)
        assert "database unreachable mid-job" in cl.log("w1")
    finally:
        cl.close()
