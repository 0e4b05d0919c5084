"""``run_job``: one distillation job from spec to report and artifacts, as a thin driver of small phases.

Phases (reported through the ``Reporter``): loading_teacher → caching_teacher_outputs (when the teacher's
outputs are cached, or a method needs a pass over the training data) → training (the distilled student through
the one trainer, ``distill.training.Trainer`` with the ``TensorClassification`` adapter; then, with
``export.prune``, the pruned copy's fine-tune and, with ``evaluation.compare_baseline``, the same student trained
alone) → evaluating → exporting. Artifacts are written to a temporary folder and moved to ``workdir/artifacts``
only when everything succeeded, so a failed or cancelled job leaves no partial artifacts (the last two checkpoints
of each training pass stay in ``workdir`` for a redelivered job to resume from). Hugging Face teachers run the text
driver, ``distill.text.run_text_job``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

from .data import DataBundle, load_data
from .evaluation import evaluate, evaluate_variant, ratio as _ratio, rnd as _r, summary_sentence as _summary_sentence
from .export import export_student as _export, quantize_dynamic_int8, save_torchscript
from .errors import DistillError, first_line
from .formats import ARCH_METADATA_KEY, sniff
from .hf_archive import load_hf_archive
from .features import feature_shapes, numel
from .jobrun import ARTIFACTS_DIR, JobRun
from .methods import CombinedMethod, LabelsOnly, Method, build_method, check_method_supported
from .models import build, describe, parameter_count
from .reporter import Reporter
from .spec import JobSpec, TrainingSpec
from .results import DistillResult, JobInputs
from .teachers import Teacher, load_teacher
from .lm.job import run_lm_job
from .lm.models import LM_FORMATS, is_causal_lm
from .text import run_text_job
from .training import TeacherCache, TensorClassification, Trainer, TrainOutcome, batched_logits, spec_fingerprint, teacher_outputs

__all__ = ["ARTIFACTS_DIR", "CACHE_LIMIT_BYTES", "run_job", "prune_and_fine_tune"]

CACHE_LIMIT_BYTES = 2 * 1024**3  # teacher-output cache ceiling: 'on' beyond it is invalid_spec, 'auto' falls back to per-step
CHECKPOINT_STEM = "checkpoint"
BASELINE_CHECKPOINT_STEM = "baseline_checkpoint"
PRUNE_CHECKPOINT_STEM = "prune_checkpoint"


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


@dataclass
class _Loaded:
    """What the loading phase gives the rest of the job."""

    teacher: Teacher
    data: DataBundle
    num_classes: int
    student: nn.Module
    filled: dict[str, Any]
    method: Method | CombinedMethod
    all_labelled: bool
    use_cache: bool
    cache_reason: str


def train_pass(run: JobRun, loaded: _Loaded, student: nn.Module, method: Method | CombinedMethod, fingerprint: str, *,
               cache: TeacherCache | None = None, training: TrainingSpec | None = None, split_prefix: str = "",
               checkpoint_stem: str = CHECKPOINT_STEM, owns_metrics: bool = True) -> TrainOutcome:
    """One training pass of ``student`` with ``method`` through the trainer (see ``distill.training.Trainer``):
    ``training`` defaults to the spec's; ``split_prefix``/``checkpoint_stem``/``owns_metrics`` tell a second pass
    of the job (baseline, prune fine-tune) from the main one. Raises what ``Trainer.fit`` raises."""
    adapter = TensorClassification(student, loaded.teacher, method, loaded.data, run.device, cache)
    trainer = Trainer(adapter, training or run.spec.training, device=run.device, workdir=run.workdir, reporter=run.reporter,
                      deadline=run.deadline, fingerprint=fingerprint, split_prefix=split_prefix, checkpoint_stem=checkpoint_stem,
                      owns_metrics=owns_metrics)
    return trainer.fit()


def prune_and_fine_tune(run: JobRun, loaded: _Loaded, fingerprint: str, cache: TeacherCache | None) -> tuple[nn.Module, dict[str, Any]]:
    """Magnitude pruning (``torch.nn.utils.prune.l1_unstructured``; Han et al. 2015) of every Linear/Conv weight of a
    copy of the student by ``export.prune.amount``, then ``fine_tune_epochs`` of training with the job's own
    distillation loss while the pruning masks hold the zeros, then the masks are made permanent.
    Returns (pruned model, {'amount', 'sparsity' (zero fraction of the pruned weights), 'fine_tune_epochs'})."""
    cfg = run.spec.export.prune
    pruned = copy.deepcopy(loaded.student)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    for m, name in targets:
        prune.l1_unstructured(m, name, amount=cfg.amount)
    run.reporter.event("pruning", f"pruned {cfg.amount:.0%} of the weights of {len(targets)} layers; fine-tuning {cfg.fine_tune_epochs} "
                       "epochs", {"amount": cfg.amount, "layers": len(targets)})
    if cfg.fine_tune_epochs:
        train_pass(run, loaded, pruned, loaded.method, fingerprint + ":prune", cache=cache, split_prefix="prune_",
                   training=run.spec.training.model_copy(update={"epochs": cfg.fine_tune_epochs}),
                   checkpoint_stem=PRUNE_CHECKPOINT_STEM, owns_metrics=False)
    for m, name in targets:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return pruned.eval(), {"amount": cfg.amount, "sparsity": _r(zeros / max(1, total)), "fine_tune_epochs": cfg.fine_tune_epochs}


def _teacher_format(spec: JobSpec, inputs: JobInputs) -> str:
    fmt = spec.teacher.format if spec.teacher.format != "auto" else inputs.teacher.format
    return sniff(inputs.teacher.path) if fmt in ("auto", "", None) else fmt


def _is_causal_folder(folder: Path) -> bool:
    """True when the extracted Hugging Face folder's config names a causal-LM class (task 'auto' then runs causal_lm)."""
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return is_causal_lm(archs)


