"""``run_job``: one distillation job from spec to report and artifacts.

Phases (reported through the ``Reporter``): loading_teacher → caching_teacher_outputs (when the teacher's
outputs are cached, or a method needs a pass over the training data) → training (the distilled student, then,
with ``evaluation.compare_baseline``, the same student trained alone) → evaluating → exporting.
Artifacts are written to a temporary folder and moved to ``workdir/artifacts`` only when everything
succeeded, so a failed or cancelled job leaves no partial artifacts (the per-epoch ``checkpoint.pt``
stays in ``workdir`` for a redelivered job to resume from).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

from .data import DataBundle, load_data
from .evaluation import evaluate, evaluate_variant, ratio as _ratio, rnd as _r, summary_sentence as _summary_sentence
from .export import export_student as _export, quantize_dynamic_int8, save_torchscript
from .errors import DistillError, StopRequested, first_line
from .formats import ARCH_METADATA_KEY, sniff
from .hf_archive import load_hf_archive
from .features import feature_shapes, numel
from .loop import TeacherCache, TrainOutcome, batched_logits, spec_fingerprint, teacher_outputs, train_student
from .measure import resolve_device
from .methods import CombinedMethod, LabelsOnly, Method, build_method, check_method_supported
from .models import build, describe, parameter_count
from .reporter import Reporter
from .spec import JobSpec
from .results import DistillResult, JobInputs
from .teachers import Teacher, load_teacher
from .text import run_text_job

ARTIFACTS_DIR = "artifacts"
CACHE_LIMIT_BYTES = 2 * 1024**3  # teacher-output cache ceiling: 'on' beyond it is invalid_spec, 'auto' falls back to per-step
BASELINE_CHECKPOINT = "baseline_checkpoint.pt"


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
        raise DistillError("shape_mismatch", f"the teacher cannot take samples of shape {data.input_shape}: {first_line(e)}",
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
        raise DistillError("shape_mismatch", f"the student (input_shape {declared}) cannot take samples of shape {data.input_shape}: {first_line(e)}",
                           "student.architecture.kwargs.input_shape") from None
    finally:
        student.train()
    if out.shape[1] != k:
        raise DistillError("shape_mismatch", f"the teacher outputs {k} classes but the student outputs {out.shape[1]}",
                           "student.architecture.kwargs.num_classes")


def _setup_method(method: Method | CombinedMethod, student: nn.Module, teacher: Teacher, data: DataBundle,
                  device: torch.device, seed: int) -> None:
    """Probe the feature shapes the method reads and build its adapters (seeded, without disturbing the global RNG)."""
    s_layers, t_layers = method.student_layers, method.teacher_layers
    if not s_layers and not t_layers:
        return
    module = getattr(teacher, "module", None)
    if t_layers and not isinstance(module, nn.Module):
        raise DistillError("invalid_spec", f"a {teacher.format} teacher cannot give the intermediate features feature methods need",
                           "method.name")
    sample = data.train_x[:2].to(device)
    s_shapes = feature_shapes(student, s_layers, sample, "method.student_layer")
    t_shapes = feature_shapes(module, t_layers, sample, "method.teacher_layer") if t_layers else {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 7919)
        method.setup(s_shapes, t_shapes)
    method.to(device)


def _plan_cache(spec: JobSpec, method: Method | CombinedMethod, teacher: Teacher, data: DataBundle, k: int,
                device: torch.device) -> tuple[bool, str, int]:
    """Whether to cache the teacher's outputs: ``(use, reason, bytes)``. Raises ``DistillError('invalid_spec')`` for
    cache.teacher_outputs='on' when they would exceed ``CACHE_LIMIT_BYTES``."""
    mode = spec.cache.teacher_outputs
    n = int(data.train_x.shape[0])
    t_layers = method.teacher_layers
    shapes = feature_shapes(teacher.module, t_layers, data.train_x[:2].to(device)) if t_layers else {}
    size = 4 * n * (k + sum(numel(s) for s in shapes.values()))
    what = "logits" + (f" and features of {', '.join(t_layers)}" if t_layers else "")
    mib = size / 1024**2
    if mode == "off":
        return False, "turned off in the spec (cache.teacher_outputs='off'): the teacher runs at every step", size
    if size > CACHE_LIMIT_BYTES:
        msg = (f"the teacher's {what} for {n} training rows would take {mib:,.0f} MiB, over the "
               f"{CACHE_LIMIT_BYTES / 1024**3:g} GiB cache limit")
        if mode == "on":
            raise DistillError("invalid_spec", msg + "; use cache.teacher_outputs 'auto' or 'off', or fewer/smaller feature layers",
                               "cache.teacher_outputs")
        return False, msg + ": the teacher runs at every step", size
    why = "forced on in the spec" if mode == "on" else "the input pipeline is deterministic (no augmentation)"
    return True, f"{why}: the teacher's {what} were computed once for {n} training rows ({mib:.1f} MiB) and reused every epoch", size


def _gain_sentence(gain: float | None, distilled: float | None, alone: float | None) -> str:
    if gain is None or distilled is None or alone is None:
        return ""
    if gain > 0:
        return (f" Distillation helped: the distilled student's top-1 ({distilled:.1%}) is {gain:.2f} points above the same "
                f"student trained alone ({alone:.1%}).")
    if gain < 0:
        return (f" Distillation did not help: the same student trained alone reached {alone:.1%} top-1, {-gain:.2f} points "
                f"above the distilled student's {distilled:.1%}.")
    return f" Distillation made no difference: the distilled student and the student trained alone both reached {alone:.1%} top-1."


def prune_and_fine_tune(spec: JobSpec, student: nn.Module, teacher: Teacher, method: nn.Module, data: DataBundle, device: torch.device,
                        workdir: Path, reporter: Reporter, deadline: float, fingerprint: str, cache: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Magnitude pruning (``torch.nn.utils.prune.l1_unstructured``; Han et al. 2015) of every Linear/Conv weight of a
    copy of ``student`` by ``export.prune.amount``, then ``fine_tune_epochs`` of training with the job's own
    distillation loss while the pruning masks hold the zeros, then the masks are made permanent.
    Returns (pruned model, {'amount', 'sparsity' (zero fraction of the pruned weights), 'fine_tune_epochs'})."""
    cfg = spec.export.prune
    pruned = copy.deepcopy(student)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    for m, name in targets:
        prune.l1_unstructured(m, name, amount=cfg.amount)
    reporter.event("pruning", f"pruned {cfg.amount:.0%} of the weights of {len(targets)} layers; fine-tuning {cfg.fine_tune_epochs} epochs",
                   {"amount": cfg.amount, "layers": len(targets)})
    if cfg.fine_tune_epochs:
        train_student(student=pruned, teacher=teacher, method=method, data=data,
                      training=spec.training.model_copy(update={"epochs": cfg.fine_tune_epochs}), device=device, workdir=workdir,
                      reporter=reporter, deadline=deadline, fingerprint=fingerprint + ":prune", split_prefix="prune_",
                      checkpoint_name="prune_checkpoint.pt", owns_metrics=False, teacher_cache=cache)
    for m, name in targets:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return pruned.eval(), {"amount": cfg.amount, "sparsity": _r(zeros / max(1, total)), "fine_tune_epochs": cfg.fine_tune_epochs}


