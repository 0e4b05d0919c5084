"""A real API server (uvicorn, real HTTP on loopback) and a real Celery worker process per backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from client import Stillhouse
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def own_metrics_dir(tmp_path_factory) -> Iterator[Path]:
    """Give each e2e module's processes their own Prometheus multiprocess directory. Importing ``stillhouse.metrics``
    in the test process exports ``PROMETHEUS_MULTIPROC_DIR`` (so a process's children share its machine's totals);
    inherited by every API and worker the tests start, it made one module's ``/metrics`` add up the requests of all
    the modules before it (92 job creations counted where the test made 2)."""
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("metrics"))
    yield Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if before is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = before


class Live:
    """Running API + worker processes for one backend, and a client for them."""

    def __init__(self, backend: Backend, port: int, procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
        self.backend, self.port, self.procs, self.logs = backend, port, procs, logs
        self.url = f"http://127.0.0.1:{port}"
        self.client = Stillhouse(self.url, timeout=120)  # a loaded CI machine: the first text spec check imports transformers

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.backend.env(), "STILLHOUSE_PORT": str(self.port), "STILLHOUSE_API_URL": self.url}

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-4000:]


def start(backend: Backend, log_dir: Path, *, worker: bool = True, env: dict[str, str] | None = None) -> Live:
    """API (and, with ``worker``, one worker) on ``backend``, with ``env`` added to their environment (e.g.
    ``STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`` for a receiver on loopback)."""
    port = free_port()
    extra = env or {}
    env = {**os.environ, **backend.env(), "STILLHOUSE_PORT": str(port), "STILLHOUSE_TORCH_THREADS": "1",
           "STILLHOUSE_PROGRESS_INTERVAL_S": "0.2", **extra}
    if backend.database_url is None:
        env.pop("STILLHOUSE_DATABASE_URL", None)
    cmds = {"api": [sys.executable, "-m", "app", "serve"]}
    if worker:
        cmds["worker"] = [sys.executable, "-m", "worker"]
    procs, logs = {}, {}
    for name, cmd in cmds.items():
        logs[name] = log_dir / f"{name}.log"
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[name].open("w"), stderr=subprocess.STDOUT)
    live = Live(backend, port, procs, logs)
    try:
        live.client.wait_ready(timeout_s=60)
    except Exception:
        stop(live)
        raise RuntimeError(f"API did not become ready:\n{live.log('api')}")
    return live


def stop(live: Live) -> None:
    for p in live.procs.values():
        if p.poll() is None:
            p.terminate()
    for p in live.procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    live.client.close()


@pytest.fixture(scope="module")
def live(backend_session: Backend, tmp_path_factory) -> Iterator[Live]:
    """API + one worker on ``backend_session`` (SQLite + filesystem broker, or PostgreSQL + Redis)."""
    lv = start(backend_session, tmp_path_factory.mktemp("logs"))
    yield lv
    stop(lv)
