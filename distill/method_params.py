"""Each distillation method's own parameters (plain pydantic, no torch) and the name -> parameters registry.

The API validates job specs without torch, so a method's parameter model lives here, away from its loss class
(``distill/methods.py``, ``distill/text/adapters.py``), which registers against it with
``@register_method(ItsParams)`` and is built as ``cls(**params)``.

Adding a method: a ``MethodParams`` subclass here, decorated ``@register_params`` (its ``name`` a ``Literal``, its
fields with ranges and descriptions, its paper in ``paper``), a loss class registered against it, and tests. The
spec's ``method`` field (``MethodField``: a union discriminated by ``name``) and the ``method.extra`` items
(``ExtraField``) are generated from this registry: one schema per method in ``/openapi.json``.

For each registered ``P`` two models are generated: ``<P>Method`` (the main method: ``P``'s fields plus ``alpha``
and ``ce_weight`` when ``P`` takes them, and ``extra`` when it combines) and, for methods that combine,
``<P>Extra`` (an extra term: ``P``'s fields plus ``weight``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator
from typing_extensions import TypeAliasType

NO_NUL = "^[^\\x00]*$"
"""JSON Schema pattern of a string without a NUL character (PostgreSQL text cannot hold one; the spec refuses it)."""


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """``node`` and every schema nested in it through anyOf/oneOf/allOf/items/prefixItems/additionalProperties/
    properties (not $refs), each parent before its children (a caller may rewrite a parent's keywords as it goes)."""
    if isinstance(node, list):
        for n in node:
            yield from _subschemas(n)
        return
    if not isinstance(node, dict):
        return
    yield node
    for key in ("anyOf", "oneOf", "allOf", "items", "prefixItems"):
        if key in node:
            yield from _subschemas(node[key])
    if isinstance(node.get("additionalProperties"), dict):
        yield from _subschemas(node["additionalProperties"])
    for prop in (node.get("properties") or {}).values():
        yield from _subschemas(prop)


def dict_keys_as_property_names(schema: dict[str, Any], cls: type | None = None) -> None:
    """Rewrite every pydantic ``dict[Key, V]`` schema in ``schema`` whose key type has a pattern so that JSON Schema
    validators enforce the key rule as pydantic does. Pydantic writes such a dict as ``patternProperties: {pattern: V}``
    (its other key constraints, e.g. ``maxLength``, go to ``propertyNames``), which leaves keys that do not match the
    pattern free; this moves the pattern into ``propertyNames`` and ``V`` to ``additionalProperties``. Only an object
    with that one pattern, no ``properties``, no ``additionalProperties`` and no ``propertyNames`` pattern is rewritten.
    In place; usable as a model's ``json_schema_extra`` (``cls`` is ignored). Raises nothing."""
    for node in _subschemas(schema):
        pattern_props = node.get("patternProperties")
        names = node.get("propertyNames", {})
        if (node.get("type") == "object" and isinstance(pattern_props, dict) and len(pattern_props) == 1
                and not {"properties", "additionalProperties"} & set(node) and "pattern" not in names):
            (pattern, value), = pattern_props.items()
            del node["patternProperties"]
            node["additionalProperties"] = value
            node["propertyNames"] = {**names, "pattern": pattern}


def _no_nul_strings(node: Any) -> None:
    """Give every string schema in ``node`` without a pattern, enum or const the ``NO_NUL`` pattern, and every object
    schema of free keys ``propertyNames`` with it (walks as ``_subschemas`` does). Run after
    ``dict_keys_as_property_names`` (whose ``propertyNames`` it leaves alone)."""
    for n in _subschemas(node):
        if n.get("type") == "string" and not ({"pattern", "enum", "const", "format"} & set(n)):
            n["pattern"] = NO_NUL
        if (n.get("type") == "object" and n.get("additionalProperties") is not False and "propertyNames" not in n
                and ({"additionalProperties", "patternProperties"} & set(n))):
            n["propertyNames"] = {"pattern": NO_NUL}


def _spec_schema(schema: dict[str, Any], cls: type) -> None:
    dict_keys_as_property_names(schema)
    _no_nul_strings(schema)
    schema.update(getattr(cls, "schema_extra", {}))


class SpecModel(BaseModel):
    """Base of every job-spec model: unknown fields are refused, numbers are strict (``true`` or ``"4"`` is not a
    number; an integer is accepted for a float, an integral float such as ``3.0`` for an integer, as JSON Schema's
    'integer' says), and the schema says that no string may hold a NUL character. A subclass adds JSON Schema
    keywords the validators enforce (a oneOf, a not) in its ``schema_extra`` class variable."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_spec_schema)
    schema_extra: ClassVar[dict[str, Any]] = {}


def _integral(v: Any) -> Any:
    return int(v) if type(v) is float and v.is_integer() else v


INTEGRAL = BeforeValidator(_integral)
"""Accepts an integral float (3.0) for an integer field; put it before a ``Field`` in an ``Annotated`` list item."""
Int = Annotated[int, INTEGRAL]
"""An integer of the spec: a JSON integer, or an integral float (3.0); never a bool or a string."""

NoNulStr = Annotated[str, Field(pattern=NO_NUL)]
JsonValue = TypeAliasType("JsonValue", Union[None, bool, int, float, NoNulStr, list["JsonValue"],  # type: ignore[misc]
                                              Annotated[dict[NoNulStr, "JsonValue"], Field(json_schema_extra=dict_keys_as_property_names)]])
"""Any JSON value whose strings (keys included) hold no NUL character: free-form keyword arguments."""


class MethodParams(SpecModel):
    """A method's own parameters. Subclasses set ``name`` (a ``Literal``) and the class variables below."""

    name: str
    paper: ClassVar[str] = ""
    """The method's paper (authors, year, title), shown in the schema."""
    reads_features: ClassVar[bool] = False
    """True: the method reads intermediate features (forward hooks), so it needs an eager PyTorch teacher."""
    tasks: ClassVar[tuple[str, ...]] = ("classification", "sequence_classification")
    """Task families the method serves (``JobSpec.task`` values)."""
    takes_alpha: ClassVar[bool] = True
    """True: a main method of this kind has ``alpha`` (teacher-term weight; ``1 - alpha`` weighs the labels' CE)."""
    takes_ce_weight: ClassVar[bool] = True
    """True: a main method of this kind has ``ce_weight`` (weight of the ground-truth cross-entropy term)."""
    combinable: ClassVar[bool] = True
    """True: the method can be an extra term (``method.extra``) and take extras."""

    def params(self) -> dict[str, Any]:
        """The keyword arguments of the method's loss class: every field but ``name``, ``extra`` and ``weight`` (nested
        models stay models). Example: ``{'temperature': 4.0, 'logit_standardization': False, 'alpha': 0.9,
        'ce_weight': None}`` for ``kd``."""
        return {k: getattr(self, k) for k in type(self).model_fields if k not in ("name", "extra", "weight")}


METHOD_PARAMS: dict[str, type[MethodParams]] = {}
"""Registered methods: name -> parameter model, in registration order."""


def register_params(cls: type[MethodParams]) -> type[MethodParams]:
    """Class decorator registering a ``MethodParams`` subclass under its ``name`` literal. Raises ``ValueError`` when the
    name is not a single-value ``Literal`` default or is already registered."""
    default = cls.model_fields["name"].default
    if not isinstance(default, str) or not default:
        raise ValueError(f"{cls.__name__}.name needs a Literal default (the method's name)")
    if default in METHOD_PARAMS:
        raise ValueError(f"method {default!r} is already registered")
    METHOD_PARAMS[default] = cls
    return cls


_TEMPERATURE = "Softmax temperature T of the soft targets."
_STANDARDIZE = ("z-score each sample's student and teacher logits over the classes (mean 0, unbiased std 1, +1e-7) before "
                "dividing by T (Sun et al. 2024, 'Logit Standardization in Knowledge Distillation').")
_LAYER = ("The {who} module whose output is matched, by its path in model.named_modules() (e.g. 'features.3'; "
          "GET /v1/files/{{id}}/layers lists them){default}.")
_PENULTIMATE = "; default: the penultimate features (the input of the last Linear)"
Layer = Annotated[str, Field(min_length=1, max_length=300)]


@register_params
class KDParams(MethodParams):
    """kd: soft labels, ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T))`` plus ``(1 - alpha) · CE`` on labelled rows."""

    paper: ClassVar[str] = "Hinton, Vinyals & Dean 2015, 'Distilling the Knowledge in a Neural Network'"
    tasks: ClassVar[tuple[str, ...]] = ("classification", "sequence_classification", "causal_lm")
    name: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0, le=100, description=_TEMPERATURE + " Task causal_lm: forward KL(p ‖ q) per target "
                               "token over the vocabulary; when the spec gives no temperature the job uses 1 (JobSpec._measured_defaults).")
    logit_standardization: bool = Field(False, description=_STANDARDIZE)


