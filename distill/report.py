"""The compression report: what a finished job measured, as one typed model per task family.

Plain pydantic (no torch), shared by the core (which builds it), the API (``GET /v1/jobs/{id}/report`` returns it
with this schema) and the client (``stillhouse report``, ``compare``). ``Report`` is a union discriminated by
``task``:

- ``ClassificationReport`` (``task: classification``): tensor inputs (images, tabular rows), a teacher and a
  student from the architecture registry;
- ``SequenceClassificationReport`` (``task: sequence_classification``): a Hugging Face classifier and a student
  derived from it;
- ``SentenceEmbeddingReport`` (``task: sentence_embedding``): a Hugging Face encoder and a student derived from it;
- ``CausalLMReport`` (``task: causal_lm``): a decoder-only language model (Hugging Face folder or GGUF) and a
  layer-dropped or narrower student: perplexities with intervals, agreement, generations, prefill/decode speed.

A new task family is one more subclass of ``ReportBase`` with its own ``task`` literal, added to ``Report``.

Field names are the keys of the JSON the core has always stored in ``jobs.report``, so stored reports validate:
reports written before the ``task`` key existed are tensor classification reports (``parse_report`` fills it in),
and blocks added later (evaluation extras, the cache block, variants) are optional. Unknown keys are kept, not
refused (a newer worker may write keys an older API does not know yet); the core's own tests check that every key
it writes is modelled here (``unmodelled_keys``).

Units: fractions in [0, 1] (top-1, agreement, ECE, sparsity), latencies in milliseconds, sizes in bytes, times in
seconds, losses and KL divergences in nats, ratios as plain multiples (teacher / student).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "AnyReport", "BaselineSummary", "CacheSummary", "CausalLMReport", "ClassificationReport", "Comparison", "Disagreement",
    "ExportChecks", "ExtraMethodDetail", "GenerationExample", "LMAgreement", "LMBaseline", "LMCacheSummary", "LMDataSummary",
    "LMExportChecks", "LMGenerations", "LMModelSummary", "LMPerplexities", "LMSpeed", "LMStudentSummary", "LatencyMs",
    "Perplexity", "TransferSetSummary",
    "MethodDetail", "ModelArchitecture", "OnnxCheck", "PerClassTop1", "PoolingSummary", "Preprocessing", "PrunedStudent",
    "Quality", "QuantizedStudent", "Report", "ReportBase", "ReportWarning", "SelectionCandidate", "SelectionSummary", "SentenceEmbeddingReport", "SequenceClassificationReport",
    "StudentVariant", "TASKS", "TeacherStudentValue", "TensorDataSummary", "TensorModelSummary", "TextDataSummary",
    "TextModelSummary", "TextReportBase", "TextStudentSummary", "TextTeacherSummary", "TrainingSummary", "ValidationSplit",
    "parse_report", "unmodelled_keys",
]

TASKS = ("classification", "sequence_classification", "sentence_embedding", "causal_lm")


class _Part(BaseModel):
    """Base of every report model: unknown keys are kept (see the module docstring)."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------------------------- shared parts


class LatencyMs(_Part):
    """Forward-pass latency percentiles over ``evaluation.latency_iterations`` timed runs, in milliseconds."""

    p50: float | None = Field(..., description="Median latency, ms.")
    p95: float | None = Field(..., description="95th-percentile latency, ms.")


class ValidationSplit(_Part):
    """How the validation rows were made: a seeded, stratified fraction of the training rows, or a separate file."""

    rows: int = Field(..., description="Validation rows.")
    fraction: float | None = Field(None, description="Fraction of the labelled training rows held out (absent with a file).")
    seed: int | None = Field(None, description="Seed of the split (absent with a file).")
    stratified: bool | None = Field(None, description="Tensor tasks: whether the split kept the class proportions.")
    file_id: str | None = Field(None, description="The validation file, when one was given instead of a fraction.")
    selection: bool | None = Field(None, description="True when these rows are a selection split carved from the training rows "
                                                     "(data.selection): the validation split is then 'holdout'.")
    note: str | None = Field(None, description="For a person.")
    holdout: ValidationSplit | None = Field(None, description="With data.selection: how the held-out validation split was made.")


class HoldoutEvaluation(_Part):
    """Teacher and student on the held-out validation split, with 95% Wilson score intervals (Wilson 1927) of top-1."""

    rows: int = Field(..., description="Labelled held-out rows.")
    student_val_top1: float | None = Field(..., description="The student's top-1 on them, a fraction.")
    student_interval95: list[float] | None = Field(..., description="[low, high] of the student's top-1.")
    teacher_val_top1: float | None = Field(..., description="The teacher's top-1 on them, a fraction.")
    teacher_interval95: list[float] | None = Field(..., description="[low, high] of the teacher's top-1.")
    agreement: float | None = Field(..., description="Fraction of held-out rows where teacher and student argmaxes agree.")


class SharedTeacherCache(_Part):
    """What a job took from the cache shared by every job of the same teacher (``distill.shared_cache``)."""

    teacher_outputs: Literal["reused", "computed"] | None = Field(
        None, description="The teacher's outputs on the training rows: 'reused' (stored by an earlier job or sweep trial of the "
                          "same teacher and training rows) or 'computed' (and stored); absent when they were not cached.")
    key: str | None = Field(None, description="The cache entry of those outputs.")
    teacher_profile: Literal["reused", "measured"] | None = Field(
        None, description="The teacher's latency, FLOPs and validation top-1: 'reused' (measured once by an earlier job on this "
                          "device and data) or 'measured' (and stored).")


