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
    succeeded: int = Field(..., description="Trials whose job succeeded.")
    running: int = Field(..., description="Running or cancelling.")
    queued: int = Field(..., description="Trials whose job waits in the queue.")
    failed: int = Field(..., description="Trials whose job failed.")
    cancelled: int = Field(..., description="Trials whose job was cancelled (pruned ones aside).")
    pruned: int = Field(0, description="Trials stopped early by the sweep's pruner (budget.pruner; their jobs end cancelled "
                        "with error code trial_pruned).")


class BestTrial(BaseModel):
    """The best completed trial so far by the first objective (selection-split scores)."""

    trial: int = Field(..., description="The trial's Optuna number.")
    job_id: str = Field(..., description="The trial's job.")
    scores: dict[str, float] = Field(..., description="Its objective values by name (top1 fraction, latency ms, bytes).")


class SweepObject(BaseModel):
    """A sweep: status (running → succeeded | failed | cancelled), progress and best so far."""

    id: str = Field(..., description="'swp_…'.")
    object: Literal["sweep"] = Field("sweep", description="'sweep'.")
    name: str | None = Field(None, description="The spec's name.")
    status: str = Field(..., description="running, succeeded, failed or cancelled.")
    stop_reason: str | None = Field(None, description="Why no more trials were created: max_trials, max_runtime_s, "
                                                      "search_space_exhausted, cancelled, invalid_search_space (sampled values that do not make a valid job spec "
                                                      "together; the sweep fails, its error says which).")
    error: str | None = Field(None, description="Why the sweep failed, when it did.")
    created_at: datetime = Field(..., description="When it was created (UTC).")
    finished_at: datetime | None = Field(None, description="When it ended (UTC).")
    trials: TrialCounts = Field(..., description="Trials by state.")
    best: BestTrial | None = Field(None, description="The best trial so far on the first objective.")
    waiting_for_job_slot: bool = Field(False, description="True while the sweep would start a trial but its tenant is at "
                                       "its live-job limit (max_running_jobs; trials count as jobs): it waits, it does not fail.")
    spec: SweepSpec = Field(..., description="The sweep spec as validated.")


class TrialObject(BaseModel):
    """One trial: its Optuna number, job, sampled params, the job's status and (once told) its state and scores on the
    selection split."""

    number: int = Field(..., description="The trial's Optuna number (0-based).")
    job_id: str = Field(..., description="The trial's job.")
    params: dict[str, Any] = Field(..., description="The sampled values by search-space path.")
    status: str = Field(..., description="The trial job's status.")
    state: str | None = Field(None, description="complete, failed, cancelled or pruned (stopped early by the sweep's pruner; "
                              "never on the front) once told to Optuna.")
    reason: str | None = Field(None, description="Why the trial's job did not complete (its error message: the failure, the "
                               "cancel, or the pruner's decision with the epoch and value).")
    scores: dict[str, float] | None = Field(None, description="Its objective values once the job succeeded.")
    training_time_s: float | None = Field(None, description="Seconds of the trial's training loop.")
    teacher_outputs: str | None = Field(None, description="'reused' when the trial read the teacher's outputs from the shared "
                                                          "cache, 'computed' when it computed (and stored) them.")


class FrontMember(BaseModel):
    """A non-dominated trial: its scores on the selection split, size, latency, and the held-out validation split's
    evaluation (top-1 with its 95% Wilson interval), with the link to its student."""

    trial: int = Field(..., description="The trial's Optuna number.")
    job_id: str = Field(..., description="The trial's job (its report and artifacts).")
    params: dict[str, Any] = Field(..., description="The sampled values by search-space path.")
    scores: dict[str, float] = Field(..., description="Its objective values by name.")
    selection_top1: float | None = Field(None, description="Top-1 on the selection split, fraction.")
    bytes: int | None = Field(None, description="The student's file size, bytes.")
    parameters: int | None = Field(None, description="The student's parameter count.")
    latency_ms: dict[str, dict[str, float | None]] | None = Field(None, description="{batch size: {p50, p95}} in ms.")
    holdout: dict[str, Any] | None = Field(None, description="rows, student_val_top1, student_interval95, teacher_val_top1, "
                                                             "teacher_interval95, agreement.")
    student_artifact: str = Field(..., description="Download URL of the student's weights.")


class FrontObject(BaseModel):
    """The sweep's front: final once the sweep ended (``final``), else the front of the trials completed so far."""

    sweep_id: str = Field(..., description="The sweep.")
    final: bool = Field(..., description="True once the sweep ended (the front will not change).")
    objectives: list[str] = Field(..., description="The objectives' labels, in the spec's order.")
    teacher: dict[str, Any] | None = Field(None, description="The teacher's held-out top-1, bytes and latency, for comparison.")
    data: list[FrontMember] = Field(..., description="The non-dominated trials.")
