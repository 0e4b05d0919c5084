"""``run_text_job``: distil a Hugging Face teacher ('hf' format) on text, as a thin driver of small phases.

Tasks (each a ``distill.training`` adapter from ``distill.text.adapters``, trained by the one trainer):
- ``sentence_embedding``: the teacher's token states are pooled (mean/cls/max, L2-normalised when its
  sentence-transformers pipeline normalises) into an embedding; the student learns it with
  ``cosine_weight · (1 − cos(s, t)) + mse_weight · MSE(s, t)`` and, optionally, TinyBERT-style hidden-state
  and attention-map matching for chosen layer pairs (Jiao et al. 2020), through a learned linear projection
  when the widths differ.
- ``sequence_classification``: logit KD (``kd`` / ``hard_label`` / ``dkd``, Hinton et al. 2015) on the teacher's
  classification head.

Teacher outputs are computed once per job (phase ``caching_teacher_outputs``) when nothing random touches
the input (tokenisation is deterministic; only hidden-state/attention matching needs per-step teacher
passes). Batches are length-sorted with dynamic padding. As every task: ``training.precision`` (bf16 autocast),
epoch and hand-back checkpoints with bit-identical resume on CPU, cancellable between steps. The report is built
from per-phase parts (teacher, student, data, cache, training, export checks, ONNX check) by
``distill.report_builders`` and assembled by its ``sequence_classification_report`` or ``sentence_embedding_report``.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..auto import fallback_method
from ..errors import DistillError, first_line
from ..jobrun import JobRun
from ..methods import LabelsOnly, build_method
from ..models import parameter_count
from .. import report_builders as rb
from ..report import (CacheSummary, ExportChecks, SentenceEmbeddingReport, SequenceClassificationReport, TextDataSummary,
                      TextStudentSummary, TextTeacherSummary, TrainingSummary)
from ..reporter import Reporter
from ..review import error_bars
from ..results import DistillResult
from ..spec import NO_EMBEDDING_BASELINE, JobSpec, default_method
from ..training import TaskAdapter, Trainer, TrainOutcome, spec_fingerprint
from .adapters import EmbeddingKD, SentenceEmbedding, SequenceClassification, encode_all
from .data import TextBundle, collate, load_text_data, tokenize
from .hf import Classifier, SentenceEncoder, derive_student, load_model, load_tokenizer, pipeline_pooling, save_student_folder, st_embeddings

ONNX_TOLERANCE = 1e-3


def embedding_method(spec: JobSpec) -> EmbeddingKD:
    """The ``embedding`` method of a sentence-embedding job, built from its parameters: the spec's method, or the
    default ``embedding`` when the spec gives none (its default ``kd`` then stands for 'not given'). Raises
    ``DistillError('invalid_spec')`` for another method given explicitly, or every weight 0."""
    m = spec.method
    if m.name != "embedding":
        if "method" in spec.model_fields_set:
            raise DistillError("invalid_spec", f"task sentence_embedding uses method 'embedding', not {m.name!r}", "method.name")
        m = default_method("sentence_embedding")
    return build_method(m, has_labels=False)  # type: ignore[return-value]




def check_baseline_supported(spec: JobSpec, task: str) -> None:
    """``evaluation.compare_baseline: true`` needs a student that can be trained without the teacher: on labels
    (classification, sequence classification) or on next tokens (causal LM). A sentence-embedding job's data has no
    targets but the teacher's embeddings, so a baseline cannot be trained and the request is refused rather than
    ignored. ``task``: the resolved task. Raises ``DistillError('invalid_spec', param='evaluation.compare_baseline')``."""
    if task == "sentence_embedding" and spec.evaluation.compare_baseline is True:
        raise DistillError("invalid_spec", NO_EMBEDDING_BASELINE, "evaluation.compare_baseline")


def resolve_task(spec: JobSpec, folder: Path) -> str:
    """The job's text task: the spec's, or with 'auto' 'sequence_classification' when the teacher's config names a
    *ForSequenceClassification architecture, else 'sentence_embedding'. Raises DistillError('invalid_spec')."""
    if spec.task in ("sequence_classification", "sentence_embedding"):
        return spec.task
    if spec.task == "classification":
        raise DistillError("invalid_spec", "a Hugging Face teacher needs task 'sequence_classification' or 'sentence_embedding'", "task")
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        archs = []
    return "sequence_classification" if any(a.endswith("ForSequenceClassification") for a in archs) else "sentence_embedding"


@dataclass(frozen=True)
class _Speed:
    """A model's measured speed: per-sentence latency at batch 1 (``{'p50', 'p95'}`` in ms) and throughput (sentences/s)
    at the spec's ``evaluation.throughput_batch_size``."""

    batch_1_ms: dict[str, float | None]
    throughput_per_s: float | None