class CacheSummary(_Part):
    """Whether the teacher's outputs were computed once and reused every epoch, and what that saved."""

    teacher_outputs: bool = Field(..., description="True when the teacher's outputs were cached.")
    reason: str = Field(..., description="Why (or why not), for a person.")
    teacher_passes_saved: int = Field(..., description="Teacher forward passes over a training row that the cache avoided "
                                                       "(rows seen in training minus rows computed once).")
    cache_seconds: float | None = Field(None, description="Tensor tasks: seconds spent computing the cached outputs.")
    bytes: int | None = Field(None, description="Tensor tasks: memory held by the cache, bytes (only when used).")
    shared: SharedTeacherCache | None = Field(None, description="Tensor tasks run by the service: what came from the cache "
                                                                 "every job of the same teacher shares.")


class MethodDetail(_Part):
    """The distillation method as it ran: its loss terms and the layers it read."""

    name: str = Field(..., description="Registered method name, e.g. kd, dkd, fitnet, rkd, prototype.")
    terms: list[str] = Field(..., description="Names of the loss terms it adds (as in training.final_loss_terms and the metrics).")
    student_layers: list[str] | None = Field(None, description="Feature methods: student modules read ('penultimate' = the input "
                                                               "of the last Linear).")
    teacher_layers: list[str] | None = Field(None, description="Feature methods: teacher modules read.")
    extra: list[ExtraMethodDetail] | None = Field(None, description="Further weighted methods added to the main one's terms.")


class ExtraMethodDetail(MethodDetail):
    """A further weighted method (``method.extra``)."""

    weight: float = Field(..., description="Multiplier of this method's terms.")


MethodDetail.model_rebuild()


class TrainingSummary(_Part):
    """How the student was trained."""

    epochs: int = Field(..., description="Epochs run in all (including those before a resume).")
    steps: int = Field(..., description="Optimizer steps in all.")
    steps_per_epoch: int = Field(..., description="Optimizer steps per epoch.")
    resumed_from_epoch: int | None = Field(None, description="The epoch whose checkpoint a redelivered job resumed from; None "
                                                             "for a run without resume.")
    final_loss_terms: dict[str, float | None] = Field(..., description="Mean of each loss term over the last epoch's steps "
                                                                       "(nats; 'total' is their sum), keyed by term name.")
    method: str = Field(..., description="The spec's method name ('embedding' for sentence embeddings).")
    device: str = Field(..., description="Torch device trained on, e.g. 'cpu', 'cuda:0'.")
    threads: int = Field(..., description="PyTorch intra-op threads of the worker.")
    devices: int | None = Field(None, description="Task causal_lm: training.devices, the processes the student was trained "
                                "data-parallel over (1: one process); None for other tasks and reports written before it (one process).")
    seed: int = Field(..., description="training.seed.")
    training_time_s: float | None = Field(None, description="Tensor tasks: seconds of the training loop itself.")
    precision: str | None = Field(None, description="training.precision the student's forward ran in: fp32, bf16 or fp16.")
    method_detail: MethodDetail | None = Field(None, description="Tensor tasks: the method's terms and layers.")
    prototype_class_counts: list[int] | None = Field(None, description="prototype method: training rows per class that "
                                                                       "formed each class prototype.")


class OnnxCheck(_Part):
    """The exported ``student.onnx``, run by onnxruntime and compared with PyTorch."""

    max_abs_diff: float = Field(..., description="Largest |onnxruntime - PyTorch| output difference on a check batch "
                                                 "(logits, or embedding components).")
    opset: int = Field(..., description="ONNX opset version.")
    inputs: list[str] | None = Field(None, description="Text tasks: the graph's input names.")


@dataclass(frozen=True)
class Quality:
    """A report's headline quality figure for teacher and student (not part of the JSON): ``label`` names it (e.g.
    'validation top-1'), ``teacher``/``student`` are fractions in [0, 1] or None when not measurable."""

    label: str
    teacher: float | None
    student: float | None


class ReportBase(_Part):
    """What every compression report holds, whatever the task."""

    object: Literal["report"] = Field("report", description="Always 'report'.")
    job_id: str | None = Field(None, description="The job, 'job_…' (set by the API; absent in the core's own result).")
    task: str = Field(..., description="The task family; selects the report variant.")
    summary: str = Field(..., description="One or two sentences for a person, with the headline figures.")
    compression_ratio: float | None = Field(..., description="Teacher bytes on disk / student bytes on disk.")
    parameter_ratio: float | None = Field(..., description="Teacher parameters / student parameters.")
    speedup: dict[str, float | None] = Field(..., description="Teacher p50 latency / student p50 latency, keyed by batch size "
                                                              "('1', '64', …); text tasks also 'throughput_<B>': student / "
                                                              "teacher sentences per second at batch B.")
    training: TrainingSummary = Field(..., description="Epochs, steps, final loss terms, method, device and seed of the training.")
    onnx: OnnxCheck | None = Field(None, description="The ONNX export check; None when ONNX was not exported.")
    wall_time_s: dict[str, float] = Field(..., description="Wall-clock seconds per phase, in the order run (loading_teacher, "
                                                           "teacher_profile (the teacher's shared latency profile, measured "
                                                           "before training on a cold shared cache), caching_teacher_outputs, "
                                                           "training, pruning, baseline_training, evaluating, exporting) and "
                                                           "'total'.")

    def quality(self) -> Quality:
        """The headline quality figure of this task family (see ``Quality``)."""
        raise NotImplementedError

    def gain_points(self) -> float | None:
        """Distilled student's top-1 minus the same student trained alone, in points; None when not measured."""
        return None


# ---------------------------------------------------------------------------------------------------- classification


class ModelArchitecture(_Part):
    """An architecture from the registry (``distill.models``) with every keyword filled in."""

    name: str = Field(..., description="Registered architecture, e.g. mlp, cnn, resnet.")
    kwargs: dict[str, Any] = Field(..., description="Its keyword arguments (input_shape, num_classes, widths…).")