@register_params
class HardLabelParams(MethodParams):
    """hard_label: cross-entropy to the teacher's argmax, ``alpha · CE(s, argmax t)`` plus ``(1 - alpha) · CE`` on
    labelled rows (no temperature)."""

    paper: ClassVar[str] = "Touvron et al. 2021, 'Training data-efficient image transformers & distillation through attention'"
    name: Literal["hard_label"] = "hard_label"


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


@register_params
class DKDParams(MethodParams):
    """dkd: decoupled KD, ``w(epoch) · (alpha · TCKD + beta · NCKD)`` plus ``ce_weight · CE`` (default 1.0, mdistiller's
    CE_LOSS_WEIGHT), with ``w(epoch) = min(epoch / warmup_epochs, 1)``."""

    paper: ClassVar[str] = "Zhao, Cui, Song, Qiu & Liang 2022, 'Decoupled Knowledge Distillation'"
    takes_alpha: ClassVar[bool] = False  # its own 'alpha' weighs TCKD
    name: Literal["dkd"] = "dkd"
    temperature: float = Field(4.0, gt=0, le=100, description=_TEMPERATURE)
    logit_standardization: bool = Field(False, description=_STANDARDIZE)
    alpha: float = Field(1.0, ge=0, le=1000, description="Weight of TCKD, the binary target/non-target KL.")
    beta: float = Field(DKD_BETA, ge=0, le=1000, description="Weight of NCKD, the KL among the non-target classes. Default 0.5, "
                        "not the paper's CIFAR-100 8: see DKD_BETA (8 measured -2.3 to -2.8 points against the student alone).")
    warmup_epochs: Int = Field(1, ge=1, le=10_000, description="The TCKD+NCKD weight ramps as min(epoch / warmup_epochs, 1) "
                               "(mdistiller; 1 = no ramp; mdistiller uses 20 for 240-epoch CIFAR-100 runs). When not given, a "
                               "dkd job uses max(1, training.epochs // 5) (DKD_WARMUP_FRACTION; JobSpec._measured_defaults).")


