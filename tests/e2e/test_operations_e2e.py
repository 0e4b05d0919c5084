"""Issue 14's "done means", end to end: PostgreSQL + Redis + SeaweedFS (S3), an API and two workers each with a data
directory of its own (no shared folder, as on three machines), a real webhook receiver verifying signatures with the
``standardwebhooks`` package and a real MLflow server. Two jobs are submitted together, so each worker runs one: the
first job's event stream is read to the end, each job's signed ``job.succeeded`` webhook verifies, ``/metrics`` counts
both jobs, the first job's student is registered in MLflow (alias, tags) and its artifacts are downloaded from the
API (streamed from the bucket) with their sha256, the same bytes MLflow holds (and ``If-None-Match`` / ``HEAD`` answer
304 / headers only from the bucket too). Deleting the job then removes its artifacts from the bucket and frees their
bytes."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from tests.api.test_metrics import samples
from tests.conftest import make_backend, services_or_skip
from tests.e2e.test_jobs_e2e import spec, wait_for
from tests.e2e.test_object_storage_e2e import SplitCluster
from tests.webhooks import WebhookReceiver, WebhookVerificationError

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

EPOCHS = 3
PIPELINE_ENV = {"STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "STILLHOUSE_WEBHOOK_POLL_INTERVAL_S": "0.2",
                "STILLHOUSE_EVENTS_POLL_INTERVAL_S": "0.1"}


@pytest.fixture
def ops_cluster(seaweedfs, tmp_path):
    """A fresh PostgreSQL database, Redis, a fresh bucket, and an API with its own data directory (no worker yet)."""
    services_or_skip()
    from stillhouse.db import migrate
    from stillhouse.settings import Settings

    backend, drop = make_backend("postgres", tmp_path / "unused")
    migrate(Settings(database_url=backend.database_url, data_dir=tmp_path / "migrate"))
    bucket = seaweedfs.new_bucket()
    (tmp_path / "api").mkdir()
    cl = SplitCluster(backend, tmp_path, {**seaweedfs.env(bucket), **PIPELINE_ENV, "STILLHOUSE_DATA_DIR": str(tmp_path / "api")})
    cl.bucket = bucket
    yield cl
    cl.close()
    drop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_machines_stream_webhook_metrics_mlflow_and_download(ops_cluster, seaweedfs, mlflow_server, digits_teacher, tmp_path):
    cl = ops_cluster
    c = cl.client
    dirs = {name: tmp_path / name for name in ("w1", "w2")}
    for name, d in dirs.items():
        cl.start_worker_in(name, d)
    model_name = "digits-mlp-ops"
    registry = {"mlflow": {"tracking_uri": mlflow_server.uri, "model_name": model_name, "alias": "candidate",
                           "experiment_name": "ops-e2e"}}
    with WebhookReceiver() as rx:
        ep = c.create_webhook(rx.url, ["job.succeeded", "job.failed", "job.cancelled"])
        teacher = c.upload(digits_teacher, "teacher")
        first = c.create_job(spec(teacher.id, **{"training.epochs": EPOCHS, "export.formats": ["safetensors", "onnx"],
                                                 "registry": registry}), metadata={"dag": "ops-e2e"})
        second = c.create_job(spec(teacher.id, **{"training.epochs": EPOCHS}), metadata={"dag": "ops-e2e"})

        # the first job's stream, read to its end
        msgs = list(c.stream_events(first.id, timeout_s=400))
        assert msgs[-1].kind == "end" and msgs[-1].status == "succeeded", ([m.kind for m in msgs], cl.log("w1")[-2000:],
                                                                           cl.log("w2")[-2000:])
        events = [m.event for m in msgs if m.kind == "event"]
        assert [e.id for e in events] == sorted({e.id for e in events})  # in order, none repeated
        assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
        assert [e.data["phase"] for e in events if e.type == "phase"] == [
            "loading_teacher", "caching_teacher_outputs", "training", "evaluating", "exporting"]
        assert [e.id for e in events] == [e.id for e in c.events(first.id)][:len(events)]
        steps = [m.job.progress.step for m in msgs if m.kind == "job" and m.job.progress.step]
        assert steps and steps == sorted(steps)
        done = c.wait(second.id, timeout_s=400)
        assert done.status == "succeeded", (done.error, cl.log("w1")[-2000:], cl.log("w2")[-2000:])

        # one signed webhook per job, verified with the endpoint's secret by the standardwebhooks library
        reqs = rx.wait_for(2, timeout_s=60)
        payloads = sorted((r.verify(ep["secret"]) for r in reqs), key=lambda p: p["data"]["id"])
    assert sorted(p["data"]["id"] for p in payloads) == sorted([first.id, second.id])
    assert all(p["type"] == "job.succeeded" and p["data"]["status"] == "succeeded" for p in payloads)
    assert len({r.headers["webhook-id"] for r in reqs}) == 2
    with pytest.raises(WebhookVerificationError):  # the receiver's check is a real one: another secret fails
        reqs[0].verify("whsec_" + base64.b64encode(b"not-the-secret-of-this-endpoint!").decode())

    # each worker ran one job: both fetched the teacher from the bucket into their own cache
    for name, d in dirs.items():
        assert (d / "cache" / "files" / teacher.id).is_file(), (name, cl.log(name)[-2000:])
    workers = {e.data["worker"] for j in (first, second) for e in c.events(j.id) if e.type == "status" and "worker" in (e.data or {})}
    assert len(workers) == 2, workers

    # /metrics on the API: both jobs by status (read from the database), and the stream and status reads it served
    m = samples(c._http.get("/metrics").text)
    assert m[("stillhouse_jobs", (("status", "succeeded"),))] == 2
    assert m[("stillhouse_queue_depth", ())] == 0
    assert m[("stillhouse_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}/events/stream"), ("status", "200")))] >= 1
    assert m[("stillhouse_http_requests_total", (("method", "POST"), ("route", "/v1/jobs"), ("status", "201")))] == 2
    assert not any(first.id in str(labels) for _, labels in m)  # no job id as a label

    # the student in MLflow: a model version with the alias and tags
    out = wait_for(lambda: (r := c.get_job(first.id).registry["mlflow"])["status"] != "pending" and r, 120, "the MLflow export")
    assert out["status"] == "registered", (out, cl.log("w1")[-2000:], cl.log("w2")[-2000:])
    ml = mlflow_server.client()
    mv = ml.get_model_version_by_alias(model_name, "candidate")
    report = c._http.get(f"/v1/jobs/{first.id}/report").json()
    assert (mv.version, mv.run_id) == (out["version"], out["run_id"])
    assert mv.tags["teacher_sha256"] == teacher.sha256 and mv.tags["stillhouse.job_id"] == first.id
    assert float(mv.tags["compression_ratio"]) == pytest.approx(report["compression_ratio"])
    assert float(mv.tags["top1"]) == pytest.approx(report["student"]["val_top1"])
    assert not c.get_job(second.id).registry  # only the job that asked for it

    # its artifacts downloaded from the API, streamed from the bucket, with their sha256: the bytes MLflow has
    arts = c.artifacts(first.id)
    assert {a.name for a in arts} >= {"student.safetensors", "student.onnx"}
    keys = seaweedfs.keys(cl.bucket, f"stillhouse/jobs/{first.id}/")
    for a in arts:
        assert f"stillhouse/jobs/{first.id}/artifacts/attempt-1/{a.name}" in keys
        got = c.download(first.id, a.name, tmp_path / "dl")
        assert sha256(got) == a.sha256 and got.stat().st_size == a.bytes
        if a.name.startswith("student."):
            logged = Path(ml.download_artifacts(out["run_id"], f"student/{a.name}", str(tmp_path / "mlflow")))
            assert sha256(logged) == a.sha256, a.name
    url = f"/v1/jobs/{first.id}/artifacts/student.safetensors"
    student = next(a for a in arts if a.name == "student.safetensors")
    cached = c._http.get(url, headers={"If-None-Match": f'"{student.sha256}"'})  # a pipeline's cache still current
    assert cached.status_code == 304 and cached.content == b""
    head = c._http.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(student.bytes) and head.content == b""
    assert head.headers["etag"] == f'"{student.sha256}"'
    assert not (tmp_path / "api" / "jobs").exists()  # the API kept no copy
    assert not [k for k in keys if "/work/" in k]

    # housekeeping: deleting the finished job removes its artifacts from the bucket and frees their bytes
    deleted = c.delete_job(first.id)
    assert deleted["deleted"] is True and deleted["freed_bytes"] == sum(a.bytes for a in arts)
    assert seaweedfs.keys(cl.bucket, f"stillhouse/jobs/{first.id}/") == []
    assert seaweedfs.keys(cl.bucket, f"stillhouse/files/{teacher.id}")  # the teacher stays
    assert [j.id for j in c.list_jobs(metadata={"dag": "ops-e2e"})] == [second.id]
