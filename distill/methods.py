"""Knowledge-distillation methods, registered by name (as mdistiller's ``Distiller`` and torchdistill's
registries do). A method maps ``(student_logits [B, K], teacher_logits [B, K], labels [B] int64, -1 =
unlabelled)`` — plus, for feature methods, the captured student/teacher features and the epoch — to a dict
of named, already-weighted scalar loss terms; the training loop sums them, and metrics show every term
(``loss/kd``, ``loss/ce``, ``loss/tckd``, ...).

Methods are ``nn.Module``s: feature methods own learned adapters (trained with the student, saved in its
checkpoint) and buffers (class prototypes). They contain no device code: they work on whatever device their
inputs are on (``method.to(device)`` moves adapters with the student). Losses are computed in float32.

Catalogue: ``kd`` (Hinton et al. 2015), ``hard_label`` (Touvron et al. 2021), ``dkd`` (Zhao et al. 2022),
``logit_standardization`` as a flag of kd/dkd (Sun et al. 2024), ``fitnet`` (Romero et al. 2015),
``attention_transfer`` (Zagoruyko & Komodakis 2017), ``rkd`` (Park et al. 2019), ``prototype`` (class
prototypes of the teacher's penultimate features); ``embedding`` lives with the text task (``distill/text/adapters.py``).
Each registers against its parameter model in the torch-free ``distill.method_params`` (``@register_method(KDParams)``)
and is built as ``cls(**params)``; ``build_method`` combines a main method with weighted extra terms (``method.extra``).
"""

from __future__ import annotations

from abc import ABC
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DistillError
from .features import PENULTIMATE
from .method_params import (DKD_BETA, AttentionTransferParams, DKDParams, FitNetParams, HardLabelParams, KDParams, MethodParams, PrototypeParams,
                            RKDParams)
from .spec import METHOD_PARAMS, MethodSpec

_METHODS: dict[str, type[nn.Module]] = {}

Features = dict[str, torch.Tensor]


