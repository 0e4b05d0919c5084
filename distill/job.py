"""``run_job``: one distillation job from spec to report and artifacts, as a thin driver of small phases.

Phases (reported through the ``Reporter``): loading_teacher → caching_teacher_outputs (when the teacher's
outputs are cached, or a method needs a pass over the training data) → training (the distilled student through
the one trainer, ``distill.training.Trainer`` with the ``TensorClassification`` adapter; then, with
``export.prune``, the pruned copy's fine-tune and, with ``evaluation.compare_baseline``, the same student trained
alone) → evaluating → exporting. Artifacts are written to a temporary folder and moved to ``workdir/artifacts``
only when everything succeeded, so a failed or cancelled job leaves no partial artifacts (the last two checkpoints
of each training pass stay in ``workdir`` for a redelivered job to resume from). Each phase gives its typed part of
the report (``_teacher_part``, ``_student_part``, ``_data_part``, ``_training_part``, ``_cache_part``,
``_baseline_part``, the variants, the ONNX check; built by ``distill.report_builders``), and
``report_builders.classification_report`` assembles them; the result holds the validated report's JSON. Hugging
Face teachers run the text driver, ``distill.text.run_text_job``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
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

from . import auto
from .data import DataBundle, load_data
from .evaluation import evaluate, evaluate_variant
from .export import export_student as _export, quantize_dynamic_int8, save_torchscript
from .errors import DistillError, first_line, runtime_message
from .formats import ARCH_METADATA_KEY, sniff
from .hf_archive import load_hf_archive
from .features import feature_shapes, numel
from .jobrun import ARTIFACTS_DIR, JobRun
from .methods import CombinedMethod, LabelsOnly, Method, build_method, check_method_supported
from .models import build, describe, parameter_count
from . import report_builders as rb
from .report import (BaselineSummary, CacheSummary, HoldoutEvaluation, PrunedStudent, QuantizedStudent, SelectionCandidate,
                     SelectionSummary, SharedTeacherCache, TensorDataSummary, TensorModelSummary, TrainingSummary)
from .reporter import Reporter
from .review import data_warnings, error_bars, teacher_warning
from .stats import wilson_interval
from .holdout import holdout_block
from .shared_cache import (SharedCache, TeacherProfile, outputs_key, profile_key, shared_teacher_logits, shared_teacher_outputs,
                           teacher_key, teacher_layout, teacher_profile)
from .spec import JobSpec, TrainingSpec
from .results import DistillResult, JobInputs
from .teachers import Teacher, load_teacher
from .lm.job import run_lm_job
from .lm.models import LM_FORMATS, is_causal_lm
from .text import run_text_job
from .training import (TeacherCache, TensorClassification, Trainer, TrainOutcome, batched_logits, spec_fingerprint, steps_per_epoch,
                       teacher_outputs)

__all__ = ["ARTIFACTS_DIR", "CACHE_LIMIT_BYTES", "run_job", "prune_and_fine_tune"]

CACHE_LIMIT_BYTES = 2 * 1024**3  # teacher-output cache ceiling: 'on' beyond it is invalid_spec, 'auto' falls back to per-step
CHECKPOINT_STEM = "checkpoint"
BASELINE_CHECKPOINT_STEM = "baseline_checkpoint"
AUTO_CHECKPOINT_STEM = "auto_checkpoint"
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
    """Run the teacher on the first training batch (at most ``training.batch_size`` rows): its outputs must be finite;
    decide what they are (``teacher.outputs``, noted); settle the class count. Returns the number of classes K the
    student learns. Raises shape_mismatch (the data does not fit the teacher, with the backend's operative line),
    non_finite_teacher, invalid_spec (a class-count mismatch the spec does not settle, or a wrong teacher.outputs)."""
    sample = data.train_x[: max(2, min(spec.training.batch_size, 256))].to(device)
    try:
        raw = teacher.raw(sample)
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend error here means the data does not fit
        raise DistillError("shape_mismatch", f"the teacher cannot take samples of shape {data.input_shape}: {runtime_message(e)}",
                           "data.input_shape") from None
    if raw.dim() != 2:
        raise DistillError("shape_mismatch", f"the teacher outputs shape {list(raw.shape)}, expected [batch, classes] logits", "teacher")
    _check_finite(raw, f"the first {raw.shape[0]} training samples")
    teacher.notes.append(teacher.set_outputs(spec.teacher.outputs, raw))
    k = int(raw.shape[1])
    teacher.num_classes = k
    if data.num_classes is not None and data.num_classes > k:
        raise DistillError("shape_mismatch", f"the data has labels up to {data.num_classes - 1} but the teacher outputs {k} classes", "data")
    if data.num_classes is not None and data.num_classes < k:
        chosen = spec.student.architecture.kwargs.get("num_classes") if spec.student.architecture else None
        if chosen is None:
            raise DistillError("invalid_spec", f"the teacher outputs {k} classes but the data has {data.num_classes} (labels 0.."
                               f"{data.num_classes - 1}); set student.architecture.kwargs.num_classes to {k} (learn all the "
                               f"teacher's outputs) or {data.num_classes} (learn the data's classes from the teacher's first "
                               f"{data.num_classes} outputs)", "student.architecture.kwargs.num_classes")
        if chosen == data.num_classes:
            teacher.set_classes(data.num_classes)
            teacher.notes.append(f"the teacher outputs {k} classes, the data has {data.num_classes}: as "
                                 f"student.architecture.kwargs.num_classes says, the student learns classes 0..{data.num_classes - 1} "
                                 f"from the teacher's first {data.num_classes} outputs (a softmax over those)")
            return data.num_classes
        if chosen == k:
            teacher.notes.append(f"the teacher outputs {k} classes, the data has {data.num_classes}: as "
                                 f"student.architecture.kwargs.num_classes says, the student learns all {k} teacher outputs")
    return k


def _check_finite(out: torch.Tensor, what: str) -> None:
    """Raise ``DistillError('non_finite_teacher')`` when the teacher's outputs ``out`` on ``what`` hold NaN or inf."""
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        rows = int(bad.reshape(bad.shape[0], -1).any(1).sum())
        kinds = "/".join(k for k, m in (("NaN", torch.isnan(out)), ("inf", torch.isinf(out))) if bool(m.any()))
        raise DistillError("non_finite_teacher", f"the teacher's own outputs are not finite: {kinds} in {rows} of {out.shape[0]} rows "
                           f"of {what}, before any training; the teacher file is broken (check its weights or export), a lower "
                           "learning rate would not help", "teacher")


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
    sample = data.train_x[:2].to(device)
    s_shapes = feature_shapes(student, s_layers, sample, "method.student_layer")
    t_shapes = teacher.feature_shapes(t_layers, sample, "method.teacher_layer") if t_layers else {}
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
    shapes = teacher.feature_shapes(t_layers, data.train_x[:2].to(device), "method.teacher_layer") if t_layers else {}
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


def _export_variants(spec: JobSpec, student: nn.Module, pruned: tuple[nn.Module, float] | None, filled: dict[str, Any],
                     data: DataBundle, outdir: Path) -> dict[str, QuantizedStudent | PrunedStudent]:
    """Write and evaluate the extra students the spec asks for: ``quantized`` (dynamic int8, ``student_int8.pt``
    TorchScript) and ``pruned`` (``student_pruned.safetensors``; ``pruned`` is (model, sparsity) from
    ``prune_and_fine_tune``), each as its report part (artifact, bytes, val_top1 fraction and CPU latency p50/p95 ms
    per batch size)."""
    out: dict[str, QuantizedStudent | PrunedStudent] = {}
    sizes, iters = list(spec.evaluation.latency_batch_sizes), spec.evaluation.latency_iterations
    example = data.val_x[:1] if data.val_x.shape[0] else data.train_x[:1]
    if spec.export.quantize == "dynamic_int8":
        q = quantize_dynamic_int8(student)
        size = save_torchscript(q, example, outdir / "student_int8.pt")
        ev = evaluate_variant(q, data, sizes, iters)
        out["quantized"] = rb.quantized_student(artifact="student_int8.pt", bytes=size, parameters=parameter_count(student),
                                                val_top1=ev["val_top1"], latency_ms=ev["latency_ms"],
                                                load_with="torch.jit.load('student_int8.pt')")
    if pruned is not None and spec.export.prune is not None:
        model, sparsity = pruned
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        path = outdir / "student_pruned.safetensors"
        save_file(tensors, str(path), metadata={ARCH_METADATA_KEY: json.dumps(filled)})
        ev = evaluate_variant(model, data, sizes, iters)
        out["pruned"] = rb.pruned_student(amount=spec.export.prune.amount, sparsity=sparsity, fine_tune_epochs=spec.export.prune.fine_tune_epochs,
                                          artifact=path.name, bytes=path.stat().st_size, parameters=parameter_count(model),
                                          val_top1=ev["val_top1"], latency_ms=ev["latency_ms"])
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
    teacher_val_pred: torch.Tensor | None = None  # the teacher's argmax on data.val_x [N_val] (int64), shared by the passes


def train_pass(run: JobRun, loaded: _Loaded, student: nn.Module, method: Method | CombinedMethod, fingerprint: str, *,
               cache: TeacherCache | None = None, training: TrainingSpec | None = None, split_prefix: str = "",
               checkpoint_stem: str = CHECKPOINT_STEM, owns_metrics: bool = True) -> TrainOutcome:
    """One training pass of ``student`` with ``method`` through the trainer (see ``distill.training.Trainer``):
    ``training`` defaults to the spec's; ``split_prefix``/``checkpoint_stem``/``owns_metrics`` tell a second pass
    of the job (baseline, prune fine-tune) from the main one. Raises what ``Trainer.fit`` raises."""
    adapter = TensorClassification(student, loaded.teacher, method, loaded.data, run.device, cache, loaded.teacher_val_pred)
    trainer = Trainer(adapter, training or run.spec.training, device=run.device, workdir=run.workdir, reporter=run.reporter,
                      deadline=run.deadline, fingerprint=fingerprint, split_prefix=split_prefix, checkpoint_stem=checkpoint_stem,
                      owns_metrics=owns_metrics)
    return trainer.fit()


def prune_and_fine_tune(run: JobRun, loaded: _Loaded, fingerprint: str, cache: TeacherCache | None) -> tuple[nn.Module, float]:
    """Magnitude pruning (``torch.nn.utils.prune.l1_unstructured``; Han et al. 2015) of every Linear/Conv weight of a
    copy of the student by ``export.prune.amount``, then ``fine_tune_epochs`` of training with the job's own
    distillation loss while the pruning masks hold the zeros, then the masks are made permanent.
    Returns (pruned model in eval mode, sparsity: the zero fraction of the pruned weights)."""
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
    return pruned.eval(), zeros / max(1, total)


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
            max_unpacked_bytes: int = 4 * 1024**3, shared: SharedCache | None = None) -> DistillResult:
    """Run one distillation job and return its report and artifacts.

    ``workdir``: the job's private folder (created if needed); holds the training checkpoints (the newest good one,
    of the same spec, is resumed from) and receives ``artifacts/`` (replaced). ``runtime_used_s``: seconds the job
    already ran before a redelivery, deducted from ``training.max_runtime_s``. A Hugging Face teacher ('hf'
    archive, unpacked into ``workdir/teacher`` up to ``max_unpacked_bytes``) runs the text tasks
    (``distill.text.run_text_job``). ``shared``: the cache every job of the service shares
    (``distill.shared_cache``): the teacher's latency, FLOPs and validation logits, and its outputs on the training
    rows, are read from it when a job of the same teacher and data stored them, else computed and stored.

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
    tkey = _teacher_key(spec, inputs, fmt) if shared is not None else ""
    with run.phase("loading_teacher"):
        loaded = _load(run, inputs, fmt, shared, tkey)
    run.check("while loading", stop=False)
    okey, profiled = _profile_first_on_a_cold_cache(run, loaded, shared, tkey)
    cache, shared_info = _cache_teacher_outputs(run, loaded, shared, tkey, okey)
    teacher_train = _teacher_train_top1(run, loaded, cache, shared, tkey)
    loaded.teacher_val_pred = _teacher_val_pred(run, loaded, shared, tkey)
    fingerprint = spec_fingerprint(spec)
    selection = _select(run, loaded, cache, fingerprint)
    training = spec.training
    if selection is not None and selection.winner is not None:
        loaded.method, training, fingerprint = _winner(run, loaded, selection.winner, fingerprint)
    with run.phase("training"):
        outcome = train_pass(run, loaded, loaded.student, loaded.method, fingerprint, cache=cache, training=training)
    cache_part = _cache_part(run, loaded, cache, outcome)
    training_part = _training_part(run, loaded, outcome)
    pruned = None
    if spec.export.prune is not None:
        run.check("before pruning", deadline=False)
        with run.phase("pruning", announce=False):
            pruned = prune_and_fine_tune(run, loaded, fingerprint, cache)
    del cache
    if selection is not None and selection.winner is not None and selection.winner.alone and selection.winner.lr == spec.training.optimizer.lr \
            and _wants_baseline(spec, loaded.data):
        baseline = (loaded.student, outcome)  # the winner is exactly the baseline's training: not run twice
    else:
        baseline = _baseline(run, loaded, spec_fingerprint(spec))
    run.check("after training")
    with run.phase("evaluating"):
        sizes, iters = list(spec.evaluation.latency_batch_sizes), spec.evaluation.latency_iterations
        measured = profiled or (teacher_profile(loaded.teacher, tkey, loaded.data.val_x, run.device, sizes, iters, shared)
                                if shared is not None and loaded.data.val_x.shape[0] else None)
        ev = evaluate(loaded.teacher, loaded.student, loaded.data, run.device, sizes, iters, teacher_measured=measured)
        baseline_part, alone = _baseline_part(run, loaded, baseline, ev["student"]["parameters"])
        review = _review(run, loaded, ev, alone, teacher_train)
        if measured is not None:
            shared_info = {**(shared_info or {}), "teacher_profile": "reused" if measured.cached else "measured"}
        if shared_info is not None:
            cache_part.shared = SharedTeacherCache(**shared_info)
        holdout = holdout_block(loaded.teacher, loaded.student, loaded.data, run.device, tkey=tkey, shared=shared)
    run.check("after evaluation", deadline=False)
    with run.phase("exporting"), run.artifacts() as tmp_dir:
        exported = _export_all(run, loaded, ev, pruned, tmp_dir)
    if baseline_part is not None and baseline_part.val_top1 is not None:
        baseline_part.val_top1_interval = review["bars"]["alone"]
    report = rb.classification_report(
        teacher=_teacher_part(loaded, inputs, ev, review["bars"]["teacher"]),
        student=_student_part(loaded, ev, exported.student_bytes, review["bars"]["student"]),
        agreement=ev["agreement"], mean_kl=ev["mean_kl"], evaluation_extras=ev["extra"], data=_data_part(loaded),
        training=training_part, cache=cache_part, onnx=rb.onnx_check(exported.onnx), quantized=exported.variants.get("quantized"),
        pruned=exported.variants.get("pruned"), baseline=baseline_part, wall_time_s=run.finish(),
        comparisons=review["bars"]["comparisons"], warnings=review["warnings"])
    if holdout is not None:
        report.holdout = HoldoutEvaluation(**holdout)
    if selection is not None:
        report.selection = _selection_part(selection, report.wall_time_s.get("total"))
        if report.selection.student_alone:  # the returned student is not a distilled one: no verdict on distillation
            report.comparisons = report.labelled_comparisons() if report.comparisons is not None else None
            report.summary = rb.classification_summary(report.model_copy(update={"baseline": None, "comparisons": None}))
        report.summary = f"{report.summary} {_selection_sentence(report.selection)}".strip()
    return DistillResult(report=report.model_dump(mode="json"), artifacts=[run.final_dir / n for n in exported.names],
                         baseline_student=baseline[0] if isinstance(baseline, tuple) else None)


def _load(run: JobRun, inputs: JobInputs, fmt: str, shared: SharedCache | None = None, tkey: str = "") -> _Loaded:
    """Teacher, data, the student (probed against both) and the method (set up on their feature shapes). The teacher's
    memory-layout decision is read from ``shared`` when a job of the same teacher and data made it
    (``shared_cache.teacher_layout``)."""
    spec, device = run.spec, run.device
    teacher = load_teacher(inputs.teacher.path, fmt, spec.teacher.architecture, device)
    data = load_data(spec.data, inputs.files, input_shape=teacher.input_shape)
    if teacher.input_shape is None:
        teacher.input_shape = list(data.input_shape)
    k = _probe(spec, teacher, data, device)
    layout_note = teacher_layout(teacher, tkey, data.train_x[: spec.training.batch_size].to(device), shared)
    if layout_note:
        teacher.notes.append(layout_note)
    student, filled = _build_student(spec, teacher, data, k, device)
    _probe_student(student, filled, data, k, device)
    all_labelled = data.counts["unlabelled"] == 0
    method_spec = auto.fallback_method(spec) if spec.method.name == "auto" else spec.method
    method = build_method(method_spec, has_labels=data.has_labels, all_labelled=all_labelled)
    _setup_method(method, student, teacher, data, device, spec.training.seed)
    use_cache, cache_reason, _ = _plan_cache(spec, method, teacher, data, k, device)
    return _Loaded(teacher, data, k, student, filled, method, all_labelled, use_cache, cache_reason)


def _teacher_key(spec: JobSpec, inputs: JobInputs, fmt: str) -> str:
    """The shared cache's name of this job's teacher (``distill.shared_cache.teacher_key``): its file's sha256 (given
    by the caller, else computed here), format and architecture."""
    digest = inputs.teacher.sha256
    if digest is None:
        h = hashlib.sha256()
        with open(inputs.teacher.path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
        digest = h.hexdigest()
    arch = spec.teacher.architecture.model_dump(mode="json") if spec.teacher.architecture is not None else None
    return teacher_key(digest, fmt, arch)


def _profile_first_on_a_cold_cache(run: JobRun, loaded: _Loaded, shared: SharedCache | None,
                                    tkey: str) -> tuple[str | None, TeacherProfile | None]:
    """With a shared cache and a method that reads the teacher's outputs on the training rows: their cache key, and,
    while neither they nor the teacher's profile (``teacher_profile``: latency, FLOPs, validation logits) are cached
    and nobody is measuring the profile, the profile, measured now rather than at evaluation. A sweep's first trials
    start together: the first measures the profile while the next computes the outputs (it finds the profile's lock
    taken and goes on), where the second used to wait for the outputs and then for the first one's profile. A job
    alone does the same work in another order. Results are the same either way (every later trial reads both
    entries); the seconds are the report's ``wall_time_s.teacher_profile``. Returns (None, None) without a shared
    cache or when the outputs are not needed."""
    if shared is None or not (loaded.use_cache or loaded.method.needs_dataset_pass):
        return None, None
    key = outputs_key(tkey, loaded.data.train_x.to(run.device), loaded.method.teacher_layers)
    if not loaded.data.val_x.shape[0] or shared.load(key) is not None:
        return key, None
    spec = run.spec
    sizes, iters = list(spec.evaluation.latency_batch_sizes), spec.evaluation.latency_iterations
    pkey = profile_key(tkey, loaded.data.val_x, run.device, sizes, iters)
    if shared.load(pkey) is not None or shared.busy(pkey):
        return key, None
    with run.phase("teacher_profile", announce=False):
        return key, teacher_profile(loaded.teacher, tkey, loaded.data.val_x, run.device, sizes, iters, shared)


def _cache_teacher_outputs(run: JobRun, loaded: _Loaded, shared: SharedCache | None = None, tkey: str = "",
                           okey: str | None = None) -> tuple[TeacherCache | None, dict[str, Any] | None]:
    """Phase caching_teacher_outputs, when the outputs are cached or the method needs a pass over the training data
    (``Method.prepare``): the teacher's logits and features for every training row, read from ``shared`` when another
    job of the same teacher and training rows stored them (else computed and stored there; ``okey``: their cache key
    when the caller has it). Returns (the cache or
    None, the report's ``cache.shared`` block or None without a shared cache: {'teacher_outputs': 'reused' |
    'computed', 'key'})."""
    method = loaded.method
    if not (loaded.use_cache or method.needs_dataset_pass):
        return None, None
    cache, info = None, None
    with run.phase("caching_teacher_outputs"):
        t0 = time.perf_counter()
        x = loaded.data.train_x.to(run.device)
        if shared is not None:
            t_logits, t_feats, hit, key = shared_teacher_outputs(loaded.teacher, tkey, x, method.teacher_layers, shared,
                                                                 param="method.teacher_layer", key=okey)
            info = {"teacher_outputs": "reused" if hit else "computed", "key": key}
            run.reporter.event("teacher_outputs_shared", ("read the teacher's outputs on the training rows from the shared cache"
                                                          if hit else "computed the teacher's outputs on the training rows and "
                                                          "stored them in the shared cache"), info)
        else:
            t_logits, t_feats = teacher_outputs(loaded.teacher, x, method.teacher_layers, param="method.teacher_layer")
        _check_finite(t_logits, f"the {x.shape[0]} training rows (teacher-output cache)")
        if method.needs_dataset_pass:
            method.prepare(t_logits, t_feats, loaded.data.train_y.to(run.device))
        if loaded.use_cache:
            nbytes = t_logits.numel() * 4 + sum(v.numel() * v.element_size() for v in t_feats.values())
            cache = TeacherCache(logits=t_logits, features=t_feats, seconds=time.perf_counter() - t0, bytes=nbytes)
        del t_logits, t_feats
    run.check("after caching teacher outputs")
    return cache, info


TEACHER_TRAIN_ROWS = 20_000  # most labelled training rows the teacher is run on (without a cache) for its training top-1


def _teacher_train_top1(run: JobRun, loaded: _Loaded, cache: TeacherCache | None, shared: SharedCache | None = None,
                        tkey: str = "") -> tuple[float, int] | None:
    """The teacher's top-1 on the labelled training rows, as (fraction, rows), for the report's
    teacher_memorised_training warning: from the cached outputs when there are some, else one teacher pass over at
    most ``TEACHER_TRAIN_ROWS`` of them, whose logits ``shared`` keeps for the next job of the same teacher and rows
    (``shared_teacher_logits``; 0.57 s of a 2-epoch mnist5k job on one CPU thread). None without labelled training
    rows."""
    y = loaded.data.train_y
    rows = torch.nonzero(y >= 0).flatten()
    if rows.numel() == 0:
        return None
    if cache is not None:
        pred = cache.logits.argmax(1).to("cpu")[rows]
    else:
        rows = rows[:TEACHER_TRAIN_ROWS]
        pred = _teacher_argmax(loaded, loaded.data.train_x[rows].to(run.device), shared, tkey).to("cpu")
    return float((pred == y[rows]).float().mean()), int(rows.numel())


def _teacher_val_pred(run: JobRun, loaded: _Loaded, shared: SharedCache | None, tkey: str) -> torch.Tensor | None:
    """The teacher's argmax class of every validation row (int64 ``[N_val]`` on the job's device), which each training
    pass scores its per-epoch agreement against: computed once per job (it was once per pass), and read from
    ``shared`` (``shared_teacher_logits``) when a job of the same teacher and validation rows stored the logits (a
    sweep's trials share one selection split). None without validation rows."""
    vx = loaded.data.val_x
    if vx.shape[0] == 0:
        return None
    return _teacher_argmax(loaded, vx.to(run.device), shared, tkey)


def _teacher_argmax(loaded: _Loaded, x: torch.Tensor, shared: SharedCache | None, tkey: str) -> torch.Tensor:
    """The teacher's argmax class of each row of ``x [N, ...]`` (int64 ``[N]`` on ``x``'s device): from the logits
    ``shared`` keeps for this teacher and tensor (``shared_teacher_logits``, computed and stored on a miss), else one
    teacher pass."""
    if shared is not None:
        return shared_teacher_logits(loaded.teacher, tkey, x, shared).to(x.device).argmax(dim=1)
    return batched_logits(loaded.teacher, x).argmax(dim=1)


def _wants_baseline(spec: JobSpec, data: DataBundle) -> bool:
    """``evaluation.compare_baseline``, its default (None) resolved: on when some training row is labelled."""
    asked = spec.evaluation.compare_baseline
    return data.has_labels if asked is None else asked


def _review(run: JobRun, loaded: _Loaded, ev: dict[str, Any], alone: Any, teacher_train: tuple[float, int] | None) -> dict[str, Any]:
    """What a reviewer adds (``distill.review``): ``{'bars': error_bars(...), 'warnings': [...]}``: a Wilson 95% interval
    for each top-1, the paired comparisons (bootstrap interval, exact McNemar; seeded by training.seed), which the
    summary's verdict on distillation reads, and the warnings about the split, the data and the teacher. ``alone``: the
    baseline's per-row correctness on the labelled validation rows (numpy bool), or None."""
    correct = ev.get("val_correct") or {}
    bars = error_bars(teacher=correct.get("teacher"), student=correct.get("student"), alone=alone, seed=run.spec.training.seed)
    data = loaded.data
    warnings = data_warnings(train_x=data.train_x.numpy(), train_y=data.train_y.numpy(), transfer_rows=data.counts["transfer"],
                             val_x=data.val_x.numpy(), val_y=data.val_y.numpy(), validation_file="file_id" in data.validation,
                             student_correct=correct.get("student"))
    memorised = teacher_warning(*(teacher_train or (None, 0)), ev["teacher"]["val_top1"])
    return {"bars": bars, "warnings": warnings + ([memorised] if memorised else [])}


def _cache_part(run: JobRun, loaded: _Loaded, cache: TeacherCache | None, outcome: TrainOutcome) -> CacheSummary:
    """The report's cache part: whether the teacher's outputs were cached, why, the teacher passes saved (rows the
    epochs of this run saw minus the rows computed once), seconds and bytes of the cache."""
    n_train = int(loaded.data.train_x.shape[0])
    epochs_run = outcome.epochs - (outcome.resumed_from_epoch or 0)
    rows_per_epoch = min(n_train, outcome.steps_per_epoch * min(run.spec.training.batch_size, n_train))
    return rb.cache_summary(used=cache is not None, reason=loaded.cache_reason, rows_seen=epochs_run * rows_per_epoch,
                            rows_cached=n_train, seconds=cache.seconds if cache is not None else 0.0,
                            bytes=cache.bytes if cache is not None else None)


def _baseline(run: JobRun, loaded: _Loaded, fingerprint: str) -> tuple[nn.Module, TrainOutcome] | str | None:
    """With ``evaluation.compare_baseline``: the same student trained alone (cross-entropy on labels only, same split,
    budget and seed) as (model, outcome), or a note why it could not be; None when not asked for."""
    if not _wants_baseline(run.spec, loaded.data):
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


@dataclass
class _Selection:
    """What method 'auto' chose: the ``winner`` (None: no selection ran, the job runs kd T4 alpha 0.9) and the
    report's ``selection`` block as keyword arguments of ``SelectionSummary`` (without the cost fraction)."""

    winner: auto.Candidate | None
    part: dict[str, Any]


def _select(run: JobRun, loaded: _Loaded, cache: TeacherCache | None, fingerprint: str) -> _Selection | None:
    """Method 'auto' (``distill.auto``): carve the selection split from the training rows, train every candidate on the
    rest (the cache sliced, so no teacher pass over the training rows), score each by its top-1 on the selection split
    and choose. Never reads ``loaded.data.val_*`` (the reported validation split). None for any other method. Raises
    what ``Trainer.fit`` raises, and ``StopRequested`` / max_runtime_exceeded between candidates."""
    spec = run.spec
    if spec.method.name != "auto":
        return None
    budget, data = spec.method.selection_budget, loaded.data
    n_train = int(data.train_x.shape[0])
    base = {"budget": budget, "chosen": None, "job_steps": spec.training.epochs * steps_per_epoch(n_train, min(spec.training.batch_size, n_train))}
    if not data.has_labels:
        return _Selection(None, {**base, "reason": "no selection", "note": "no labelled training rows to score candidates "
                                 "on: ran kd T4 alpha 0.9 (soft labels need no labels)"})
    t0 = time.perf_counter()
    rest, sel = auto.selection_rows(data.train_y, spec.data.validation.seed)
    plan = auto.plan_budget(spec.training.optimizer.lr, spec.training.epochs, spec.training.batch_size, n_train, int(rest.size), budget)
    if plan.epochs == 0:
        return _Selection(None, {**base, "reason": "no selection", "note": plan.note})
    sub, sub_cache = auto.slice_rows(data, cache, rest, sel)
    view = dataclasses.replace(loaded, data=sub, teacher_val_pred=None)  # another validation split (the selection carve)
    run.reporter.event("selection_started", f"method auto: training {len(plan.candidates)} candidates for {plan.epochs} epoch(s) "
                       f"each on {rest.size} training rows, scored on a selection split of {sel.size} training rows",
                       {"candidates": [c.name for c in plan.candidates], "epochs": plan.epochs})
    scores, rows = [], []
    sx, sy = sub.val_x.to(run.device), sub.val_y.to(run.device)
    with run.phase("selection", announce=False):
        for i, cand in enumerate(plan.candidates):
            run.check(f"before candidate {cand.name}")
            student, _ = _build_student(spec, loaded.teacher, data, loaded.num_classes, run.device)
            method = _candidate_method(run, loaded, cand, student)
            training = spec.training.model_copy(update={"epochs": plan.epochs, "optimizer": spec.training.optimizer.model_copy(
                update={"lr": cand.lr})})
            out = train_pass(run, view, student, method, f"{fingerprint}:auto:{cand.name}:{plan.epochs}",
                             cache=None if cand.alone else sub_cache, training=training, split_prefix=f"auto{i}_",
                             checkpoint_stem=f"{AUTO_CHECKPOINT_STEM}{i}", owns_metrics=False)
            student.eval()
            hits = (batched_logits(student, sx).argmax(1) == sy).cpu().numpy()
            scores.append((cand, hits))
            wi = wilson_interval(int(hits.sum()), int(hits.size))
            rows.append(SelectionCandidate(name=cand.name, method=cand.method, lr=cand.lr, epochs=out.epochs, steps=out.steps,
                                           selection_top1=round(float(hits.mean()), 6), training_time_s=round(out.elapsed_s, 3),
                                           selection_top1_interval=[round(wi[0], 6), round(wi[1], 6)] if wi else None))
    t_logits = cache.logits[torch.from_numpy(sel).to(cache.logits.device)] if cache is not None else batched_logits(loaded.teacher, sx)
    t_hits = (t_logits.argmax(1).to(sy.device) == sy).cpu().numpy()
    unlabelled = int(sub.counts["unlabelled"])
    choice = auto.choose(scores, spec.training.seed, teacher_correct=t_hits, unlabelled_fraction=unlabelled / max(1, int(rest.size)))
    winner = choice.winner
    steps = sum(r.steps for r in rows)
    part = {**base, "candidates": rows, "chosen": winner.name, "chosen_method": winner.method, "chosen_lr": winner.lr,
            "student_alone": winner.alone, "reason": choice.reason, "rule": choice.rule, "interval_points": choice.interval_points,
            "margin_points": choice.margin_points,
            "teacher_selection_top1": round(float(t_hits.mean()), 6) if t_hits.size else None,
            "teacher_vs_alone_points": choice.teacher_vs_alone_points, "selection_rows": int(sel.size),
            "candidate_training_rows": int(rest.size), "candidate_unlabelled_rows": unlabelled, "steps": steps,
            "steps_fraction": round(steps / max(1, base["job_steps"]), 4), "seconds": round(time.perf_counter() - t0, 3)}
    run.reporter.event("selection_done", f"method auto chose {winner.name}: {choice.reason}", {"chosen": winner.name})
    return _Selection(winner, part)


def _candidate_method(run: JobRun, loaded: _Loaded, cand: auto.Candidate, student: nn.Module) -> Method | CombinedMethod:
    """The candidate's method: ``LabelsOnly`` for the student alone, else its dict validated through the spec and built."""
    if cand.alone:
        return LabelsOnly(all_labelled=loaded.all_labelled)
    method = build_method(auto.method_spec(run.spec, cand.method), has_labels=loaded.data.has_labels,
                          all_labelled=loaded.all_labelled)
    _setup_method(method, student, loaded.teacher, loaded.data, run.device, run.spec.training.seed)
    return method


def _winner(run: JobRun, loaded: _Loaded, winner: auto.Candidate, fingerprint: str) -> tuple[Method | CombinedMethod, TrainingSpec, str]:
    """The winner's retraining on all training rows for the job's full epochs: (method, training spec with the winner's
    learning rate, checkpoint fingerprint naming the winner)."""
    method = _candidate_method(run, loaded, winner, loaded.student)
    training = run.spec.training.model_copy(update={"optimizer": run.spec.training.optimizer.model_copy(update={"lr": winner.lr})})
    return method, training, f"{fingerprint}:auto:{winner.name}"


def _selection_part(selection: _Selection, total_s: float | None) -> SelectionSummary:
    """The report's ``selection`` block, with the selection's seconds as a fraction of the job's ``total_s``."""
    part = dict(selection.part)
    if total_s:
        part["cost_fraction_of_job_time"] = round(part.get("seconds", 0.0) / total_s, 4)
    return SelectionSummary(**part)


def _selection_sentence(sel: SelectionSummary) -> str:
    """One sentence for the report summary on what method 'auto' chose."""
    if sel.chosen is None:
        return f"Method auto: no selection ({sel.note})."
    if sel.student_alone:
        return (f"Method auto chose the student alone ({sel.chosen}): the returned student was trained without the teacher, "
                f"because {sel.reason}.")
    return f"Method auto chose {sel.chosen}: {sel.reason}."


@dataclass
class _Exported:
    """What the exporting phase wrote: the ONNX check (None without ONNX), the size of student.safetensors (bytes),
    the extra students' report parts and every artifact name, in order."""

    onnx: dict[str, Any] | None
    student_bytes: int
    variants: dict[str, QuantizedStudent | PrunedStudent]
    names: list[str]


def _export_all(run: JobRun, loaded: _Loaded, ev: dict[str, Any], pruned: tuple[nn.Module, float] | None, out: Path) -> _Exported:
    """Write every artifact into ``out``: the student (safetensors, student.json, optionally ONNX) and its variants."""
    summary = {"val_top1": ev["student"]["val_top1"], "agreement": ev["agreement"], "teacher_val_top1": ev["teacher"]["val_top1"]}
    onnx_info = _export(run.spec, loaded.student, loaded.filled, loaded.data, loaded.teacher, out, summary)
    variants = _export_variants(run.spec, loaded.student, pruned, loaded.filled, loaded.data, out)
    names = ["student.safetensors", "student.json"] + (["student.onnx"] if onnx_info else []) + [v.artifact for v in variants.values()]
    return _Exported(onnx_info, (out / "student.safetensors").stat().st_size, variants, names)


def _teacher_part(loaded: _Loaded, inputs: JobInputs, ev: dict[str, Any], interval: list[float] | None) -> TensorModelSummary:
    """The teacher as loaded (format, parameters, notes, the uploaded file's bytes) and as evaluated (top-1 with its
    Wilson ``interval``, FLOPs, latency in ms per batch size)."""
    t, t_ev = loaded.teacher, ev["teacher"]
    return rb.tensor_model(format=t.format, parameters=t.parameters, bytes=inputs.teacher.bytes, flops_per_sample=t_ev["flops_per_sample"],
                           val_top1=t_ev["val_top1"], latency_ms=t_ev["latency_ms"], architecture=t.architecture, notes=t.notes,
                           val_top1_interval=interval)


def _student_part(loaded: _Loaded, ev: dict[str, Any], student_bytes: int, interval: list[float] | None) -> TensorModelSummary:
    """The distilled student: its filled-in architecture, student.safetensors' size (bytes) and its evaluation (top-1
    with its Wilson ``interval``)."""
    s_ev = ev["student"]
    return rb.tensor_model(format="safetensors", parameters=s_ev["parameters"], bytes=student_bytes,
                           flops_per_sample=s_ev["flops_per_sample"], val_top1=s_ev["val_top1"], latency_ms=s_ev["latency_ms"],
                           architecture=loaded.filled, val_top1_interval=interval)


def _data_part(loaded: _Loaded) -> TensorDataSummary:
    """Rows, classes, sample shape, validation split and preprocessing of the job's data."""
    d = loaded.data
    return rb.tensor_data(counts=d.counts, num_classes=d.num_classes, input_shape=d.input_shape, validation=d.validation,
                          preprocessing=d.preprocessing)


def _training_part(run: JobRun, loaded: _Loaded, outcome: TrainOutcome) -> TrainingSummary:
    """The training part: the trainer's counts and final loss terms, the method as it ran (its ``describe()``, and the
    prototype method's rows per class), device, threads, seed, precision and the loop's seconds."""
    spec, method = run.spec, loaded.method
    protos = [p for p in (method.parts if isinstance(method, CombinedMethod) else [method]) if p.name == "prototype"]
    return rb.training_summary(
        epochs=outcome.epochs, steps=outcome.steps, steps_per_epoch=outcome.steps_per_epoch, resumed_from_epoch=outcome.resumed_from_epoch,
        final_loss_terms=outcome.final_loss_terms, method=spec.method.name, device=str(run.device), threads=torch.get_num_threads(),
        seed=spec.training.seed, training_time_s=outcome.elapsed_s, precision=spec.training.precision, method_detail=method.describe(),
        prototype_class_counts=protos[0].class_counts if protos else None)


def _baseline_part(run: JobRun, loaded: _Loaded, baseline: tuple[nn.Module, TrainOutcome] | str | None,
                   parameters: int) -> tuple[BaselineSummary | None, Any]:
    """With ``evaluation.compare_baseline``: the student trained alone, its validation top-1 (fraction; None without
    validation labels) measured here, or the note why there is none; None when not asked for. With it, the baseline's
    per-row correctness on the labelled validation rows (numpy bool ``[N_labelled]``, for the error bars) or None."""
    if baseline is None:
        return None, None
    if isinstance(baseline, str):
        return rb.no_baseline(baseline), None
    model, outcome = baseline
    top1, correct = None, None
    if loaded.data.val_has_labels:
        model.eval()
        vx, vy = loaded.data.val_x.to(run.device), loaded.data.val_y.to(run.device)
        pred = batched_logits(model, vx).argmax(dim=1)
        mask = vy >= 0
        hits = pred[mask] == vy[mask]
        top1, correct = float(hits.float().mean()), hits.cpu().numpy()
    return rb.baseline(val_top1=top1, training_time_s=outcome.elapsed_s, parameters=parameters, epochs=outcome.epochs,
                       steps=outcome.steps), correct
