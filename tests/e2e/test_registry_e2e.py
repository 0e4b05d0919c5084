"""A real job with ``registry.mlflow`` in its spec, run by a real worker, ends with its student registered in a real
MLflow server (SQLite backend, started by the tests): run parameters, per-epoch metrics, report and student files,
a model version with tags and the alias, and the outcome in the job object and its events."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = pytest.mark.e2e

EPOCHS = 3


@pytest.mark.backend_only("sqlite", reason="the MLflow logging happens in the worker, whatever the backend")
def test_a_succeeded_job_registers_its_student_in_mlflow(live, mlflow_server, digits_teacher, tmp_path):
    c = live.client
    teacher = c.upload(digits_teacher, "teacher")
    name = f"digits-mlp-{live.backend.name}"
    job = c.create_job(spec(teacher.id, **{"training.epochs": EPOCHS, "registry": {
        "mlflow": {"tracking_uri": mlflow_server.uri, "model_name": name, "alias": "candidate", "experiment_name": "e2e"}}}))
    done = c.wait(job.id, timeout_s=240)
    assert done.status == "succeeded", (done.error, live.log("worker"))
    def exported():
        r = c.get_job(job.id).registry["mlflow"]
        return r if r["status"] != "pending" else None

    out = wait_for(exported, 120, "the MLflow export")
    assert out["status"] == "registered", (out, live.log("worker"))
    assert out["model_name"] == name and out["alias"] == "candidate" and out["tracking_uri"] == mlflow_server.uri
    events = [e for e in c.events(job.id) if e.type == "registry"]
    assert len(events) == 1 and f"version {out['version']}" in events[0].message

    m = mlflow_server.client()
    mv = m.get_model_version_by_alias(name, "candidate")
    assert mv.version == out["version"] and mv.run_id == out["run_id"]
    report = httpx.get(f"{live.url}/v1/jobs/{job.id}/report").json()  # as stored and sent to MLflow
    assert mv.tags["teacher_sha256"] == teacher.sha256 and mv.tags["stillhouse.job_id"] == job.id
    assert float(mv.tags["compression_ratio"]) == pytest.approx(report["compression_ratio"])
    assert float(mv.tags["top1"]) == pytest.approx(report["student"]["val_top1"])
    run = m.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == out["experiment_id"]
    assert run.data.params["method.temperature"] == "4.0" and run.data.params["training.epochs"] == str(EPOCHS)
    assert [h.step for h in m.get_metric_history(out["run_id"], "val/top1")] == list(range(1, EPOCHS + 1))
    assert {"train_epoch/loss/kd", "train_epoch/loss/total", "val/agreement", "train/lr"} <= set(run.data.metrics)
    assert not any(k.startswith("train/loss/") for k in run.data.metrics)  # per-step losses stay in stillhouse
    logged = {a.path for a in m.list_artifacts(out["run_id"], "student")}
    assert {f"student/{a.name}" for a in c.artifacts(job.id)} == logged
    got = m.download_artifacts(out["run_id"], "report.json", str(tmp_path))
    assert json.loads(open(got).read())["compression_ratio"] == report["compression_ratio"]