def register_method(params: type[MethodParams]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a loss class (a ``Method``, or any ``nn.Module`` taking the same keywords) against
    its parameter model ``params`` (registered in ``distill.method_params``): the class is built as
    ``cls(**spec.params(), has_labels=..., all_labelled=..., extra_weight=..., param=...)`` and gets ``name`` and
    ``params_model``. Raises ``ValueError`` when ``params`` is not registered or its name already has a class."""
    name = params.model_fields["name"].default
    if METHOD_PARAMS.get(name) is not params:
        raise ValueError(f"{params.__name__} is not a registered parameter model (distill.method_params.register_params)")

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.name, cls.params_model = name, params  # type: ignore[attr-defined]
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names of the methods with a registered loss class, sorted (``embedding`` once ``distill.text`` is imported)."""
    return sorted(_METHODS)


def method_class(name: str) -> type[nn.Module]:
    """The loss class registered for ``name``. Raises ``DistillError('invalid_spec')`` for an unknown one."""
    cls = _METHODS.get(name)
    if cls is None:
        raise DistillError("invalid_spec", f"unknown method {name!r}; available: {', '.join(available_methods())}", "method.name")
    return cls


def _feature_method_names(spec: MethodSpec) -> list[tuple[str, str]]:
    return [(f"{param}.name", part.name) for param, part in spec.components() if METHOD_PARAMS[part.name].reads_features]


def check_method_supported(method_spec: MethodSpec, teacher_format: str) -> None:
    """Refuse, before any work, a method the teacher's format cannot serve (pure: no files, no models).

    Feature methods (fitnet, attention_transfer, rkd, prototype — as the main method or an extra) read the teacher's
    intermediate features, which every tensor format gives (``teachers.Teacher.features``; which layers, each format's
    ``layer_names``); an 'hf' teacher (text tasks distil logits/embeddings only) is refused, and takes no extra terms.

    Raises ``DistillError('invalid_spec', message, param)`` with ``param`` like ``'method.extra.0.name'``.
    """
    feats = _feature_method_names(method_spec)
    if feats and teacher_format == "hf":
        param, name = feats[0]
        raise DistillError("invalid_spec", f"method {name!r} needs the teacher's intermediate features, but Hugging Face teachers "
                           "(text tasks) support the logit methods kd, hard_label and dkd only", param)
    if teacher_format == "hf" and getattr(method_spec, "extra", None):
        raise DistillError("invalid_spec", "Hugging Face teachers (text tasks) take no extra method terms", "method.extra")


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


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al. 2024, CVPR, "Logit Standardization in Knowledge Distillation"): each row of
    ``logits [B, K]`` minus its mean over the K classes, divided by its standard deviation (unbiased, as
    ``torch.std`` and the authors' code) plus ``eps``. Returns ``[B, K]`` with row mean 0 and row std ≈ 1."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def targets_or_teacher(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Class per row ``[B]`` int64: the label where ``labels >= 0``, else the teacher's argmax."""
    return torch.where(labels >= 0, labels, teacher_logits.argmax(dim=1))


def as_vector(x: torch.Tensor) -> torch.Tensor:
    """A feature as ``[B, D]``: conv maps ``[B, C, H, W]`` are global-average-pooled to ``[B, C]``, anything else is
    flattened after the batch dimension."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    return x.flatten(1)


def _vector_width(shape: tuple[int, ...]) -> int:
    if len(shape) == 3:
        return int(shape[0])
    n = 1
    for d in shape:
        n *= int(d)
    return n


class Method(nn.Module, ABC):
    """Base class of distillation methods (an ``nn.Module`` so feature methods can own learned adapters).

    ``temperature`` T > 0, ``alpha`` in [0, 1] (weight of the teacher terms; ``1 - alpha`` weighs ground-truth
    cross-entropy on labelled rows unless ``ce_weight`` is given), ``has_labels`` (False: the whole training set is
    unlabelled, so the teacher terms have weight 1 and there is no 'ce' term), ``all_labelled`` (True: every
    training row is labelled, so the 'ce' term may use the plain batch mean — same value, fewer kernels),
    ``extra_weight`` (set: this method is an extra term of a combination — its teacher terms are multiplied by
    ``extra_weight`` instead of alpha and it produces no 'ce' term), ``param`` (the spec path of the method, for
    errors). Subclasses take their own parameters (their ``distill.method_params`` model's fields) as keywords.

    Subclasses implement ``teacher_term`` (one term named after the method) or ``teacher_terms`` (several named
    terms), and feature methods declare ``student_layers``/``teacher_layers`` and build adapters in ``setup``.
    Raises ``DistillError('invalid_spec')`` for out-of-range hyper-parameters.
    """

    name: str = "method"
    needs_teacher: bool = True
    needs_dataset_pass: bool = False

    def teacher_scale(self) -> float:
        """Constant factor multiplying the teacher terms (1 unless a subclass says otherwise)."""
        return 1.0

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, has_labels: bool = True, all_labelled: bool = False,
                 *, ce_weight: float | None = None, extra_weight: float | None = None, param: str = "method") -> None:
        super().__init__()
        if not temperature > 0:
            raise DistillError("invalid_spec", f"temperature must be > 0, got {temperature}", f"{param}.temperature")
        if not 0.0 <= alpha <= 1.0:
            raise DistillError("invalid_spec", f"alpha must be in [0, 1], got {alpha}", f"{param}.alpha")
        self.temperature = float(temperature)
        self.param = param
        self.is_extra = extra_weight is not None
        self.has_labels = has_labels and not self.is_extra
        self.alpha = float(alpha) if self.has_labels else 1.0
        self.all_labelled = bool(all_labelled and self.has_labels)
        self._ce_weight = float(ce_weight) if ce_weight is not None else self.default_ce_weight()
        base = float(extra_weight) if self.is_extra else self.teacher_weight_base()
        self._teacher_weight = base * self.teacher_scale()

    def default_ce_weight(self) -> float:
        """Weight of the ground-truth 'ce' term when the spec gives no ``ce_weight``: ``1 - alpha``."""
        return 1.0 - self.alpha

    def teacher_weight_base(self) -> float:
        """Weight of the teacher terms (before ``teacher_scale``) of a main method: ``alpha``."""
        return self.alpha

    @property
    def teacher_term_names(self) -> list[str]:
        """Names of the teacher terms (e.g. ``['kd']``, ``['tckd', 'nckd']``)."""
        return [self.name]

    @property
    def term_names(self) -> list[str]:
        """Names of the terms ``forward`` returns, in order (e.g. ``['kd', 'ce']``)."""
        return self.teacher_term_names + (["ce"] if self.has_labels else [])

    @property
    def student_layers(self) -> list[str]:
        """Student layers whose outputs this method reads (module paths or 'penultimate')."""
        return []

    @property
    def teacher_layers(self) -> list[str]:
        """Teacher layers whose outputs this method reads."""
        return []

    def setup(self, student_shapes: dict[str, tuple[int, ...]], teacher_shapes: dict[str, tuple[int, ...]]) -> None:
        """Build learned parts from the per-sample feature shapes of ``student_layers``/``teacher_layers`` (no-op here).
        Raises ``DistillError('invalid_spec')`` when the shapes do not suit the method."""

    def prepare(self, teacher_logits: torch.Tensor, teacher_features: Features, labels: torch.Tensor) -> None:
        """Statistics over the whole training set, once before training (only when ``needs_dataset_pass``):
        ``teacher_logits [N, K]``, ``teacher_features {layer: [N, ...]}``, ``labels [N]`` (-1 = unlabelled)."""

    def describe(self) -> dict[str, Any]:
        """JSON description for the report (name, terms, layers)."""
        d: dict[str, Any] = {"name": self.name, "terms": self.term_names}
        if self.student_layers or self.teacher_layers:
            d["student_layers"], d["teacher_layers"] = self.student_layers, self.teacher_layers
        return d

    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The unweighted teacher-matching loss (scalar) for ``[B, K]`` logits (single-term logit methods)."""
        raise NotImplementedError

    def teacher_terms(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, epoch: int,
                      student_features: Features, teacher_features: Features) -> dict[str, torch.Tensor]:
        """Teacher terms before the alpha/extra weight: ``{self.name: teacher_term(s, t)}`` by default."""
        return {self.name: self.teacher_term(student_logits, teacher_logits)}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *, epoch: int = 1,
                student_features: Features | None = None, teacher_features: Features | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms: each teacher term times ``alpha`` (times ``teacher_scale``; ``extra_weight`` for an
        extra), plus ``'ce': ce_weight · CE`` on labelled rows when ``has_labels`` (0 for a batch without labels).

        Inputs: ``student_logits [B, K]`` (requires grad), ``teacher_logits [B, K]`` (no grad), ``labels [B]`` int64
        (-1 = unlabelled), ``epoch`` (1-based; dkd's warm-up), features ``{layer: Tensor[B, ...]}``. Scalars out."""
        raw = self.teacher_terms(student_logits, teacher_logits, labels, epoch, student_features or {}, teacher_features or {})
        terms = {k: self._teacher_weight * v for k, v in raw.items()}
        if self.has_labels:
            ce = F.cross_entropy(student_logits, labels) if self.all_labelled else masked_cross_entropy(student_logits, labels)
            terms["ce"] = self._ce_weight * ce
        return terms