class TensorModelSummary(_Part):
    """Teacher or distilled student of a tensor task, measured on the validation rows and the worker's device."""

    format: str = Field(..., description="Checkpoint format: safetensors, state_dict, torchscript or onnx (the student is "
                                         "always safetensors).")
    parameters: int = Field(..., description="Scalar parameters.")
    bytes: int = Field(..., description="Size on disk, bytes: the uploaded teacher file, or student.safetensors.")
    flops_per_sample: int | None = Field(..., description="Forward FLOPs for one sample (torch FlopCounterMode, a multiply-add "
                                                          "= 2; matmul/conv only); None when not countable.")
    val_top1: float | None = Field(..., description="Validation top-1 accuracy, fraction; None without validation labels.")
    val_top1_interval: list[float] | None = Field(None, min_length=2, max_length=2, description="Wilson 95% interval "
                                                  "[low, high] of val_top1 (Wilson 1927), fractions; None without validation "
                                                  "labels (and in reports stored before intervals existed).")
    latency_ms: dict[str, LatencyMs] = Field(..., description="Latency per batch size (keys '1', '64', …), ms per batch.")
    architecture: ModelArchitecture | None = Field(None, description="Registry architecture; None for TorchScript/ONNX teachers.")
    notes: list[str] = Field(default_factory=list, description="Things done while loading, e.g. a stripped 'module.' prefix or "
                                                               "the channels-last layout.")


class TeacherStudentValue(_Part):
    """One figure for teacher and student."""

    teacher: float | None = Field(..., description="Teacher's value.")
    student: float | None = Field(..., description="Student's value.")


class PerClassTop1(_Part):
    """Validation top-1 per true class (index = class id), fractions; None for a class without validation rows."""

    teacher: list[float | None] = Field(..., description="Teacher's top-1 per class.")
    student: list[float | None] = Field(..., description="Student's top-1 per class.")


class Disagreement(_Part):
    """A (teacher prediction, student prediction) pair on validation rows where they differ."""

    teacher_class: int = Field(..., description="Class the teacher predicted.")
    student_class: int = Field(..., description="Class the student predicted.")
    count: int = Field(..., description="Validation rows with this pair.")


class Preprocessing(_Part):
    """What was done to raw inputs before the models saw them (also in student.json)."""

    builtin: str | None = Field(None, description="The built-in dataset, if one was used.")
    file_id: str | None = Field(None, description="The uploaded training file, if one was used.")
    scale: float | None = Field(None, description="Multiplier applied to raw values (e.g. 1/16 for digits pixels).")
    input_shape: list[int] | None = Field(None, description="Per-sample shape the inputs were reshaped to.")
    dtype: str | None = Field(None, description="Element type the models received, e.g. float32.")


class TensorDataSummary(_Part):
    """Rows and shapes of a tensor job's data."""

    train: int = Field(..., description="Training rows (transfer rows included).")
    labelled: int = Field(..., description="Labelled training rows.")
    unlabelled: int = Field(..., description="Unlabelled training rows (label -1 and the transfer set).")
    transfer: int = Field(..., description="Rows of the unlabelled transfer set.")
    validation: ValidationSplit = Field(..., description="How validation rows were made.")
    num_classes: int | None = Field(None, description="Largest label + 1 over train and validation; None without labels.")
    input_shape: list[int] = Field(..., description="Per-sample shape.")
    preprocessing: Preprocessing = Field(..., description="What was done to raw inputs.")


class StudentVariant(_Part):
    """An extra student artifact derived from the distilled one, evaluated on the validation rows on the CPU."""

    artifact: str = Field(..., description="Its artifact name.")
    bytes: int = Field(..., description="Size on disk, bytes.")
    parameters: int = Field(..., description="Scalar parameters (zeros included).")
    val_top1: float | None = Field(..., description="Validation top-1, fraction; None without validation labels.")
    latency_ms: dict[str, LatencyMs] = Field(..., description="CPU latency per batch size, ms per batch.")
    device: str = Field("cpu", description="Where it was measured (always 'cpu', where such models run).")


class QuantizedStudent(StudentVariant):
    """The dynamically int8-quantised student (``export.quantize: dynamic_int8``; TorchScript)."""

    method: str = Field(..., description="How it was quantised.")
    load_with: str = Field(..., description="How to load it.")


class PrunedStudent(StudentVariant):
    """The magnitude-pruned, fine-tuned student (``export.prune``; L1 unstructured pruning, Han et al. 2015)."""

    amount: float = Field(..., description="Fraction of each Linear/Conv weight set to zero (export.prune.amount).")
    sparsity: float | None = Field(..., description="Measured fraction of zeros in the pruned weights.")
    fine_tune_epochs: int = Field(..., description="Epochs of fine-tuning with the job's loss after pruning.")
    note: str | None = Field(None, description="What the sparsity does and does not buy.")


class BaselineSummary(_Part):
    """The same student architecture trained alone (cross-entropy on labels only; same data, split, epochs, optimizer,
    batch size and seed), for ``evaluation.compare_baseline``."""

    val_top1: float | None = Field(..., description="Its validation top-1, fraction; None when it could not be trained or "
                                                    "measured (see note).")
    val_top1_interval: list[float] | None = Field(None, min_length=2, max_length=2, description="Wilson 95% interval "
                                                  "[low, high] of val_top1, fractions.")
    training_time_s: float | None = Field(..., description="Seconds of its training loop.")
    parameters: int | None = Field(None, description="Its parameters (the distilled student's).")
    method: str | None = Field(None, description="How it was trained.")
    epochs: int | None = Field(None, description="Epochs run.")
    steps: int | None = Field(None, description="Optimizer steps run.")
    note: str | None = Field(None, description="Why there is no baseline, when there is none.")