def _latency(fn: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, iterations: int, tput_batch: int) -> _Speed:
    """Per-sentence latency at batch 1 (p50/p95 ms over up to ``iterations`` held-out sentences, each at its own
    length) and throughput (sentences/s) at batch ``tput_batch`` over held-out sentences in their natural order."""
    n1 = min(iterations, len(ids))
    times = []
    with torch.inference_mode():
        for i in range(min(3, len(ids))):
            fn(*collate(ids, np.array([i]), pad_id, device))
        for i in range(n1):
            x, m = collate(ids, np.array([i]), pad_id, device)
            t = time.perf_counter()
            fn(x, m)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
        order = np.arange(len(ids))
        batches = [order[i:i + tput_batch] for i in range(0, min(len(ids), tput_batch * 20), tput_batch)]
        fn(*collate(ids, batches[0], pad_id, device))
        t = time.perf_counter()
        done = 0
        for b in batches:
            fn(*collate(ids, b, pad_id, device))
            done += len(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
    return _Speed({"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}, done / elapsed)


def _probe(train_emb: torch.Tensor, train_y: np.ndarray, val_emb: torch.Tensor, val_y: np.ndarray, max_samples: int, seed: int) -> float | None:
    """Validation accuracy of a logistic-regression probe (scikit-learn) fitted on labelled training embeddings."""
    from sklearn.linear_model import LogisticRegression

    tr = np.flatnonzero(train_y >= 0)
    va = np.flatnonzero(val_y >= 0)
    if tr.size < 2 or va.size == 0 or np.unique(train_y[tr]).size < 2:
        return None
    if tr.size > max_samples:
        tr = np.random.default_rng(seed).choice(tr, max_samples, replace=False)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(train_emb[tr].numpy(), train_y[tr])
    return float((clf.predict(val_emb[va].numpy()) == val_y[va]).mean())


@dataclass
class _TextSetup:
    """What the loading phase gives the rest of a text job."""

    task: str
    tokenizer: Any
    teacher: nn.Module
    data: TextBundle
    mode: str
    normalize: bool
    student: nn.Module
    facts: dict[str, Any]
    t_width: int
    s_width: int
    projection: nn.Linear | None
    embedding: EmbeddingKD | None
    t_fn: nn.Module
    s_fn: nn.Module
    max_len: int
    train_ids: list[list[int]]
    val_ids: list[list[int]]
    pad_id: int
    use_cache: bool
    feature_losses: bool


def run_text_job(spec: JobSpec, folder: Path, teacher_bytes: int, files: dict, workdir: Path, reporter: Reporter,
                 *, runtime_used_s: float = 0.0) -> DistillResult:
    """Run a text distillation job from the extracted teacher ``folder`` (a Hugging Face model folder).

    Returns ``DistillResult`` with the report and artifacts (``student_hf.zip``: the student as a transformers
    — and for embeddings sentence-transformers — folder; ``student.onnx`` verified by onnxruntime;
    ``student.json``). ``runtime_used_s``: seconds earlier attempts used of ``training.max_runtime_s``. Raises
    DistillError (invalid_spec, invalid_file, shape_mismatch, non_finite_loss, max_runtime_exceeded, internal_error)
    or StopRequested.
    """
    if spec.student.from_teacher is None:
        raise DistillError("invalid_spec", "a Hugging Face teacher needs student.from_teacher (num_layers or keep_layers)", "student")
    if spec.method.name == "auto":  # the selection of method 'auto' is for tensor classification: text tasks run kd
        spec = spec.model_copy(update={"method": fallback_method(spec)})
        reporter.event("method_auto", "method 'auto' selects among candidates for tensor classification only; this text "
                       "task runs kd (temperature 4, alpha 0.9)", {"method": "kd"})
    task = resolve_task(spec, folder)
    check_baseline_supported(spec, task)
    run = JobRun.start(spec, workdir, reporter, runtime_used_s)
    with run.phase("loading_teacher"):
        t = _load(run, folder, files, task)
    run.check("while loading")
    with run.phase("caching_teacher_outputs"):
        t_val = encode_all(t.t_fn, t.val_ids, t.pad_id, run.device)
        t_train = encode_all(t.t_fn, t.train_ids, t.pad_id, run.device) if t.use_cache else None
    run.check("after caching teacher outputs")
    with run.phase("training"):
        trainer = Trainer(_adapter(run, t, t_val, t_train), spec.training, device=run.device, workdir=run.workdir, reporter=reporter,
                          deadline=run.deadline, fingerprint=spec_fingerprint(spec))
        outcome = trainer.fit()
    run.check("after training")
    alone = _baseline(run, t, t_val, t_train)
    with run.phase("evaluating"):
        ev = _evaluate(run, t, t_val, t_train, alone)
    run.check("after evaluation")
    with run.phase("exporting"), run.artifacts() as tmp:
        exported = _export(run, t, tmp)
    report = _report(run, t, teacher_bytes, ev, outcome, exported, alone)
    names = ("student_hf.zip", "student.json") + (("student.onnx",) if exported.onnx else ())
    return DistillResult(report=report.model_dump(mode="json"), artifacts=[run.final_dir / n for n in names])


def _load(run: JobRun, folder: Path, files: dict, task: str) -> _TextSetup:
    """Tokenizer, teacher, texts (tokenised once), pooling, the derived student and its projections."""
    spec, device = run.spec, run.device
    emb = embedding_method(spec) if task == "sentence_embedding" else None
    pairs = (emb.hidden_layers + emb.attention_layers) if emb is not None else []
    feature_losses = bool(pairs)
    if spec.cache.teacher_outputs == "on" and feature_losses:
        raise DistillError("invalid_spec", "cache.teacher_outputs='on' cannot hold per-token states for hidden/attention matching; "
                           "use 'auto' or 'off'", "cache.teacher_outputs")
    tokenizer = load_tokenizer(folder)
    teacher = load_model(folder, task, attention=bool(emb is not None and emb.attention_layers)).to(device)
    data = load_text_data(spec.data, files)
    mode, normalize = pipeline_pooling(folder)
    if spec.pooling.mode != "auto":
        mode = spec.pooling.mode
    if spec.pooling.normalize is not None:
        normalize = spec.pooling.normalize
    student, facts = derive_student(teacher, spec.student.from_teacher, task, spec.training.seed)
    student.to(device)
    t_width, s_width = int(teacher.config.hidden_size), int(student.config.hidden_size)
    for p in pairs:
        if p.student >= facts["num_hidden_layers"] or p.teacher >= int(teacher.config.num_hidden_layers):
            raise DistillError("invalid_spec", f"layer pair {p.student}->{p.teacher} is out of range: the student has "
                               f"{facts['num_hidden_layers']} layers, the teacher {teacher.config.num_hidden_layers}", "method")
    projection = nn.Linear(s_width, t_width).to(device) if task == "sentence_embedding" and s_width != t_width else None
    if emb is not None:
        emb.setup(s_width, t_width)
        emb.to(device)
    if task == "sentence_embedding":
        t_fn: nn.Module = SentenceEncoder(teacher, mode, normalize)
        s_fn: nn.Module = SentenceEncoder(student, mode, normalize, projection)
    else:
        t_fn, s_fn = Classifier(teacher), Classifier(student)
        if data.num_classes is not None and data.num_classes > int(teacher.config.num_labels):
            raise DistillError("shape_mismatch", f"the data has labels up to {data.num_classes - 1} but the teacher classifies "
                               f"{teacher.config.num_labels} classes", "data")
    max_len = min(spec.data.max_seq_length, int(getattr(tokenizer, "model_max_length", 10**9) or 10**9),
                  int(getattr(teacher.config, "max_position_embeddings", 10**9)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _TextSetup(task, tokenizer, teacher, data, mode, normalize, student, facts, t_width, s_width, projection, emb,
                      t_fn, s_fn, max_len, tokenize(tokenizer, data.train_texts, max_len), tokenize(tokenizer, data.val_texts, max_len),
                      pad_id, spec.cache.teacher_outputs != "off" and not feature_losses, feature_losses)


def _adapter(run: JobRun, t: _TextSetup, t_val: torch.Tensor, t_train: torch.Tensor | None) -> TaskAdapter:
    """The task's trainer adapter (the method of a sequence-classification job is built here)."""
    if t.task == "sentence_embedding":
        return SentenceEmbedding(t.s_fn, t.teacher, t.embedding, t.train_ids, t.pad_id, t.val_ids, t_val, run.device, t_train)
    counts = t.data.counts
    method = build_method(run.spec.method, has_labels=counts["labelled"] > 0, all_labelled=counts["unlabelled"] == 0)
    return SequenceClassification(t.s_fn, t.t_fn, method, t.train_ids, t.data.train_labels, t.pad_id, t.val_ids,
                                  t.data.val_labels, t_val, run.device, t_train)


BASELINE_CHECKPOINT_STEM = "baseline_checkpoint"
NO_LABELS_BASELINE_NOTE = "no labelled training texts: a student cannot be trained alone"


@dataclass
class _TextAlone:
    """The student trained alone for ``evaluation.compare_baseline``: its classifier (``s_fn``: ``hf.Classifier``), its
    parameters and the trainer's outcome."""

    s_fn: nn.Module
    parameters: int
    outcome: TrainOutcome


def _baseline(run: JobRun, t: _TextSetup, t_val: torch.Tensor, t_train: torch.Tensor | None) -> _TextAlone | None:
    """With ``evaluation.compare_baseline: true`` on a sequence-classification job with labelled training texts: the
    same student (derived from the teacher's layers as the distilled one, same seed, data, epochs, optimizer and batch
    size) trained alone on cross-entropy over the labelled texts (``LabelsOnly``; the cached teacher outputs are passed
    but never read). None otherwise (text tasks do not run it by default: it doubles the training); asked for without
    labelled training texts, the report's baseline is the note ``NO_LABELS_BASELINE_NOTE`` (``_report``)."""
    spec = run.spec
    if t.task != "sequence_classification" or not spec.evaluation.compare_baseline or t.data.counts["labelled"] == 0:
        return None
    run.check("before the baseline", deadline=False)
    run.reporter.event("baseline_started", "training the same student alone (cross-entropy on labels only) for comparison",
                       {"epochs": spec.training.epochs})
    with run.phase("baseline_training", announce=False):
        student, _ = derive_student(t.teacher, spec.student.from_teacher, t.task, spec.training.seed)
        s_fn = Classifier(student.to(run.device))
        adapter = SequenceClassification(s_fn, t.t_fn, LabelsOnly(all_labelled=t.data.counts["unlabelled"] == 0), t.train_ids,
                                         t.data.train_labels, t.pad_id, t.val_ids, t.data.val_labels, t_val, run.device, t_train)
        trainer = Trainer(adapter, spec.training, device=run.device, workdir=run.workdir, reporter=run.reporter, deadline=run.deadline,
                          fingerprint=spec_fingerprint(spec) + ":baseline", split_prefix="baseline_",
                          checkpoint_stem=BASELINE_CHECKPOINT_STEM, owns_metrics=False)
        outcome = trainer.fit()
    run.check("after the baseline")
    return _TextAlone(s_fn, parameter_count(student), outcome)


@dataclass
class _TextEval:
    """What the evaluating phase measured: the task's quality figures (``quality``, keyed by the report assembler's
    keyword arguments: mean_cosine, probe_teacher, probe_student; or agreement, mean_kl, teacher_top1, student_top1),
    both models' speed and, for sequence classification with validation labels, the error bars of the top-1s
    (``distill.review.error_bars``: Wilson intervals and the paired teacher-vs-student comparison)."""

    quality: dict[str, float | None]
    teacher: _Speed
    student: _Speed
    bars: dict[str, Any] | None = None


def _evaluate(run: JobRun, t: _TextSetup, t_val: torch.Tensor, t_train: torch.Tensor | None,
              alone: _TextAlone | None = None) -> _TextEval:
    """Held-out comparison (mean cosine and linear-probe accuracies, fractions; or agreement and top-1, fractions, and
    mean KL(teacher ‖ student) at T = 1, nats; with ``alone``, the baseline's top-1 as well) and latency/throughput of
    both models."""
    spec, device, data = run.spec, run.device, t.data
    bars = None
    t.student.eval()
    s_val = encode_all(t.s_fn, t.val_ids, t.pad_id, device)
    if t.task == "sentence_embedding":
        n = len(t.train_ids)
        n_probe = min(n, spec.evaluation.probe_max_samples)
        pick = np.random.default_rng(spec.training.seed).choice(n, n_probe, replace=False) if n_probe < n else np.arange(n)
        sub = [t.train_ids[i] for i in pick]
        t_tr = t_train[torch.as_tensor(pick)] if t_train is not None else encode_all(t.t_fn, sub, t.pad_id, device)
        s_tr = encode_all(t.s_fn, sub, t.pad_id, device)
        seed = spec.training.seed
        quality = dict(mean_cosine=float(F.cosine_similarity(s_val, t_val, dim=-1).mean()),
                       probe_teacher=_probe(t_tr, data.train_labels[pick], t_val, data.val_labels, n_probe, seed),
                       probe_student=_probe(s_tr, data.train_labels[pick], s_val, data.val_labels, n_probe, seed))
    else:
        vy = torch.as_tensor(data.val_labels)
        lab = vy >= 0
        t_ok = (t_val.argmax(1).cpu()[lab] == vy[lab]).numpy()
        s_ok = (s_val.argmax(1).cpu()[lab] == vy[lab]).numpy()
        quality = dict(agreement=float((s_val.argmax(1) == t_val.argmax(1)).float().mean()),
                       mean_kl=float(F.kl_div(F.log_softmax(s_val, 1), F.log_softmax(t_val, 1), log_target=True, reduction="batchmean")),
                       teacher_top1=float(t_ok.mean()) if lab.any() else None,
                       student_top1=float(s_ok.mean()) if lab.any() else None)
        a_ok = None
        if alone is not None:
            alone.s_fn.eval()
            a_ok = (encode_all(alone.s_fn, t.val_ids, t.pad_id, device).argmax(1).cpu()[lab] == vy[lab]).numpy()
        if lab.any():
            bars = {**error_bars(teacher=t_ok, student=s_ok, alone=a_ok, seed=spec.training.seed),
                    "alone_top1": float(a_ok.mean()) if a_ok is not None else None}
    it, tb = spec.evaluation.latency_iterations, spec.evaluation.throughput_batch_size
    return _TextEval(quality, _latency(t.t_fn, t.val_ids, t.pad_id, device, it, tb), _latency(t.s_fn, t.val_ids, t.pad_id, device, it, tb),
                     bars)


@dataclass
class _TextExported:
    """What the exporting phase wrote and checked: the export checks, the ONNX check (None without ONNX) and the size
    of the student's model.safetensors (bytes)."""

    checks: ExportChecks
    onnx: dict[str, Any] | None
    student_bytes: int


def _export(run: JobRun, t: _TextSetup, tmp: Path) -> _TextExported:
    """Write ``student_hf.zip`` (checked to load in transformers, and for embeddings in sentence-transformers with the
    job's embeddings), ``student.onnx`` (when asked) and ``student.json`` into ``tmp``. Raises
    ``DistillError('internal_error')`` when an export disagrees with the job's model."""
    spec, task, device = run.spec, t.task, run.device
    folder_out = save_student_folder(t.student.cpu(), t.tokenizer, tmp / "student_hf", task=task, mode=t.mode, normalize=t.normalize,
                                     projection=t.projection.cpu() if t.projection is not None else None, max_seq_length=t.max_len)
    t.student.to(device)
    sample = t.data.val_texts[:16]
    ours = encode_all(t.s_fn.cpu(), tokenize(t.tokenizer, sample, t.max_len), t.pad_id, torch.device("cpu"))
    from transformers import AutoModel

    AutoModel.from_pretrained(str(folder_out), local_files_only=True)  # loads in plain transformers
    st_diff = None
    if task == "sentence_embedding":
        st = torch.as_tensor(st_embeddings(folder_out, sample))
        st_diff = float(f"{float((st - ours).abs().max()):.3g}")
        if st_diff > ONNX_TOLERANCE:
            raise DistillError("internal_error", f"sentence-transformers embeddings differ from the job's by {st_diff}")
    checks = ExportChecks(transformers_loads=True, sentence_transformers_max_abs_diff=st_diff)
    onnx_info = _export_onnx(t.s_fn, t.tokenizer, sample, t.max_len, tmp / "student.onnx") if "onnx" in spec.export.formats else None
    student_bytes = (folder_out / "model.safetensors").stat().st_size
    with zipfile.ZipFile(tmp / "student_hf.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder_out.rglob("*")):
            if p.is_file():
                z.write(p, Path("student_hf") / p.relative_to(folder_out))
    shutil.rmtree(folder_out)
    emb = task == "sentence_embedding"
    card = {"task": task, "from_teacher": spec.student.from_teacher.model_dump(), **t.facts, "pooling": t.mode, "normalize": t.normalize,
            "projection": [t.s_width, t.t_width] if t.projection is not None else None, "max_seq_length": t.max_len,
            "files": {"student_hf.zip": "unzip, then AutoModel.from_pretrained('student_hf')" + (
                " or SentenceTransformer('student_hf')" if emb else ""),
                      "student.onnx": "inputs input_ids, attention_mask [batch, tokens] int64; output " + (
                          "embedding [batch, dim]" if emb else "logits [batch, classes]")},
            "torch_version": torch.__version__}
    (tmp / "student.json").write_text(json.dumps(card, indent=2))
    return _TextExported(checks, onnx_info, student_bytes)


def _report(run: JobRun, t: _TextSetup, teacher_bytes: int, ev: _TextEval, outcome: TrainOutcome,
            exported: _TextExported, alone: _TextAlone | None = None) -> SequenceClassificationReport | SentenceEmbeddingReport:
    """The text compression report of ``t.task``, assembled from its per-phase parts (``distill.report_builders``);
    ``alone``: the baseline (its top-1 and interval come from ``ev.bars``); a sequence-classification job that asked
    for one without labelled training texts gets ``NO_LABELS_BASELINE_NOTE`` as its baseline instead."""
    parts = dict(teacher=_teacher_part(run, t, teacher_bytes, ev.teacher), student=_student_part(run, t, exported.student_bytes, ev.student),
                 data=_data_part(t), cache=_cache_part(run, t), training=_training_part(run, t, outcome),
                 export_checks=exported.checks, onnx=rb.onnx_check(exported.onnx), wall_time_s=run.finish())
    if t.task == "sentence_embedding":
        return rb.sentence_embedding_report(**parts, **ev.quality, pooling_mode=t.mode, normalize=t.normalize)
    base = None
    if alone is not None:
        bars = ev.bars or {}
        base = rb.baseline(val_top1=bars.get("alone_top1"), training_time_s=alone.outcome.elapsed_s, parameters=alone.parameters,
                           epochs=alone.outcome.epochs, steps=alone.outcome.steps, val_top1_interval=bars.get("alone"))
    elif run.spec.evaluation.compare_baseline and t.data.counts["labelled"] == 0:  # asked for, as tensor jobs say it
        base = rb.no_baseline(NO_LABELS_BASELINE_NOTE)
    return rb.sequence_classification_report(**parts, **ev.quality, bars=ev.bars, baseline=base)


def _teacher_part(run: JobRun, t: _TextSetup, teacher_bytes: int, speed: _Speed) -> TextTeacherSummary:
    """The Hugging Face teacher: config facts, parameters, the uploaded archive's bytes and its measured speed."""
    cfg = t.teacher.config
    return rb.text_teacher(model_type=cfg.model_type, layers=int(cfg.num_hidden_layers), hidden_size=t.t_width,
                           parameters=parameter_count(t.teacher), bytes=teacher_bytes, latency_batch_1=speed.batch_1_ms,
                           throughput_batch=run.spec.evaluation.throughput_batch_size, throughput_per_s=speed.throughput_per_s)


def _student_part(run: JobRun, t: _TextSetup, student_bytes: int, speed: _Speed) -> TextStudentSummary:
    """The derived student: the teacher layers it keeps, how it was initialised, its parameters (the embedding
    projection's included), its model.safetensors' bytes and its measured speed."""
    params = parameter_count(t.student) + (parameter_count(t.projection) if t.projection else 0)
    return rb.text_student(layers=t.facts["num_hidden_layers"], kept_teacher_layers=t.facts["keep_layers"], initialised=t.facts["initialised"],
                           hidden_size=t.s_width, parameters=params, bytes=student_bytes, latency_batch_1=speed.batch_1_ms,
                           throughput_batch=run.spec.evaluation.throughput_batch_size, throughput_per_s=speed.throughput_per_s)


def _data_part(t: _TextSetup) -> TextDataSummary:
    """Rows, label names, validation split, token limit and mean tokens per training text (after truncation)."""
    d = t.data
    return rb.text_data(counts=d.counts, label_names=d.label_names, validation=d.validation, max_seq_length=t.max_len,
                        mean_tokens=float(np.mean([len(x) for x in t.train_ids])))


def _cache_part(run: JobRun, t: _TextSetup) -> CacheSummary:
    """Whether the teacher's outputs were computed once, why, and the teacher passes that saved (every epoch after the
    first, over every training text)."""
    reason = "deterministic tokenisation; teacher run once per text" if t.use_cache else (
        "hidden/attention matching needs per-step teacher states" if t.feature_losses else "turned off in the spec")
    n = len(t.train_ids)
    return rb.cache_summary(used=t.use_cache, reason=reason, rows_seen=run.spec.training.epochs * n, rows_cached=n)


def _training_part(run: JobRun, t: _TextSetup, outcome: TrainOutcome) -> TrainingSummary:
    """The trainer's counts and final loss terms (nats), the method ('embedding' for sentence embeddings), device,
    threads, seed and precision."""
    tr = run.spec.training
    return rb.training_summary(
        epochs=tr.epochs, steps=outcome.steps, steps_per_epoch=outcome.steps_per_epoch, resumed_from_epoch=outcome.resumed_from_epoch,
        final_loss_terms=outcome.final_loss_terms, method=run.spec.method.name if t.task != "sentence_embedding" else "embedding",
        device=str(run.device), threads=torch.get_num_threads(), seed=tr.seed, precision=tr.precision)


def _export_onnx(fn: nn.Module, tokenizer, texts: list[str], max_len: int, path: Path) -> dict[str, Any]:
    """Export ``fn(input_ids, attention_mask)`` to ONNX (dynamic batch and token axes) and compare onnxruntime with PyTorch."""
    import onnxruntime as ort

    fn = fn.cpu().eval()
    enc = tokenizer(texts[:4], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(fn, args, str(path), dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["output"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                            "output": {0: "batch"}}, opset_version=17)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        other = tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        got = sess.run(None, {"input_ids": other["input_ids"].numpy(), "attention_mask": other["attention_mask"].numpy()})[0]
        with torch.inference_mode():
            want = fn(other["input_ids"], other["attention_mask"]).numpy()
    except Exception as e:  # noqa: BLE001
        raise DistillError("internal_error", f"ONNX export of the student failed: {first_line(e)}") from None
    diff = float(np.abs(got - want).max())
    if diff > ONNX_TOLERANCE:
        raise DistillError("internal_error", f"the ONNX student differs from PyTorch by {diff:.3g}")
    return {"max_abs_diff": float(f"{diff:.3g}"), "opset": 17, "inputs": ["input_ids", "attention_mask"]}