def run_job(spec: JobSpec, inputs: JobInputs, workdir: Path, reporter: Reporter, *, runtime_used_s: float = 0.0,
            max_unpacked_bytes: int = 4 * 1024**3) -> DistillResult:
    """Run one distillation job and return its report and artifacts.

    ``workdir``: the job's private folder (created if needed); holds the training checkpoints (the newest good one,
    of the same spec, is resumed from) and receives ``artifacts/`` (replaced). ``runtime_used_s``: seconds the job
    already ran before a redelivery, deducted from ``training.max_runtime_s``. A Hugging Face teacher ('hf'
    archive, unpacked into ``workdir/teacher`` up to ``max_unpacked_bytes``) runs the text tasks
    (``distill.text.run_text_job``).

    Raises ``DistillError`` (codes: invalid_spec, invalid_file, unsafe_checkpoint, shape_mismatch,
    non_finite_loss, max_runtime_exceeded, internal_error) or ``StopRequested`` (cancelled); in every failure
    ``workdir/artifacts`` does not exist afterwards. Other exceptions are bugs and propagate unchanged.
    """
    fmt = _teacher_format(spec, inputs)
    check_method_supported(spec.method, fmt)
    if fmt == "gguf" or spec.task == "causal_lm":
        if fmt not in LM_FORMATS:
            raise DistillError("invalid_spec", f"task 'causal_lm' needs a causal-LM teacher ('hf' archive or 'gguf' file), got {fmt}", "task")
        path = inputs.teacher.path if fmt == "gguf" else load_hf_archive(inputs.teacher.path, Path(workdir) / "teacher",
                                                                         max_unpacked_bytes=max_unpacked_bytes)
        return run_lm_job(spec, path, fmt, inputs.teacher.bytes, inputs.files, Path(workdir), reporter, runtime_used_s=runtime_used_s)
    if fmt == "hf" or spec.task in ("sequence_classification", "sentence_embedding"):
        if fmt != "hf":
            raise DistillError("invalid_spec", f"task {spec.task!r} needs a Hugging Face teacher ('hf' archive), got {fmt}", "task")
        folder = load_hf_archive(inputs.teacher.path, Path(workdir) / "teacher", max_unpacked_bytes=max_unpacked_bytes)
        if spec.task == "auto" and _is_causal_folder(folder):
            return run_lm_job(spec, folder, "hf", inputs.teacher.bytes, inputs.files, Path(workdir), reporter, runtime_used_s=runtime_used_s)
        return run_text_job(spec, folder, inputs.teacher.bytes, inputs.files, Path(workdir), reporter, runtime_used_s=runtime_used_s)
    if spec.student.architecture is None:
        raise DistillError("invalid_spec", "student.from_teacher needs a Hugging Face teacher; give student.architecture", "student")
    run = JobRun.start(spec, workdir, reporter, runtime_used_s)
    with run.phase("loading_teacher"):
        loaded = _load(run, inputs, fmt)
    run.check("while loading", stop=False)
    cache = _cache_teacher_outputs(run, loaded)
    fingerprint = spec_fingerprint(spec)
    with run.phase("training"):
        outcome = train_pass(run, loaded, loaded.student, loaded.method, fingerprint, cache=cache)
    cache_info = _cache_report(run, loaded, cache, outcome)
    pruned, prune_info = None, None
    if spec.export.prune is not None:
        run.check("before pruning", deadline=False)
        with run.phase("pruning", announce=False):
            pruned, prune_info = prune_and_fine_tune(run, loaded, fingerprint, cache)
    del cache
    baseline = _baseline(run, loaded, fingerprint)
    run.check("after training")
    with run.phase("evaluating"):
        ev = evaluate(loaded.teacher, loaded.student, loaded.data, run.device, list(spec.evaluation.latency_batch_sizes),
                      spec.evaluation.latency_iterations)
    run.check("after evaluation", deadline=False)
    with run.phase("exporting"), run.artifacts() as tmp_dir:
        exported = _export_all(run, loaded, ev, pruned, prune_info, tmp_dir)
    report = _report(run, inputs, loaded, ev, outcome, cache_info, exported, baseline)
    return DistillResult(report=report, artifacts=[run.final_dir / n for n in exported["names"]],
                         baseline_student=baseline[0] if baseline else None)