class _FeatureParams(MethodParams):
    reads_features: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)


@register_params
class FitNetParams(_FeatureParams):
    """fitnet: hint MSE between the student layer's output through a learned 1x1-conv/linear regressor and the
    teacher layer's output."""

    paper: ClassVar[str] = "Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, 'FitNets: Hints for Thin Deep Nets'"
    name: Literal["fitnet"] = "fitnet"
    student_layer: Layer = Field(..., description=_LAYER.format(who="student", default=""))
    teacher_layer: Layer = Field(..., description=_LAYER.format(who="teacher", default=""))


@register_params
class AttentionTransferParams(_FeatureParams):
    """attention_transfer: ``beta/2 · mean((Q_s - Q_t)²)`` of the L2-normalised spatial attention maps ``Q = mean_c |A|^p``
    of two conv layers."""

    paper: ClassVar[str] = ("Zagoruyko & Komodakis 2017, 'Paying More Attention to Attention: Improving the Performance of "
                            "Convolutional Neural Networks via Attention Transfer'")
    name: Literal["attention_transfer"] = "attention_transfer"
    student_layer: Layer = Field(..., description=_LAYER.format(who="student", default=" (a conv layer)"))
    teacher_layer: Layer = Field(..., description=_LAYER.format(who="teacher", default=" (a conv layer)"))
    p: float = Field(2.0, gt=0, le=8, description="The power p of |A|^p.")
    beta: float = Field(1000.0, ge=0, le=1e6, description="beta; the term is beta/2 times the mean squared difference of the "
                        "normalised maps, as the authors' code.")


@register_params
class RKDParams(_FeatureParams):
    """rkd: relational KD, Huber losses between the student's and the teacher's pairwise distances and triplet angles
    within a batch."""

    paper: ClassVar[str] = "Park, Kim, Lu & Cho 2019, 'Relational Knowledge Distillation'"
    name: Literal["rkd"] = "rkd"
    student_layer: Layer | None = Field(None, description=_LAYER.format(who="student", default=_PENULTIMATE))
    teacher_layer: Layer | None = Field(None, description=_LAYER.format(who="teacher", default=_PENULTIMATE))
    distance_weight: float = Field(25.0, ge=0, le=1e4, description="Weight of the distance-wise loss (25: the paper's).")
    angle_weight: float = Field(50.0, ge=0, le=1e4, description="Weight of the angle-wise loss (50: the paper's).")


