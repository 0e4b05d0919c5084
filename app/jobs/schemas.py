"""Response schemas of ``/v1/jobs`` and its sub-resources (the request body is ``JobSpec``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distill.spec import JobSpec

Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class Progress(BaseModel):
    """Training progress of a running job."""

    epoch: int | None = Field(None, description="Current epoch (1-based).")
    epochs: int | None = Field(None, description="Total epochs.")
    step: int | None = Field(None, description="Optimizer steps done so far (all epochs).")
    total_steps: int | None = Field(None, description="Total optimizer steps of the job.")
    fraction: float | None = Field(None, description="Fraction of training done, 0..1.")
    eta_s: float | None = Field(None, description="Estimated seconds of training left.")


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(..., description="From a fixed vocabulary: invalid_spec, invalid_file, unsafe_checkpoint, shape_mismatch, "
                                       "non_finite_loss, max_runtime_exceeded, worker_lost, internal_error, broker_unavailable, "
                                       "storage_unavailable (the artifact store could not be read or written).")
    message: str = Field(..., description="What happened, for a person (names the sizes, fields or files involved).")


class Waiting(BaseModel):
    """Why a queued job has not started."""

    code: Literal["no_worker_for_queue"] = Field(..., description="no_worker_for_queue: no running worker consumes the job's queue.")
    message: str = Field(..., description="What is missing and how to start it.")


class RegistryExport(BaseModel):
    """The outcome of a job's MLflow model-registry export (``registry.mlflow`` in the spec)."""

    status: Literal["pending", "registered", "failed"] = Field(..., description="pending until the job succeeded and the "
                                                                                 "export ran; then registered or failed.")
    tracking_uri: str | None = Field(None, description="The MLflow tracking server.")
    experiment_id: str | None = Field(None, description="MLflow experiment of the run.")
    run_id: str | None = Field(None, description="MLflow run holding the parameters, per-epoch metrics, report and student.")
    model_name: str | None = Field(None, description="Registered model name.")
    version: str | None = Field(None, description="The model version registered for this job's student.")
    alias: str | None = Field(None, description="Alias pointed at that version.")
    error: str | None = Field(None, description="Why the export failed (the job itself still succeeded).")


class Timings(BaseModel):
    """Wall-clock durations in seconds."""

    queued_s: float | None = Field(None, description="Seconds from creation to the first start (or until now while queued).")
    running_s: float | None = Field(None, description="Seconds from the first start to the end (or until now while running).")


class JobObject(BaseModel):
    """A distillation job."""

    id: str = Field(..., description="Job id, 'job_…'.")
    object: Literal["job"] = Field("job", description="Always 'job'.")
    name: str | None = Field(None, description="The spec's name.")
    status: Status = Field(..., description="queued -> running -> succeeded | failed | cancelled (running -> cancelling -> cancelled).")
    phase: str | None = Field(None, description="While running: loading_teacher, caching_teacher_outputs, training, evaluating, exporting.")
    progress: Progress = Field(..., description="Training progress.")
    error: JobError | None = Field(None, description="Set when the job failed.")
    attempt: int = Field(..., description="How many times a worker started this job (2+ after a resume: a worker died or "
                                          "handed the job back).")
    handbacks: int = Field(0, description="How many of those starts followed a graceful hand-back (a worker stopped with "
                                          "SIGTERM); attempt - handbacks counts toward STILLHOUSE_MAX_ATTEMPTS.")
    created_at: datetime = Field(..., description="Creation time, ISO-8601 UTC.")
    updated_at: datetime = Field(..., description="Last change, ISO-8601 UTC.")
    started_at: datetime | None = Field(None, description="First start on a worker.")
    finished_at: datetime | None = Field(None, description="When it reached a final status.")
    timings: Timings = Field(..., description="Queue wait and run time.")
    queue: str | None = Field(None, description="The worker queue the job is sent to: 'cpu', or 'gpu' for training.device 'cuda'.")
    waiting: Waiting | None = Field(None, description="While queued: set when no running worker consumes the job's queue.")
    registry: dict[str, RegistryExport] | None = Field(None, description="Model-registry exports by registry ('mlflow'), when "
                                                                         "the spec asks for one.")
    spec: JobSpec = Field(..., description="The validated spec, defaults filled in.")


class EventObject(BaseModel):
    """A job event."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(..., description="Increasing event id; pass the last one seen as 'after'.")
    object: Literal["event"] = Field("event", description="Always 'event'.")
    created_at: datetime = Field(..., description="ISO-8601 UTC.")
    type: str = Field(..., description="status, phase, resumed, checkpoint, warning, error, ...")
    message: str = Field(..., description="Human-readable text.")
    data: dict[str, Any] | None = Field(None, description="Structured details.")


class MetricObject(BaseModel):
    """One metric value."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(..., description="Increasing row id; pass the last one seen as 'after'.")
    name: str = Field(..., description="'loss/<term>' (e.g. loss/kd, loss/ce, loss/total), 'top1', 'agreement', 'lr'.")
    split: str = Field(..., description="'train' or 'val'.")
    step: int = Field(..., description="Global optimizer step (1-based) at which it was recorded.")
    epoch: int = Field(..., description="Epoch (1-based).")
    value: float = Field(..., description="The value (losses in nats, top-1 and agreement as fractions 0..1).")


class ArtifactObject(BaseModel):
    """A downloadable output of a succeeded job."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(..., description="e.g. student.safetensors, student.json, student.onnx.")
    object: Literal["artifact"] = Field("artifact", description="Always 'artifact'.")
    bytes: int = Field(..., description="Size in bytes.")
    sha256: str = Field(..., description="Hex SHA-256, also the download's ETag.")
    content_type: str = Field(..., description="Media type of the download.")
    created_at: datetime = Field(..., description="ISO-8601 UTC.")
    url: str = Field(..., description="Download path relative to the API root.")


class ArtifactList(BaseModel):
    """A job's artifacts."""

    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[ArtifactObject] = Field(..., description="The artifacts.")
    has_more: bool = Field(False, description="Always false (a job has few artifacts).")