class Comparison(_Part):
    """Two models' validation top-1 on the same labelled rows (``a`` minus ``b``): the difference, its paired bootstrap
    95% interval (Efron & Tibshirani 1993) and the exact McNemar test (McNemar 1947) on the rows exactly one of them
    gets right. ``verdict`` is 'no measurable difference' whenever the interval covers 0."""

    a: str = Field(..., description="First model, e.g. 'distilled student' or 'teacher'.")
    b: str = Field(..., description="Second model, e.g. 'student alone' or 'distilled student'.")
    rows: int = Field(..., description="Labelled validation rows both were measured on.")
    difference_points: float = Field(..., description="top-1(a) - top-1(b), percentage points.")
    interval_points: list[float] = Field(..., min_length=2, max_length=2, description="Paired bootstrap 95% percentile "
                                         "interval [low, high] of the difference, percentage points.")
    bootstrap_resamples: int = Field(..., description="Bootstrap resamples of the rows (with replacement).")
    bootstrap_seed: int = Field(..., description="Seed of the resampling (training.seed): the same report recomputes.")
    a_only: int = Field(..., description="Rows only a gets right.")
    b_only: int = Field(..., description="Rows only b gets right.")
    mcnemar_p: float = Field(..., description="Two-sided exact McNemar p-value: binomial test of a_only among a_only + "
                                              "b_only at 1/2 (1.0 without such rows).")
    verdict: Literal["a better", "b better", "no measurable difference"] = Field(
        ..., description="'a better'/'b better' when the interval excludes 0, else 'no measurable difference'.")


class SelectionCandidate(_Part):
    """One candidate of method 'auto', trained on the training rows outside the selection split and scored on it."""

    name: str = Field(..., description="E.g. 'kd_t4_a0.9@lr0.01' or 'student_alone@lr0.03'.")
    method: dict[str, Any] | None = Field(..., description="The method as given to the spec (None: the student alone, "
                                                           "cross-entropy on the labels only).")
    lr: float = Field(..., description="Peak learning rate.")
    epochs: int = Field(..., description="Epochs it trained.")
    steps: int = Field(..., description="Optimizer steps it ran.")
    selection_top1: float = Field(..., description="Top-1 on the selection split, fraction.")
    selection_top1_interval: list[float] | None = Field(None, min_length=2, max_length=2, description="Wilson 95% "
                                                        "interval [low, high] of selection_top1, fractions.")
    training_time_s: float = Field(..., description="Seconds of its training loop.")


class SelectionSummary(_Part):
    """What method 'auto' did (``distill.auto``): every candidate with its selection score, the chosen one and why, and
    what the selection cost. The reported validation split was not used to choose."""

    candidates: list[SelectionCandidate] = Field(default_factory=list, description="Every candidate, in training order.")
    chosen: str | None = Field(..., description="The winner, retrained on all training rows for the full epochs (None: no "
                                                "selection ran, see note).")
    chosen_method: dict[str, Any] | None = Field(None, description="The winner's method (None: the student alone).")
    chosen_lr: float | None = Field(None, description="The winner's peak learning rate.")
    student_alone: bool = Field(False, description="True when the student alone won: the returned student was trained "
                                                   "without the teacher.")
    reason: str = Field(..., description="Why, for a person.")
    rule: Literal["best", "tie_to_alone", "memorised_teacher_tie_to_alone", "few_labels_tie_to_distilled"] | None = Field(
        None, description="Which rule of distill.auto.choose decided: 'best' (the best selection top-1: the student alone, "
                          "or a candidate that beat it outside the noise, by more than margin_points for a distilled one), "
                          "'tie_to_alone' (no candidate beat the student alone outside the noise), "
                          "'memorised_teacher_tie_to_alone' (a distilled candidate beat it outside the noise but not by the "
                          "margin a teacher that memorised the selection rows calls for), 'few_labels_tie_to_distilled' "
                          "(most candidate training rows unlabelled, the teacher measurably better than the student alone, "
                          "the best distilled candidate not measurably worse); None in reports stored before it.")
    margin_points: float | None = Field(None, description="What the low end of a distilled candidate's interval had to "
                                        "exceed to win outright, points: 0, or distill.auto.MEMORISED_MARGIN_POINTS when the "
                                        "teacher's top-1 on the selection split is at least 99% (it was trained on those rows, "
                                        "so distilled candidates score optimistically there); None in reports stored before it.")
    interval_points: list[float] | None = Field(None, min_length=2, max_length=2, description="Paired-bootstrap 95% "
                                                "interval of the compared candidate (the best one, or with rule "
                                                "few_labels_tie_to_distilled the best distilled one) minus the student "
                                                "alone at the spec's lr on the selection split, points.")
    teacher_selection_top1: float | None = Field(None, description="The teacher's top-1 on the selection split, fraction.")
    teacher_vs_alone_points: list[float] | None = Field(None, min_length=2, max_length=2, description="Paired-bootstrap "
                                                        "95% interval of the teacher minus the student alone on the "
                                                        "selection split, points.")
    selection_rows: int = Field(0, description="Labelled training rows carved out as the selection split.")
    candidate_training_rows: int = Field(0, description="Training rows the candidates trained on.")
    candidate_unlabelled_rows: int | None = Field(None, description="Of those, rows without a label (transfer set, label "
                                                                    "-1): only distilled candidates learn from them.")
    budget: float = Field(..., description="method.selection_budget: the most the candidates may take, as a fraction of "
                                           "the job's training steps.")
    steps: int = Field(0, description="Optimizer steps of all candidates together.")
    job_steps: int = Field(..., description="Steps of the job's training (epochs x steps per epoch on all training rows).")
    steps_fraction: float = Field(0.0, description="steps / job_steps.")
    seconds: float = Field(0.0, description="Wall seconds of the selection (all candidates, scoring included).")
    cost_fraction_of_job_time: float | None = Field(None, description="seconds / the job's total wall seconds.")
    note: str | None = Field(None, description="Why no selection ran, when none did.")

    def split_text(self) -> str:
        """The selection split in words (CLI and HTML): its labelled rows, the candidates' training rows (the unlabelled
        ones among them), the teacher's top-1 on the split and the margin a memorising teacher called for."""
        text = f"{self.selection_rows:,} labelled training rows; candidates trained on {self.candidate_training_rows:,}"
        if self.candidate_unlabelled_rows:
            text += f" ({self.candidate_unlabelled_rows:,} unlabelled)"
        if self.teacher_selection_top1 is not None:
            text += f"; teacher top-1 there {self.teacher_selection_top1:.2%}"
        if self.margin_points:
            text += (f" (it was trained on those rows: a distilled candidate had to beat the student alone by more than "
                     f"{self.margin_points:g} points)")
        return text


