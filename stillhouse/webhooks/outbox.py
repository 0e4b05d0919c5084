"""Writing webhook deliveries: one row per subscribed, enabled endpoint of the tenant, in the same transaction as
the final status it announces, so an event can be neither lost nor announced for a status that was rolled back:
a job's (``stillhouse.jobs.states.transition`` calls ``job_finished``) and a sweep's (the scheduler's final step,
``stillhouse.sweeps.scheduler``, calls ``sweep_finished``). The workers' dispatcher sends them (``dispatch``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stillhouse.models import Job, WebhookDelivery, WebhookEndpoint, new_id, utcnow

JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
SWEEP_EVENTS = ("sweep.succeeded", "sweep.failed", "sweep.cancelled")
TEST_EVENT = "webhook.test"
EVENT_TYPES = (*JOB_EVENTS, *SWEEP_EVENTS)
"""Event types an endpoint may subscribe to."""


def body(event_type: str, data: dict[str, Any], when: datetime | None = None) -> str:
    """The JSON body of a message, as the Standard Webhooks spec shapes it: ``{"type", "timestamp", "data"}``; thin
    (``data`` names the object; a receiver reads the rest from the API)."""
    stamp = (when or utcnow()).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"), sort_keys=True)


def add_delivery(session: Session, endpoint_id: str, event_type: str, payload: str, job_id: str | None = None) -> WebhookDelivery:
    """Add one pending delivery, due now. Does not commit."""
    row = WebhookDelivery(id=new_id("msg"), endpoint_id=endpoint_id, event_type=event_type, job_id=job_id, body=payload,
                          status="pending", attempts=0, next_attempt_at=utcnow())
    session.add(row)
    return row


def _fan_out(session: Session, tenant_id: str, event_type: str, payload: str, job_id: str | None = None) -> int:
    """Add one delivery of ``payload`` for each enabled endpoint of ``tenant_id`` subscribed to ``event_type``."""
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id,
                                                              WebhookEndpoint.enabled.is_(True))).all()
    n = 0
    for ep in endpoints:
        if event_type in (ep.events or []):
            add_delivery(session, ep.id, event_type, payload, job_id)
            n += 1
    return n


def job_finished(session: Session, job_id: str, status: str) -> int:
    """Add a ``job.<status>`` delivery for each enabled endpoint of the job's tenant subscribed to it, in the caller's
    transaction. Returns how many were added (0 for a status without an event)."""
    event_type = f"job.{status}"
    if event_type not in JOB_EVENTS:
        return 0
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return 0
    return _fan_out(session, tenant_id, event_type, body(event_type, {"object": "job", "id": job_id, "status": status}), job_id)


def sweep_finished(session: Session, sweep_id: str, tenant_id: str, status: str, front_size: int) -> int:
    """Add a ``sweep.<status>`` delivery (``succeeded``, ``failed``, ``cancelled``) for each enabled endpoint of the
    sweep's tenant subscribed to it, in the caller's transaction (the one that writes the sweep's final status and
    front). Thin payload: ``{"object": "sweep", "id", "status", "tenant_id", "front_size"}`` (``front_size``: how
    many trials the final front has; the members are at ``GET /v1/sweeps/{id}/front``). Returns how many deliveries
    were added (0 for a status without an event)."""
    event_type = f"sweep.{status}"
    if event_type not in SWEEP_EVENTS:
        return 0
    data = {"object": "sweep", "id": sweep_id, "status": status, "tenant_id": tenant_id, "front_size": int(front_size)}
    return _fan_out(session, tenant_id, event_type, body(event_type, data))
