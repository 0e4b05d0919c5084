"""Request and response schemas of ``/v1/webhooks``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stillhouse.webhooks.outbox import EVENT_TYPES

EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "sweep.succeeded", "sweep.failed", "sweep.cancelled"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointCreate(_Strict):
    """A new webhook endpoint."""

    url: str = Field(..., min_length=1, max_length=2048, description="https:// (or http://) URL that receives the events; "
                     "it must resolve to public addresses unless the operator allows private ones.")
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1,
                                    description="Event types to receive (default: all of job.succeeded, job.failed, job.cancelled, "
                                    "sweep.succeeded, sweep.failed, sweep.cancelled).")
    description: str | None = Field(None, max_length=255, description="Free text, e.g. which pipeline listens.")


class EndpointUpdate(_Strict):
    """Changes to an endpoint; omitted fields stay as they are."""

    url: str | None = Field(None, min_length=1, max_length=2048, description="A new target URL (checked as at creation).")
    events: list[EventType] | None = Field(None, min_length=1, description="The event types to receive.")
    description: str | None = Field(None, max_length=255, description="Free text.")
    enabled: bool | None = Field(None, description="False pauses deliveries; true re-enables an endpoint (e.g. one a 410 disabled).")


class RotateSecret(_Strict):
    """How long the old secret keeps signing."""

    expire_previous_in_s: float | None = Field(
        None, ge=0, le=7 * 86400, description="Seconds the previous secret also signs (both signatures are sent), so receivers "
        "can switch without losing a message; default STILLHOUSE_WEBHOOK_SECRET_GRACE_S (24 h); 0 ends it at once.")


class EndpointObject(BaseModel):
    """A webhook endpoint of the tenant."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(..., description="Endpoint id, 'whep_…'.")
    object: Literal["webhook_endpoint"] = Field("webhook_endpoint", description="Always 'webhook_endpoint'.")
    url: str = Field(..., description="Where events are POSTed.")
    description: str | None = Field(None, description="Free text.")
    events: list[str] = Field(..., description="Event types it receives.")
    enabled: bool = Field(..., description="False: paused, or disabled by a 410 Gone answer (see disabled_reason).")
    disabled_reason: str | None = Field(None, description="Why deliveries stopped, when the service disabled it.")
    created_at: datetime = Field(..., description="ISO-8601 UTC.")
    updated_at: datetime = Field(..., description="ISO-8601 UTC.")
    previous_secret_expires_at: datetime | None = Field(None, description="Until when the secret before the last rotation also signs.")
    secret: str | None = Field(None, description="The signing secret ('whsec_…'): only in the answer to the creation and to a "
                                                 "rotation, never again. Verify with any Standard Webhooks library.")


class EndpointDeleted(BaseModel):
    """Answer to a delete."""

    id: str = Field(..., description="The deleted endpoint's id.")
    object: Literal["webhook_endpoint"] = Field("webhook_endpoint", description="Always 'webhook_endpoint'.")
    deleted: bool = Field(True, description="Always true.")


class AttemptObject(BaseModel):
    """One HTTP attempt of a delivery."""

    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime = Field(..., description="ISO-8601 UTC.")
    status_code: int | None = Field(None, description="The receiver's HTTP status; null when there was no answer.")
    error: str | None = Field(None, description="Why there was no answer (timeout, refused target, ...).")
    duration_ms: float = Field(..., description="How long the attempt took, ms.")
    response_excerpt: str | None = Field(None, description="The first 500 characters of the answer's body.")


class DeliveryObject(BaseModel):
    """One event sent (or to be sent) to the endpoint, with its attempts: the delivery log."""

    id: str = Field(..., description="Message id ('msg_…'), sent as webhook-id; the same on every retry.")
    object: Literal["webhook_delivery"] = Field("webhook_delivery", description="Always 'webhook_delivery'.")
    event_type: str = Field(..., description="e.g. job.succeeded.")
    job_id: str | None = Field(None, description="The job it is about (job.* events).")
    sweep_id: str | None = Field(None, description="The sweep it is about (sweep.* events).")
    status: Literal["pending", "succeeded", "failed"] = Field(..., description="pending (to be tried or retried), succeeded, failed.")
    attempts: int = Field(..., description="Attempts so far.")
    next_attempt_at: datetime | None = Field(None, description="When a pending delivery is tried next.")
    last_status_code: int | None = Field(None, description="Status code of the last attempt.")
    last_error: str | None = Field(None, description="Error of the last attempt.")
    created_at: datetime = Field(..., description="ISO-8601 UTC.")
    finished_at: datetime | None = Field(None, description="When it succeeded or failed for good.")
    payload: dict[str, Any] = Field(..., description="The JSON body sent.")
    attempt_log: list[AttemptObject] = Field(default_factory=list, description="Every attempt, oldest first.")
