"""Per-phase builders of the typed report (``distill.report``): small functions from plain inputs (numbers, the
evaluation's measurements, the training outcome's counts) to the report's typed parts, and one assembler per task
family that derives the ratios, speedups and summary sentence from those parts.

Plain pydantic and arithmetic, no torch: each builder is testable on its own, and a new task family (e.g. causal
language models) adds its model summary, its quality figures and one assembler. Rounding is done here, once: fractions
and latencies to 4 decimals, losses to 6, seconds to 3, ratios to 2, ONNX differences to 3 significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .review import gain_sentence
from .report import (
    BaselineSummary,
    CacheSummary,
    CausalLMReport,
    ClassificationReport,
    ExportChecks,
    LatencyMs,
    LMAgreement,
    LMBaseline,
    LMCacheSummary,
    LMDataSummary,
    LMExportChecks,
    LMGenerations,
    LMModelSummary,
    LMPerplexities,
    LMSpeed,
    LMStudentSummary,
    OnnxCheck,
    PoolingSummary,
    PrunedStudent,
    QuantizedStudent,
    SentenceEmbeddingReport,
    SequenceClassificationReport,
    TensorDataSummary,
    TensorModelSummary,
    TextDataSummary,
    TextStudentSummary,
    TextTeacherSummary,
    TrainingSummary,
)

LatencyInput = Mapping[str, Mapping[str, float | None]] | Mapping[str, LatencyMs]
QUANTIZED_METHOD = "dynamic_int8 (Linear weights int8, activations quantised on the fly)"
PRUNED_NOTE = ("unstructured zeros: the dense file is no smaller and dense kernels no faster; the sparsity pays off with "
               "sparse storage or kernels")
BASELINE_METHOD = "cross-entropy on labels only"


def rnd(x: float | None, digits: int = 4) -> float | None:
    """Round for the report (None and non-finite values become None)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    """``a / b`` rounded to ``digits``; None when either is None or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return rnd(a / b, digits)


def latencies(ms: LatencyInput) -> dict[str, LatencyMs]:
    """``{batch size: {'p50', 'p95'}}`` in milliseconds (from ``measure``) as typed, rounded latency entries."""
    out = {}
    for batch, v in ms.items():
        p50, p95 = (v.p50, v.p95) if isinstance(v, LatencyMs) else (v.get("p50"), v.get("p95"))
        out[str(batch)] = LatencyMs(p50=rnd(p50), p95=rnd(p95))
    return out


def wall_times(seconds: Mapping[str, float]) -> dict[str, float]:
    """Wall-clock seconds per phase (in the order run, and 'total'), rounded to milliseconds."""
    return {k: round(float(v), 3) for k, v in seconds.items()}


# ---------------------------------------------------------------------------------------------------- shared phases


def training_summary(*, epochs: int, steps: int, steps_per_epoch: int, resumed_from_epoch: int | None,
                     final_loss_terms: Mapping[str, float], method: str, device: str, threads: int, seed: int,
                     training_time_s: float | None = None, precision: str | None = None,
                     method_detail: Mapping[str, Any] | None = None,
                     prototype_class_counts: Iterable[int] | None = None, devices: int | None = None) -> TrainingSummary:
    """The training phase: counts from the trainer's outcome, ``final_loss_terms`` (mean per term over the last epoch, nats),
    the method's ``describe()`` as ``method_detail``, ``training_time_s`` (seconds of the loop), ``devices`` (causal_lm:
    training.devices). Raises
    ``pydantic.ValidationError`` for inputs of the wrong type."""
    return TrainingSummary(
        epochs=epochs, steps=steps, steps_per_epoch=steps_per_epoch, resumed_from_epoch=resumed_from_epoch,
        final_loss_terms={k: rnd(v, 6) for k, v in final_loss_terms.items()}, method=method, device=device, threads=threads,
        seed=seed, training_time_s=rnd(training_time_s, 3), precision=precision, method_detail=method_detail, devices=devices,
        prototype_class_counts=list(prototype_class_counts) if prototype_class_counts is not None else None)


def cache_summary(*, used: bool, reason: str, rows_seen: int, rows_cached: int, seconds: float | None = None,
                  bytes: int | None = None) -> CacheSummary:
    """The teacher-output cache: ``used``, the ``reason`` for a person, and what it saved: training rows the loop saw
    (``rows_seen``, all epochs run) minus rows whose outputs were computed once (``rows_cached``), as teacher passes
    saved; ``seconds`` spent computing it and its size in ``bytes`` (only reported when used)."""
    return CacheSummary(teacher_outputs=used, reason=reason, teacher_passes_saved=max(0, rows_seen - rows_cached) if used else 0,
                        cache_seconds=(rnd(seconds, 3) if used else 0.0) if seconds is not None else None,
                        bytes=bytes if used else None)


def onnx_check(info: Mapping[str, Any] | None) -> OnnxCheck | None:
    """The ONNX export check (``{'max_abs_diff', 'opset'[, 'inputs']}`` from the exporter), or None without ONNX."""
    if not info:
        return None
    return OnnxCheck(max_abs_diff=float(f"{info['max_abs_diff']:.3g}"), opset=info["opset"], inputs=info.get("inputs"))


# ---------------------------------------------------------------------------------------------------- classification


def tensor_model(*, format: str, parameters: int, bytes: int, flops_per_sample: int | None, val_top1: float | None,
                 latency_ms: LatencyInput, architecture: Mapping[str, Any] | None = None,
                 notes: Iterable[str] = (), val_top1_interval: Iterable[float] | None = None) -> TensorModelSummary:
    """Teacher or student of a tensor task: size (parameters, bytes on disk), FLOPs per sample, validation top-1
    (fraction) with its Wilson 95% interval (``distill.review.top1_interval``) and latency (ms per batch size) as
    measured by the evaluation phase."""
    return TensorModelSummary(format=format, parameters=parameters, bytes=bytes, flops_per_sample=flops_per_sample,
                              val_top1=rnd(val_top1), latency_ms=latencies(latency_ms),
                              val_top1_interval=list(val_top1_interval) if val_top1_interval is not None else None,
                              architecture=dict(architecture) if architecture is not None else None, notes=list(notes))


def tensor_data(*, counts: Mapping[str, int], num_classes: int | None, input_shape: Iterable[int], validation: Mapping[str, Any],
                preprocessing: Mapping[str, Any]) -> TensorDataSummary:
    """Rows (``counts``: train, labelled, unlabelled, transfer), classes, sample shape, how validation rows were made and
    the preprocessing of a tensor job's data."""
    return TensorDataSummary(train=counts["train"], labelled=counts["labelled"], unlabelled=counts["unlabelled"],
                             transfer=counts["transfer"], validation=dict(validation), num_classes=num_classes,
                             input_shape=list(input_shape), preprocessing=dict(preprocessing))