@register_params
class PrototypeParams(_FeatureParams):
    """prototype: class prototypes of the teacher's features (computed once before training); the student's projected
    feature matches its class prototype (MSE) and the teacher's similarity distribution over the prototypes (KL)."""

    paper: ClassVar[str] = "stillhouse's own method, in the spirit of prototype/centroid distillation"
    name: Literal["prototype"] = "prototype"
    student_layer: Layer | None = Field(None, description=_LAYER.format(who="student", default=_PENULTIMATE))
    teacher_layer: Layer | None = Field(None, description=_LAYER.format(who="teacher", default=_PENULTIMATE))
    mse_weight: float = Field(1.0, ge=0, le=1e4, description="Weight of the MSE to the class prototype.")
    kl_weight: float = Field(1.0, ge=0, le=1e4, description="Weight of the similarity-distribution KL.")
    temperature: float = Field(0.1, gt=0, le=100, description="Temperature of the softmax over cosine similarities to the "
                               "prototypes (cosines lie in [-1, 1], hence a small default).")


class LayerPair(SpecModel):
    """A student layer matched to a teacher layer (0-based transformer layer indices)."""

    student: Int = Field(..., ge=0, le=1024, description="Student layer.")
    teacher: Int = Field(..., ge=0, le=1024, description="Teacher layer.")


@register_params
class EmbeddingParams(MethodParams):
    """embedding (task sentence_embedding): ``cosine_weight · (1 - cos(s, t)) + mse_weight · MSE(s, t)`` between the
    student's and the teacher's sentence embeddings, plus optional TinyBERT-style hidden-state and attention-map
    matching of chosen layer pairs."""

    paper: ClassVar[str] = "Jiao et al. 2020, 'TinyBERT: Distilling BERT for Natural Language Understanding' (layer matching)"
    tasks: ClassVar[tuple[str, ...]] = ("sentence_embedding",)
    takes_alpha: ClassVar[bool] = False
    takes_ce_weight: ClassVar[bool] = False
    combinable: ClassVar[bool] = False
    name: Literal["embedding"] = "embedding"
    cosine_weight: float = Field(1.0, ge=0, le=1000, description="Weight of 1 - cos(student, teacher embedding).")
    mse_weight: float = Field(0.0, ge=0, le=1000, description="Weight of the mean squared error between the embeddings.")
    hidden_layers: list[LayerPair] = Field(default_factory=list, max_length=128, description="Hidden-state matching pairs "
                                           "(TinyBERT); a learned linear projection maps the student's width to the teacher's.")
    hidden_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the hidden-state MSE (summed over pairs).")
    attention_layers: list[LayerPair] = Field(default_factory=list, max_length=128, description="Attention-map matching pairs "
                                              "(TinyBERT): MSE of head-averaged attention probabilities.")
    attention_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the attention-map MSE (summed over pairs).")


# ------------------------------------------------------------------ causal language models (task causal_lm)

_LM_TEMPERATURE = ("Softmax temperature T of the teacher's and the student's next-token distributions (the divergence is "
                   "multiplied by T²); 1 = the distributions as the teacher samples them.")


class _LMParams(MethodParams):
    """A causal-LM method: per target token, mixed with ``(1 - alpha)`` next-token cross-entropy; no extra terms."""

    tasks: ClassVar[tuple[str, ...]] = ("causal_lm",)
    combinable: ClassVar[bool] = False


@register_params
class ReverseKLParams(_LMParams):
    """reverse_kl: ``alpha · T² · KL(q ‖ p)`` per target token (mode-seeking) plus ``(1 - alpha)`` next-token CE."""

    paper: ClassVar[str] = "Gu, Dong, Wei & Huang 2024, 'MiniLLM: Knowledge Distillation of Large Language Models'"
    name: Literal["reverse_kl"] = "reverse_kl"
    temperature: float = Field(1.0, gt=0, le=100, description=_LM_TEMPERATURE)


@register_params
class GKDParams(_LMParams):
    """gkd: the generalized Jensen-Shannon divergence ``JSD(β) = β KL(p ‖ m) + (1 − β) KL(q ‖ m)``, ``m = β p + (1 − β) q``,
    per target token, times ``alpha · T²``, plus ``(1 - alpha)`` next-token CE; β = 0 is forward KL, β = 1 reverse KL."""

    paper: ClassVar[str] = ("Agarwal et al. 2024, 'On-Policy Distillation of Language Models: Learning from Self-Generated "
                            "Mistakes' (GKD)")
    name: Literal["gkd"] = "gkd"
    temperature: float = Field(1.0, gt=0, le=100, description=_LM_TEMPERATURE)
    beta: float = Field(0.5, ge=0, le=1, description="The teacher's weight β in the mixture m (0: forward KL, 1: reverse KL).")