def _load(run: JobRun, inputs: JobInputs, fmt: str) -> _Loaded:
    """Teacher, data, the student (probed against both) and the method (set up on their feature shapes)."""
    spec, device = run.spec, run.device
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
    return _Loaded(teacher, data, k, student, filled, method, all_labelled, use_cache, cache_reason)


def _cache_teacher_outputs(run: JobRun, loaded: _Loaded) -> TeacherCache | None:
    """Phase caching_teacher_outputs, when the outputs are cached or the method needs a pass over the training data
    (``Method.prepare``): the teacher's logits and features for every training row."""
    method = loaded.method
    if not (loaded.use_cache or method.needs_dataset_pass):
        return None
    cache = None
    with run.phase("caching_teacher_outputs"):
        t0 = time.perf_counter()
        x = loaded.data.train_x.to(run.device)
        t_logits, t_feats = teacher_outputs(loaded.teacher, x, method.teacher_layers, param="method.teacher_layer")
        if method.needs_dataset_pass:
            method.prepare(t_logits, t_feats, loaded.data.train_y.to(run.device))
        if loaded.use_cache:
            nbytes = t_logits.numel() * 4 + sum(v.numel() * v.element_size() for v in t_feats.values())
            cache = TeacherCache(logits=t_logits, features=t_feats, seconds=time.perf_counter() - t0, bytes=nbytes)
        del t_logits, t_feats
    run.check("after caching teacher outputs")
    return cache


