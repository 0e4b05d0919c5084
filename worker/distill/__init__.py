"""stillhouse distillation core: a plain PyTorch library (no FastAPI, Celery or SQLAlchemy).

Entry point: ``run_job(spec, inputs, workdir, reporter)``. Building blocks: the architecture registry
(``models``), safe file handling (``formats``), teacher wrappers (``teachers``), data loading (``data``),
KD methods (``methods``), the training loop (``loop``) and teacher training for demos (``teacher_training``).
"""

from .data import DataBundle, load_builtin, load_data, split_validation
from .errors import ERROR_CODES, DistillError, StopRequested
from .formats import FileInfo, FileInput, inspect_file, read_dataset, sniff
from .evaluation import evaluate
from .export import export_onnx
from .job import DistillResult, JobInputs, run_job
from .loop import TrainOutcome, train_student
from .methods import HardLabelKD, Method, SoftTargetKD, available_methods, build_method, register_method
from .models import available, build, describe, register
from .reporter import PHASES, MetricRow, RecordingReporter, Reporter
from .spec import ArchitectureSpec, JobSpec
from .teacher_training import save_model, train_classifier
from .teachers import Teacher, load_teacher

__all__ = [
    "ERROR_CODES", "PHASES", "ArchitectureSpec", "DataBundle", "DistillError", "DistillResult", "FileInfo", "FileInput",
    "HardLabelKD", "JobInputs", "JobSpec", "Method", "MetricRow", "RecordingReporter", "Reporter", "SoftTargetKD",
    "StopRequested", "Teacher", "TrainOutcome", "available", "available_methods", "build", "build_method", "describe",
    "evaluate", "export_onnx", "inspect_file", "load_builtin", "load_data", "load_teacher", "read_dataset", "register",
    "register_method", "run_job", "save_model", "sniff", "split_validation", "train_classifier", "train_student",
]