class ReportWarning(_Part):
    """Something a careful reviewer would point out about how the numbers were obtained (not an error: the job
    succeeded)."""

    code: str = Field(..., description="Stable code: small_validation, few_validation_rows_per_class, "
                                       "validation_overlaps_training, transfer_overlaps_training, "
                                       "transfer_overlaps_validation, teacher_memorised_training.")
    message: str = Field(..., description="What was found and what it means, for a person.")
    param: str | None = Field(None, description="The spec field to change, when one would help.")


def _legacy_task(data: Any) -> Any:
    """Reports stored before the ``task`` key existed are tensor classification reports."""
    if isinstance(data, dict) and "task" not in data:
        return {**data, "task": "classification"}
    return data


class ClassificationReport(ReportBase):
    """Report of a tensor classification job (images, tabular rows): teacher / student (/ student trained alone),
    size, FLOPs, latency, agreement and the evaluation extras. Soft-label KD after Hinton et al. 2015."""

    task: Literal["classification"] = Field(..., description="'classification' (filled in for reports stored before the key "
                                                             "existed).")
    teacher: TensorModelSummary = Field(..., description="The teacher.")
    student: TensorModelSummary = Field(..., description="The distilled student (student.safetensors).")
    agreement: float | None = Field(..., description="Fraction of validation rows where teacher and student argmaxes agree.")
    mean_kl: float | None = Field(..., description="KL(teacher ‖ student) of the softmax outputs at T = 1, nats, mean over "
                                                   "validation rows.")
    top5: TeacherStudentValue | None = Field(None, description="Top-5 accuracy, fractions; only with 10 or more classes and "
                                                               "validation labels.")
    per_class_top1: PerClassTop1 | None = Field(None, description="Top-1 per true class; None without validation labels.")
    ece: TeacherStudentValue | None = Field(None, description="Expected calibration error (15 equal-width confidence bins; "
                                                              "Naeini et al. 2015, Guo et al. 2017), fractions.")
    teacher_student_confusion: list[list[int]] | None = Field(None, description="[K][K] counts of (teacher prediction, student "
                                                                                "prediction) over validation rows.")
    disagreements_top: list[Disagreement] | None = Field(None, description="The five most frequent off-diagonal pairs.")
    flops_ratio: float | None = Field(..., description="Teacher FLOPs / student FLOPs per sample.")
    top1_drop_points: float | None = Field(..., description="Teacher top-1 minus student top-1, percentage points.")
    data: TensorDataSummary = Field(..., description="Rows and shapes of the data.")
    cache: CacheSummary | None = Field(None, description="The teacher-output cache.")
    quantized: QuantizedStudent | None = Field(None, description="The int8 student, with export.quantize.")
    pruned: PrunedStudent | None = Field(None, description="The pruned student, with export.prune.")
    baseline: BaselineSummary | None = Field(None, description="The student trained alone, with evaluation.compare_baseline.")
    distillation_gain_points: float | None = Field(None, description="Distilled student's top-1 minus the baseline's, "
                                                                     "percentage points (negative: distillation did not help).")
    comparisons: dict[str, Comparison] | None = Field(None, description="Paired comparisons on the validation rows, keyed "
                                                      "'teacher_vs_student' and (with a baseline) 'distilled_vs_alone'; None "
                                                      "without validation labels.")
    warnings: list[ReportWarning] | None = Field(None, description="A reviewer's warnings about the split, the data and "
                                                 "the teacher ([] when none; None in reports stored before they existed).")
    holdout: HoldoutEvaluation | None = Field(None, description="With data.selection (sweep trials): the untouched validation "
                                                                "split, evaluated once at the end.")
    selection: SelectionSummary | None = Field(None, description="With method 'auto': the candidates, the choice and its "
                                                                  "cost (None in other jobs and in reports stored before it).")

    @model_validator(mode="before")
    @classmethod
    def _fill_task(cls, data: Any) -> Any:
        return _legacy_task(data)

    def quality(self) -> Quality:
        """Validation top-1 of teacher and student."""
        return Quality("validation top-1", self.teacher.val_top1, self.student.val_top1)

    def gain_points(self) -> float | None:
        """``distillation_gain_points``."""
        return self.distillation_gain_points

    def student_label(self) -> str:
        """What the returned student is: 'distilled student', or ``RETURNED_ALONE`` when method auto chose the student
        alone (it was trained without the teacher, so calling it distilled would contradict the selection)."""
        return RETURNED_ALONE if self.selection is not None and self.selection.student_alone else DISTILLED

    def labelled_comparisons(self) -> dict[str, Comparison]:
        """``comparisons`` (copies) with the returned student named by ``student_label`` on either side: a report stored
        before the labels followed the selection said 'teacher − distilled student' of a student trained alone."""
        label = self.student_label()
        return {k: c.model_copy(update={"a": label if c.a == DISTILLED else c.a, "b": label if c.b == DISTILLED else c.b})
                for k, c in (self.comparisons or {}).items()}


DISTILLED = "distilled student"
"""The returned student's name in comparisons when it was distilled."""
RETURNED_ALONE = "returned student (trained alone)"
"""The returned student's name in comparisons and on the report page when method auto chose the student alone."""


# ---------------------------------------------------------------------------------------------------- text tasks