@register_params
class SeqKDParams(_LMParams):
    """seqkd: sequence-level KD, next-token cross-entropy on the teacher's own answers to every training prompt (the
    teacher generates them first, data.generation)."""

    paper: ClassVar[str] = "Kim & Rush 2016, 'Sequence-Level Knowledge Distillation'"
    takes_alpha: ClassVar[bool] = False
    takes_ce_weight: ClassVar[bool] = False
    name: Literal["seqkd"] = "seqkd"


# ------------------------------------------------------------------ renamed fields (the flat spec before per-method models)

RENAMED: dict[str, tuple[str, str]] = {
    "dkd_alpha": ("dkd", "alpha"), "dkd_beta": ("dkd", "beta"), "dkd_warmup_epochs": ("dkd", "warmup_epochs"),
    "at_p": ("attention_transfer", "p"), "at_beta": ("attention_transfer", "beta"),
    "rkd_distance_weight": ("rkd", "distance_weight"), "rkd_angle_weight": ("rkd", "angle_weight"),
    "prototype_mse_weight": ("prototype", "mse_weight"), "prototype_kl_weight": ("prototype", "kl_weight"),
    "prototype_temperature": ("prototype", "temperature"),
}
"""Old flat field -> (method, new field name)."""


AUTO_SELECTION_BUDGET = 0.5
"""Default ``selection_budget`` of method 'auto': the candidate trainings take at most half of the job's training steps
(issue 11: the selection costs at most a stated fraction of the job, e.g. <= 50%)."""


@register_params
class AutoParams(MethodParams):
    """auto (the default): no loss of its own; the job picks among a documented candidate set (``distill.auto``: the
    student alone, kd T4 alpha 0.9, kd T2 alpha 0.5, hard_label, at the spec's lr; see distill.auto.LR_FACTORS) by short trainings on
    the training rows outside a selection split carved from them, scored by selection top-1 (a tie within the
    paired-bootstrap noise goes to the student alone; with a teacher at >= 99% on the selection split, which it was
    trained on, a distilled candidate must win by more than distill.auto.MEMORISED_MARGIN_POINTS), then retrains the
    winner on all training rows for the full epochs. Tensor classification with labelled rows; text tasks and data
    without labels run kd (T4 alpha 0.9)."""

    paper: ClassVar[str] = ("stillhouse issue 11 (model selection on a held-out split of the training rows; candidates after "
                            "Hinton et al. 2015 and Touvron et al. 2021)")
    takes_alpha: ClassVar[bool] = False
    takes_ce_weight: ClassVar[bool] = False
    combinable: ClassVar[bool] = False
    name: Literal["auto"] = "auto"
    selection_budget: float = Field(AUTO_SELECTION_BUDGET, gt=0, le=1, description="The candidate trainings together take "
                                    "at most this fraction of the job's training steps (epochs x steps per epoch on all "
                                    "training rows), split evenly among the candidates.")


def check_method_object(value: Any, where: str) -> None:
    """Refuse, with a message naming the new field, a method object of the old flat shape (``dkd_beta`` ...) or one
    without ``name``; ``where`` is its path ('method', 'method.extra.0'). Raises ``ValueError``; other inputs pass."""
    if not isinstance(value, dict):
        return
    for old, (method, new) in RENAMED.items():
        if old in value:
            raise ValueError(f"{where}.{old} was renamed: use {new!r} under method {method!r} ({where}: {{name: {method}, {new}: ...}})")
    if "name" not in value:
        raise ValueError(f"{where} needs 'name': one of {', '.join(METHOD_PARAMS)}")


# ------------------------------------------------------------------ the generated variants

class _Alpha(SpecModel):
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the teacher term(s); (1 - alpha) weighs ground-truth "
                         "cross-entropy on labelled rows (unless ce_weight is given). Unlabelled rows use the teacher terms alone.")


class _CeWeight(SpecModel):
    ce_weight: float | None = Field(None, ge=0, le=1000, description="Weight of the ground-truth cross-entropy term; default "
                                    "1 - alpha (1.0 for dkd, mdistiller's CE_LOSS_WEIGHT).")


class _Weight(SpecModel):
    weight: float = Field(1.0, ge=0, le=1e4, description="Multiplier of this extra's teacher terms.")