def _cache_report(run: JobRun, loaded: _Loaded, cache: TeacherCache | None, outcome: TrainOutcome) -> dict[str, Any]:
    """The report's 'cache' block: whether the outputs were cached, why, the teacher passes saved, seconds, bytes."""
    n_train = int(loaded.data.train_x.shape[0])
    epochs_run = outcome.epochs - (outcome.resumed_from_epoch or 0)
    rows_per_epoch = min(n_train, outcome.steps_per_epoch * min(run.spec.training.batch_size, n_train))
    info: dict[str, Any] = {"teacher_outputs": cache is not None, "reason": loaded.cache_reason,
                            "teacher_passes_saved": max(0, epochs_run * rows_per_epoch - n_train) if cache is not None else 0,
                            "cache_seconds": _r(cache.seconds, 3) if cache is not None else 0.0}
    if cache is not None:
        info["bytes"] = cache.bytes
    return info


def _baseline(run: JobRun, loaded: _Loaded, fingerprint: str) -> tuple[nn.Module, TrainOutcome] | str | None:
    """With ``evaluation.compare_baseline``: the same student trained alone (cross-entropy on labels only, same split,
    budget and seed) as (model, outcome), or a note why it could not be; None when not asked for."""
    if not run.spec.evaluation.compare_baseline:
        return None
    run.check("before the baseline", deadline=False)
    if not loaded.data.has_labels:
        return "no labelled training rows: a student cannot be trained alone"
    run.reporter.event("baseline_started", "training the same student alone (cross-entropy on labels only) for comparison",
                       {"epochs": run.spec.training.epochs})
    with run.phase("baseline_training", announce=False):
        student, _ = _build_student(run.spec, loaded.teacher, loaded.data, loaded.num_classes, run.device)
        outcome = train_pass(run, loaded, student, LabelsOnly(all_labelled=loaded.all_labelled), fingerprint + ":baseline",
                             split_prefix="baseline_", checkpoint_stem=BASELINE_CHECKPOINT_STEM, owns_metrics=False)
    return student, outcome


def _export_all(run: JobRun, loaded: _Loaded, ev: dict[str, Any], pruned: nn.Module | None, prune_info: dict[str, Any] | None,
                out: Path) -> dict[str, Any]:
    """Write every artifact into ``out``: {'onnx': info or None, 'student_bytes', 'variants', 'names' (in order)}."""
    summary = {"val_top1": ev["student"]["val_top1"], "agreement": ev["agreement"], "teacher_val_top1": ev["teacher"]["val_top1"]}
    onnx_info = _export(run.spec, loaded.student, loaded.filled, loaded.data, loaded.teacher, out, summary)
    variants = _export_variants(run.spec, loaded.student, pruned, prune_info, loaded.filled, loaded.data, out)
    names = ["student.safetensors", "student.json"] + (["student.onnx"] if onnx_info else []) + [v["artifact"] for v in variants.values()]
    return {"onnx": onnx_info, "student_bytes": (out / "student.safetensors").stat().st_size, "variants": variants, "names": names}


