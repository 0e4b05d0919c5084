"""Helpers of the distillation-core tests (spec builder, run_job wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.formats import FileInput
from distill.job import run_job
from distill.reporter import RecordingReporter
from distill.results import JobInputs
from distill.spec import JobSpec


def make_spec(**overrides: Any) -> JobSpec:
    """A fast job spec on digits (mlp student, 3 epochs, cheap latency measurement, no ONNX) with overrides
    merged one level deep per section."""
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
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return JobSpec.model_validate(base)


def run(spec: JobSpec, teacher: FileInput, workdir: Path, reporter: RecordingReporter | None = None,
        files: dict[str, FileInput] | None = None, **kw: Any):
    """run_job with a RecordingReporter; returns (result, reporter)."""
    reporter = reporter or RecordingReporter()
    result = run_job(spec, JobInputs(teacher=teacher, files=files or {}), workdir, reporter, **kw)
    return result, reporter