class _FitNetWeight(SpecModel):
    weight: float = Field(FITNET_EXTRA_WEIGHT, ge=0, le=1e4, description="Multiplier of this extra's hint term; default 0.1 "
                          "(FITNET_EXTRA_WEIGHT: a hint at weight 1 measured -1.9 points against the student alone, at 0.1 -0.5).")


class MainMethod(MethodParams):
    """Base of the generated main-method models (``<P>Method``)."""

    def components(self) -> list[tuple[str, MethodParams]]:
        """``[(param_path, params)]`` of the main method (``'method'``) and each extra (``'method.extra.<i>'``)."""
        return [("method", self)] + [(f"method.extra.{i}", e) for i, e in enumerate(getattr(self, "extra", []))]


class ExtraMethod(MethodParams):
    """Base of the generated extra-term models (``<P>Extra``): a further weighted loss added to the main method's terms.
    Its teacher terms are ``weight x`` the method's own; an extra never adds a ground-truth 'ce' term (the main method
    owns it)."""


def _doc(p: type[MethodParams], role: str) -> str:
    return f"{(p.__doc__ or p.__name__).strip()} {role}Paper: {p.paper}."


def _variants() -> tuple[dict[str, type[MainMethod]], dict[str, type[ExtraMethod]]]:
    stem = {name: p.__name__.removesuffix("Params") for name, p in METHOD_PARAMS.items()}
    extras: dict[str, type[ExtraMethod]] = {}
    for name, p in METHOD_PARAMS.items():
        if p.combinable:
            weight = _FitNetWeight if name == "fitnet" else _Weight
            extras[name] = create_model(f"{stem[name]}Extra", __base__=(weight, p, ExtraMethod), __module__=__name__,
                                        __doc__=_doc(p, "As an extra term (method.extra). "),
                                        name=(Literal[name], Field(..., description=f"'{name}'.")))  # type: ignore[call-overload]
    extra_union = Annotated[Union[tuple(extras.values())], Field(discriminator="name")]  # type: ignore[valid-type]
    mains: dict[str, type[MainMethod]] = {}
    for name, p in METHOD_PARAMS.items():
        bases = ((_CeWeight,) if p.takes_ce_weight else ()) + ((_Alpha,) if p.takes_alpha else ()) + (p, MainMethod)
        fields: dict[str, Any] = {"name": (Literal[name], Field(..., description=f"'{name}'."))}
        if p.combinable:
            fields["extra"] = (list[extra_union], Field(default_factory=list, max_length=8, description="Further weighted loss "
                                                        f"terms ({', '.join(extras)}), added to this method's terms."))
        validators = {"_old_extras": model_validator(mode="before")(_check_extras)} if p.combinable else None
        mains[name] = create_model(f"{stem[name]}Method", __base__=bases, __module__=__name__, __doc__=_doc(p, ""),
                                   __validators__=validators, **fields)
    return mains, extras


def _check_extras(cls: type, data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("extra"), list):
        for i, e in enumerate(data["extra"]):
            check_method_object(e, f"method.extra.{i}")
    return data


MAIN_MODELS, EXTRA_MODELS = _variants()
"""name -> generated main-method model / extra-term model."""
for _m in (*MAIN_MODELS.values(), *EXTRA_MODELS.values()):
    globals()[_m.__name__] = _m  # importable by name (pickling, schema references)

MethodField = Annotated[Union[tuple(MAIN_MODELS.values())], Field(discriminator="name")]  # type: ignore[valid-type]
"""The spec's ``method``: one of the generated main-method models, discriminated by ``name``."""

METHODS: tuple[str, ...] = tuple(METHOD_PARAMS)
FEATURE_METHODS: tuple[str, ...] = tuple(n for n, p in METHOD_PARAMS.items() if p.reads_features)
LM_METHODS: tuple[str, ...] = tuple(n for n, p in METHOD_PARAMS.items() if "causal_lm" in p.tasks)
"""The methods of task causal_lm (kd, reverse_kl, gkd, seqkd)."""
LOGIT_METHODS: tuple[str, ...] = tuple(n for n, p in METHOD_PARAMS.items()
                                       if not p.reads_features and "classification" in p.tasks and n != "auto")


def default_method(task: str = "classification") -> MainMethod:
    """The method of a spec that gives none: ``embedding`` for task sentence_embedding, else ``auto`` (``AutoParams``;
    text tasks run it as kd)."""
    name = "embedding" if task == "sentence_embedding" else "auto"
    return MAIN_MODELS[name](name=name)
