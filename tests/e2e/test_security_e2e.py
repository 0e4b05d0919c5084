"""Keys, tenants and idempotency over real HTTP: a real API server started with ``STILLHOUSE_AUTH=required`` and a
real worker, tenants and keys made by the admin command as subprocesses, the Python client and the ``stillhouse``
command with keys, and 10 threads firing one idempotent creation at the server at once."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import httpx
import pytest

from client import ApiError, Stillhouse
from tests.conftest import Backend
from tests.e2e.conftest import ROOT, Live, start, stop
from tests.e2e.test_jobs_e2e import spec

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secured(backend_session: Backend, tmp_path_factory) -> Iterator[Live]:
    """API (keys required, though on loopback) + one worker on ``backend_session``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STILLHOUSE_AUTH", "required")
        mp.delenv("STILLHOUSE_API_KEY", raising=False)
        lv = start(backend_session, tmp_path_factory.mktemp("secured-logs"))
    yield lv
    stop(lv)


def admin(live: Live, *args: str) -> subprocess.CompletedProcess:
    env = live.env()
    if live.backend.database_url is None:
        env.pop("STILLHOUSE_DATABASE_URL", None)
    res = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


def tenant_with_key(live: Live, prefix: str) -> tuple[str, str]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"  # the session's database outlives one module
    admin(live, "tenants", "create", name)
    return name, admin(live, "keys", "create", "--tenant", name).stdout.strip()


def cli(live: Live, *args: str, key: str | None = None, env_key: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STILLHOUSE_API_KEY"}
    if env_key is not None:
        env["STILLHOUSE_API_KEY"] = env_key
    opts = ["--api-key", key] if key is not None else []
    return subprocess.run([sys.executable, "-m", "client.cli", "--api", live.url, *opts, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.backend_only("postgres", reason="tenants and keys are the same SQL on both backends")
def test_tenants_keys_and_a_job_end_to_end(secured, digits_teacher, tmp_path):
    assert "authentication is REQUIRED: STILLHOUSE_AUTH=required" in secured.log("api")
    _, key_a = tenant_with_key(secured, "a")
    _, key_b = tenant_with_key(secured, "b")
    with Stillhouse(secured.url, api_key="") as anon:
        with pytest.raises(ApiError) as e:
            anon.list_jobs()
        assert e.value.status == 401 and e.value.code == "unauthorized"
        assert anon.health()["status"] == "ok"
    a, b = Stillhouse(secured.url, api_key=key_a, timeout=30), Stillhouse(secured.url, api_key=key_b, timeout=30)
    try:
        teacher = a.upload(digits_teacher, "teacher")
        job = a.wait(a.create_job(spec(teacher.id, **{"training.epochs": 1, "export": {"formats": ["safetensors"]}})).id,
                     timeout_s=240)
        assert job.status == "succeeded", (job.error, secured.log("worker"))
        assert [x.name for x in a.artifacts(job.id)] and a.report(job.id).student.parameters > 0
        assert a.download(job.id, "student.safetensors", tmp_path / "a").stat().st_size > 0

        for call in (lambda: b.get_job(job.id), lambda: b.report(job.id), lambda: b.artifacts(job.id), lambda: b.get_file(teacher.id),
                     lambda: b.metrics(job.id), lambda: b.download(job.id, "student.safetensors", tmp_path / "b"),
                     lambda: b.compare([job.id])):
            with pytest.raises(ApiError) as e:
                call()
            assert (e.value.status, e.value.code) == (404, "not_found")
        assert b.list_jobs() == [] and b.list_files() == []
        with pytest.raises(ApiError) as e:
            b.create_job(spec(teacher.id))
        assert (e.value.status, e.value.code) == (422, "file_not_found")

        # the stillhouse command: --api-key, STILLHOUSE_API_KEY, and neither
        ok = cli(secured, "status", job.id, key=key_a)
        assert ok.returncode == 0 and "succeeded" in ok.stdout, ok.stderr
        assert cli(secured, "status", job.id, env_key=key_a).returncode == 0
        other = cli(secured, "status", job.id, env_key=key_b)
        assert other.returncode == 2 and "not_found" in other.stderr
        none = cli(secured, "status", job.id)
        assert none.returncode == 2 and "unauthorized" in none.stderr

        # revoking a key locks it out at once, and only it
        admin(secured, "keys", "revoke", key_a[:11])
        with pytest.raises(ApiError) as e:
            a.get_job(job.id)
        assert e.value.status == 401 and "revoked" in e.value.message
        assert b.list_jobs() == []
    finally:
        a.close()
        b.close()


def test_concurrent_idempotent_creations_on_a_live_server(secured, digits_teacher):
    """10 threads, each with its own connection, POST the same body with the same Idempotency-Key at once:
    all get 201 with the same id, exactly one job row exists."""
    _, key = tenant_with_key(secured, "burst")
    with Stillhouse(secured.url, api_key=key) as c:
        teacher = c.upload(digits_teacher, "teacher")
        body = spec(teacher.id, **{"training.epochs": 1})

        def fire(_: int) -> httpx.Response:
            with httpx.Client(base_url=secured.url, timeout=60,
                              headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "deploy-42"}) as h:
                return h.post("/v1/jobs", json=body)

        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(fire, range(10)))
        assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 9
        assert [j.id for j in c.list_jobs(limit=100)] == list(ids)
        try:
            c.cancel(ids.pop())  # leave the worker free
        except ApiError as e:  # it may have finished already
            assert e.code == "job_not_cancellable"
