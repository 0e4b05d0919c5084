"""``run_job``: one distillation job from spec to report and artifacts.

Phases (reported through the ``Reporter``): loading_teacher → training → evaluating → exporting.
Artifacts are written to a temporary folder and moved to ``workdir/artifacts`` only when everything
succeeded, so a failed or cancelled job leaves no partial artifacts (the per-epoch ``checkpoint.pt``
stays in ``workdir`` for a redelivered job to resume from).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DataBundle, load_data
from .evaluation import evaluate, ratio as _ratio, rnd as _r, summary_sentence as _summary_sentence
from .export import export_student as _export
from .errors import DistillError, StopRequested
from .formats import FileInput, sniff
from .loop import TrainOutcome, spec_fingerprint, train_student
from .measure import resolve_device
from .methods import build_method
from .models import build, describe
from .reporter import Reporter
from .spec import JobSpec
from .teachers import Teacher, load_teacher

ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class JobInputs:
    """The files a job uses: the ``teacher`` checkpoint and the datasets ``files`` keyed by file id."""

    teacher: FileInput
    files: dict[str, FileInput]


@dataclass
class DistillResult:
    """A finished job: the JSON-serialisable compression ``report`` and the ``artifacts`` written
    (paths inside ``workdir/artifacts``: student.safetensors, student.json, optionally student.onnx)."""

    report: dict[str, Any]
    artifacts: list[Path]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _check_time(deadline: float, spec: JobSpec, where: str) -> None:
    if time.perf_counter() > deadline:
        raise DistillError("max_runtime_exceeded", f"training.max_runtime_s={spec.training.max_runtime_s:g} s reached {where}",
                           "training.max_runtime_s")


def _check_stop(reporter: Reporter, where: str) -> None:
    if reporter.should_stop():
        raise StopRequested(f"stop requested {where}")


def _build_student(spec: JobSpec, teacher: Teacher, data: DataBundle, num_classes: int, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    arch = spec.student.architecture
    kwargs = dict(arch.kwargs)
    kwargs.setdefault("input_shape", list(teacher.input_shape or data.input_shape))
    kwargs.setdefault("num_classes", num_classes)
    filled = describe(arch.name, kwargs)
    torch.manual_seed(spec.training.seed)
    student = build(arch.name, kwargs).to(device)
    return student, filled


def _probe(spec: JobSpec, teacher: Teacher, data: DataBundle, device: torch.device) -> int:
    """Run the teacher on two samples; return its number of outputs K. Raises shape_mismatch."""
    sample = (data.val_x if data.val_x.shape[0] else data.train_x)[:2].to(device)
    try:
        out = teacher(sample)
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend error here means the data does not fit
        raise DistillError("shape_mismatch", f"the teacher cannot take samples of shape {data.input_shape}: {_first_line(e)}",
                           "data.input_shape") from None
    if out.dim() != 2:
        raise DistillError("shape_mismatch", f"the teacher outputs shape {list(out.shape)}, expected [batch, classes] logits", "teacher")
    k = int(out.shape[1])
    if data.num_classes is not None and data.num_classes > k:
        raise DistillError("shape_mismatch", f"the data has labels up to {data.num_classes - 1} but the teacher outputs {k} classes", "data")
    return k


def _probe_student(student: nn.Module, filled: dict[str, Any], data: DataBundle, k: int, device: torch.device) -> None:
    sample = data.train_x[:2].to(device)
    declared = list(filled["kwargs"]["input_shape"])
    if math.prod(declared) != math.prod(data.input_shape):
        raise DistillError("shape_mismatch", f"the student's input_shape is {declared} but the data's samples have shape {data.input_shape}",
                           "student.architecture.kwargs.input_shape")
    student.eval()
    try:
        with torch.no_grad():
            out = student(sample)
    except Exception as e:  # noqa: BLE001
        raise DistillError("shape_mismatch", f"the student (input_shape {declared}) cannot take samples of shape {data.input_shape}: {_first_line(e)}",
                           "student.architecture.kwargs.input_shape") from None
    finally:
        student.train()
    if out.shape[1] != k:
        raise DistillError("shape_mismatch", f"the teacher outputs {k} classes but the student outputs {out.shape[1]}",
                           "student.architecture.kwargs.num_classes")


def run_job(spec: JobSpec, inputs: JobInputs, workdir: Path, reporter: Reporter, *, runtime_used_s: float = 0.0,
            max_unpacked_bytes: int = 4 * 1024**3) -> DistillResult:
    """Run one distillation job and return its report and artifacts.

    ``workdir``: the job's private folder (created if needed); holds ``checkpoint.pt`` (resumed from when it
    exists and matches the spec) and receives ``artifacts/`` (replaced). ``runtime_used_s``: seconds the job
    already ran before a redelivery, deducted from ``training.max_runtime_s``. A Hugging Face teacher ('hf'
    archive, unpacked into ``workdir/teacher`` up to ``max_unpacked_bytes``) runs the text tasks
    (``worker.distill.text.run_text_job``).

    Raises ``DistillError`` (codes: invalid_spec, invalid_file, unsafe_checkpoint, shape_mismatch,
    non_finite_loss, max_runtime_exceeded, internal_error) or ``StopRequested`` (cancelled); in every failure
    ``workdir/artifacts`` does not exist afterwards. Other exceptions are bugs and propagate unchanged.
    """
    fmt = spec.teacher.format if spec.teacher.format != "auto" else inputs.teacher.format
    if fmt == "hf" or spec.task in ("sequence_classification", "sentence_embedding"):
        if fmt != "hf":
            raise DistillError("invalid_spec", f"task {spec.task!r} needs a Hugging Face teacher ('hf' archive), got {fmt}", "task")
        from .hf_archive import load_hf_archive
        from .text import run_text_job

        folder = load_hf_archive(inputs.teacher.path, Path(workdir) / "teacher", max_unpacked_bytes=max_unpacked_bytes)
        return run_text_job(spec, folder, inputs.teacher.bytes, inputs.files, Path(workdir), reporter, runtime_used_s=runtime_used_s)
    if spec.student.architecture is None:
        raise DistillError("invalid_spec", "student.from_teacher needs a Hugging Face teacher; give student.architecture", "student")
    t_start = time.perf_counter()
    budget = spec.training.max_runtime_s - runtime_used_s
    if budget <= 0:
        raise DistillError("max_runtime_exceeded", f"the job already used {runtime_used_s:g} s of training.max_runtime_s={spec.training.max_runtime_s:g}",
                           "training.max_runtime_s")
    deadline = t_start + budget
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    final_dir = workdir / ARTIFACTS_DIR
    if final_dir.exists():
        shutil.rmtree(final_dir)
    device = resolve_device(spec.training.device)
    times: dict[str, float] = {}

    # ------------------------------------------------------------------ loading_teacher
    reporter.phase("loading_teacher")
    t0 = time.perf_counter()
    if fmt in ("auto", "", None):
        fmt = sniff(inputs.teacher.path)
    teacher = load_teacher(inputs.teacher.path, fmt, spec.teacher.architecture, device)
    data = load_data(spec.data, inputs.files, input_shape=teacher.input_shape)
    if teacher.input_shape is None:
        teacher.input_shape = list(data.input_shape)
    k = _probe(spec, teacher, data, device)
    student, filled = _build_student(spec, teacher, data, k, device)
    _probe_student(student, filled, data, k, device)
    method = build_method(spec.method, has_labels=data.has_labels, all_labelled=data.counts["unlabelled"] == 0)
    times["loading_teacher"] = time.perf_counter() - t0
    _check_time(deadline, spec, "while loading")

    # ------------------------------------------------------------------ training
    reporter.phase("training")
    t0 = time.perf_counter()
    outcome: TrainOutcome = train_student(student=student, teacher=teacher, method=method, data=data, training=spec.training,
                                          device=device, workdir=workdir, reporter=reporter, deadline=deadline,
                                          fingerprint=spec_fingerprint(spec))
    times["training"] = time.perf_counter() - t0
    _check_stop(reporter, "after training")
    _check_time(deadline, spec, "after training")

    # ------------------------------------------------------------------ evaluating
    reporter.phase("evaluating")
    t0 = time.perf_counter()
    ev = evaluate(teacher, student, data, device, list(spec.evaluation.latency_batch_sizes), spec.evaluation.latency_iterations)
    times["evaluating"] = time.perf_counter() - t0
    _check_stop(reporter, "after evaluation")

    # ------------------------------------------------------------------ exporting
    reporter.phase("exporting")
    t0 = time.perf_counter()
    tmp_dir = workdir / f".artifacts-tmp-{os.getpid()}"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    try:
        summary = {"val_top1": ev["student"]["val_top1"], "agreement": ev["agreement"], "teacher_val_top1": ev["teacher"]["val_top1"]}
        onnx_info = _export(spec, student, filled, data, teacher, tmp_dir, summary)
        student_bytes = (tmp_dir / "student.safetensors").stat().st_size
        os.replace(tmp_dir, final_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    times["exporting"] = time.perf_counter() - t0
    names = ["student.safetensors", "student.json"] + (["student.onnx"] if onnx_info else [])
    artifacts = [final_dir / n for n in names]
    times["total"] = time.perf_counter() - t_start

    t_ev, s_ev = ev["teacher"], ev["student"]
    speedup = {}
    for b in t_ev["latency_ms"]:
        speedup[b] = _ratio(t_ev["latency_ms"][b]["p50"], s_ev["latency_ms"][b]["p50"])
    drop = None
    if t_ev["val_top1"] is not None and s_ev["val_top1"] is not None:
        drop = _r((t_ev["val_top1"] - s_ev["val_top1"]) * 100, 2)
    report: dict[str, Any] = {
        "teacher": {"format": teacher.format, "parameters": teacher.parameters, "bytes": inputs.teacher.bytes,
                    "flops_per_sample": t_ev["flops_per_sample"], "val_top1": t_ev["val_top1"], "latency_ms": t_ev["latency_ms"],
                    "architecture": teacher.architecture, "notes": list(teacher.notes)},
        "student": {"format": "safetensors", "parameters": s_ev["parameters"], "bytes": student_bytes,
                    "flops_per_sample": s_ev["flops_per_sample"], "val_top1": s_ev["val_top1"], "latency_ms": s_ev["latency_ms"],
                    "architecture": filled, "notes": []},
        "agreement": ev["agreement"],
        "mean_kl": ev["mean_kl"],
        **ev.get("extra", {}),  # evaluation.py: top-5, per-class accuracy, calibration, teacher-student confusion
        "compression_ratio": _ratio(inputs.teacher.bytes, student_bytes),
        "parameter_ratio": _ratio(teacher.parameters, s_ev["parameters"]),
        "flops_ratio": _ratio(t_ev["flops_per_sample"], s_ev["flops_per_sample"]),
        "speedup": speedup,
        "top1_drop_points": drop,
        "data": {**data.counts, "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                 "validation": data.validation, "preprocessing": data.preprocessing},
        "training": {"epochs": outcome.epochs, "steps": outcome.steps, "steps_per_epoch": outcome.steps_per_epoch,
                     "resumed_from_epoch": outcome.resumed_from_epoch,
                     "final_loss_terms": {k2: _r(v, 6) for k2, v in outcome.final_loss_terms.items()},
                     "method": spec.method.name, "device": str(device), "threads": torch.get_num_threads(),
                     "seed": spec.training.seed, "training_time_s": _r(outcome.elapsed_s, 3)},
        "onnx": {"max_abs_diff": float(f"{onnx_info['max_abs_diff']:.3g}"), "opset": onnx_info["opset"]} if onnx_info else None,
        "wall_time_s": {k2: _r(v, 3) for k2, v in times.items()},
    }
    report["summary"] = _summary_sentence(report)
    return DistillResult(report=report, artifacts=artifacts)