def quantized_student(*, artifact: str, bytes: int, parameters: int, val_top1: float | None, latency_ms: LatencyInput,
                      load_with: str) -> QuantizedStudent:
    """The int8 student of ``export.quantize: dynamic_int8`` as evaluated on the CPU (top-1 fraction, latency ms)."""
    return QuantizedStudent(method=QUANTIZED_METHOD, artifact=artifact, bytes=bytes, parameters=parameters, val_top1=rnd(val_top1),
                            latency_ms=latencies(latency_ms), device="cpu", load_with=load_with)


def pruned_student(*, amount: float, sparsity: float | None, fine_tune_epochs: int, artifact: str, bytes: int, parameters: int,
                   val_top1: float | None, latency_ms: LatencyInput) -> PrunedStudent:
    """The magnitude-pruned student of ``export.prune`` (L1 unstructured, Han et al. 2015): the asked ``amount``, the
    measured ``sparsity`` (zero fraction), its CPU evaluation."""
    return PrunedStudent(amount=amount, sparsity=rnd(sparsity), fine_tune_epochs=fine_tune_epochs, artifact=artifact, bytes=bytes,
                         parameters=parameters, val_top1=rnd(val_top1), latency_ms=latencies(latency_ms), device="cpu",
                         note=PRUNED_NOTE)