class TextModelSummary(_Part):
    """A Hugging Face transformer of a text job, measured on the validation texts and the worker's device."""

    format: str = Field(..., description="Always 'hf'.")
    layers: int = Field(..., description="Transformer layers.")
    hidden_size: int = Field(..., description="Hidden width.")
    parameters: int = Field(..., description="Scalar parameters (the student's includes an embedding projection, if any).")
    bytes: int = Field(..., description="Size on disk, bytes: the uploaded teacher archive, or the student's model.safetensors.")
    latency_ms: dict[str, LatencyMs] = Field(..., description="Per-sentence latency at batch 1 (key '1'), each held-out text at "
                                                              "its own length, ms.")
    throughput_per_s: dict[str, float | None] = Field(..., description="Sentences per second at batch B (key B), held-out texts "
                                                                       "in their natural order.")


class TextTeacherSummary(TextModelSummary):
    """The Hugging Face teacher."""

    model_type: str = Field(..., description="The config's model_type, e.g. bert.")


class TextStudentSummary(TextModelSummary):
    """The student derived from the teacher (DistilBERT recipe, Sanh et al. 2019: fewer layers, copied weights; or
    narrower and fresh)."""

    kept_teacher_layers: list[int] = Field(..., description="Teacher layers (0-based) the student's layers come from.")
    initialised: str = Field(..., description="'copied from teacher' or 'fresh' (a narrower student).")


class TextDataSummary(_Part):
    """Rows and lengths of a text job's data."""

    train: int = Field(..., description="Training texts (transfer texts included).")
    labelled: int = Field(..., description="Labelled training texts.")
    unlabelled: int = Field(..., description="Unlabelled training texts.")
    transfer: int = Field(..., description="Texts of the unlabelled transfer set.")
    validation: ValidationSplit = Field(..., description="How validation texts were made.")
    label_names: list[str] | None = Field(None, description="Names of the label ids 0, 1, … (string labels), else None.")
    max_seq_length: int = Field(..., description="Tokens per text after truncation.")
    mean_tokens: float | None = Field(None, description="Mean tokens per training text after truncation.")


class ExportChecks(_Part):
    """Checks of the exported student folder."""

    transformers_loads: bool = Field(..., description="The folder loads with transformers' AutoModel.from_pretrained.")
    sentence_transformers_max_abs_diff: float | None = Field(None, description="Sentence embeddings: largest |sentence-"
                                                                               "transformers - job| embedding difference.")


class PoolingSummary(_Part):
    """How token states became a sentence embedding."""

    mode: str = Field(..., description="mean, cls or max.")
    normalize: bool = Field(..., description="Whether embeddings were L2-normalised.")


class TextReportBase(ReportBase):
    """What the text tasks' reports share."""

    teacher: TextTeacherSummary = Field(..., description="The teacher.")
    student: TextStudentSummary = Field(..., description="The student.")
    data: TextDataSummary = Field(..., description="Rows and lengths of the data.")
    pooling: PoolingSummary | None = Field(None, description="Sentence embeddings: the pooling; None for classification.")
    cache: CacheSummary = Field(..., description="The teacher-output cache.")
    export_checks: ExportChecks = Field(..., description="Whether the exported student_hf folder loads in transformers (and "
                                                         "sentence-transformers) with the job's outputs.")


class SequenceClassificationReport(TextReportBase):
    """Report of a text classification job: logit KD on a Hugging Face classifier's head (Hinton et al. 2015)."""

    task: Literal["sequence_classification"] = Field(..., description="'sequence_classification'.")
    agreement: float | None = Field(..., description="Fraction of validation texts where teacher and student argmaxes agree.")
    mean_kl: float | None = Field(..., description="KL(teacher ‖ student) at T = 1, nats, mean over validation texts.")
    teacher_top1: float | None = Field(..., description="Teacher's validation top-1, fraction; None without labels.")
    student_top1: float | None = Field(..., description="Student's validation top-1, fraction; None without labels.")
    teacher_top1_interval: list[float] | None = Field(None, min_length=2, max_length=2, description="Wilson 95% interval "
                                                      "[low, high] of teacher_top1, fractions; None without labels.")
    student_top1_interval: list[float] | None = Field(None, min_length=2, max_length=2, description="Wilson 95% interval "
                                                      "[low, high] of student_top1, fractions; None without labels.")
    comparisons: dict[str, Comparison] | None = Field(None, description="Paired comparisons on the labelled validation "
                                                      "texts, keyed 'teacher_vs_student' and (with a baseline) "
                                                      "'distilled_vs_alone'; None without validation labels.")
    baseline: BaselineSummary | None = Field(None, description="The same derived student trained alone (cross-entropy on "
                                                               "the labelled texts), with evaluation.compare_baseline: true.")
    distillation_gain_points: float | None = Field(None, description="Distilled student's top-1 minus the baseline's, "
                                                                     "percentage points.")

    def quality(self) -> Quality:
        """Validation top-1 of teacher and student."""
        return Quality("validation top-1", self.teacher_top1, self.student_top1)

    def gain_points(self) -> float | None:
        """``distillation_gain_points``."""
        return self.distillation_gain_points


class SentenceEmbeddingReport(TextReportBase):
    """Report of a sentence-embedding job: cosine/MSE embedding distillation, optionally with TinyBERT-style hidden-state
    and attention matching (Jiao et al. 2020); quality measured by a linear probe on each model's embeddings."""

    task: Literal["sentence_embedding"] = Field(..., description="'sentence_embedding'.")
    mean_cosine: float | None = Field(..., description="Mean cosine similarity of student and teacher embeddings of the "
                                                        "validation texts, in [-1, 1].")
    probe_teacher: float | None = Field(..., description="Validation accuracy of a logistic-regression probe fitted on the "
                                                         "teacher's embeddings of labelled training texts, fraction; None "
                                                         "without labels.")
    probe_student: float | None = Field(..., description="The same probe on the student's embeddings, fraction.")
    probe_ratio: float | None = Field(..., description="probe_student / probe_teacher.")

    def quality(self) -> Quality:
        """Linear-probe accuracy of teacher and student."""
        return Quality("linear-probe accuracy", self.probe_teacher, self.probe_student)


