"""The tensor-classification adapter (image and tabular data: ``DataBundle`` tensors, a ``Teacher``, a registered
method) and the no-grad helpers it shares with evaluation: batched inference and the teacher-output cache.

Per step: the teacher's logits (and the features the method reads) for the batch — from the per-job
``TeacherCache`` (computed once before training) or live under ``torch.inference_mode()`` — the student's forward
(features captured with forward hooks), and the method's named loss terms. On the CPU a row's teacher outputs do not
depend on the batch they are computed in, so cached and live training are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..features import FeatureRecorder
from ..methods import CombinedMethod, Method
from ..teachers import Teacher
from .optim import steps_per_epoch
from .trainer import TaskAdapter

EVAL_BATCH = 1024  # rows per no-grad inference batch (teacher cache, validation) on an accelerator
CPU_EVAL_BATCH = 128  # ... and on the CPU, where big conv batches fall out of cache: one thread ran the mnist5k CNN
# teacher over 4,000 rows about 2x slower in 1,024-row batches than in 64-128-row ones (bench/vs_torchdistill.py)


def inference_batch(device: torch.device) -> int:
    """Rows per no-grad inference batch on ``device``: ``CPU_EVAL_BATCH`` on the CPU, else ``EVAL_BATCH``."""
    return CPU_EVAL_BATCH if device.type == "cpu" else EVAL_BATCH


@torch.no_grad()
def batched_logits(fn: Any, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Concatenated ``fn(x[i:i+batch])`` over ``x [N, ...]`` → ``[N, K]`` (no grad); ``batch`` defaults to
    ``inference_batch(x.device)``."""
    batch = batch or inference_batch(x.device)
    return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


@dataclass
class TeacherCache:
    """Teacher outputs for every training row, computed once: ``logits [N, K]`` float32 and ``features``
    ``{layer: Tensor[N, ...]}`` (the teacher layers the method reads), on the training device; ``seconds`` spent
    computing them and ``bytes`` they take."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    seconds: float
    bytes: int


def teacher_outputs(teacher: Teacher, x: torch.Tensor, layers: list[str], batch: int | None = None,
                    param: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's logits ``[N, K]`` and features ``{layer: [N, ...]}`` (``Teacher.features``: hooks, a TorchScript
    chain or ONNX values made outputs) for ``x [N, ...]``, in batches of ``batch`` rows (default
    ``inference_batch(x.device)``), as ordinary (non-inference) tensors on ``x``'s device. On the CPU a row's outputs
    do not depend on the batch it is computed in, so these equal the per-step ones bit for bit. Raises
    ``DistillError('invalid_spec')`` for a layer the teacher cannot give (naming the layers it can)."""
    batch = batch or inference_batch(x.device)
    logits: list[torch.Tensor] = []
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
    for i in range(0, x.shape[0], batch):
        out, got = teacher.features(x[i : i + batch], layers, param)
        logits.append(out.clone())
        for k, v in got.items():
            feats[k].append(v.float().clone())
    return torch.cat(logits), {k: torch.cat(v) for k, v in feats.items()}


_NO_FEATURES: dict[str, torch.Tensor] = {}