def baseline(*, val_top1: float | None, training_time_s: float, parameters: int, epochs: int, steps: int,
             val_top1_interval: Iterable[float] | None = None) -> BaselineSummary:
    """The same student trained alone (cross-entropy on labels only) for ``evaluation.compare_baseline``, with the
    Wilson 95% interval of its top-1 (fractions)."""
    return BaselineSummary(val_top1=rnd(val_top1), training_time_s=rnd(training_time_s, 3), parameters=parameters,
                           method=BASELINE_METHOD, epochs=epochs, steps=steps,
                           val_top1_interval=list(val_top1_interval) if val_top1_interval is not None else None)


def no_baseline(note: str) -> BaselineSummary:
    """``evaluation.compare_baseline`` asked for a baseline that could not be trained; ``note`` says why."""
    return BaselineSummary(val_top1=None, training_time_s=None, note=note)


def _points(a: float | None, b: float | None) -> float | None:
    return rnd((a - b) * 100, 2) if a is not None and b is not None else None


def _paired_points(comparisons: Mapping[str, Any] | None, key: str, a: float | None, b: float | None) -> float | None:
    """``a - b`` in percentage points: the paired comparison ``key``'s ``difference_points`` when the report has it
    (counted from the per-row correctness on the same validation rows), else from the two top-1s. The top-1s are
    rounded to 4 decimals, so their difference can miss the exact one by 0.01 point (99.44% - 97.78% = 1.66, while
    358/360 - 352/360 = 1.67): the drop and gain then agree with the comparisons printed beside them."""
    c = (comparisons or {}).get(key)
    exact = c.get("difference_points") if isinstance(c, Mapping) else getattr(c, "difference_points", None)
    return float(exact) if exact is not None and a is not None and b is not None else _points(a, b)


def classification_summary(r: ClassificationReport) -> str:
    """The report's sentence for a person: size, speed, agreement, top-1 against the teacher, and the baseline's verdict
    (``distill.review.gain_sentence``: 'no measurable difference' when the comparison's 95% interval covers 0; no
    verdict without the comparison)."""
    t, s = r.teacher, r.student
    text = f"The {s.architecture.name if s.architecture else 'student'} student has {s.parameters:,} parameters vs the teacher's {t.parameters:,}"
    details = []
    if r.compression_ratio:
        details.append(f"{r.compression_ratio:.1f}x smaller on disk")
    bs = next(iter(r.speedup), None)
    sp = r.speedup.get(bs) if bs is not None else None
    if sp:
        details.append(f"{sp:.1f}x faster at batch {bs}" if sp >= 1 else f"{1 / sp:.2f}x slower at batch {bs}")
    if details:
        text += f" ({', '.join(details)})"
    if r.agreement is not None:
        text += f" and agrees with it on {r.agreement:.1%} of validation samples"
    drop = r.top1_drop_points
    if drop is not None:
        rel = f"{drop:.1f} points below" if drop >= 0 else f"{-drop:.1f} points above"
        text += f"; its validation top-1 is {s.val_top1:.1%}, {rel} the teacher's {t.val_top1:.1%}"
    text += "."
    alone = r.baseline.val_top1 if r.baseline else None
    vs_alone = r.comparisons.get("distilled_vs_alone") if r.comparisons else None
    text += gain_sentence(s.val_top1, alone, vs_alone.model_dump() if vs_alone else None)
    return text


