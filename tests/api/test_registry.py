"""The MLflow model-registry export against a real ``mlflow server`` (SQLite backend): the spec block, the run
(parameters, per-epoch metrics, report, student files), the registered version (tags, alias), and a failed export
recorded without failing the job. tests/e2e/test_registry_e2e.py runs it from a real job on a real worker."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.api.test_files import assert_error
from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.s3 import free_ports

REPORT = {"summary": "student keeps 97% of the teacher's top-1 at 1/20 of its size", "compression_ratio": 20.5,
          "agreement": 0.96, "teacher": {"val_top1": 0.98}, "student": {"val_top1": 0.95}}


def registry(uri: str, **over) -> dict:
    return {"mlflow": {"tracking_uri": uri, "model_name": f"digits-{uuid.uuid4().hex[:6]}", "alias": "candidate", **over}}


async def test_the_registry_block_is_validated(api, teacher_id, monkeypatch):  # noqa: F811
    from stillhouse.settings import get_settings

    ok = (await api.post("/v1/jobs", json=spec_for(teacher_id, registry=registry("http://mlflow.internal:5000")))).json()
    assert ok["spec"]["registry"]["mlflow"]["experiment_name"] == "stillhouse" and ok["registry"] is None
    for bad, param in ((registry("file:///tmp/mlruns"), "registry.mlflow.tracking_uri"),
                       (registry("http://x", alias="v2"), "registry.mlflow"),
                       (registry("http://x", alias="latest"), "registry.mlflow"),
                       (registry("http://x", unknown=1), "registry.mlflow.unknown")):
        err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, registry=bad)), 422)
        assert err["param"] == param, err
    monkeypatch.setenv("STILLHOUSE_MLFLOW_ALLOWED_TRACKING_URIS", "https://mlflow.corp/, http://10.0.0.5:5000")
    get_settings.cache_clear()
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, registry=registry("http://elsewhere:5000"))), 422,
                       "registry_not_allowed")
    assert err["param"] == "registry.mlflow.tracking_uri" and "https://mlflow.corp/" in err["message"]
    assert (await api.post("/v1/jobs", json=spec_for(teacher_id, registry=registry("https://mlflow.corp/")))).status_code == 201


def test_flatten_and_epoch_metrics():
    from stillhouse.registry import flatten, is_epoch_metric

    assert flatten({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x" * 7000}) == {"a.b": "1", "a.c": "[1, 2]", "e": "x" * 6000}
    assert is_epoch_metric("top1", "val") and is_epoch_metric("loss/kd", "train_epoch") and is_epoch_metric("lr", "train")
    assert not is_epoch_metric("loss/kd", "train") and not is_epoch_metric("loss/total", "baseline_train")


@pytest.mark.slow  # an mlflow server process
def test_export_logs_the_run_and_registers_a_version_with_tags_and_alias(mlflow_server, tmp_path):
    from distill.spec import MlflowRegistrySpec
    from stillhouse.registry import export_mlflow

    cfg = MlflowRegistrySpec(**registry(mlflow_server.uri)["mlflow"])
    student = tmp_path / "student.safetensors"
    student.write_bytes(b"weights")
    (tmp_path / "student.json").write_text('{"architecture": "mlp"}')
    spec = {"name": "digits", "method": {"name": "kd", "temperature": 4.0}, "training": {"optimizer": {"lr": 0.001}},
            "registry": registry(mlflow_server.uri)}
    metrics = [("top1", "val", e, 0.8 + e / 100) for e in (1, 2, 3)] + [("loss/kd", "train_epoch", e, 1.0 / e) for e in (1, 2, 3)]
    out = export_mlflow(cfg, job_id="job_abc", job_name="digits", spec=spec, report=REPORT, metrics=metrics,
                        files={"student.safetensors": student, "student.json": tmp_path / "student.json"}, teacher_sha256="ab" * 32)
    assert out["status"] == "registered" and out["version"] == "1" and out["alias"] == "candidate"

    c = mlflow_server.client()
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stillhouse.job_id"] == "job_abc"
    assert run.data.params["method.temperature"] == "4.0" and run.data.params["training.optimizer.lr"] == "0.001"
    assert not any(k.startswith("registry") for k in run.data.params)
    assert [(m.step, m.value) for m in c.get_metric_history(out["run_id"], "val/top1")] == [(e, 0.8 + e / 100) for e in (1, 2, 3)]
    assert len(c.get_metric_history(out["run_id"], "train_epoch/loss/kd")) == 3
    names = sorted(a.path for a in c.list_artifacts(out["run_id"], "student"))
    assert names == ["student/student.json", "student/student.safetensors"]
    got = c.download_artifacts(out["run_id"], "report.json", str(tmp_path))
    assert json.loads(open(got).read()) == REPORT

    mv = c.get_model_version_by_alias(cfg.model_name, "candidate")
    assert mv.version == "1" and mv.run_id == out["run_id"] and mv.source.endswith("/student")
    assert mv.tags == {"stillhouse.job_id": "job_abc", "teacher_sha256": "ab" * 32, "compression_ratio": "20.5", "top1": "0.95",
                       "teacher_top1": "0.98", "agreement": "0.96"}
    assert mv.description == REPORT["summary"]
    again = export_mlflow(cfg, job_id="job_def", job_name=None, spec=spec, report=REPORT, metrics=[], files={}, teacher_sha256=None)
    assert again["version"] == "2" and c.get_model_version_by_alias(cfg.model_name, "candidate").version == "2"  # the alias moves


def test_a_failed_export_is_recorded_and_the_job_stays_succeeded(backend, tmp_path, monkeypatch):
    """An unreachable tracking server: jobs.registry_export says failed with the error, an event says so, the job is
    still succeeded with its artifacts."""
    from sqlalchemy import select

    from stillhouse.db import session_factory
    from stillhouse.jobs import runner, states
    from stillhouse.models import Artifact, Job, JobEvent
    from stillhouse.storage import get_store
    from distill.spec import JobSpec

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (port,) = free_ports(1)  # nothing listens there
    spec = JobSpec.model_validate(spec_for("file_x", registry=registry(f"http://127.0.0.1:{port}")))
    store = get_store()
    src = tmp_path / "student.json"
    src.write_text("{}")
    store.publish(src, "jobs/job_r/artifacts/attempt-1/student.json")
    sessions = session_factory()
    with sessions.begin() as s:
        s.add(Job(id="job_r", status=states.SUCCEEDED, spec=spec.model_dump(mode="json"), attempt=1))
        s.flush()
        s.add(Artifact(job_id="job_r", name="student.json", bytes=2, sha256="44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                       content_type="application/json", storage_key="jobs/job_r/artifacts/attempt-1/student.json"))
    with sessions() as s:
        rows = list(s.scalars(select(Artifact)))
    t0 = time.monotonic()
    runner._export_registry(sessions, store, "job_r", spec, REPORT, rows)
    assert time.monotonic() - t0 < 60
    with sessions() as s:
        job = s.get(Job, "job_r")
        ev = s.scalars(select(JobEvent).where(JobEvent.job_id == "job_r")).one()
    out = job.registry_export["mlflow"]
    assert job.status == "succeeded" and out["status"] == "failed" and "connect" in out["error"].lower(), out
    assert ev.type == "registry_failed" and str(port) in ev.message


def test_version_tags_of_a_causal_lm_report():
    """A causal-LM report's agreement is an object: the tag holds its top-1 agreement, plus the held-out perplexity."""
    from stillhouse.registry import _version_tags
    from tests.fixtures import stored_reports

    r = stored_reports()["causal_lm"]
    tags = _version_tags("job_x", r, "abc")
    assert tags["agreement"] == str(r["agreement"]["top1_agreement"])
    assert tags["perplexity"] == str(r["perplexity"]["student"]["perplexity"]) and "top1" not in tags