def _export_variants(spec: JobSpec, student: nn.Module, pruned: nn.Module | None, prune_info: dict[str, Any] | None,
                     filled: dict[str, Any], data: DataBundle, outdir: Path) -> dict[str, Any]:
    """Write and evaluate the extra students the spec asks for: ``quantized`` (dynamic int8, ``student_int8.pt``
    TorchScript) and ``pruned`` (``student_pruned.safetensors``). Each report block: artifact, bytes, val_top1 and
    CPU latency p50/p95 (ms) per batch size."""
    out: dict[str, Any] = {}
    sizes, iters = list(spec.evaluation.latency_batch_sizes), spec.evaluation.latency_iterations
    example = data.val_x[:1] if data.val_x.shape[0] else data.train_x[:1]
    if spec.export.quantize == "dynamic_int8":
        q = quantize_dynamic_int8(student)
        size = save_torchscript(q, example, outdir / "student_int8.pt")
        out["quantized"] = {"method": "dynamic_int8 (Linear weights int8, activations quantised on the fly)", "artifact": "student_int8.pt",
                            "bytes": size, "parameters": parameter_count(student),
                            **evaluate_variant(q, data, sizes, iters), "load_with": "torch.jit.load('student_int8.pt')"}
    if pruned is not None and prune_info is not None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in pruned.state_dict().items()}
        save_file(tensors, str(outdir / "student_pruned.safetensors"), metadata={ARCH_METADATA_KEY: json.dumps(filled)})
        out["pruned"] = {**prune_info, "artifact": "student_pruned.safetensors", "bytes": (outdir / "student_pruned.safetensors").stat().st_size,
                         "parameters": parameter_count(pruned), **evaluate_variant(pruned, data, sizes, iters),
                         "note": "unstructured zeros: the dense file is no smaller and dense kernels no faster; the sparsity "
                                 "pays off with sparse storage or kernels"}
    return out