def classification_report(*, teacher: TensorModelSummary, student: TensorModelSummary, agreement: float | None,
                          mean_kl: float | None, data: TensorDataSummary, training: TrainingSummary, cache: CacheSummary | None,
                          wall_time_s: Mapping[str, float], evaluation_extras: Mapping[str, Any] | None = None,
                          onnx: OnnxCheck | None = None, quantized: QuantizedStudent | None = None,
                          pruned: PrunedStudent | None = None, baseline: BaselineSummary | None = None,
                          comparisons: Mapping[str, Any] | None = None,
                          warnings: Iterable[Mapping[str, Any]] | None = None) -> ClassificationReport:
    """Assemble a tensor classification report from its parts, deriving the compression, parameter and FLOPs ratios
    (teacher / student), the speedup per batch size (teacher p50 / student p50), the top-1 drop and the distillation
    gain (points) and the summary sentence. ``evaluation_extras``: ``evaluation.classification_metrics``'s block (top5,
    per_class_top1, ece, teacher_student_confusion, disagreements_top). ``comparisons`` / ``warnings``: the error bars'
    paired comparisons and the reviewer's warnings (``distill.review.error_bars`` / ``data_warnings``), which the
    summary's verdict on distillation reads. Raises ``pydantic.ValidationError`` for mistyped parts."""
    report = ClassificationReport(
        task="classification", summary="", teacher=teacher, student=student, agreement=rnd(agreement), mean_kl=rnd(mean_kl, 6),
        **dict(evaluation_extras or {}),
        compression_ratio=ratio(teacher.bytes, student.bytes), parameter_ratio=ratio(teacher.parameters, student.parameters),
        flops_ratio=ratio(teacher.flops_per_sample, student.flops_per_sample),
        speedup={b: ratio(lat.p50, student.latency_ms[b].p50 if b in student.latency_ms else None)
                 for b, lat in teacher.latency_ms.items()},
        top1_drop_points=_paired_points(comparisons, "teacher_vs_student", teacher.val_top1, student.val_top1), data=data,
        training=training, onnx=onnx, wall_time_s=wall_times(wall_time_s), cache=cache, quantized=quantized, pruned=pruned,
        baseline=baseline,
        distillation_gain_points=(_paired_points(comparisons, "distilled_vs_alone", student.val_top1, baseline.val_top1)
                                  if baseline is not None else None),
        comparisons=dict(comparisons) if comparisons is not None else None,
        warnings=[dict(w) for w in warnings] if warnings is not None else None)
    report.summary = classification_summary(report)
    return report


# ---------------------------------------------------------------------------------------------------- text tasks


def _text_model_fields(*, layers: int, hidden_size: int, parameters: int, bytes: int, latency_batch_1: Mapping[str, float | None],
                       throughput_batch: int, throughput_per_s: float | None) -> dict[str, Any]:
    return {"format": "hf", "layers": layers, "hidden_size": hidden_size, "parameters": parameters, "bytes": bytes,
            "latency_ms": latencies({"1": latency_batch_1}), "throughput_per_s": {str(throughput_batch): rnd(throughput_per_s, 1)}}


def text_teacher(*, model_type: str, layers: int, hidden_size: int, parameters: int, bytes: int,
                 latency_batch_1: Mapping[str, float | None], throughput_batch: int, throughput_per_s: float | None) -> TextTeacherSummary:
    """The Hugging Face teacher: config facts, size (parameters, archive bytes), per-sentence latency at batch 1
    (``{'p50', 'p95'}`` ms) and throughput (sentences/s) at ``throughput_batch``."""
    return TextTeacherSummary(model_type=model_type, **_text_model_fields(
        layers=layers, hidden_size=hidden_size, parameters=parameters, bytes=bytes, latency_batch_1=latency_batch_1,
        throughput_batch=throughput_batch, throughput_per_s=throughput_per_s))


def text_student(*, layers: int, kept_teacher_layers: Iterable[int], initialised: str, hidden_size: int, parameters: int,
                 bytes: int, latency_batch_1: Mapping[str, float | None], throughput_batch: int,
                 throughput_per_s: float | None) -> TextStudentSummary:
    """The derived student (DistilBERT recipe, Sanh et al. 2019): the teacher layers it keeps, how it was initialised,
    its size (model.safetensors bytes) and speed, as ``text_teacher``."""
    return TextStudentSummary(kept_teacher_layers=list(kept_teacher_layers), initialised=initialised, **_text_model_fields(
        layers=layers, hidden_size=hidden_size, parameters=parameters, bytes=bytes, latency_batch_1=latency_batch_1,
        throughput_batch=throughput_batch, throughput_per_s=throughput_per_s))


def text_data(*, counts: Mapping[str, int], label_names: Iterable[str] | None, validation: Mapping[str, Any],
              max_seq_length: int, mean_tokens: float | None) -> TextDataSummary:
    """Rows (``counts``: train, labelled, unlabelled, transfer), label names, how validation texts were made, the token
    limit and the mean tokens per training text of a text job."""
    return TextDataSummary(train=counts["train"], labelled=counts["labelled"], unlabelled=counts["unlabelled"],
                           transfer=counts["transfer"], validation=dict(validation),
                           label_names=list(label_names) if label_names is not None else None, max_seq_length=max_seq_length,
                           mean_tokens=rnd(mean_tokens, 1))