# ---------------------------------------------------------------------------------------------------- causal LMs


class Perplexity(_Part):
    """Perplexity on held-out target tokens: ``exp(Σ NLL / Σ tokens)``, with a 95% percentile-bootstrap interval over
    sequences (rows resampled, seeded)."""

    perplexity: float = Field(..., description="exp of the mean next-token negative log-likelihood.")
    low: float = Field(..., description="Lower end of the 95% interval.")
    high: float = Field(..., description="Upper end of the 95% interval.")
    nll_per_token: float = Field(..., description="Mean next-token negative log-likelihood, nats per token.")
    tokens: int = Field(..., description="Held-out target tokens.")
    sequences: int = Field(..., description="Held-out sequences (the bootstrap's units).")
    interval: str | None = Field(None, description="How the interval was made.")


class LMPerplexities(_Part):
    """Held-out perplexity of the teacher, the distilled student and (with evaluation.compare_baseline) the same student
    trained alone on next-token cross-entropy with the same budget."""

    teacher: Perplexity = Field(..., description="The teacher.")
    student: Perplexity = Field(..., description="The distilled student.")
    alone: Perplexity | None = Field(None, description="The student trained alone; None without compare_baseline.")


class LMAgreement(_Part):
    """Next-token agreement with the teacher on held-out target tokens."""

    top1_agreement: float = Field(..., description="Fraction of target tokens where the model's most likely next token is the "
                                                   "teacher's.")
    low: float = Field(..., description="Lower end of the 95% bootstrap interval over sequences.")
    high: float = Field(..., description="Upper end of the 95% interval.")
    mean_kl_nats: float = Field(..., description="Mean per-token KL(teacher ‖ model) at T = 1, nats.")
    tokens: int = Field(..., description="Target tokens compared.")


class GenerationExample(_Part):
    """One held-out prompt answered by both models (greedy)."""

    prompt: str = Field(..., description="The prompt (or the rendered chat).")
    teacher: str = Field(..., description="The teacher's answer.")
    student: str = Field(..., description="The student's answer.")
    token_f1: float = Field(..., description="Bag-of-tokens F1 between the two answers (SQuAD's answer F1 on tokens).")


class LMGenerations(_Part):
    """The student's generations beside the teacher's on held-out prompts (prompt/completion or chat data)."""

    prompts: int = Field(..., description="Held-out prompts answered by both.")
    exact_match: float | None = Field(..., description="Fraction of identical answers (decoded, stripped).")
    token_f1_mean: float | None = Field(..., description="Mean token F1 between the answers.")
    max_new_tokens: int = Field(..., description="Most new tokens per answer.")
    examples: list[GenerationExample] = Field(..., description="The first few, shown in the HTML report.")


class LMSpeed(_Part):
    """Speed at batch 1 on the worker's device: prefill = prompt tokens / one forward pass over the prompt; decode =
    new tokens / the time of generating them one at a time with the key/value cache (greedy). Medians of repeats."""

    prefill_tokens_per_s: float = Field(..., description="Prompt tokens per second.")
    decode_tokens_per_s: float = Field(..., description="Generated tokens per second.")
    prefill_ms: float | None = Field(None, description="Milliseconds of the prefill pass.")
    decode_ms_per_token: float | None = Field(None, description="Milliseconds per generated token.")
    prompt_tokens: int | None = Field(None, description="Prompt length of the measurement.")
    new_tokens: int | None = Field(None, description="Tokens generated in the measurement.")
    repeats: int | None = Field(None, description="Timed repeats (median reported).")


class LMModelSummary(_Part):
    """A causal language model of the job."""

    format: str = Field(..., description="'hf' (a Hugging Face folder) or 'gguf' (dequantised to float32).")
    model_type: str | None = Field(None, description="The config's model_type, e.g. llama, gpt2.")
    layers: int = Field(..., description="Decoder layers.")
    hidden_size: int = Field(..., description="Hidden width.")
    vocab_size: int = Field(..., description="Vocabulary size (the student shares the teacher's tokenizer).")
    parameters: int = Field(..., description="Scalar parameters, a tied embedding counted once.")
    bytes: int = Field(..., description="Size on disk, bytes: the uploaded teacher file, or the student's model.safetensors.")
    speed: LMSpeed = Field(..., description="Prefill and decode speed at batch 1.")


class LMStudentSummary(LMModelSummary):
    """The student derived from the teacher (layer dropping after Sanh et al. 2019, or narrower and fresh)."""

    kept_teacher_layers: list[int] = Field(..., description="Teacher layers (0-based) the student's layers come from.")
    initialised: str = Field(..., description="'copied from teacher' or 'fresh'.")
    tied_embeddings: bool = Field(..., description="Whether the LM head is the input embedding (kept tied when the teacher's is).")


class TransferSetSummary(_Part):
    """The transfer set: prompts the teacher answered before training (the artifact transfer_set.jsonl)."""

    artifact: str | None = Field(None, description="Its artifact name.")
    records: int = Field(..., description="Training records in it.")
    generated: int = Field(..., description="Answers the teacher generated.")
    new_tokens: int | None = Field(None, description="Tokens generated in this attempt (a resumed attempt counts only its own).")
    resumed_from_batch: int | None = Field(None, description="Generation batch a redelivered job resumed from (0: from the start).")
    settings: dict[str, Any] = Field(default_factory=dict, description="max_new_tokens, do_sample, temperature, top_p, seed, batch_size.")


