"""Optimizers, per-step LR schedules, the per-epoch seed and the steps per epoch: the parts of training that every
task family shares and that must not drift between them."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..errors import DistillError
from ..spec import OptimizerSpec


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch`` (1-based) for the batch order and dropout, so a resumed run repeats a straight one.
    The one formula of every task family (and of the bare loops in ``bench/``)."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch over ``n`` rows: ``ceil(n / batch_size)``, except that a final batch of a single
    row is dropped (BatchNorm cannot train on one sample), i.e. ``n // batch_size`` when ``n % batch_size == 1``
    and ``n > 1``. Raises ``DistillError('invalid_spec')`` for an empty training set."""
    if n <= 0:
        raise DistillError("invalid_spec", "the training set is empty", "data.train")
    steps = math.ceil(n / batch_size)
    if n > 1 and n % batch_size == 1:
        steps -= 1
    return max(1, steps)


def make_optimizer(spec: OptimizerSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay; Loshchilov & Hutter 2019) or SGD with momentum, from the spec.
    Raises ``DistillError('invalid_spec')`` for another name."""
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise DistillError("invalid_spec", f"unknown optimizer {spec.name!r}", "training.optimizer.name")


class _Cosine:
    """Per-step cosine factor ``0.5 (1 + cos(pi * step / total))`` (Loshchilov & Hutter 2017, SGDR without
    restarts); a class (not a lambda) so LambdaLR's state is plain data."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


def _constant(step: int) -> float:
    return 1.0


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR``: 'cosine' decays the LR from its peak to 0 over ``total_steps``; 'constant' keeps it.
    Raises ``DistillError('invalid_spec')`` for another schedule."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, _Cosine(total_steps))
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, _constant)
    raise DistillError("invalid_spec", f"unknown schedule {schedule!r}", "training.schedule")