def _text_ratios(teacher: TextTeacherSummary, student: TextStudentSummary) -> dict[str, Any]:
    (tb, t_tput), = teacher.throughput_per_s.items()
    t1, s1 = teacher.latency_ms["1"].p50, student.latency_ms["1"].p50
    return {"parameter_ratio": ratio(teacher.parameters, student.parameters), "compression_ratio": ratio(teacher.bytes, student.bytes),
            "speedup": {"1": ratio(t1, s1), f"throughput_{tb}": ratio(student.throughput_per_s.get(tb), t_tput)}}


def _text_summary_start(teacher: TextTeacherSummary, student: TextStudentSummary, parameter_ratio: float | None,
                        speedup: Mapping[str, float | None]) -> str:
    text = (f"The {student.layers}-layer student has {student.parameters:,} parameters vs the teacher's {teacher.parameters:,} "
            f"({parameter_ratio}x fewer), {speedup.get('1')}x faster per sentence at batch 1")
    tp = next((v for k, v in speedup.items() if k.startswith("throughput")), None)
    if tp:
        text += f" and {tp}x the teacher's throughput"
    return text


def sequence_classification_report(*, teacher: TextTeacherSummary, student: TextStudentSummary, agreement: float | None,
                                   mean_kl: float | None, teacher_top1: float | None, student_top1: float | None,
                                   data: TextDataSummary, cache: CacheSummary, training: TrainingSummary,
                                   export_checks: Mapping[str, Any] | ExportChecks, wall_time_s: Mapping[str, float],
                                   onnx: OnnxCheck | None = None,
                                   bars: Mapping[str, Any] | None = None,
                                   baseline: BaselineSummary | None = None) -> SequenceClassificationReport:
    """Assemble a text classification report: agreement and top-1 (fractions), mean KL (nats), the ratios and speedups
    (teacher / student latency at batch 1, student / teacher throughput) and the summary sentence. ``bars``: the error
    bars of ``distill.review.error_bars`` on the labelled validation texts (Wilson 95% intervals 'teacher' / 'student'
    and the paired 'comparisons'), as the tensor classification report carries them; None: none measured (no labels,
    or a report rebuilt from before they existed; with a baseline also 'alone' and the 'distilled_vs_alone'
    comparison, whose verdict the summary states through ``distill.review.gain_sentence``). ``baseline``: the student
    trained alone (``baseline``), with evaluation.compare_baseline. Raises ``pydantic.ValidationError`` for mistyped
    parts."""
    ratios = _text_ratios(teacher, student)
    bars = bars or {}
    t_iv, s_iv = bars.get("teacher"), bars.get("student")
    text = _text_summary_start(teacher, student, ratios["parameter_ratio"], ratios["speedup"])
    if agreement is not None:
        text += f"; it agrees with the teacher on {agreement:.1%} of validation texts"
    if student_top1 is not None and teacher_top1 is not None:
        text += f", top-1 {student_top1:.1%}{_iv_text(s_iv)} vs the teacher's {teacher_top1:.1%}{_iv_text(t_iv)}"
    ts = (bars.get("comparisons") or {}).get("teacher_vs_student")
    if ts is not None:
        low, high = ts["interval_points"]
        text += (f" (teacher − student {ts['difference_points']:+.2f} points, 95% paired interval [{low:+.2f}, {high:+.2f}], "
                 f"{ {'a better': 'the teacher better', 'b better': 'the student better'}.get(ts['verdict'], ts['verdict'])})")
    vs_alone = (bars.get("comparisons") or {}).get("distilled_vs_alone")
    text += "." + gain_sentence(student_top1, baseline.val_top1 if baseline is not None else None, vs_alone)
    return SequenceClassificationReport(
        task="sequence_classification", summary=text, teacher=teacher, student=student, **ratios, agreement=rnd(agreement),
        mean_kl=rnd(mean_kl, 6), teacher_top1=rnd(teacher_top1), student_top1=rnd(student_top1), data=data, pooling=None,
        cache=cache, training=training, export_checks=export_checks, onnx=onnx, wall_time_s=wall_times(wall_time_s),
        teacher_top1_interval=list(t_iv) if t_iv else None, student_top1_interval=list(s_iv) if s_iv else None,
        comparisons=dict(bars["comparisons"]) if bars.get("comparisons") else None, baseline=baseline,
        distillation_gain_points=(_paired_points(bars.get("comparisons"), "distilled_vs_alone", student_top1, baseline.val_top1)
                                  if baseline is not None else None))


