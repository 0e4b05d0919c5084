"""Helpers of the distillation-core tests (spec builder; ``run_job``/``run_text_job`` wrappers that check every report
the core writes against the typed ``distill.report`` model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill import job as _job
from distill.formats import FileInput
from distill.report import parse_report, unmodelled_keys
from distill.reporter import RecordingReporter
from distill.results import DistillResult, JobInputs
from distill.spec import JobSpec
from distill.training import CheckpointStore, read_checkpoint
from distill.text import job as _text_job


def check_report(report: dict[str, Any]) -> None:
    """Assert that ``report`` (a dict the core wrote) is a ``distill.report`` variant's full JSON dump: it validates, the
    model covers every key in it, and it is exactly what ``model_dump(mode="json")`` of the validated report gives
    (every field present, the ``task`` included), so the core stores nothing the model would change."""
    typed = parse_report(report)
    assert "task" in report and typed.task == report["task"]
    assert unmodelled_keys(typed) == [], f"report keys missing from distill.report: {unmodelled_keys(typed)}"
    assert typed.model_dump(mode="json") == report


def run_job(*args: Any, **kw: Any) -> DistillResult:
    """``distill.job.run_job`` with ``check_report`` on its report."""
    result = _job.run_job(*args, **kw)
    check_report(result.report)
    return result


def run_text_job(*args: Any, **kw: Any) -> DistillResult:
    """``distill.text.job.run_text_job`` with ``check_report`` on its report."""
    result = _text_job.run_text_job(*args, **kw)
    check_report(result.report)
    return result


def make_spec(**overrides: Any) -> JobSpec:
    """A fast job spec on digits (mlp student, 3 epochs, cheap latency measurement, no ONNX) with overrides
    merged one level deep per section (a method other than kd replaces the base method)."""
    base: dict[str, Any] = {
        "teacher": {"file_id": "file_teacher"},
        "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}},
        "data": {"train": {"builtin": "digits"}},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "training": {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 5e-3}, "seed": 0, "log_every_steps": 10},
        "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1, 16]},
        "export": {"formats": ["safetensors"]},
    }
    for key, value in overrides.items():
        if key == "method" and isinstance(value, dict) and value.get("name", "kd") != "kd":
            base[key] = value  # another method: its own parameters only (kd's temperature is not one of hard_label's)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return JobSpec.model_validate(base)


def run(spec: JobSpec, teacher: FileInput, workdir: Path, reporter: RecordingReporter | None = None,
        files: dict[str, FileInput] | None = None, **kw: Any):
    """run_job (report checked) with a RecordingReporter; returns (result, reporter)."""
    reporter = reporter or RecordingReporter()
    result = run_job(spec, JobInputs(teacher=teacher, files=files or {}), workdir, reporter, **kw)
    return result, reporter


def latest_checkpoint(folder: Path, stem: str = "checkpoint") -> dict[str, Any] | None:
    """The newest checkpoint of training pass ``stem`` in ``folder`` (read and digest-checked), or None without one."""
    files = CheckpointStore(folder, stem).files()
    return read_checkpoint(files[0].path) if files else None
