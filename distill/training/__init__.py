"""Training: the one trainer every task family runs through (``Trainer``, ``TaskAdapter``), its checkpoints
(``CheckpointStore``: the last two good ones, digest-checked, an unreadable one reported and skipped), precision and
device handling (``Precision``), optimizers and schedules, and the tensor-classification adapter. The text adapters
live beside the text task (``distill.text.adapters``)."""

from .checkpoints import (CHECKPOINT_VERSION, PARTIAL_CHECKPOINT_VERSION, CheckpointStore, CheckpointUnreadable,
                          load_checkpoint, read_checkpoint, save_checkpoint, spec_fingerprint)
from .optim import epoch_seed, make_optimizer, make_scheduler, steps_per_epoch
from .precision import Precision, autocast_dtype, check_precision
from .tensor import TeacherCache, TensorClassification, batched_logits, inference_batch, teacher_outputs
from .trainer import TaskAdapter, Trainer, TrainOutcome

__all__ = [
    "CHECKPOINT_VERSION", "PARTIAL_CHECKPOINT_VERSION", "CheckpointStore", "CheckpointUnreadable", "load_checkpoint",
    "read_checkpoint", "save_checkpoint", "spec_fingerprint", "epoch_seed", "make_optimizer", "make_scheduler",
    "steps_per_epoch", "Precision", "autocast_dtype", "check_precision", "TeacherCache", "TensorClassification",
    "batched_logits", "inference_batch", "teacher_outputs", "TaskAdapter", "Trainer", "TrainOutcome",
]
