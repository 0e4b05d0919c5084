"""Workers on different machines sharing nothing but PostgreSQL, Redis and an S3 bucket (SeaweedFS): the API and
each worker get data directories of their own. A job handed back by one worker (SIGTERM) is resumed by another from
the checkpoint the first left in the bucket, at the same step, and its artifacts are downloaded from the API, streamed
from the bucket, with their sha256."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from tests.conftest import make_backend, services_or_skip
from tests.e2e.test_durability_e2e import Cluster, assert_one_continuous_history
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

EPOCHS = 40
LONG = {"training.epochs": EPOCHS, "export.formats": ["safetensors", "onnx"],
        "student.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [256, 256]}}}


class SplitCluster(Cluster):
    """A ``Cluster`` whose processes each have their own ``STILLHOUSE_DATA_DIR``."""

    def start_worker_in(self, name: str, data_dir: Path):
        shared = self.env
        self.env = {**shared, "STILLHOUSE_DATA_DIR": str(data_dir)}
        try:
            return self.start_worker(name)
        finally:
            self.env = shared


@pytest.fixture
def split_cluster(seaweedfs, tmp_path):
    services_or_skip()
    from stillhouse.db import migrate
    from stillhouse.settings import Settings

    backend, drop = make_backend("postgres", tmp_path / "unused")
    migrate(Settings(database_url=backend.database_url, data_dir=tmp_path / "migrate"))
    bucket = seaweedfs.new_bucket()
    (tmp_path / "api").mkdir()
    cl = SplitCluster(backend, tmp_path, {**seaweedfs.env(bucket), "STILLHOUSE_DATA_DIR": str(tmp_path / "api")})
    cl.bucket = bucket
    yield cl
    cl.close()
    drop()


def test_a_job_handed_back_on_one_machine_resumes_on_another_from_the_bucket(split_cluster, seaweedfs, digits_teacher, tmp_path):
    cl = split_cluster
    c = cl.client
    w1 = cl.start_worker_in("w1", tmp_path / "w1")
    teacher = c.upload(digits_teacher, "teacher")
    assert seaweedfs.keys(cl.bucket, "stillhouse/files/") == [f"stillhouse/files/{teacher.id}"]
    job = c.create_job(spec(teacher.id, **LONG))
    wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 2, 240, "epoch 2")
    work = f"stillhouse/jobs/{job.id}/work/checkpoint-epoch"
    wait_for(lambda: any(k.startswith(work) and k.endswith(".pt") for k in seaweedfs.keys(cl.bucket)), 30,
             "an epoch checkpoint in the bucket")  # mirrored while it runs
    assert c.get_job(job.id).status == "running"
    w1.send_signal(signal.SIGTERM)
    w1.wait(timeout=90)
    row = cl.job_row(job.id)
    assert (row.status, row.handbacks, row.lease_owner) == ("queued", 1, None), cl.log("w1")[-3000:]
    saved = [e for e in cl.events(job.id, "checkpoint_saved") if "steps_done_in_epoch" in (e.data or {})]
    assert len(saved) == 1

    w2_dir = tmp_path / "w2"  # another machine: nothing of w1's folder
    cl.start_worker_in("w2", w2_dir)
    done = c.wait(job.id, timeout_s=480)
    assert done.status == "succeeded", (done.error, cl.log("w2")[-3000:])
    assert done.attempt == 2 and done.handbacks == 1
    resumed = [e for e in c.events(job.id) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["step"] == saved[0].data["step"], resumed
    assert_one_continuous_history(c, job.id, EPOCHS)

    keys = seaweedfs.keys(cl.bucket, f"stillhouse/jobs/{job.id}/")
    assert not [k for k in keys if "/work/" in k]  # checkpoints removed once it succeeded
    arts = c.artifacts(job.id)
    assert {a.name for a in arts} >= {"student.safetensors", "student.onnx"}
    for a in arts:
        assert f"stillhouse/jobs/{job.id}/artifacts/attempt-2/{a.name}" in keys
        out = c.download(job.id, a.name, tmp_path / "dl")  # checks the sha256 against the ETag itself
        assert hashlib.sha256(out.read_bytes()).hexdigest() == a.sha256 and out.stat().st_size == a.bytes
    assert not (tmp_path / "api" / "jobs").exists()  # the API streamed them from the bucket
    assert not (w2_dir / "jobs" / job.id).exists()  # w2's scratch folder is gone
    assert (w2_dir / "cache" / "files" / teacher.id).is_file()  # the teacher stays cached for the next job there
    assert not (tmp_path / "w1" / "files").exists() and not (w2_dir / "files").exists()
