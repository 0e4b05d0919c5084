"""Knowledge-distillation methods, registered by name (as mdistiller's ``Distiller`` and torchdistill's
registries do). A method maps ``(student_logits [B, K], teacher_logits [B, K], labels [B] int64, -1 =
unlabelled)`` to a dict of named, already-weighted scalar loss terms; the training loop sums them, and
metrics show every term (``loss/kd``, ``loss/ce``, ...).

Methods contain no device code: they work on whatever device their inputs are on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import DistillError
from .spec import MethodSpec

_METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator registering a ``Method`` subclass under ``name`` (``ValueError`` if taken)."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


def build_method(spec: MethodSpec, has_labels: bool, all_labelled: bool = False) -> "Method":
    """Instantiate ``spec.name`` with its temperature/alpha. ``has_labels``: whether the training set has any
    labelled row (without labels the teacher term gets weight 1 and no 'ce' term is produced); ``all_labelled``:
    whether every row is labelled (enables the cheaper plain-mean cross-entropy).
    Raises ``DistillError('invalid_spec')`` for an unknown name."""
    if spec.name not in _METHODS:
        raise DistillError("invalid_spec", f"unknown method {spec.name!r}; available: {', '.join(available_methods())}", "method.name")
    return _METHODS[spec.name](temperature=spec.temperature, alpha=spec.alpha, has_labels=has_labels, all_labelled=all_labelled)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits [B, K]`` against ``labels [B]`` over rows with ``label >= 0`` only.

    Returns a scalar tensor; exactly 0 (and a zero gradient) when no row is labelled. No host sync.
    """
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    count = (labels >= 0).sum().clamp_(min=1)
    return total / count


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/T) ‖ softmax(s/T))`` with ``reduction='batchmean'`` (sum over the K classes, mean over the
    B rows), in nats, *without* the T² factor. Shapes ``[B, K]`` → scalar."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )


class Method(ABC):
    """Base class of distillation methods.

    ``temperature`` T > 0, ``alpha`` in [0, 1] (weight of the teacher term; ``1 - alpha`` weighs ground-truth
    cross-entropy on labelled rows), ``has_labels`` (False: the whole training set is unlabelled, so the
    teacher term has weight 1 and there is no 'ce' term), ``all_labelled`` (True: every training row is
    labelled, so the 'ce' term may use the plain batch mean — same value, fewer kernels per step).
    Subclasses implement ``teacher_term`` (and ``teacher_scale``).
    """

    name: str = "method"

    def teacher_scale(self) -> float:
        """Constant factor multiplying ``teacher_term`` (1 unless a subclass says otherwise)."""
        return 1.0

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, has_labels: bool = True, all_labelled: bool = False) -> None:
        if not temperature > 0:
            raise DistillError("invalid_spec", f"temperature must be > 0, got {temperature}", "method.temperature")
        if not 0.0 <= alpha <= 1.0:
            raise DistillError("invalid_spec", f"alpha must be in [0, 1], got {alpha}", "method.alpha")
        self.temperature = float(temperature)
        self.has_labels = has_labels
        self.alpha = float(alpha) if has_labels else 1.0
        self.all_labelled = bool(all_labelled and has_labels)
        self._teacher_weight = self.alpha * self.teacher_scale()
        self._ce_weight = 1.0 - self.alpha

    @property
    def term_names(self) -> list[str]:
        """Names of the terms ``__call__`` returns, in order (e.g. ``['kd', 'ce']``)."""
        return [self.name, "ce"] if self.has_labels else [self.name]

    @abstractmethod
    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The unweighted teacher-matching loss (scalar) for ``[B, K]`` logits."""

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms ``{self.name: alpha * teacher_term, 'ce': (1 - alpha) * CE on labelled rows}``
        (the 'ce' term only when ``has_labels``; it is 0 for a batch without labelled rows). Inputs: ``student_logits``
        ``[B, K]`` (requires grad), ``teacher_logits`` ``[B, K]`` (no grad), ``labels`` ``[B]`` int64."""
        terms = {self.name: self._teacher_weight * self.teacher_term(student_logits, teacher_logits)}
        if self.has_labels:
            ce = F.cross_entropy(student_logits, labels) if self.all_labelled else masked_cross_entropy(student_logits, labels)
            terms["ce"] = self._ce_weight * ce
        return terms


@register_method("kd")
class SoftTargetKD(Method):
    """Soft-label knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
    Network"): term ``kd = alpha · T² · KL(softmax(t/T) ‖ softmax(s/T))`` (batchmean), plus
    ``ce = (1 - alpha) · CE(s, y)`` over labelled rows. The T² factor keeps the soft-target gradients' scale
    independent of T."""

    def teacher_scale(self) -> float:
        """T², as in Hinton et al. 2015."""
        return self.temperature * self.temperature

    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``KL(softmax(t/T) ‖ softmax(s/T))``, batchmean (the T² factor is applied via ``teacher_scale``)."""
        return soft_kl(student_logits, teacher_logits, self.temperature)


@register_method("hard_label")
class HardLabelKD(Method):
    """Hard-label distillation (the teacher's argmax as the target, "hard distillation" of Touvron et al. 2021,
    "Training data-efficient image transformers & distillation through attention"): term ``hard_label = alpha · CE(s, argmax t)`` over all rows, plus
    ``ce = (1 - alpha) · CE(s, y)`` over labelled rows. The temperature is not used."""

    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the student against the teacher's argmax class."""
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))
