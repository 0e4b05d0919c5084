"""End to end over real HTTP with a real Celery worker process: on the embedded default (SQLite +
filesystem broker) and on PostgreSQL + Redis. Small real jobs on scikit-learn's digits."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.specs import override
import torch

from client import ApiError, Stillhouse
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e


def spec(teacher_id: str, **over) -> dict:
    s = {
        "name": "e2e",
        "teacher": {"file_id": teacher_id},
        "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [32]}}},
        "data": {"train": {"builtin": "digits"}, "validation": {"fraction": 0.2, "seed": 0}},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "training": {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.005}, "seed": 0,
                     "log_every_steps": 5},
        # the student-alone baseline (on by default for labelled data) doubles a job's training; these tests are about
        # the job machinery, so it is off here and on in the first test below, which checks a job as a user runs it
        "evaluation": {"latency_iterations": 10, "latency_batch_sizes": [1, 64], "compare_baseline": False},
    }
    return override(s, **over)


def wait_for(pred, timeout_s: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_job_succeeds_and_downloaded_student_reproduces_the_report(live, digits_teacher, tmp_path):
    c = live.client
    teacher = c.upload(digits_teacher, "teacher")
    job = c.create_job(spec(teacher.id, **{"training.epochs": 6, "evaluation.compare_baseline": None}))
    job = c.wait(job.id, timeout_s=240)
    assert job.status == "succeeded", (job.error, live.log("worker"))
    assert job.attempt == 1 and job.progress.fraction == 1.0 and job.progress.epoch == 6

    phases = [e.data["phase"] for e in c.events(job.id) if e.type == "phase"]
    assert phases == ["loading_teacher", "caching_teacher_outputs", "training", "evaluating", "exporting"]
    statuses = [e.data["status"] for e in c.events(job.id) if e.type == "status"]
    assert statuses == ["queued", "running", "succeeded"]

    val_top1 = c.metrics(job.id, name="top1", split="val")
    assert [m.epoch for m in val_top1] == [1, 2, 3, 4, 5, 6]
    terms = {m.name for m in c.metrics(job.id, split="train")}
    assert {"loss/kd", "loss/ce", "loss/total", "top1"} <= terms
    steps_per_epoch = -(-1437 // 64)
    step_rows = [m for m in c.metrics(job.id, name="loss/total", split="train") if m.step % 5 == 0]
    assert len(step_rows) >= (6 * steps_per_epoch) // 5

    r = c.report(job.id)
    assert r.task == "classification" and r.job_id == job.id
    assert r.teacher.val_top1 > 0.9 and r.student.val_top1 > 0.85
    assert r.compression_ratio == pytest.approx(r.teacher.bytes / r.student.bytes, rel=0.01)
    assert r.student.parameters == 64 * 32 + 32 + 32 * 10 + 10
    assert r.teacher.flops_per_sample > r.student.flops_per_sample > 0
    for who in (r.teacher, r.student):
        for bs in ("1", "64"):
            lat = who.latency_ms[bs]
            assert 0 < lat.p50 <= lat.p95
    assert 0 <= r.agreement <= 1 and r.mean_kl >= 0
    assert r.baseline is not None and r.baseline.val_top1 > 0.5  # on by default: the student trained alone, same budget
    assert r.distillation_gain_points == pytest.approx(100 * (r.student.val_top1 - r.baseline.val_top1), abs=0.05)
    assert r.onnx.max_abs_diff < 1e-3
    assert set(r.wall_time_s) >= {"loading_teacher", "training", "evaluating", "exporting", "total"}

    arts = {a.name: a for a in c.artifacts(job.id)}
    assert set(arts) == {"student.safetensors", "student.json", "student.onnx"}
    paths = {n: c.download(job.id, n, tmp_path) for n in arts}
    assert paths["student.safetensors"].stat().st_size == arts["student.safetensors"].bytes == r.student.bytes

    # rebuild the student from the downloaded files alone and re-measure its validation top-1
    from safetensors.torch import load_file

    from distill import models
    from distill.data import load_builtin, split_validation

    meta = json.loads(paths["student.json"].read_text())
    student = models.build(meta["architecture"]["name"], meta["architecture"]["kwargs"]).eval()
    student.load_state_dict(load_file(str(paths["student.safetensors"])))
    x, y, _ = load_builtin("digits")
    _, va = split_validation(y, 0.2, seed=0)
    with torch.inference_mode():
        pred = student(torch.as_tensor(x[va])).argmax(1).numpy()
    assert (pred == y[va]).mean() == pytest.approx(r.student.val_top1, abs=1e-4)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(paths["student.onnx"]), providers=["CPUExecutionProvider"])
    onnx_pred = sess.run(None, {sess.get_inputs()[0].name: x[va[:7]].astype(np.float32)})[0].argmax(1)
    assert (onnx_pred == pred[:7]).all()

    # the download honours Range and carries the sha256 as ETag
    import httpx

    resp = httpx.get(f"{live.url}/v1/jobs/{job.id}/artifacts/student.safetensors", headers={"Range": "bytes=0-7"})
    assert resp.status_code == 206 and len(resp.content) == 8
    assert resp.headers["etag"].strip('"') == arts["student.safetensors"].sha256


def test_same_spec_and_seed_give_the_same_metrics(live, digits_teacher):
    c = live.client
    teacher = c.upload(digits_teacher, "teacher")
    ids = [c.create_job(spec(teacher.id, **{"training.epochs": 1, "export.formats": ["safetensors"]})).id for _ in range(2)]
    jobs = [c.wait(i, timeout_s=180) for i in ids]
    assert all(j.status == "succeeded" for j in jobs)
    a, b = ([(m.name, m.split, m.step, m.value) for m in c.metrics(i) if m.name != "lr"] for i in ids)
    assert a == b and len(a) > 5


def test_shape_mismatch_fails_the_job_naming_both_sizes(live, digits_teacher):
    c = live.client
    teacher = c.upload(digits_teacher, "teacher")
    job = c.create_job(spec(teacher.id, **{"student.architecture": {"name": "mlp", "kwargs": {"num_classes": 5}}}))
    job = c.wait(job.id, timeout_s=120)
    assert job.status == "failed" and job.error.code == "shape_mismatch"
    assert "10" in job.error.message and "5" in job.error.message
    assert c.artifacts(job.id) == []
    with pytest.raises(ApiError) as e:
        c.report(job.id)
    assert e.value.status == 409 and e.value.code == "report_not_ready"


def test_cancel_running_job_stops_it_and_a_cancelled_queued_job_never_starts(live, digits_teacher):
    c = live.client
    teacher = c.upload(digits_teacher, "teacher")
    long = c.create_job(spec(teacher.id, **{"training.epochs": 2000}))
    queued = c.create_job(spec(teacher.id))
    wait_for(lambda: (j := c.get_job(long.id)).status == "running" and (j.progress.step or 0) > 0, 120, "the long job to train")
    assert c.get_job(queued.id).status == "queued"  # one worker, prefetch 1: it waits
    assert c.cancel(queued.id).status == "cancelled"
    t0 = time.monotonic()
    assert c.cancel(long.id).status in ("cancelling", "cancelled")
    done = c.wait(long.id, poll_s=0.1, timeout_s=30)
    stopped_after = time.monotonic() - t0
    assert done.status == "cancelled" and stopped_after < 5, stopped_after
    assert c.artifacts(long.id) == []
    # the worker is free again and the cancelled queued job was never started
    follow = c.wait(c.create_job(spec(teacher.id, **{"training.epochs": 1})).id, timeout_s=120)
    assert follow.status == "succeeded"
    q = c.get_job(queued.id)
    assert q.status == "cancelled" and q.attempt == 0 and q.started_at is None


def test_cli_submit_with_paths_wait_report_download(live, digits_teacher, tmp_path, backend_session):
    if backend_session.name != "sqlite":
        pytest.skip("the CLI is exercised once, on the embedded default")
    import yaml

    spec_file = tmp_path / "job.yaml"
    s = spec("x")
    s["teacher"] = {"path": str(digits_teacher)}
    s["training"]["epochs"] = 2
    spec_file.write_text(yaml.safe_dump(s))
    cli = [sys.executable, "-m", "client.cli", "--api", live.url]

    def run(*args):
        res = subprocess.run([*cli, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr + res.stdout
        return res.stdout

    job_id = run("submit", str(spec_file)).strip().splitlines()[-1]
    assert job_id.startswith("job_")
    run("wait", job_id)
    out = run("report", job_id)
    assert "validation top-1" in out and "compression ratio" in out
    run("report", job_id, "--html", str(tmp_path / "r.html"))
    assert "<svg" in (tmp_path / "r.html").read_text()
    out = run("compare", job_id, job_id, "--html", str(tmp_path / "c.html"))
    assert out.count(job_id) >= 1 and (tmp_path / "c.html").is_file()
    run("download", job_id, "--dir", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "student.safetensors").is_file()
    bad = subprocess.run([*cli, "status", "job_missing"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "not_found" in bad.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_worker_child_is_redelivered_and_resumes_from_its_checkpoint(live, digits_teacher):
    """kill -9 the process running the job mid-training: Celery rejects the task (acks_late +
    reject_on_worker_lost), a new child takes it, and it resumes from the last epoch checkpoint with
    one continuous set of metrics."""
    import os
    import signal

    c = live.client
    teacher = c.upload(digits_teacher, "teacher")
    epochs = 30
    job = c.create_job(spec(teacher.id, **{"training.epochs": epochs, "export.formats": ["safetensors"],
                                           "student.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [256, 256]}}}))
    wait_for(lambda: (c.get_job(job.id).progress.epoch or 0) >= 4, 120, "epoch 4")
    children = _children(live.procs["worker"].pid)
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    done = c.wait(job.id, timeout_s=240)
    assert done.status == "succeeded", (done.error, live.log("worker"))
    assert done.attempt == 2
    resumed = [e for e in c.events(job.id) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["epoch"] >= 3
    epochs_logged = [m.epoch for m in c.metrics(job.id, name="top1", split="val")]
    assert epochs_logged == list(range(1, epochs + 1))  # no duplicated or missing epochs
    steps = [m.step for m in c.metrics(job.id, name="loss/total", split="train")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert c.report(job.id).training.resumed_from_epoch == resumed[0].data["epoch"]


def test_torch_export_teacher_with_a_feature_method_end_to_end(live, shipped_teachers):
    # a team's CNN shipped as a torch.export program: uploaded, inspected, distilled with fitnet by a real worker. The API's
    # first .pt2 upload imports torch.export's machinery (about 10 s on a loaded 2-core machine): a longer client timeout
    c = Stillhouse(live.url, timeout=180)
    teacher = c.upload(shipped_teachers["torch_export"].path, "teacher")
    assert teacher.format == "torch_export" and teacher.details["dynamic_batch"] is True
    method = {"name": "kd", "temperature": 4.0, "alpha": 0.9,
              "extra": [{"name": "fitnet", "weight": 1.0, "student_layer": "2", "teacher_layer": "classifier.2"}]}
    job = c.wait(c.create_job(spec(teacher.id, method=method, **{"training.epochs": 6})).id, timeout_s=240)
    assert job.status == "succeeded", (job.error, live.log("worker"))
    r = c.report(job.id)
    assert r.teacher.format == "torch_export" and r.teacher.val_top1 > 0.9 and r.student.val_top1 > 0.5  # chance: 0.1
    assert "fitnet" in r.training.final_loss_terms and r.cache.teacher_outputs is True
    assert any("taken as logits" in n for n in r.teacher.notes)