def run_job(spec: JobSpec, inputs: JobInputs, workdir: Path, reporter: Reporter, *, runtime_used_s: float = 0.0,
            max_unpacked_bytes: int = 4 * 1024**3) -> DistillResult:
    """Run one distillation job and return its report and artifacts.

    ``workdir``: the job's private folder (created if needed); holds ``checkpoint.pt`` (resumed from when it
    exists and matches the spec) and receives ``artifacts/`` (replaced). ``runtime_used_s``: seconds the job
    already ran before a redelivery, deducted from ``training.max_runtime_s``. A Hugging Face teacher ('hf'
    archive, unpacked into ``workdir/teacher`` up to ``max_unpacked_bytes``) runs the text tasks
    (``distill.text.run_text_job``).

    Raises ``DistillError`` (codes: invalid_spec, invalid_file, unsafe_checkpoint, shape_mismatch,
    non_finite_loss, max_runtime_exceeded, internal_error) or ``StopRequested`` (cancelled); in every failure
    ``workdir/artifacts`` does not exist afterwards. Other exceptions are bugs and propagate unchanged.
    """
    fmt = spec.teacher.format if spec.teacher.format != "auto" else inputs.teacher.format
    if fmt in ("auto", "", None):
        fmt = sniff(inputs.teacher.path)
    check_method_supported(spec.method, fmt)
    if fmt == "hf" or spec.task in ("sequence_classification", "sentence_embedding"):
        if fmt != "hf":
            raise DistillError("invalid_spec", f"task {spec.task!r} needs a Hugging Face teacher ('hf' archive), got {fmt}", "task")
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
    if spec.training.precision == "fp16" and device.type != "cuda":
        raise DistillError("invalid_spec", f"precision 'fp16' needs CUDA but the job runs on {device.type}; use 'bf16' or 'fp32'",
                           "training.precision")
    times: dict[str, float] = {}

    # ------------------------------------------------------------------ loading_teacher
    reporter.phase("loading_teacher")
    t0 = time.perf_counter()
    teacher = load_teacher(inputs.teacher.path, fmt, spec.teacher.architecture, device)
    data = load_data(spec.data, inputs.files, input_shape=teacher.input_shape)
    if teacher.input_shape is None:
        teacher.input_shape = list(data.input_shape)
    k = _probe(spec, teacher, data, device)
    layout_note = teacher.use_channels_last(data.train_x[: spec.training.batch_size].to(device))
    if layout_note:
        teacher.notes.append(layout_note)
    student, filled = _build_student(spec, teacher, data, k, device)
    _probe_student(student, filled, data, k, device)
    all_labelled = data.counts["unlabelled"] == 0
    method = build_method(spec.method, has_labels=data.has_labels, all_labelled=all_labelled)
    _setup_method(method, student, teacher, data, device, spec.training.seed)
    use_cache, cache_reason, _ = _plan_cache(spec, method, teacher, data, k, device)
    times["loading_teacher"] = time.perf_counter() - t0
    _check_time(deadline, spec, "while loading")

    # ------------------------------------------------------------------ caching_teacher_outputs
    cache: TeacherCache | None = None
    if use_cache or method.needs_dataset_pass:
        reporter.phase("caching_teacher_outputs")
        t0 = time.perf_counter()
        x = data.train_x.to(device)
        t_logits, t_feats = teacher_outputs(teacher, x, method.teacher_layers, param="method.teacher_layer")
        if method.needs_dataset_pass:
            method.prepare(t_logits, t_feats, data.train_y.to(device))
        secs = time.perf_counter() - t0
        if use_cache:
            nbytes = t_logits.numel() * 4 + sum(v.numel() * v.element_size() for v in t_feats.values())
            cache = TeacherCache(logits=t_logits, features=t_feats, seconds=secs, bytes=nbytes)
        else:
            del t_logits, t_feats
        times["caching_teacher_outputs"] = secs
        _check_stop(reporter, "after caching teacher outputs")
        _check_time(deadline, spec, "after caching teacher outputs")

    # ------------------------------------------------------------------ training
    reporter.phase("training")
    t0 = time.perf_counter()
    fingerprint = spec_fingerprint(spec)
    outcome: TrainOutcome = train_student(student=student, teacher=teacher, method=method, data=data, training=spec.training,
                                          device=device, workdir=workdir, reporter=reporter, deadline=deadline,
                                          fingerprint=fingerprint, teacher_cache=cache)
    times["training"] = time.perf_counter() - t0
    n_train = int(data.train_x.shape[0])
    epochs_run = outcome.epochs - (outcome.resumed_from_epoch or 0)
    rows_per_epoch = min(n_train, outcome.steps_per_epoch * min(spec.training.batch_size, n_train))
    cache_info = {"teacher_outputs": cache is not None, "reason": cache_reason,
                  "teacher_passes_saved": max(0, epochs_run * rows_per_epoch - n_train) if cache is not None else 0,
                  "cache_seconds": _r(cache.seconds, 3) if cache is not None else 0.0}
    if cache is not None:
        cache_info["bytes"] = cache.bytes
    pruned: nn.Module | None = None
    prune_info: dict[str, Any] | None = None
    if spec.export.prune is not None:
        _check_stop(reporter, "before pruning")
        t0 = time.perf_counter()
        pruned, prune_info = prune_and_fine_tune(spec, student, teacher, method, data, device, workdir, reporter, deadline,
                                                 fingerprint, cache)
        times["pruning"] = time.perf_counter() - t0
    del cache

    baseline: nn.Module | None = None
    baseline_outcome: TrainOutcome | None = None
    baseline_note: str | None = None
    if spec.evaluation.compare_baseline:
        _check_stop(reporter, "before the baseline")
        if not data.has_labels:
            baseline_note = "no labelled training rows: a student cannot be trained alone"
        else:
            reporter.event("baseline_started", "training the same student alone (cross-entropy on labels only) for comparison",
                           {"epochs": spec.training.epochs})
            t0 = time.perf_counter()
            baseline, _ = _build_student(spec, teacher, data, k, device)
            baseline_outcome = train_student(student=baseline, teacher=teacher, method=LabelsOnly(all_labelled=all_labelled),
                                             data=data, training=spec.training, device=device, workdir=workdir, reporter=reporter,
                                             deadline=deadline, fingerprint=fingerprint + ":baseline", split_prefix="baseline_",
                                             checkpoint_name=BASELINE_CHECKPOINT, owns_metrics=False)
            times["baseline_training"] = time.perf_counter() - t0
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
        variants = _export_variants(spec, student, pruned, prune_info, filled, data, tmp_dir)
        os.replace(tmp_dir, final_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    times["exporting"] = time.perf_counter() - t0
    names = ["student.safetensors", "student.json"] + (["student.onnx"] if onnx_info else []) + [v["artifact"] for v in variants.values()]
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
    report["cache"] = cache_info
    report["training"]["precision"] = spec.training.precision
    report["training"]["method_detail"] = method.describe()
    protos = [p for p in (method.parts if isinstance(method, CombinedMethod) else [method]) if p.name == "prototype"]
    if protos:
        report["training"]["prototype_class_counts"] = protos[0].class_counts
    report.update(variants)
    report["summary"] = _summary_sentence(report)
    if spec.evaluation.compare_baseline:
        gain = None
        if baseline is not None and baseline_outcome is not None:
            b_top1 = None
            if data.val_has_labels:
                baseline.eval()
                vx, vy = data.val_x.to(device), data.val_y.to(device)
                pred = batched_logits(baseline, vx).argmax(dim=1)
                mask = vy >= 0
                b_top1 = float((pred[mask] == vy[mask]).float().mean())
            report["baseline"] = {"val_top1": _r(b_top1), "training_time_s": _r(baseline_outcome.elapsed_s, 3),
                                  "parameters": s_ev["parameters"], "method": "cross-entropy on labels only",
                                  "epochs": baseline_outcome.epochs, "steps": baseline_outcome.steps}
            if b_top1 is not None and s_ev["val_top1"] is not None:
                gain = _r((s_ev["val_top1"] - b_top1) * 100, 2)
            report["summary"] += _gain_sentence(gain, s_ev["val_top1"], report["baseline"]["val_top1"])
        else:
            report["baseline"] = {"val_top1": None, "training_time_s": None, "note": baseline_note}
        report["distillation_gain_points"] = gain
    return DistillResult(report=report, artifacts=artifacts, baseline_student=baseline)