def _iv_text(iv: Iterable[float] | None) -> str:
    """' [low%, high%]' of a Wilson interval (fractions), '' for None."""
    if not iv:
        return ""
    low, high = iv
    return f" [95% {low:.1%}, {high:.1%}]"


def sentence_embedding_report(*, teacher: TextTeacherSummary, student: TextStudentSummary, mean_cosine: float | None,
                              probe_teacher: float | None, probe_student: float | None, pooling_mode: str, normalize: bool,
                              data: TextDataSummary, cache: CacheSummary, training: TrainingSummary,
                              export_checks: Mapping[str, Any] | ExportChecks, wall_time_s: Mapping[str, float],
                              onnx: OnnxCheck | None = None) -> SentenceEmbeddingReport:
    """Assemble a sentence-embedding report: mean cosine to the teacher's embeddings, linear-probe accuracies
    (fractions) and their ratio, the pooling, the ratios and speedups and the summary sentence."""
    ratios = _text_ratios(teacher, student)
    probe_teacher, probe_student = rnd(probe_teacher), rnd(probe_student)
    probe_ratio = rnd(probe_student / probe_teacher) if probe_teacher and probe_student is not None else None
    mean_cosine = rnd(mean_cosine)
    text = _text_summary_start(teacher, student, ratios["parameter_ratio"], ratios["speedup"])
    text += f"; mean cosine to the teacher's embeddings on held-out text is {mean_cosine}"
    if probe_ratio is not None:
        text += (f", and a linear probe on its embeddings reaches {probe_student:.1%} vs the teacher's {probe_teacher:.1%} "
                 f"({probe_ratio:.1%} of it)")
    return SentenceEmbeddingReport(
        task="sentence_embedding", summary=text + ".", teacher=teacher, student=student, **ratios, mean_cosine=mean_cosine,
        probe_teacher=probe_teacher, probe_student=probe_student, probe_ratio=probe_ratio, data=data,
        pooling=PoolingSummary(mode=pooling_mode, normalize=normalize), cache=cache, training=training,
        export_checks=export_checks, onnx=onnx, wall_time_s=wall_times(wall_time_s))


# ---------------------------------------------------------------------------------------------------- causal LMs


def lm_speed(sp: Mapping[str, Any]) -> LMSpeed:
    """Prefill/decode speed at batch 1 (``distill.lm.evaluate.speed``'s dict), rounded: tokens/s and ms to 3 decimals."""
    return LMSpeed(**{k: (rnd(v, 3) if isinstance(v, float) else v) for k, v in sp.items()})


def lm_model(*, format: str, config: Any, parameters: int, bytes: int, speed: Mapping[str, Any]) -> LMModelSummary:
    """A causal LM from its transformers ``config`` (model_type, layers, width, vocabulary), ``parameters``, ``bytes`` on
    disk and its measured ``speed``."""
    return LMModelSummary(format=format, model_type=getattr(config, "model_type", None), layers=int(config.num_hidden_layers),
                          hidden_size=int(config.hidden_size), vocab_size=int(config.vocab_size), parameters=parameters,
                          bytes=int(bytes), speed=lm_speed(speed))


def lm_student(*, config: Any, parameters: int, bytes: int, speed: Mapping[str, Any], facts: Mapping[str, Any]) -> LMStudentSummary:
    """The derived student: ``lm_model`` plus the kept teacher layers, how it was initialised and whether its embeddings
    are tied (``facts`` of ``distill.lm.models.derive_student``)."""
    base = lm_model(format="hf", config=config, parameters=parameters, bytes=bytes, speed=speed)
    return LMStudentSummary(**base.model_dump(), kept_teacher_layers=list(facts["keep_layers"]), initialised=facts["initialised"],
                            tied_embeddings=bool(facts["tied_embeddings"]))


