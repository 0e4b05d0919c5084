"""The sweep spec: what a user POSTs to ``/v1/sweeps`` (JSON) or gives ``stillhouse sweep submit`` (YAML).

A base job spec, a search space over dotted paths into it, the objectives, the sampler and the budget. Each trial's
job spec is the base with the sampled values set at their paths and ``data.selection`` set (``trial_spec``), so
trials are scored on a selection split carved from the training rows and the validation split stays held out.
Plain pydantic (no torch): the API validates with it, the scheduler reads it.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer, field_validator, model_validator

from distill.method_params import NO_NUL, dict_keys_as_property_names
from distill.spec import JobSpec, SelectionSpec


class _Strict(BaseModel):
    # a dict's key pattern written as propertyNames (pydantic's patternProperties would leave other keys free)
    model_config = ConfigDict(extra="forbid", json_schema_extra=dict_keys_as_property_names)


class FloatDim(_Strict):
    """A float in [low, high] (log-uniform with ``log``; on a grid of ``step`` when given)."""

    type: Literal["float"] = Field(..., description="'float': a real number in [low, high].")
    # finite only: a NaN bound compared false with everything and reached the job spec's own range check, whose
    # message ("should be <= 100") did not say what was wrong
    low: float = Field(..., allow_inf_nan=False, description="Smallest value sampled.")
    high: float = Field(..., allow_inf_nan=False, description="Largest value sampled (> low).")
    log: bool = Field(False, description="Sample on a log scale (e.g. learning rates).")
    step: float | None = Field(None, gt=0, allow_inf_nan=False, description="Discretisation step; None for continuous.")

    @model_validator(mode="after")
    def _range(self) -> "FloatDim":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        return self

    def corners(self) -> list[Any]:
        """The values a trial may take at the edges (checked against the job spec at creation)."""
        return [self.low, self.high]


class IntDim(_Strict):
    """An integer in [low, high] by ``step`` (log-uniform with ``log``)."""

    type: Literal["int"] = Field(..., description="'int': an integer in [low, high].")
    low: int = Field(..., description="Smallest value sampled.")
    high: int = Field(..., description="Largest value sampled (>= low).")
    step: int = Field(1, ge=1, description="Step between sampled values.")
    log: bool = Field(False, description="Sample on a log scale.")

    @model_validator(mode="after")
    def _range(self) -> "IntDim":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("log needs low > 0 and step 1")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def grid(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalDim(_Strict):
    """One of ``choices`` (any JSON values: numbers, strings, lists such as MLP ``hidden_sizes``)."""

    type: Literal["categorical"] = Field(..., description="'categorical': one of the choices.")
    choices: list[Any] = Field(..., min_length=1, max_length=256, description="The values to choose from (JSON values).")

    def corners(self) -> list[Any]:
        return list(self.choices)

    def grid(self) -> list[Any]:
        return list(self.choices)


class LayersDim(_Strict):
    """A list of ``depth`` equal widths (e.g. an MLP's ``hidden_sizes``): width from ``widths`` × depth from ``depths``,
    sampled as two parameters (``<path>.width``, ``<path>.depth``)."""

    type: Literal["layers"] = Field(..., description="'layers': hidden sizes of a depth x width grid (e.g. mlp hidden_sizes).")
    widths: list[Annotated[int, Field(ge=1)]] = Field(..., min_length=1, max_length=64, description="Layer widths to choose from.")
    depths: list[Annotated[int, Field(ge=0, le=64)]] = Field(..., min_length=1, max_length=64, description="Numbers of hidden "
                                                             "layers to choose from (0: no hidden layer).")

    def corners(self) -> list[Any]:
        return [[w] * d for w, d in itertools.product(self.widths, self.depths)]

    def grid(self) -> list[Any]:
        return self.corners()


Dimension = Annotated[Union[FloatDim, IntDim, CategoricalDim, LayersDim], Field(discriminator="type")]

OBJECTIVE_DIRECTIONS = {"top1": "maximize", "latency_p50_ms": "minimize", "bytes": "minimize"}


class Objective(_Strict):
    """``top1``: the student's top-1 on the selection split (up); ``latency_p50_ms``: its p50 latency at
    ``batch_size`` on the worker's device, ms (down); ``bytes``: its safetensors file, bytes (down)."""

    name: Literal["top1", "latency_p50_ms", "bytes"] = Field(..., description="'top1' (selection-split top-1, maximised), "
                                                           "'latency_p50_ms' (p50 latency in ms, minimised) or 'bytes' "
                                                           "(student file size, minimised).")
    batch_size: int = Field(1, ge=1, le=4096, description="latency_p50_ms only: the batch size it is measured at.")

    @property
    def direction(self) -> str:
        return OBJECTIVE_DIRECTIONS[self.name]

    @property
    def label(self) -> str:
        return f"latency_p50_ms@{self.batch_size}" if self.name == "latency_p50_ms" else self.name


class SamplerSpec(_Strict):
    """Optuna's sampler: ``tpe`` (Watanabe et al. 2023; multi-objective MOTPE, Ozaki et al. 2020), ``nsga2`` (Deb et
    al. 2002), ``random``, or ``grid`` (every combination; discrete dimensions only)."""

    name: Literal["tpe", "nsga2", "random", "grid"] = Field("tpe", description="Optuna sampler: 'tpe' (multi-objective TPE), "
                                                            "'nsga2' (NSGA-II), 'random' or 'grid' (every combination).")
    seed: int = Field(0, ge=0, description="The sampler's seed.")
    population_size: int | None = Field(None, ge=2, le=1000, description="nsga2 only; default max(2, max_trials // 3).")


class Budget(_Strict):
    """``max_trials`` trials at most, ``max_parallel`` in flight at once, and no new trial after ``max_runtime_s``
    seconds (the live ones are then cancelled). ``pruner``: early stopping of trials that are clearly behind, on the
    per-epoch top-1 of the selection split (Optuna's pruners; see ``stillhouse.sweeps.pruning``): ``median`` (Optuna's
    MedianPruner: stop a trial whose best top-1 so far is below the median of the completed trials' at the same epoch;
    the median stopping rule of Google Vizier, Golovin et al. 2017) or ``successive_halving`` (asynchronous successive
    halving, Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"). Pruning is single-objective:
    a sweep with a pruner must have the one objective ``top1`` (see ``SweepSpec``)."""

    max_trials: int = Field(12, ge=1, le=1000, description="Most trials (jobs) created.")
    max_parallel: int = Field(2, ge=1, le=64, description="Most trials queued or running at once.")
    max_runtime_s: float = Field(24 * 3600.0, gt=0, le=30 * 24 * 3600.0, description="Seconds after which no new trial is "
                                 "created (running ones finish).")
    pruner: Literal["none", "median", "successive_halving"] = Field(
        "none", description="Early stopping of trials on the per-epoch selection-split top-1: 'none', 'median' (below the "
        "completed trials' median at that epoch) or 'successive_halving' (asynchronous successive halving). Needs the single "
        "objective top1. A pruned trial's job ends cancelled with error code trial_pruned and does not enter the front.")


class SweepSpec(_Strict):
    """A sweep: ``base`` (a job spec, as for ``POST /v1/jobs``), ``search_space`` ({dotted path in the job spec:
    dimension}), ``objectives`` (which scores, each up or down; 1 to 3), ``sampler``, ``budget`` and the ``selection``
    split trials are scored on."""

    name: str | None = Field(None, max_length=200, pattern=NO_NUL, description="A label for the sweep (no NUL character).")
    base: JobSpec = Field(..., description="The job spec every trial starts from, as for POST /v1/jobs (validated as one; "
                          "trials start from it as the user wrote it, see base_json).")
    _base_json: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_base_as_written(cls, data: Any, handler: Any) -> "SweepSpec":
        """Validate ``base`` as a ``JobSpec`` (so the schema says what a sweep accepts), and keep the JSON the user wrote
        (``base_json``): trials set their sampled values on that, not on a full dump, so e.g. a search over
        ``method.name`` does not carry one method's filled-in fields into another's."""
        model = handler(data)
        raw = data.get("base") if isinstance(data, dict) else None
        model._base_json = copy.deepcopy(raw) if isinstance(raw, dict) else model.base.model_dump(mode="json", exclude_unset=True)
        method = model._base_json.get("method")
        if not (isinstance(method, str) or (isinstance(method, dict) and method.get("name"))) and "method.name" not in model.search_space:
            for path in model.search_space:
                if path.startswith("method."):
                    # each trial would set the parameter on a method object without a name ("method needs 'name'")
                    raise ValueError(f"search_space.{path}: the base names no method (a job without one runs 'auto', which "
                                     f"chooses its own and takes no {path.removeprefix('method.')!r}); give base.method.name, "
                                     "e.g. 'kd', or search over method.name too")
        return model

    @field_serializer("base")
    def _dump_base(self, base: JobSpec) -> dict[str, Any]:
        """Stored and shown as written (``base_json``)."""
        return copy.deepcopy(self._base_json)

    @field_validator("name", mode="before")
    @classmethod
    def _name_without_nul(cls, name: Any) -> Any:
        """A NUL character in the name is refused (422 naming ``name``): every trial's job is named after the sweep, and
        a job name may not hold one (PostgreSQL text cannot store it), so such a sweep would be stored and then never
        start a trial. Raises ValueError."""
        if isinstance(name, str) and "\x00" in name:
            raise ValueError("'name' contains a NUL character (\\u0000); trials are jobs named after the sweep")
        return name

    @property
    def base_json(self) -> dict[str, Any]:
        """The base job spec as the user wrote it (JSON)."""
        return self._base_json
    search_space: dict[Annotated[str, Field(pattern=r"^[a-z_]+(\.[A-Za-z0-9_]+)+$", max_length=200)], Dimension] = Field(
        ..., min_length=1, max_length=16, description="{dotted path in the job spec (e.g. 'method.temperature'): dimension}.")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(name="top1"), Objective(name="latency_p50_ms"), Objective(name="bytes")],
        min_length=1, max_length=3, description="What the front trades off (1 to 3, each at most once): default top-1, p50 "
        "latency and bytes.", json_schema_extra={"uniqueItems": True})
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="How trials are sampled.")
    budget: Budget = Field(default_factory=Budget, description="Limits on trials, parallelism and time.")
    selection: SelectionSpec = Field(default_factory=SelectionSpec, description="The selection split carved from the training "
                                     "rows that trials are scored on (never the reported validation split).")

    @model_validator(mode="after")
    def _checks(self) -> "SweepSpec":
        labels = [o.label for o in self.objectives]
        if len(set(labels)) != len(labels):
            raise ValueError("objectives: each objective at most once")
        if self.budget.pruner != "none" and labels != ["top1"]:
            # Optuna's pruners compare one intermediate value per epoch (Trial.report refuses multi-objective studies).
            # Pruning a multi-objective sweep on its quality objective alone would stop exactly the small, fast students
            # that are behind on top-1 early yet belong on the accuracy-latency-size front, so it is refused instead.
            raise ValueError(f"budget.pruner {self.budget.pruner!r} needs objectives [top1] alone (pruning compares the "
                             f"per-epoch selection-split top-1 of trials; with objectives {labels} it would drop small students "
                             "that belong on the front); use pruner 'none' for a multi-objective sweep")
        if self.sampler.name == "grid":
            for path, dim in self.search_space.items():
                if isinstance(dim, FloatDim):
                    raise ValueError(f"search_space.{path}: the grid sampler needs discrete values (int, categorical, layers)")
        return self

    def grid_size(self) -> int | None:
        """Combinations of the grid sampler (None for the other samplers)."""
        if self.sampler.name != "grid":
            return None
        n = 1
        for dim in self.search_space.values():
            n *= len(dim.grid())
        return n


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at the dotted ``path`` of the JSON-shaped ``spec`` (intermediate objects created)."""
    node = spec
    parts = path.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def trial_spec(sweep: SweepSpec, values: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The JSON job spec of a trial: the base with ``values`` ({path: value}) set, ``data.selection`` from the sweep,
    each latency objective's batch size among ``evaluation.latency_batch_sizes``, and ``evaluation.compare_baseline``
    false unless the base (or the search space) sets it: a job's default trains the student a second time alone for the
    report's distillation gain, which no sweep score or front reads, and which doubled every trial's training (the
    base's ``compare_baseline: true`` still runs it). Not validated here."""
    spec = copy.deepcopy(sweep.base_json)
    for path, value in values.items():
        set_path(spec, path, copy.deepcopy(value))
    set_path(spec, "data.selection", sweep.selection.model_dump(mode="json"))
    sizes = list((spec.get("evaluation") or {}).get("latency_batch_sizes") or [1, 64])
    for o in sweep.objectives:
        if o.name == "latency_p50_ms" and o.batch_size not in sizes:
            sizes.append(o.batch_size)
    set_path(spec, "evaluation.latency_batch_sizes", sizes)
    if spec["evaluation"].get("compare_baseline") is None:
        spec["evaluation"]["compare_baseline"] = False
    if name is not None:
        spec["name"] = name[:200]
    return spec


def corner_specs(sweep: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """(path, job spec JSON) for each edge value of each dimension, the others left at the base: what creation
    validates, so a search space that cannot be built is refused up front naming its field."""
    out = []
    for path, dim in sweep.search_space.items():
        for v in dim.corners()[:32]:
            out.append((path, trial_spec(sweep, {path: v})))
    return out


def validate_trial(spec: dict[str, Any]) -> JobSpec:
    """The trial's ``JobSpec``. Raises pydantic's ``ValidationError``."""
    return JobSpec.model_validate(spec)


def encode_choice(value: Any) -> str:
    """A categorical choice as Optuna stores it (JSON text: Optuna's choices are scalars)."""
    return json.dumps(value, sort_keys=True)
