"""A real MLflow tracking server for the tests: ``mlflow server`` (the full ``mlflow`` package, a test dependency) with a
SQLite backend and a local artifact root, on a free loopback port, stopped at the end of the session. Skipped without
the ``mlflow`` command, or failed under ``STILLHOUSE_REQUIRE_SERVICES=1`` (CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.s3 import free_ports, stop_process


def mlflow_command() -> str | None:
    """The ``mlflow`` executable beside this interpreter or on PATH."""
    here = Path(sys.executable).parent / "mlflow"
    return str(here) if here.is_file() else shutil.which("mlflow")


@dataclass
class MlflowServer:
    """A running tracking server at ``uri``."""

    uri: str
    process: subprocess.Popen
    log_path: Path

    def client(self):
        """An ``MlflowClient`` for this server (tracking and registry)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server --backend-store-uri sqlite:///… --artifacts-destination …`` on 127.0.0.1, for the session."""
    cmd = mlflow_command()
    if cmd is None:
        msg = "the mlflow command is not installed (pip install mlflow: the test extra)"
        if os.environ.get("STILLHOUSE_REQUIRE_SERVICES") == "1":
            pytest.fail(msg + " but STILLHOUSE_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(msg)
    base = tmp_path_factory.mktemp("mlflow")
    (port,) = free_ports(1)
    log_path = base / "mlflow.log"
    proc = subprocess.Popen([cmd, "server", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            # the server's own job runner (5 huey consumer processes) serves nothing the tests use and
                            # took a core for seconds at each start
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", process=proc, log_path=log_path)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{server.log()}", pytrace=False)
        try:
            if httpx.get(f"{server.uri}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not answer /health in 180 s:\n{server.log()}", pytrace=False)
        time.sleep(0.5)
    yield server
    stop_process(proc, 15)
