"""Response schemas of ``/v1/sweeps``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from stillhouse.sweeps.spec import SweepSpec


class TrialCounts(BaseModel):
    """Trials by their job's status."""

    created: int = Field(..., description="Trials created so far.")
    max_trials: int = Field(..., description="budget.max_trials.")
    succeeded: int
    running: int = Field(..., description="Running or cancelling.")
    queued: int
    failed: int
    cancelled: int


class BestTrial(BaseModel):
    """The best completed trial so far by the first objective (selection-split scores)."""

    trial: int
    job_id: str
    scores: dict[str, float]


class SweepObject(BaseModel):
    """A sweep: status (running → succeeded | failed | cancelled), progress and best so far."""

    id: str = Field(..., description="'swp_…'.")
    object: Literal["sweep"] = "sweep"
    name: str | None = None
    status: str
    stop_reason: str | None = Field(None, description="Why no more trials were created: max_trials, max_runtime_s, "
                                                      "search_space_exhausted, cancelled.")
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    trials: TrialCounts
    best: BestTrial | None = None
    spec: SweepSpec


class TrialObject(BaseModel):
    """One trial: its Optuna number, job, sampled params, the job's status and (once told) its state and scores on the
    selection split."""

    number: int
    job_id: str
    params: dict[str, Any]
    status: str = Field(..., description="The trial job's status.")
    state: str | None = Field(None, description="complete, failed or cancelled once told to Optuna.")
    scores: dict[str, float] | None = None
    training_time_s: float | None = None
    teacher_outputs: str | None = Field(None, description="'reused' when the trial read the teacher's outputs from the shared "
                                                          "cache, 'computed' when it computed (and stored) them.")


class FrontMember(BaseModel):
    """A non-dominated trial: its scores on the selection split, size, latency, and the held-out validation split's
    evaluation (top-1 with its 95% Wilson interval), with the link to its student."""

    trial: int
    job_id: str
    params: dict[str, Any]
    scores: dict[str, float]
    selection_top1: float | None = None
    bytes: int | None = None
    parameters: int | None = None
    latency_ms: dict[str, dict[str, float | None]] | None = None
    holdout: dict[str, Any] | None = Field(None, description="rows, student_val_top1, student_interval95, teacher_val_top1, "
                                                             "teacher_interval95, agreement.")
    student_artifact: str


class FrontObject(BaseModel):
    """The sweep's front: final once the sweep ended (``final``), else the front of the trials completed so far."""

    sweep_id: str
    final: bool
    objectives: list[str]
    teacher: dict[str, Any] | None = Field(None, description="The teacher's held-out top-1, bytes and latency, for comparison.")
    data: list[FrontMember]