class LMDataSummary(_Part):
    """Records, rows and tokens of a causal-LM job's data."""

    record_kind: str = Field(..., description="'text', 'prompt' or 'chat'.")
    train_examples: int = Field(..., description="Training records.")
    train_rows: int = Field(..., description="Training rows after truncation and packing.")
    train_tokens: int = Field(..., description="Tokens in the training rows.")
    train_target_tokens: int = Field(..., description="Training tokens that are targets (completions with prompts).")
    dropped: int = Field(0, description="Training records left with no target token after truncation.")
    truncated: int = Field(0, description="Prompt/chat training records cut at max_seq_length.")
    packing: bool = Field(..., description="Whether training examples were packed into rows.")
    max_seq_length: int = Field(..., description="Tokens per row.")
    validation: ValidationSplit = Field(..., description="How the held-out records were made (rows = held-out sequences).")
    validation_tokens: int = Field(..., description="Held-out target tokens.")
    transfer_set: TransferSetSummary | None = Field(None, description="The teacher-generated transfer set, when prompts lacked answers.")


class LMCacheSummary(CacheSummary):
    """The top-k teacher cache: what it holds, its size against full-vocabulary logits, and what it loses."""

    top_k: int | None = Field(None, description="Log-probabilities kept per target token.")
    temperature: float | None = Field(None, description="Temperature the distributions were taken at.")
    tokens: int | None = Field(None, description="Target tokens cached.")
    bytes_per_token: int | None = Field(None, description="Bytes per cached token (k float16 values + k int32 ids + a float32 rest).")
    full_logits_bytes_per_token: int | None = Field(None, description="Bytes per token of float16 full-vocabulary logits.")
    kl_mean_nats: float | None = Field(None, description="Mean KL(full ‖ cached) on held-out target tokens, nats (the cache's "
                                                         "reconstruction spreads the rest's mass evenly).")
    kl_p95_nats: float | None = Field(None, description="95th percentile of that KL, nats.")
    rest_mass_mean: float | None = Field(None, description="Mean probability mass outside the top k on held-out tokens.")


class LMBaseline(_Part):
    """The same student trained alone (next-token cross-entropy only; same data, budget, optimizer and seed)."""

    method: str = Field(..., description="How it was trained.")
    epochs: int = Field(..., description="Epochs run.")
    steps: int = Field(..., description="Optimizer steps run.")
    training_time_s: float | None = Field(None, description="Seconds of its training.")
    agreement: LMAgreement | None = Field(None, description="Its next-token agreement with the teacher.")


class LMExportChecks(_Part):
    """Checks of the exported student."""

    transformers_loads: bool = Field(..., description="student_hf loads with AutoModelForCausalLM.from_pretrained.")
    generates: bool = Field(..., description="It generated tokens after a held-out prompt.")
    gguf: dict[str, Any] | None = Field(None, description="student.gguf: bytes, dtype, tensors, max_abs_diff of its logits "
                                                          "loaded back in transformers; None when not exported.")


class CausalLMReport(ReportBase):
    """Report of a causal language-model job: token-level KD (forward KL, Hinton et al. 2015), reverse KL (Gu et al.
    2024), generalized JSD (Agarwal et al. 2024) or sequence-level KD (Kim & Rush 2016) into a smaller decoder."""

    task: Literal["causal_lm"] = Field(..., description="'causal_lm'.")
    teacher: LMModelSummary = Field(..., description="The teacher.")
    student: LMStudentSummary = Field(..., description="The distilled student (student_hf.zip).")
    perplexity: LMPerplexities = Field(..., description="Held-out perplexities with intervals.")
    agreement: LMAgreement = Field(..., description="The distilled student's next-token agreement and KL with the teacher.")
    perplexity_gain: float | None = Field(None, description="Alone student's perplexity minus the distilled one's (positive: "
                                                            "distillation helped); None without compare_baseline.")
    generations: LMGenerations | None = Field(None, description="Generations side by side; None for plain-text data.")
    data: LMDataSummary = Field(..., description="Records, rows and tokens.")
    cache: LMCacheSummary = Field(..., description="The top-k teacher cache.")
    baseline: LMBaseline | None = Field(None, description="The student trained alone, with evaluation.compare_baseline.")
    method_detail: dict[str, Any] | None = Field(None, description="The method as it ran: terms, divergence, temperature, alpha, beta.")
    export_checks: LMExportChecks = Field(..., description="Whether the exported student loads and generates.")

    def quality(self) -> Quality:
        """Next-token top-1 agreement with the teacher (the teacher's own is 1 by definition)."""
        return Quality("next-token agreement with the teacher", 1.0, self.agreement.top1_agreement)


# ---------------------------------------------------------------------------------------------------- the union

Report = Annotated[
    Union[ClassificationReport, SequenceClassificationReport, SentenceEmbeddingReport, CausalLMReport],
    Field(discriminator="task"),
    BeforeValidator(_legacy_task),
]
"""A compression report of any task family, discriminated by ``task`` (absent = 'classification'); the type to declare
in schemas (``response_model=Report``)."""

AnyReport = Union[ClassificationReport, SequenceClassificationReport, SentenceEmbeddingReport, CausalLMReport]
"""The same variants as a plain union, for annotations of a validated report."""

_ADAPTER: TypeAdapter[Report] = TypeAdapter(Report)


def parse_report(data: Any) -> AnyReport:
    """Validate a stored or received report (a dict, e.g. ``jobs.report`` or the API's JSON) into its variant.
    Raises ``pydantic.ValidationError`` when it fits none (an unknown ``task``, a missing or mistyped field)."""
    return _ADAPTER.validate_python(data)


def unmodelled_keys(report: BaseModel, path: str = "") -> list[str]:
    """Dotted paths of keys in ``report`` (recursively) that no field models (kept as extras); [] when the model
    covers every key. The core's tests use it to keep this module and the reports the core writes in step."""
    found = [f"{path}{k}" for k in (report.model_extra or {})]
    for name in type(report).model_fields:
        value = getattr(report, name)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [(None, value)]
        for key, v in items:
            if isinstance(v, BaseModel):
                found += unmodelled_keys(v, f"{path}{name}{'' if key is None else f'.{key}'}.")
    return found
