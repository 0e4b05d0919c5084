"""Report views: JSON (typed, with its schema in OpenAPI), the HTML page with plots, and several jobs side by side. The
reports come from a real (small) run of the distillation core and from the stored-report fixtures (every shape jobs
have stored, including the task-less tensor reports of older versions), put on a job row as the worker would."""

from __future__ import annotations

import copy

import pytest

from distill.report import parse_report
from stillhouse.settings import get_settings
from tests.api.test_files import assert_error, upload
from tests.api.test_jobs import spec_for
from tests import files as mk
from tests.durability import drain_queue
from tests.fixtures import only_nulls_added, stored_reports

STORED = stored_reports()


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """(report, metric rows) of a 3-epoch digits job: tiny CNN teacher -> mlp student."""
    import torch

    from distill.formats import FileInput
    from distill.reporter import RecordingReporter
    from distill.results import JobInputs
    from distill.spec import JobSpec
    from distill.data import load_builtin, split_validation
    from distill.teacher_training import save_model, train_classifier
    from tests.core.helpers import run_job  # checks the report against distill.report

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
    """A job created over the API and moved to succeeded with ``report`` and the metric ``rows``, as a worker would."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.models import Metric

    teacher_id = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id, name=name))).json()
    drain_queue(get_settings())  # no worker takes it; later tests expect an empty queue
    with session_scope() as s:
        assert states.transition(s, job["id"], states.RUNNING, attempt=1)
        s.add_all(Metric(job_id=job["id"], name=r.name, split=r.split, step=r.step, epoch=r.epoch, value=r.value) for r in rows)
        assert states.transition(s, job["id"], states.SUCCEEDED, report=report)
    return job["id"]


async def test_report_json_has_the_classification_extras(api, tmp_path, real_report):
    report, rows = real_report
    job_id = await _succeeded_job(api, tmp_path, report, rows)
    r = (await api.get(f"/v1/jobs/{job_id}/report")).json()
    assert r["job_id"] == job_id and r["object"] == "report" and r["task"] == "classification"
    assert report["job_id"] is None and r == {**report, "job_id": job_id}  # the stored full dump, served as stored
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


@pytest.mark.parametrize("name", sorted(STORED))
async def test_stored_report_is_served_and_rendered(api, tmp_path, name):
    """A report as an earlier version stored it: JSON with its variant and every stored value unchanged, and the HTML
    page with its figures."""
    stored = STORED[name]
    job_id = await _succeeded_job(api, tmp_path, copy.deepcopy(stored), [], name=name)
    resp = await api.get(f"/v1/jobs/{job_id}/report")
    assert resp.status_code == 200, resp.text
    r = resp.json()
    assert r["task"] == stored.get("task", "classification") and r["job_id"] == job_id and r["object"] == "report"
    assert only_nulls_added(stored, r, exempt={"object", "job_id", "task"})
    typed = parse_report(r)
    page = (await api.get(f"/v1/jobs/{job_id}/report.html")).text
    assert f"{job_id} · {name} · {typed.task}" in page
    q = typed.quality()
    assert q.label in page and f"{100 * q.student:.2f}%" in page
    assert f"{typed.student.bytes / 1024:,.1f} KiB" in page or f"{typed.student.bytes / 1024**2:,.2f} MiB" in page
    assert page.count("<svg") >= 1 and "wall time per phase: loading_teacher" in page
    if name == "classification_full":
        assert "quantised student" in page and "pruned student" in page and "student alone" in page
        assert f"{typed.distillation_gain_points:+.2f} points" in page
    if name == "causal_lm":
        assert "student alone" in page and "held-out perplexity" in page and f"{typed.perplexity.student.perplexity:,.3f}" in page
        assert "held-out prompts: the teacher's and the student's answers" in page and typed.generations.examples
        assert "decode tokens/s" in page and "cache: bytes / token" in page
    if name == "classification_error_bars":
        low, high = typed.baseline.val_top1_interval
        vs = typed.comparisons["distilled_vs_alone"]
        assert "95% interval (Wilson)" in page and f"[{100 * low:.2f}%, {100 * high:.2f}%]" in page
        assert (f"{vs.difference_points:+.2f} points, 95% interval [{vs.interval_points[0]:+.2f}, {vs.interval_points[1]:+.2f}], "
                f"McNemar p = {vs.mcnemar_p:.2g} (no measurable difference)") in page
        assert "<code>small_validation</code>" in page and "<code>teacher_memorised_training</code>" in page
        assert 'class="summary "' in page  # a difference inside the noise is not shown as a loss
    if name == "sequence_classification_error_bars":
        ts, (low, high) = typed.comparisons["teacher_vs_student"], typed.student_top1_interval
        assert "95% interval (Wilson)" in page and f"[{100 * low:.2f}%, {100 * high:.2f}%]" in page
        assert (f"teacher − distilled student (paired, {ts.rows:,} rows)" in page and f"{ts.difference_points:+.2f} points, 95% "
                f"interval [{ts.interval_points[0]:+.2f}, {ts.interval_points[1]:+.2f}], McNemar p = {ts.mcnemar_p:.2g}") in page
        assert "student trained alone: top-1" in page and "distilled student − student alone (paired" in page
        assert f"{typed.distillation_gain_points:+.2f} points" in page
    if name == "classification_auto":
        sel = typed.selection
        assert "method auto chose" in page
        assert sel.chosen in page and all(f"candidate {c.name}" in page for c in sel.candidates)
        # the student alone won: the returned student is named so in the table and in both comparisons, never
        # 'distilled student' (the stored report still says 'teacher − distilled student')
        assert sel.student_alone and r["comparisons"]["teacher_vs_student"]["b"] == "distilled student"
        assert "distilled student" not in page and "<th>returned student (trained alone)</th>" in page
        assert "teacher − returned student (trained alone) (paired" in page
        assert f"{sel.selection_rows:,} labelled training rows; candidates trained on {sel.candidate_training_rows:,}" in page
        assert f"{sel.steps_fraction:.0%} of the job&#39;s training steps" in page or f"{sel.steps_fraction:.0%} of the job's training steps" in page


async def test_stored_reports_side_by_side(api, tmp_path):
    """All stored shapes in one comparison: the JSON list keeps the order and each variant; the page shows them all."""
    ids = {name: await _succeeded_job(api, tmp_path, copy.deepcopy(r), [], name=name) for name, r in STORED.items()}
    data = (await api.get("/v1/reports", params={"job_ids": ",".join(ids.values())})).json()["data"]
    assert [r["job_id"] for r in data] == list(ids.values())
    assert [r["task"] for r in data] == [r.get("task", "classification") for r in STORED.values()]
    assert all(only_nulls_added(STORED[name], r, {"object", "job_id", "task"}) for name, r in zip(ids, data))
    page = (await api.get("/v1/reports", params={"job_ids": ",".join(ids.values()), "format": "html"})).text
    assert f"{len(ids)} reports side by side" in page
    assert [page.index(j) < page.index(k) for j, k in zip(list(ids.values()), list(ids.values())[1:])] == [True] * (len(ids) - 1)


async def test_a_damaged_stored_report_is_a_clear_500_and_stays_stored(api, tmp_path):
    from stillhouse.db import session_scope
    from stillhouse.models import Job

    damaged = {**copy.deepcopy(STORED["sequence_classification"]), "student_top1": "high"}
    job_id = await _succeeded_job(api, tmp_path, damaged, [])
    for url in (f"/v1/jobs/{job_id}/report", f"/v1/jobs/{job_id}/report.html", f"/v1/reports?job_ids={job_id}"):
        err = assert_error(await api.get(url), 500, "report_unreadable")
        assert job_id in err["message"] and "student_top1" in err["message"]
    with session_scope() as s:
        assert s.get(Job, job_id).report == damaged


async def test_openapi_documents_the_report_variants(api):
    schema = (await api.get("/openapi.json")).json()
    comps = schema["components"]["schemas"]
    body = schema["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    mapping = {"classification": "ClassificationReport", "sequence_classification": "SequenceClassificationReport",
               "sentence_embedding": "SentenceEmbeddingReport", "causal_lm": "CausalLMReport"}
    assert body["discriminator"] == {"propertyName": "task",
                                     "mapping": {k: f"#/components/schemas/{v}" for k, v in mapping.items()}}
    assert sorted(x["$ref"] for x in body["oneOf"]) == sorted(f"#/components/schemas/{v}" for v in mapping.values())
    listed = comps["ReportList"]["properties"]["data"]["items"]
    assert listed["discriminator"]["propertyName"] == "task" and len(listed["oneOf"]) == 4
    for task, name in mapping.items():
        variant = comps[name]
        assert variant["properties"]["task"]["const"] == task and "task" in variant["required"]
        assert "summary" in variant["required"] and "ms" in comps["LatencyMs"]["properties"]["p50"]["description"]
    cls = comps["ClassificationReport"]["properties"]
    assert "percentage points" in cls["top1_drop_points"]["description"]
    assert "nats" in cls["mean_kl"]["description"] and "seconds" in cls["wall_time_s"]["description"].lower()
    assert "bytes" in comps["TensorModelSummary"]["properties"]["bytes"]["description"]
    assert "fraction" in comps["TensorModelSummary"]["properties"]["val_top1"]["description"]
    assert "Sentences per second" in comps["TextTeacherSummary"]["properties"]["throughput_per_s"]["description"]
    assert "probe" in comps["SentenceEmbeddingReport"]["properties"]["probe_student"]["description"]


def test_a_text_baseline_that_could_not_be_trained_shows_its_note():
    """A text classification report whose asked-for baseline has no top-1 (no labelled training texts) shows the note
    why, on the HTML page and in the CLI, as tensor reports do (not an empty '– –' row)."""
    from rich.console import Console

    from app.reports.render import render_html, report_view
    from client import cli

    note = "no labelled training texts: a student cannot be trained alone"
    stored = copy.deepcopy(STORED["sequence_classification_error_bars"])
    stored.update(baseline={"val_top1": None, "training_time_s": None, "note": note}, distillation_gain_points=None)
    stored["comparisons"].pop("distilled_vs_alone")
    r = parse_report(stored)
    page = render_html("r", [report_view("job_x", None, r, [])])
    assert note in page and "student trained alone: top-1" not in page
    console = Console(width=250, record=True)
    old, cli.console = cli.console, console
    try:
        cli.render_text_report(r)
    finally:
        cli.console = old
    out = " ".join(console.export_text().split())
    assert f"student trained alone {note}" in out