@register_method(KDParams)
class SoftTargetKD(Method):
    """Soft-label knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
    Network"): term ``kd = alpha · T² · KL(softmax(t/T) ‖ softmax(s/T))`` (batchmean), plus
    ``ce = (1 - alpha) · CE(s, y)`` over labelled rows. The T² factor keeps the soft-target gradients' scale
    independent of T. With ``logit_standardization`` (Sun et al. 2024) both logits are z-scored per row
    (``standardize_logits``) before the division by T; the 'ce' term uses the raw logits."""

    def __init__(self, *args: Any, logit_standardization: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.logit_standardization = bool(logit_standardization)

    def teacher_scale(self) -> float:
        """T², as in Hinton et al. 2015."""
        return self.temperature * self.temperature

    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``KL(softmax(t/T) ‖ softmax(s/T))``, batchmean (the T² factor is applied via ``teacher_scale``)."""
        if self.logit_standardization:
            student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
        return soft_kl(student_logits, teacher_logits, self.temperature)


@register_method(HardLabelParams)
class HardLabelKD(Method):
    """Hard-label distillation (the teacher's argmax as the target, "hard distillation" of Touvron et al. 2021,
    "Training data-efficient image transformers & distillation through attention"): term ``hard_label = alpha · CE(s, argmax t)`` over all rows, plus
    ``ce = (1 - alpha) · CE(s, y)`` over labelled rows. The temperature is not used."""

    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the student against the teacher's argmax class."""
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted ``(TCKD, NCKD)`` of Decoupled KD (Zhao et al. 2022), each already times T², as mdistiller.

    With ``p = softmax(z/T)`` over the K classes and ``g`` the target class of each row: TCKD is the KL between the
    teacher's and the student's binary distributions ``b = [p_g, 1 - p_g]``; NCKD is the KL between the teacher's
    and the student's distributions over the K-1 non-target classes (``softmax(z/T - 1000·onehot(g))``, as
    mdistiller). Both ``sum over classes, mean over the B rows`` (nats), times T². The binary log-probabilities are
    computed in log space (logsumexp), which equals mdistiller's ``log(sum(p·mask))`` without its log(0) risk.
    Shapes ``[B, K], [B, K], [B]`` → two scalars. Identity per row: ``KD = TCKD + (1 - p_g^teacher) · NCKD``.
    """
    t2 = temperature * temperature
    gt = F.one_hot(target, student_logits.shape[1]).to(torch.bool)
    ls, lt = F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1)
    neg_inf = torch.finfo(ls.dtype).min

    def binary(logp: torch.Tensor) -> torch.Tensor:
        tgt = logp.masked_fill(~gt, neg_inf).logsumexp(dim=1)
        other = logp.masked_fill(gt, neg_inf).logsumexp(dim=1)
        return torch.stack([tgt, other], dim=1)

    tckd = F.kl_div(binary(ls), binary(lt), log_target=True, reduction="batchmean") * t2
    mask = 1000.0 * gt.to(student_logits.dtype)
    nckd = F.kl_div(F.log_softmax(student_logits / temperature - mask, dim=1), F.softmax(teacher_logits / temperature - mask, dim=1),
                    reduction="batchmean") * t2
    return tckd, nckd


@register_method(DKDParams)
class DecoupledKD(Method):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang 2022, CVPR, "Decoupled Knowledge
    Distillation"), following mdistiller's ``DKD``: ``loss = ce_weight·CE + w(epoch)·(alpha·TCKD + beta·NCKD)``
    with ``w(epoch) = min(epoch / warmup_epochs, 1)`` and TCKD/NCKD from ``dkd_parts`` (both × T²). Terms
    returned: ``tckd = w·alpha·TCKD``, ``nckd = w·beta·NCKD`` and ``ce = ce_weight·CE`` on labelled rows
    (``ce_weight`` defaults to 1.0, mdistiller's CE_LOSS_WEIGHT). ``alpha`` here is DKD's TCKD weight (the
    paper's α), not the teacher/label mix of the other methods. The target class of a row is its label, or the
    teacher's argmax for an unlabelled row. With ``logit_standardization`` (Sun et al. 2024) both logits are
    z-scored per row before TCKD/NCKD. Defaults alpha 1 and beta ``DKD_BETA`` = 0.5 rather than the paper's
    CIFAR-100 8, and in a job a warm-up of max(1, epochs // 5) (``distill.method_params.DKD_BETA`` /
    ``DKD_WARMUP_FRACTION``: beta 8 without warm-up measured -3.6 points against the student alone at 10 epochs on
    mnist5k, beta 0.5-1 with the warm-up +0.7 to +1.1 at 30). Raises ``DistillError('invalid_spec')`` for a negative
    weight or ``warmup_epochs < 1``."""

    def __init__(self, *args: Any, alpha: float = 1.0, beta: float = DKD_BETA, warmup_epochs: int = 1,
                 logit_standardization: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if alpha < 0 or beta < 0 or warmup_epochs < 1:
            raise DistillError("invalid_spec", "dkd alpha and beta must be >= 0 and warmup_epochs >= 1", self.param)
        self.dkd_alpha, self.dkd_beta, self.warmup_epochs = float(alpha), float(beta), int(warmup_epochs)
        self.logit_standardization = bool(logit_standardization)

    def default_ce_weight(self) -> float:
        """1.0, as mdistiller's DKD."""
        return 1.0

    def teacher_weight_base(self) -> float:
        """1.0: DKD's terms carry their own weights (dkd_alpha, dkd_beta)."""
        return 1.0

    @property
    def teacher_term_names(self) -> list[str]:
        return ["tckd", "nckd"]

    def teacher_terms(self, student_logits, teacher_logits, labels, epoch, student_features, teacher_features):
        """``{'tckd': w·dkd_alpha·TCKD, 'nckd': w·dkd_beta·NCKD}`` (see the class docstring)."""
        target = targets_or_teacher(labels, teacher_logits)
        s, t = student_logits, teacher_logits
        if self.logit_standardization:
            s, t = standardize_logits(s), standardize_logits(t)
        tckd, nckd = dkd_parts(s, t, target, self.temperature)
        w = min(max(epoch, 0) / self.warmup_epochs, 1.0)
        return {"tckd": (w * self.dkd_alpha) * tckd, "nckd": (w * self.dkd_beta) * nckd}


class _FeaturePair(Method):
    """A method reading one student layer and one teacher layer (``student_layer`` / ``teacher_layer``, module
    paths; None means 'penultimate')."""

    def __init__(self, *args: Any, student_layer: str | None = None, teacher_layer: str | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.s_layer = student_layer or PENULTIMATE
        self.t_layer = teacher_layer or PENULTIMATE

    @property
    def student_layers(self) -> list[str]:
        return [self.s_layer]

    @property
    def teacher_layers(self) -> list[str]:
        return [self.t_layer]


@register_method(FitNetParams)
class FitNet(_FeaturePair):
    """FitNets hints (Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, ICLR, "FitNets: Hints for Thin Deep
    Nets"): term ``fitnet = weight · mean((r(S) - T)²)`` between the student layer's output S passed through a
    learned regressor r and the teacher layer's output T (mean over every element; the paper's ½‖·‖² up to a
    constant). The regressor: for conv maps on both sides (``[B, Cs, Hs, Ws]``, ``[B, Ct, Ht, Wt]``) a 1×1
    ``Conv2d(Cs, Ct)``, after which both maps are adaptive-average-pooled to ``(min(Hs, Ht), min(Ws, Wt))`` when
    their sizes differ; otherwise a ``Linear(Ds, Dt)`` on vectors (conv maps global-average-pooled to ``[B, C]``,
    other shapes flattened). Raises ``DistillError('invalid_spec')`` from ``setup`` for empty features."""

    def setup(self, student_shapes, teacher_shapes):
        """Build the 1×1 conv or linear regressor from the per-sample shapes."""
        s, t = student_shapes[self.s_layer], teacher_shapes[self.t_layer]
        self.conv = len(s) == 3 and len(t) == 3
        if self.conv:
            self.adapter = nn.Conv2d(s[0], t[0], kernel_size=1)
            self.out_hw = (min(s[1], t[1]), min(s[2], t[2]))
        else:
            ds, dt = _vector_width(s), _vector_width(t)
            if ds < 1 or dt < 1:
                raise DistillError("invalid_spec", f"empty features at {self.s_layer!r} / {self.t_layer!r}", self.param)
            self.adapter = nn.Linear(ds, dt)

    def teacher_terms(self, student_logits, teacher_logits, labels, epoch, student_features, teacher_features):
        """``{'fitnet': MSE(r(S), T)}`` (before the weight)."""
        s, t = student_features[self.s_layer], teacher_features[self.t_layer]
        if self.conv:
            a = self.adapter(s)
            if tuple(a.shape[2:]) != self.out_hw:
                a = F.adaptive_avg_pool2d(a, self.out_hw)
            if tuple(t.shape[2:]) != self.out_hw:
                t = F.adaptive_avg_pool2d(t, self.out_hw)
        else:
            a, t = self.adapter(as_vector(s)), as_vector(t)
        return {"fitnet": F.mse_loss(a, t)}


def attention_map(x: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis 2017: ``Q = mean over channels of |x|^p`` of ``x [B, C, H, W]``,
    adaptive-average-pooled to ``size`` when given, flattened to ``[B, H·W]`` and L2-normalised per row
    (the channel mean equals the paper's channel sum up to a constant the normalisation removes)."""
    q = x.abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None and tuple(q.shape[2:]) != tuple(size):
        q = F.adaptive_avg_pool2d(q, size)
    return F.normalize(q.flatten(1), dim=1)


@register_method(AttentionTransferParams)
class AttentionTransfer(_FeaturePair):
    """Attention transfer (Zagoruyko & Komodakis 2017, ICLR, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer"): term ``attention_transfer = weight ·
    at_beta/2 · mean((Q_s - Q_t)²)`` with ``Q = attention_map(A, at_p)`` of the chosen student and teacher conv
    maps (p = 2, beta = 1000 by default, as the authors' code; the mean runs over the B·H·W entries). When the
    spatial sizes differ both maps are pooled to the smaller size. Channel counts may differ. ``setup`` raises
    ``DistillError('invalid_spec')`` when a chosen layer does not output ``[B, C, H, W]`` maps."""

    def __init__(self, *args: Any, p: float = 2.0, beta: float = 1000.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.p, self.beta = float(p), float(beta)

    def setup(self, student_shapes, teacher_shapes):
        """Check both layers give conv maps; fix the common map size."""
        s, t = student_shapes[self.s_layer], teacher_shapes[self.t_layer]
        for who, layer, shape in (("student", self.s_layer, s), ("teacher", self.t_layer, t)):
            if len(shape) != 3:
                raise DistillError("invalid_spec", f"attention_transfer needs conv feature maps [C, H, W]; the {who} layer {layer!r} "
                                   f"outputs per-sample shape {list(shape)}", f"{self.param}.{who}_layer")
        self.size = (min(s[1], t[1]), min(s[2], t[2]))

    def teacher_terms(self, student_logits, teacher_logits, labels, epoch, student_features, teacher_features):
        """``{'attention_transfer': beta/2 · mean((Q_s - Q_t)²)}``."""
        qs = attention_map(student_features[self.s_layer], self.p, self.size)
        qt = attention_map(teacher_features[self.t_layer], self.p, self.size)
        return {"attention_transfer": (self.beta / 2) * (qs - qt).pow(2).mean()}


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix ``[B, B]`` of ``e [B, D]`` (squared distances clamped at ``eps`` before the square
    root, diagonal set to 0), as the RKD authors' ``pdist``."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d.masked_fill(eye, 0.0)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance-wise loss (Park et al. 2019): Huber (smooth L1, delta 1) between the student's and the teacher's
    pairwise-distance matrices ``[B, B]``, each divided by the mean of its positive entries; mean over the B²
    entries. Inputs ``[B, Ds]``, ``[B, Dt]``; the teacher side carries no gradient."""
    with torch.no_grad():
        td = pairwise_distances(teacher)
        td = td / td[td > 0].mean()
    sd = pairwise_distances(student)
    sd = sd / sd[sd > 0].mean()
    return F.smooth_l1_loss(sd, td)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle-wise loss (Park et al. 2019): for every triplet (i, j, k) the cosine of the angle at j,
    ``<e_i - e_j, e_k - e_j>`` of unit vectors; Huber (smooth L1) between student and teacher over the B³ cosines
    (degenerate triplets give 0 on both sides). Inputs ``[B, Ds]``, ``[B, Dt]``. Memory O(B²·D)."""
    with torch.no_grad():
        tv = F.normalize(teacher.unsqueeze(0) - teacher.unsqueeze(1), p=2, dim=2)
        ta = torch.bmm(tv, tv.transpose(1, 2)).reshape(-1)
    sv = F.normalize(student.unsqueeze(0) - student.unsqueeze(1), p=2, dim=2)
    sa = torch.bmm(sv, sv.transpose(1, 2)).reshape(-1)
    return F.smooth_l1_loss(sa, ta)


@register_method(RKDParams)
class RelationalKD(_FeaturePair):
    """Relational Knowledge Distillation (Park, Kim, Lu & Cho 2019, CVPR, "Relational Knowledge Distillation"):
    terms ``rkd_distance = weight · distance_weight · rkd_distance_loss`` and ``rkd_angle = weight ·
    angle_weight · rkd_angle_loss`` (defaults 25 and 50, the paper's) on the embeddings of the chosen layers
    (default: the penultimate features; conv maps global-average-pooled, other shapes flattened). Widths may
    differ: only relations between the samples of a batch are compared."""

    def __init__(self, *args: Any, distance_weight: float = 25.0, angle_weight: float = 50.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    @property
    def teacher_term_names(self) -> list[str]:
        return ["rkd_distance", "rkd_angle"]

    def teacher_terms(self, student_logits, teacher_logits, labels, epoch, student_features, teacher_features):
        """``{'rkd_distance': wd·L_dist, 'rkd_angle': wa·L_angle}``."""
        s, t = as_vector(student_features[self.s_layer]), as_vector(teacher_features[self.t_layer])
        wd, wa = self.distance_weight, self.angle_weight
        return {"rkd_distance": wd * rkd_distance_loss(s, t), "rkd_angle": wa * rkd_angle_loss(s, t)}


@register_method(PrototypeParams)
class PrototypeKD(_FeaturePair):
    """Prototype-based transfer (the product's method; in the spirit of prototype/centroid distillation).

    Before training (``prepare``), over the whole training set: prototype ``P_k [Dt]`` = mean of the teacher's
    features at ``teacher_layer`` (default 'penultimate': the input of its last Linear; conv maps
    global-average-pooled) over the rows of class k, a row's class being its label, or the teacher's argmax when
    it has none (a class with no rows keeps a zero prototype). The prototypes are a fixed buffer ``[K, Dt]``.

    Per step: the student's feature at ``student_layer`` (default penultimate; vectorised likewise, ``[B, Ds]``) goes
    through a learned ``Linear(Ds, Dt)`` projection g. With c the class of each row (label, else teacher argmax):

    - ``prototype_mse = weight · mse_weight · mean((g - P_c)²)`` (mean over B·Dt entries);
    - ``prototype_kl = weight · kl_weight · KL(softmax(cos(f_t, P)/τ) ‖ softmax(cos(g, P)/τ))``,
      batchmean over the B rows, where ``cos(·, P) [B, K]`` are cosine similarities to the K prototypes, f_t the
      teacher's feature of the row and τ = ``temperature`` (0.1; no τ² factor).
    """

    needs_dataset_pass = True

    def __init__(self, *args: Any, mse_weight: float = 1.0, kl_weight: float = 1.0, temperature: float = 0.1, **kw: Any) -> None:
        super().__init__(*args, temperature=temperature, **kw)
        self.mse_weight, self.kl_weight = float(mse_weight), float(kl_weight)

    @property
    def teacher_term_names(self) -> list[str]:
        return ["prototype_mse", "prototype_kl"]

    def setup(self, student_shapes, teacher_shapes):
        """Build the projection ``Linear(Ds, Dt)``."""
        ds, dt = _vector_width(student_shapes[self.s_layer]), _vector_width(teacher_shapes[self.t_layer])
        self.proj = nn.Linear(ds, dt)
        self.register_buffer("prototypes", torch.zeros(0, dt))
        self.class_counts: list[int] = []

    def prepare(self, teacher_logits, teacher_features, labels):
        """Compute the prototypes ``[K, Dt]`` (see the class docstring); ``class_counts`` holds the rows per class."""
        f = as_vector(teacher_features[self.t_layer]).float()
        k = int(teacher_logits.shape[1])
        cls = targets_or_teacher(labels.to(teacher_logits.device), teacher_logits).to(f.device)
        sums = torch.zeros(k, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, cls, f)
        counts = torch.bincount(cls, minlength=k)
        self.prototypes = sums / counts.clamp(min=1).unsqueeze(1).to(f.dtype)
        self.class_counts = [int(c) for c in counts.tolist()]

    def teacher_terms(self, student_logits, teacher_logits, labels, epoch, student_features, teacher_features):
        """``{'prototype_mse': w_mse·MSE(g, P_c), 'prototype_kl': w_kl·KL(...)}``."""
        if self.prototypes.shape[0] == 0:
            raise RuntimeError("PrototypeKD.prepare() was not called before training")
        g = self.proj(as_vector(student_features[self.s_layer]))
        ft = as_vector(teacher_features[self.t_layer])
        c = targets_or_teacher(labels, teacher_logits)
        mse = F.mse_loss(g, self.prototypes[c])
        pn = F.normalize(self.prototypes, dim=1)
        tau = self.temperature
        cos_s, cos_t = F.normalize(g, dim=1) @ pn.t(), F.normalize(ft, dim=1) @ pn.t()
        kl = F.kl_div(F.log_softmax(cos_s / tau, dim=1), F.log_softmax(cos_t / tau, dim=1), log_target=True, reduction="batchmean")
        return {"prototype_mse": self.mse_weight * mse, "prototype_kl": self.kl_weight * kl}


class LabelsOnly(Method):
    """The baseline objective (no teacher): ``{'ce': CE(s, y)}`` over labelled rows — the student trained alone,
    as in ``evaluation.compare_baseline``. Not registered: it is not a distillation method."""

    name = "ce"
    needs_teacher = False

    def __init__(self, all_labelled: bool = False) -> None:
        super().__init__(alpha=0.0, has_labels=True, all_labelled=all_labelled)

    @property
    def teacher_term_names(self) -> list[str]:
        return []

    def teacher_terms(self, *args: Any) -> dict[str, torch.Tensor]:
        return {}


class CombinedMethod(nn.Module):
    """A main method plus weighted extra methods (``method.extra``), with the ``Method`` call interface.

    ``forward`` returns the main method's terms followed by every extra's terms (an extra's term whose name is
    taken gets a ``_2``, ``_3`` ... suffix). ``student_layers``/``teacher_layers`` are the union of all parts'.
    """

    needs_teacher = True

    def __init__(self, main: Method, extras: list[Method]) -> None:
        super().__init__()
        self.main = main
        self.extras = nn.ModuleList(extras)
        self.name = main.name
        names = list(main.term_names)
        self._renames: list[dict[str, str]] = []
        for ex in extras:
            ren = {}
            for t in ex.teacher_term_names:
                new, i = t, 2
                while new in names:
                    new, i = f"{t}_{i}", i + 1
                ren[t] = new
                names.append(new)
            self._renames.append(ren)
        self._names = names

    @property
    def parts(self) -> list[Method]:
        """The main method then the extras."""
        return [self.main, *self.extras]

    @property
    def term_names(self) -> list[str]:
        """All term names in ``forward`` order."""
        return list(self._names)

    @property
    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(layer for p in self.parts for layer in p.student_layers))

    @property
    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(layer for p in self.parts for layer in p.teacher_layers))

    @property
    def needs_dataset_pass(self) -> bool:
        return any(p.needs_dataset_pass for p in self.parts)

    def setup(self, student_shapes, teacher_shapes) -> None:
        """``setup`` of every part."""
        for p in self.parts:
            p.setup(student_shapes, teacher_shapes)

    def prepare(self, teacher_logits, teacher_features, labels) -> None:
        """``prepare`` of the parts that need a dataset pass."""
        for p in self.parts:
            if p.needs_dataset_pass:
                p.prepare(teacher_logits, teacher_features, labels)

    def describe(self) -> dict[str, Any]:
        """JSON description: the main method's, with 'extra' [{..., 'weight'}]."""
        d = self.main.describe()
        d["terms"] = self.term_names
        d["extra"] = [{**ex.describe(), "weight": ex._teacher_weight / ex.teacher_scale()} for ex in self.extras]
        return d

    def forward(self, student_logits, teacher_logits, labels, *, epoch: int = 1, student_features=None, teacher_features=None):
        """All weighted terms ``{name: scalar}`` (see ``Method.forward`` for the inputs)."""
        kw = {"epoch": epoch, "student_features": student_features, "teacher_features": teacher_features}
        terms = self.main(student_logits, teacher_logits, labels, **kw)
        for ex, ren in zip(self.extras, self._renames):
            for k, v in ex(student_logits, teacher_logits, labels, **kw).items():
                terms[ren[k]] = v
        return terms


def _build_one(part: MethodParams, param: str, has_labels: bool, all_labelled: bool, extra_weight: float | None) -> nn.Module:
    return method_class(part.name)(**part.params(), has_labels=has_labels, all_labelled=all_labelled, extra_weight=extra_weight,
                                   param=param)


def build_method(spec: MethodSpec, has_labels: bool, all_labelled: bool = False) -> "Method | CombinedMethod":
    """Instantiate the spec's method(s), each as ``cls(**params)`` from its registered parameter model. ``has_labels``:
    whether the training set has any labelled row (without labels the teacher terms get weight 1 and no 'ce' term is
    produced); ``all_labelled``: whether every row is labelled (enables the cheaper plain-mean cross-entropy).

    Returns the main method alone, or a ``CombinedMethod`` when ``spec.extra`` is not empty. Feature methods
    still need ``setup`` (adapter shapes) and, for prototype, ``prepare`` before the first step.
    Raises ``DistillError('invalid_spec')`` for an unknown name or bad hyper-parameters."""
    main = _build_one(spec, "method", has_labels, all_labelled, None)
    extra = getattr(spec, "extra", [])
    if not extra:
        return main
    extras = [_build_one(e, f"method.extra.{i}", has_labels, all_labelled, e.weight) for i, e in enumerate(extra)]
    return CombinedMethod(main, extras)
