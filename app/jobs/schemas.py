"""Response schemas of ``/v1/jobs`` and its sub-resources (the request body is ``JobSpec``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from distill.method_params import NO_NUL, dict_keys_as_property_names
from distill.spec import JobSpec

Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]

MAX_METADATA_KEYS = 16
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]  # no NUL (PostgreSQL text)
MetadataValue = Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(json_schema_extra=dict_keys_as_property_names)]  # requests and answers
METADATA_DESCRIPTION = ("Your own labels for the job, e.g. {\"dag\": \"nightly\", \"run_id\": \"42\"}: at most 16 keys of 1-64 "
                        "characters, string values of at most 512 characters. Filter on them with GET /v1/jobs?metadata[KEY]=VALUE.")


class JobCreate(JobSpec):
    """The body of ``POST /v1/jobs``: a job spec plus optional ``metadata`` (kept with the job, not part of the spec)."""

    metadata: Metadata = Field(default_factory=dict, description=METADATA_DESCRIPTION)

    @field_validator("metadata")
    @classmethod
    def _at_most_16_keys(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys are allowed, got {len(v)}")
        return v

    def spec(self) -> JobSpec:
        """The job spec alone (without ``metadata``), as the worker reads it."""
        return JobSpec.model_construct(**{k: getattr(self, k) for k in JobSpec.model_fields},
                                       _fields_set=self.model_fields_set - {"metadata"})


class JobValidation(BaseModel):
    """The answer to ``POST /v1/jobs?dry_run=true``: the spec is valid and nothing was created."""

    object: Literal["job.validation"] = Field("job.validation", description="Always 'job.validation'.")
    valid: Literal[True] = Field(True, description="Always true (an invalid spec gets the same 4xx error as a real creation).")
    spec: JobSpec = Field(..., description="The validated spec, defaults filled in.")
    metadata: Metadata = Field(default_factory=dict, description="The metadata the job would get.")
    pending: list[str] = Field(default_factory=list, description="File roles not checked because their files are not uploaded yet.")


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
                                       "non_finite_loss, non_finite_teacher, max_runtime_exceeded, worker_lost, training_process_failed (one of the "
                                       "training.devices processes ended), internal_error, broker_unavailable, "
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
    phase: str | None = Field(None, description="While running: loading_teacher, generating_transfer_set (causal_lm prompts without answers), caching_teacher_outputs, training, evaluating, exporting.")
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
    metadata: Metadata = Field(default_factory=dict, description=METADATA_DESCRIPTION)


class JobDeleted(BaseModel):
    """Answer to ``DELETE /v1/jobs/{id}``."""

    id: str = Field(..., description="The deleted job's id.")
    object: Literal["job"] = Field("job", description="Always 'job'.")
    deleted: bool = Field(True, description="Always true.")
    freed_bytes: int = Field(..., description="Bytes of artifacts removed (no longer counted against the tenant's storage quota).")


class EventObject(BaseModel):
    """A job event."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(..., description="Increasing event id; pass the last one seen as 'after'.")
    object: Literal["event"] = Field("event", description="Always 'event'.")
    created_at: datetime = Field(..., description="ISO-8601 UTC.")
    type: str = Field(..., description="status, phase, resumed, checkpoint_saved, checkpoint_unreadable, warning, error, ...")
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