def _report(run: JobRun, inputs: JobInputs, loaded: _Loaded, ev: dict[str, Any], outcome: TrainOutcome, cache_info: dict[str, Any],
            exported: dict[str, Any], baseline: tuple[nn.Module, TrainOutcome] | str | None) -> dict[str, Any]:
    """The compression report (a JSON-able dict): teacher/student blocks, ratios, data, training, cache, variants,
    summary and, with compare_baseline, the baseline and the distillation gain."""
    times = run.finish()
    t_ev, s_ev = ev["teacher"], ev["student"]
    teacher, data, student_bytes, onnx_info = loaded.teacher, loaded.data, exported["student_bytes"], exported["onnx"]
    drop = None
    if t_ev["val_top1"] is not None and s_ev["val_top1"] is not None:
        drop = _r((t_ev["val_top1"] - s_ev["val_top1"]) * 100, 2)
    report: dict[str, Any] = {
        "teacher": {"format": teacher.format, "parameters": teacher.parameters, "bytes": inputs.teacher.bytes,
                    "flops_per_sample": t_ev["flops_per_sample"], "val_top1": t_ev["val_top1"], "latency_ms": t_ev["latency_ms"],
                    "architecture": teacher.architecture, "notes": list(teacher.notes)},
        "student": {"format": "safetensors", "parameters": s_ev["parameters"], "bytes": student_bytes,
                    "flops_per_sample": s_ev["flops_per_sample"], "val_top1": s_ev["val_top1"], "latency_ms": s_ev["latency_ms"],
                    "architecture": loaded.filled, "notes": []},
        "agreement": ev["agreement"],
        "mean_kl": ev["mean_kl"],
        **ev.get("extra", {}),  # evaluation.py: top-5, per-class accuracy, calibration, teacher-student confusion
        "compression_ratio": _ratio(inputs.teacher.bytes, student_bytes),
        "parameter_ratio": _ratio(teacher.parameters, s_ev["parameters"]),
        "flops_ratio": _ratio(t_ev["flops_per_sample"], s_ev["flops_per_sample"]),
        "speedup": {b: _ratio(t_ev["latency_ms"][b]["p50"], s_ev["latency_ms"][b]["p50"]) for b in t_ev["latency_ms"]},
        "top1_drop_points": drop,
        "data": {**data.counts, "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                 "validation": data.validation, "preprocessing": data.preprocessing},
        "training": _training_report(run, loaded, outcome),
        "onnx": {"max_abs_diff": float(f"{onnx_info['max_abs_diff']:.3g}"), "opset": onnx_info["opset"]} if onnx_info else None,
        "wall_time_s": {k: _r(v, 3) for k, v in times.items()},
    }
    report["cache"] = cache_info
    report.update(exported["variants"])
    report["summary"] = _summary_sentence(report)
    if run.spec.evaluation.compare_baseline:
        _baseline_report(run, loaded, report, baseline)
    return report


def _training_report(run: JobRun, loaded: _Loaded, outcome: TrainOutcome) -> dict[str, Any]:
    spec, method = run.spec, loaded.method
    block: dict[str, Any] = {
        "epochs": outcome.epochs, "steps": outcome.steps, "steps_per_epoch": outcome.steps_per_epoch,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "final_loss_terms": {k: _r(v, 6) for k, v in outcome.final_loss_terms.items()},
        "method": spec.method.name, "device": str(run.device), "threads": torch.get_num_threads(),
        "seed": spec.training.seed, "training_time_s": _r(outcome.elapsed_s, 3),
        "precision": spec.training.precision, "method_detail": method.describe()}
    protos = [p for p in (method.parts if isinstance(method, CombinedMethod) else [method]) if p.name == "prototype"]
    if protos:
        block["prototype_class_counts"] = protos[0].class_counts
    return block


def _baseline_report(run: JobRun, loaded: _Loaded, report: dict[str, Any], baseline: tuple[nn.Module, TrainOutcome] | str | None) -> None:
    """Add 'baseline' and 'distillation_gain_points' to ``report`` (and the gain sentence to its summary)."""
    if not isinstance(baseline, tuple):
        report["baseline"] = {"val_top1": None, "training_time_s": None, "note": baseline}
        report["distillation_gain_points"] = None
        return
    model, outcome = baseline
    data, s_top1, gain, b_top1 = loaded.data, report["student"]["val_top1"], None, None
    if data.val_has_labels:
        model.eval()
        vx, vy = data.val_x.to(run.device), data.val_y.to(run.device)
        pred = batched_logits(model, vx).argmax(dim=1)
        mask = vy >= 0
        b_top1 = float((pred[mask] == vy[mask]).float().mean())
    report["baseline"] = {"val_top1": _r(b_top1), "training_time_s": _r(outcome.elapsed_s, 3),
                          "parameters": report["student"]["parameters"], "method": "cross-entropy on labels only",
                          "epochs": outcome.epochs, "steps": outcome.steps}
    if b_top1 is not None and s_top1 is not None:
        gain = _r((s_top1 - b_top1) * 100, 2)
    report["summary"] += _gain_sentence(gain, s_top1, report["baseline"]["val_top1"])
    report["distillation_gain_points"] = gain
