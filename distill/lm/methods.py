"""The distillation methods of causal language models, registered by name like the other task families' methods.

A method maps the student's logits at the ``M`` target positions of a batch (``[M, V]``, float32; see
``losses.targets``), the teacher's view of the same tokens (full logits ``[M, V]``, a top-k ``TopK`` read from the
teacher cache, or None when the method trains on the teacher's text alone) and the target token ids ``[M]`` (int64)
to named, weighted scalar loss terms (nats per token) that the trainer sums:

- ``kd``: token-level KD, forward ``KL(p ‖ q)`` over the vocabulary at temperature T, times T² (Hinton et al. 2015;
  on sequences Kim & Rush 2016's word-level KD);
- ``reverse_kl``: ``KL(q ‖ p)``, mode-seeking, MiniLLM's objective (Gu et al. 2024);
- ``gkd``: the generalized Jensen-Shannon divergence with the teacher's weight β (Agarwal et al. 2024, GKD; β = 0
  is forward KL, β = 1 reverse KL);
- ``seqkd``: sequence-level KD, next-token cross-entropy on the teacher's own generations (Kim & Rush 2016): the
  driver has the teacher answer every prompt first (the transfer set); no teacher term at training time.

The token-level methods add ``ce = (1 − alpha) · CE`` on the data's own target tokens (``ce_weight`` overrides the
weight; a zero weight drops the term), and weigh their teacher term by ``alpha``. Masking: only target tokens
(completion tokens when the data has prompts, every real token for plain text) are in ``M``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillError
from ..method_params import GKDParams, KDParams, MainMethod, MethodParams, ReverseKLParams, SeqKDParams
from ..spec import LM_METHODS, LM_TEMPERATURE
from .losses import TopK, cached_kd_loss, next_token_ce, token_kd_loss

_LM_METHODS: dict[str, type["LMMethod"]] = {}

TeacherView = torch.Tensor | TopK | None


def register_lm_method(params: type[MethodParams]) -> Callable[[type["LMMethod"]], type["LMMethod"]]:
    """Class decorator registering an ``LMMethod`` subclass against its parameter model in ``distill.method_params``
    (one that lists task ``causal_lm``); the class is built as ``cls(**spec.params())``. Raises ``ValueError`` when the
    name is taken or the parameter model does not serve causal_lm."""
    name = params.model_fields["name"].default

    def deco(cls: type[LMMethod]) -> type[LMMethod]:
        if "causal_lm" not in params.tasks:
            raise ValueError(f"{params.__name__} does not list task causal_lm")
        if name in _LM_METHODS:
            raise ValueError(f"language-model method {name!r} is already registered")
        cls.name = name
        _LM_METHODS[name] = cls
        return cls

    return deco


def available_lm_methods() -> list[str]:
    """Names of the registered causal-LM methods, sorted."""
    return sorted(_LM_METHODS)


class LMMethod(nn.Module):
    """Base of the causal-LM methods: ``temperature`` T > 0, ``alpha`` ∈ [0, 1] (weight of the teacher term),
    ``ce_weight`` (weight of next-token CE; default ``1 − alpha``), ``beta`` (gkd). ``divergence`` names the
    ``losses.divergence`` kind of the teacher term (None: no teacher term). Raises ``DistillError('invalid_spec')``
    for out-of-range values."""

    name: str = "lm_method"
    divergence: str | None = None

    def __init__(self, temperature: float = 1.0, alpha: float = 0.9, ce_weight: float | None = None, beta: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise DistillError("invalid_spec", f"temperature must be > 0, got {temperature}", "method.temperature")
        if not 0.0 <= alpha <= 1.0:
            raise DistillError("invalid_spec", f"alpha must be in [0, 1], got {alpha}", "method.alpha")
        if not 0.0 <= beta <= 1.0:
            raise DistillError("invalid_spec", f"beta must be in [0, 1], got {beta}", "method.beta")
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.ce_weight = float(ce_weight) if ce_weight is not None else 1.0 - self.alpha

    @property
    def needs_teacher(self) -> bool:
        """True when training reads the teacher's distributions (cached or live)."""
        return self.divergence is not None

    @property
    def term_names(self) -> list[str]:
        """The terms ``forward`` returns, in order (e.g. ``['kd', 'ce']``)."""
        return ([self.name] if self.needs_teacher else []) + (["ce"] if self.ce_weight > 0 else [])

    def describe(self) -> dict[str, Any]:
        """JSON description for the report."""
        return {"name": self.name, "terms": self.term_names, "divergence": self.divergence, "temperature": self.temperature,
                "alpha": self.alpha, "ce_weight": self.ce_weight, **({"beta": self.beta} if self.divergence == "jsd" else {})}

    def teacher_term(self, student_logits: torch.Tensor, teacher: TeacherView,
                     student_logp: torch.Tensor | None = None) -> torch.Tensor:
        """``T² · divergence`` mean over the ``M`` tokens, from full teacher logits ``[M, V]`` or a ``TopK`` cache.
        ``student_logp``: the student's ``log_softmax(logits / T)`` ``[M, V]`` when already computed."""
        if isinstance(teacher, TopK):
            return cached_kd_loss(student_logits, teacher, self.divergence, beta=self.beta, temperature=self.temperature,
                                  student_logp=student_logp)
        if teacher is None:
            raise ValueError(f"method {self.name!r} needs the teacher's outputs")
        return token_kd_loss(student_logits, teacher, self.divergence, beta=self.beta, temperature=self.temperature,
                             student_logp=student_logp)

    def forward(self, student_logits: torch.Tensor, teacher: TeacherView, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms ``{name: scalar}``: ``alpha · teacher_term`` (when the method has one) and
        ``ce_weight · CE(student, target_ids)`` (when its weight is > 0). ``student_logits [M, V]`` float32,
        ``target_ids [M]`` int64. At T = 1 both terms read one ``log_softmax`` of the student's logits (the CE is its
        ``nll_loss``, which is what ``cross_entropy`` computes), not one each."""
        terms: dict[str, torch.Tensor] = {}
        shared = None
        if self.needs_teacher and self.ce_weight > 0 and self.temperature == 1.0 and student_logits.shape[0] > 0:
            shared = F.log_softmax(student_logits.float(), dim=-1)
        if self.needs_teacher:
            terms[self.name] = self.alpha * self.teacher_term(student_logits, teacher, shared)
        if self.ce_weight > 0:
            ce = F.nll_loss(shared, target_ids) if shared is not None else next_token_ce(student_logits, target_ids)
            terms["ce"] = self.ce_weight * ce
        return terms


@register_lm_method(KDParams)
class TokenKD(LMMethod):
    """Token-level KD: forward ``KL(p ‖ q)`` per target token at temperature T, times T² (Hinton et al. 2015; Kim &
    Rush 2016's word-level KD), plus (1 − alpha) next-token cross-entropy."""

    divergence = "forward_kl"


@register_lm_method(ReverseKLParams)
class ReverseKL(LMMethod):
    """Reverse ``KL(q ‖ p)`` per target token (mode-seeking), the objective of MiniLLM (Gu et al. 2024), times T²,
    plus (1 − alpha) next-token cross-entropy."""

    divergence = "reverse_kl"


@register_lm_method(GKDParams)
class GeneralizedJSD(LMMethod):
    """The generalized Jensen-Shannon divergence ``JSD(β)`` per target token (Agarwal et al. 2024, GKD), times T²,
    plus (1 − alpha) next-token cross-entropy; β = 0 is forward KL, β = 1 reverse KL."""

    divergence = "jsd"


@register_lm_method(SeqKDParams)
class SequenceKD(LMMethod):
    """Sequence-level KD (Kim & Rush 2016): next-token cross-entropy on the teacher's generations (the driver makes
    the teacher answer every prompt first). One term, ``seqkd``, weight 1; alpha and the temperature are not used."""

    divergence = None

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ce_weight = 1.0

    @property
    def term_names(self) -> list[str]:
        """``['seqkd']``."""
        return ["seqkd"]

    def forward(self, student_logits: torch.Tensor, teacher: TeacherView, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'seqkd': CE(student, target_ids)}`` (the targets are the teacher's tokens)."""
        return {"seqkd": next_token_ce(student_logits, target_ids)}


class NextTokenOnly(LMMethod):
    """The student trained alone: ``{'ce': CE}`` on the data's target tokens, no teacher (the report's
    student-trained-alone baseline). Not registered: it is not a distillation method."""

    name = "ce"
    divergence = None

    def __init__(self) -> None:
        super().__init__(alpha=0.0, ce_weight=1.0)


def lm_temperature(spec: MainMethod) -> float:
    """The temperature a causal-LM job uses: the spec's when it gives one, else 1 (``LM_TEMPERATURE``; a spec with task
    causal_lm has it filled in by ``JobSpec._measured_defaults``, this covers task 'auto'); 1 for seqkd (none)."""
    return float(getattr(spec, "temperature", 1.0)) if "temperature" in spec.model_fields_set else LM_TEMPERATURE


def build_lm_method(spec: MainMethod) -> LMMethod:
    """The causal-LM method of ``spec`` (a generated per-method model), built as ``cls(**spec.params())`` with the LM
    temperature default (``lm_temperature``). Raises ``DistillError('invalid_spec')`` for a method that is not one of
    ``LM_METHODS``, extra terms or ``logit_standardization``."""
    cls = _LM_METHODS.get(spec.name)
    if cls is None or spec.name not in LM_METHODS:
        raise DistillError("invalid_spec", f"task causal_lm takes the methods {', '.join(available_lm_methods())}, not {spec.name!r}",
                           "method.name")
    if getattr(spec, "extra", None):
        raise DistillError("invalid_spec", "task causal_lm takes no extra method terms", "method.extra")
    params = spec.params()
    if params.pop("logit_standardization", False):
        raise DistillError("invalid_spec", "logit_standardization is for classification logits, not task causal_lm",
                           "method.logit_standardization")
    if "temperature" in params:
        params["temperature"] = lm_temperature(spec)
    return cls(**params)


__all__ = ["GeneralizedJSD", "LMMethod", "NextTokenOnly", "ReverseKL", "SequenceKD", "TokenKD", "available_lm_methods",
           "build_lm_method", "lm_temperature", "register_lm_method"]
