"""Report views: JSON, the HTML page with plots, and several jobs side by side. The report comes from a real
(small) run of the distillation core, stored on a job row as the worker would."""

from __future__ import annotations

import pytest

from tests.api.test_files import assert_error, upload
from tests.api.test_jobs import spec_for
from tests import files as mk


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """(report, metric rows) of a 3-epoch digits job: tiny CNN teacher -> mlp student."""
    import torch

    from distill.formats import FileInput
    from distill.job import run_job
    from distill.reporter import RecordingReporter
    from distill.results import JobInputs
    from distill.spec import JobSpec
    from distill.data import load_builtin, split_validation
    from distill.teacher_training import save_model, train_classifier

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("rep")
    x, y, _ = load_builtin("digits")
    tr, _ = split_validation(y, 0.2, seed=0)
    teacher = train_classifier({"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 32}}, x[tr], y[tr], epochs=3, seed=0)
    path = d / "t.safetensors"
    save_model(teacher, teacher.stillhouse_architecture, path)
    fi = FileInput(path=path, format="safetensors", bytes=path.stat().st_size)
    spec = JobSpec.model_validate(spec_for("file_t", **{"training.epochs": 3, "student.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [16]}},
                                                         "evaluation": {"latency_iterations": 5}, "export": {"formats": ["safetensors"]}}))
    rep = RecordingReporter()
    result = run_job(spec, JobInputs(teacher=fi, files={"file_t": fi}), d / "w", rep)
    return result.report, rep.rows


async def _succeeded_job(api, tmp_path, report, rows, name="<b>mine</b>"):
    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.models import Metric

    teacher_id = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id, name=name))).json()
    with session_scope() as s:
        assert states.transition(s, job["id"], states.RUNNING, attempt=1)
        s.add_all(Metric(job_id=job["id"], name=r.name, split=r.split, step=r.step, epoch=r.epoch, value=r.value) for r in rows)
        assert states.transition(s, job["id"], states.SUCCEEDED, report=report)
    return job["id"]


async def test_report_json_has_the_classification_extras(api, tmp_path, real_report):
    report, rows = real_report
    job_id = await _succeeded_job(api, tmp_path, report, rows)
    r = (await api.get(f"/v1/jobs/{job_id}/report")).json()
    assert r["job_id"] == job_id and r["object"] == "report"
    assert set(r["top5"]) == {"teacher", "student"} and len(r["per_class_top1"]["student"]) == 10
    assert 0 <= r["ece"]["student"] <= 1 and len(r["teacher_student_confusion"]) == 10


async def test_report_html_page(api, tmp_path, real_report):
    report, rows = real_report
    job_id = await _succeeded_job(api, tmp_path, report, rows)
    for url in (f"/v1/jobs/{job_id}/report?format=html", f"/v1/jobs/{job_id}/report.html"):
        resp = await api.get(url)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        page = resp.text
        assert page.count("<svg") >= 3  # training curves, accuracy vs size, latency
        assert "loss terms per epoch" in page and "accuracy vs size" in page
        assert "&lt;b&gt;mine&lt;/b&gt;" in page and "<b>mine</b>" not in page  # the job name is escaped
        assert f"{100 * report['student']['val_top1']:.2f}%" in page


async def test_reports_side_by_side(api, tmp_path, real_report):
    report, rows = real_report
    a = await _succeeded_job(api, tmp_path, report, rows, name="a")
    b = await _succeeded_job(api, tmp_path, report, rows, name="b")
    data = (await api.get("/v1/reports", params={"job_ids": f"{b},{a}"})).json()
    assert [r["job_id"] for r in data["data"]] == [b, a]
    page = (await api.get("/v1/reports", params={"job_ids": f"{a},{b}", "format": "html"})).text
    assert page.index(a) < page.index(b) and "2 reports side by side" in page
    assert_error(await api.get("/v1/reports", params={"job_ids": ""}), 422)
    assert_error(await api.get("/v1/reports", params={"job_ids": f"{a},job_nope"}), 404, "not_found")
    queued = (await api.post("/v1/jobs", json=spec_for((await upload(api, mk.safetensors_file(tmp_path))).json()["id"]))).json()["id"]
    assert_error(await api.get("/v1/reports", params={"job_ids": f"{a},{queued}"}), 409, "report_not_ready")
    assert_error(await api.get(f"/v1/jobs/{queued}/report.html"), 409, "report_not_ready")