class TensorClassification(TaskAdapter):
    """Classification on tensors: ``student`` (on ``device``) learns from ``teacher`` through ``method`` on
    ``data.train_x [N, ...]`` / ``train_y [N]`` (int64, -1 = unlabelled) and is validated on ``data.val_x/val_y``
    (rows 'top1' (with validation labels) and 'agreement' with the teacher, split 'val').

    Epoch order: ``torch.randperm`` with a generator seeded by the epoch seed, cut into batches of
    ``min(batch_size, N)`` (a final single-row batch is dropped, ``optim.steps_per_epoch``). ``method``'s
    ``student_layers`` are captured with forward hooks on ``student``; its ``teacher_layers`` come from ``cache`` when
    given (the teacher is then never run per step; the cache's rows are ``data.train_x``'s) or from
    ``Teacher.features`` per step; a method with ``needs_teacher`` False (the baseline's ``LabelsOnly``) never runs it. A method
    with learned parts (adapters) is trained with the student and checkpointed as module 'method'.
    ``teacher_val_pred`` (int64 ``[N_val]``): the teacher's argmax class of each ``data.val_x`` row when the caller
    has it (a job's passes share one, read from the shared teacher cache); else computed here (a teacher pass over
    the validation rows).
    Raises ``DistillError('invalid_spec')`` when teacher features are asked of layers the teacher cannot give.
    """

    def __init__(self, student: nn.Module, teacher: Teacher, method: Method | CombinedMethod, data: DataBundle,
                 device: torch.device, cache: TeacherCache | None = None, teacher_val_pred: torch.Tensor | None = None) -> None:
        self.student, self.teacher, self.method, self.cache, self.device = student, teacher, method, cache, device
        self.term_names = list(method.term_names)
        self.x, self.y = data.train_x.to(device), data.train_y.to(device)
        self.vx, self.vy = data.val_x.to(device), data.val_y.to(device)
        self.n = int(self.x.shape[0])
        self.val_labelled = bool((self.vy >= 0).any())
        self.teacher_val_pred = (teacher_val_pred.to(device) if teacher_val_pred is not None
                                 else batched_logits(teacher, self.vx).argmax(dim=1))
        self.uses_teacher = bool(getattr(method, "needs_teacher", True))
        s_layers = list(method.student_layers)
        self.t_layers = [] if cache is not None else list(method.teacher_layers)
        if self.t_layers:
            teacher.check_layers(self.t_layers, "method.teacher_layer")
        self.s_rec = FeatureRecorder(student, s_layers, "method") if s_layers else None

    def modules(self) -> dict[str, nn.Module]:
        """``{'student': student, 'method': method}`` (the method's adapters train with the student)."""
        return {"student": self.student, "method": self.method}

    def steps_per_epoch(self, batch_size: int) -> int:
        """``optim.steps_per_epoch(N, min(batch_size, N))``."""
        return steps_per_epoch(self.n, min(batch_size, self.n))

    def epoch_plan(self, seed: int, batch_size: int) -> list[torch.Tensor]:
        """A seeded permutation of the N rows (on the device) cut into the epoch's batches."""
        bs = min(batch_size, self.n)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return [perm[i * bs : (i + 1) * bs] for i in range(self.steps_per_epoch(batch_size))]

    def make_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, x [B, ...], y [B])``."""
        return index, self.x[index], self.y[index]

    def teacher_forward(self, batch: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """``(logits [B, K] or None, features)`` from the cache or the teacher (out of inference mode, so autograd may
        save them)."""
        index, xb, _ = batch
        if self.cache is not None:
            feats = {k: v[index] for k, v in self.cache.features.items()} if self.cache.features else _NO_FEATURES
            return self.cache.logits[index], feats
        if not self.uses_teacher:
            return None, _NO_FEATURES
        if not self.t_layers:
            return self.teacher(xb).clone(), _NO_FEATURES
        logits, feats = self.teacher.features(xb, self.t_layers, "method.teacher_layer")
        return logits.clone(), {k: v.float().clone() for k, v in feats.items()}

    def student_forward(self, batch: Any) -> dict[str, Any]:
        """``{'logits': [B, K], 'features': {layer: [B, ...]}}``."""
        if self.s_rec is None:
            return {"logits": self.student(batch[1]), "features": _NO_FEATURES}
        self.s_rec.active = True
        logits = self.student(batch[1])
        self.s_rec.active = False
        return {"logits": logits, "features": self.s_rec.pop()}

    def loss_terms(self, student_out: Any, teacher_out: Any, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        """The method's terms for the batch (see ``methods.Method.forward``)."""
        t_logits, t_feats = teacher_out
        return self.method(student_out["logits"], t_logits, batch[2], epoch=epoch, student_features=student_out["features"],
                           teacher_features=t_feats)

    def train_labels(self, index: torch.Tensor) -> torch.Tensor:
        """``train_y[index]``."""
        return self.y[index]

    def predict_into(self, student_out: Any, out: torch.Tensor) -> None:
        """The student's argmax class per row. (argmax), into ``out``."""
        torch.argmax(student_out["logits"], dim=1, out=out)

    def evaluate(self, epoch: int) -> list[tuple[str, str, float]]:
        """Validation top-1 (when labelled) and agreement with the teacher's argmax."""
        self.student.eval()
        s_pred = batched_logits(self.student, self.vx).argmax(dim=1)
        self.student.train()
        rows = []
        if self.val_labelled:
            mask = self.vy >= 0
            rows.append(("top1", "val", float((s_pred[mask] == self.vy[mask]).float().mean())))
        rows.append(("agreement", "val", float((s_pred == self.teacher_val_pred).float().mean())))
        return rows

    def close(self) -> None:
        """Remove the feature hooks."""
        if self.s_rec is not None:
            self.s_rec.close()