def lm_cache(*, used: bool, reason: str, rows_seen: int, rows_cached: int, seconds: float | None, bytes: int | None = None,
             top_k: int | None = None, temperature: float | None = None, tokens: int | None = None,
             fidelity: Mapping[str, Any] | None = None) -> LMCacheSummary:
    """The top-k teacher cache: ``cache_summary``'s figures plus k, the temperature, the tokens held and the fidelity
    measured on held-out tokens (``distill.lm.cache.FidelityMeter.summary``: bytes per token, KL(full ‖ cached))."""
    base = cache_summary(used=used, reason=reason, rows_seen=rows_seen, rows_cached=rows_cached, seconds=seconds, bytes=bytes)
    f = fidelity or {}
    return LMCacheSummary(**base.model_dump(), top_k=top_k if used else None, temperature=temperature if used else None,
                          tokens=tokens if used else None, bytes_per_token=f.get("bytes_per_token"),
                          full_logits_bytes_per_token=f.get("full_logits_bytes_per_token"), kl_mean_nats=rnd(f.get("kl_mean_nats"), 6),
                          kl_p95_nats=rnd(f.get("kl_p95_nats"), 6), rest_mass_mean=rnd(f.get("rest_mass_mean"), 6))


def lm_baseline(*, epochs: int, steps: int, training_time_s: float, agreement: Mapping[str, Any] | None) -> LMBaseline:
    """The same student trained alone on next-token cross-entropy (no teacher)."""
    return LMBaseline(method="next-token cross-entropy only (no teacher)", epochs=epochs, steps=steps,
                      training_time_s=rnd(training_time_s, 3), agreement=LMAgreement(**agreement) if agreement else None)


def causal_lm_report(*, teacher: LMModelSummary, student: LMStudentSummary, perplexity: Mapping[str, Any],
                     agreement: Mapping[str, Any], generations: Mapping[str, Any] | None, data: Mapping[str, Any] | LMDataSummary,
                     cache: LMCacheSummary, baseline: LMBaseline | None, training: TrainingSummary,
                     export_checks: Mapping[str, Any] | LMExportChecks, wall_time_s: Mapping[str, float],
                     method_detail: Mapping[str, Any] | None = None, onnx: OnnxCheck | None = None) -> CausalLMReport:
    """Assemble a causal-LM report: ``perplexity`` ``{teacher, student, alone (or None)}`` (``distill.lm.evaluate``'s
    dicts), the distilled student's ``agreement``, the generations, and derived: the ratios, the prefill/decode
    speedups (student / teacher tokens/s), the perplexity gain (alone − distilled) and the summary sentence.
    ``method_detail``: the method as it ran (``LMMethod.describe()``: divergence, temperature, alpha, beta)."""
    ppl = LMPerplexities(**perplexity)
    speedup = {"prefill": ratio(student.speed.prefill_tokens_per_s, teacher.speed.prefill_tokens_per_s),
               "decode": ratio(student.speed.decode_tokens_per_s, teacher.speed.decode_tokens_per_s)}
    gain = rnd(ppl.alone.perplexity - ppl.student.perplexity) if ppl.alone is not None else None
    ag = LMAgreement(**agreement)
    p_ratio = ratio(teacher.parameters, student.parameters)
    text = (f"The {student.layers}-layer student has {student.parameters:,} parameters vs the teacher's {teacher.parameters:,} "
            f"({p_ratio}x fewer) and decodes {speedup['decode']}x the teacher's tokens/s at batch 1; held-out perplexity "
            f"{ppl.student.perplexity:.2f} vs the teacher's {ppl.teacher.perplexity:.2f}")
    if ppl.alone is not None:
        text += f" and {ppl.alone.perplexity:.2f} for the same student trained alone"
    text += f"; it agrees with the teacher's next token on {ag.top1_agreement:.1%} of held-out tokens."
    return CausalLMReport(task="causal_lm", summary=text, teacher=teacher, student=student, compression_ratio=ratio(teacher.bytes, student.bytes),
                          parameter_ratio=p_ratio, speedup=speedup, perplexity=ppl, agreement=ag, perplexity_gain=gain,
                          generations=LMGenerations(**generations) if generations else None,
                          data=data if isinstance(data, LMDataSummary) else LMDataSummary(**data), cache=cache, baseline=baseline,
                          method_detail=dict(method_detail) if method_detail is not None else None, training=training,
                          export_checks=export_checks, onnx=onnx, wall_time_s=wall_times(wall_time_s))
