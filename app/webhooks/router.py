"""``/v1/webhooks``: endpoints that receive a tenant's job events signed per the Standard Webhooks spec, their secret
rotation, a test event and the delivery log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status

from app.deps import CurrentTenant, SessionDep, SettingsDep
from app.errors import ERROR_RESPONSES
from app.pagination import Limit, Page
from app.webhooks import service
from app.webhooks.schemas import (
    AttemptObject,
    DeliveryObject,
    EndpointCreate,
    EndpointDeleted,
    EndpointObject,
    EndpointUpdate,
    RotateSecret,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
EndpointId = Annotated[str, Path(description="Webhook endpoint id, 'whep_…'.")]


def _view(row, *, with_secret: bool = False) -> EndpointObject:
    obj = EndpointObject.model_validate(row)
    return obj.model_copy(update={"secret": row.secret if with_secret else None})


def _delivery(d, attempts) -> DeliveryObject:
    payload = service.payload(d)
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    return DeliveryObject(id=d.id, event_type=d.event_type, job_id=d.job_id, status=d.status, attempts=d.attempts,
                          sweep_id=data.get("id") if data.get("object") == "sweep" else None,
                          next_attempt_at=d.next_attempt_at, last_status_code=d.last_status_code, last_error=d.last_error,
                          created_at=d.created_at, finished_at=d.finished_at, payload=payload,
                          attempt_log=[AttemptObject.model_validate(a) for a in attempts])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=EndpointObject, responses=ERROR_RESPONSES)
def create_endpoint(body: EndpointCreate, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> EndpointObject:
    """Register a URL that receives the tenant's events (``job.succeeded``, ``job.failed``, ``job.cancelled``,
    ``sweep.succeeded``, ``sweep.failed``, ``sweep.cancelled``; default all), POSTed as JSON ``{"type", "timestamp",
    "data": {"object": "job", "id", "status"}}`` (a sweep's: ``{"object": "sweep", "id", "status", "tenant_id",
    "front_size"}``, once, when it reaches its final state) with the Standard Webhooks headers
    ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``. The answer carries the signing ``secret``
    (``whsec_…``) this once. 422 ``webhook_target_refused`` for a URL that is not http(s) or resolves to a loopback,
    link-local or private address (unless the operator allows those)."""
    return _view(service.create_endpoint(session, tenant.id, body.url, body.events, body.description, settings), with_secret=True)


@router.get("", response_model=Page[EndpointObject], responses=ERROR_RESPONSES)
def list_endpoints(session: SessionDep, tenant: CurrentTenant, limit: Limit = 100,
                   after: Annotated[str | None, Query(description="Return endpoints after this id.")] = None) -> Page[EndpointObject]:
    """The tenant's endpoints, newest first (never their secrets)."""
    rows, more = service.list_endpoints(session, tenant.id, limit=limit, after=after)
    return Page[EndpointObject](data=[_view(r) for r in rows], has_more=more)


@router.get("/{endpoint_id}", response_model=EndpointObject, responses=ERROR_RESPONSES)
def get_endpoint(endpoint_id: EndpointId, session: SessionDep, tenant: CurrentTenant) -> EndpointObject:
    """One endpoint (without its secret). 404 if the tenant has no such endpoint."""
    return _view(service.get_endpoint(session, endpoint_id, tenant.id))


@router.patch("/{endpoint_id}", response_model=EndpointObject, responses=ERROR_RESPONSES)
def update_endpoint(endpoint_id: EndpointId, body: EndpointUpdate, session: SessionDep, tenant: CurrentTenant,
                    settings: SettingsDep) -> EndpointObject:
    """Change an endpoint's URL, events, description or ``enabled`` (true re-enables one a 410 disabled). 404; 422
    ``webhook_target_refused``."""
    return _view(service.update_endpoint(session, endpoint_id, tenant.id, body.model_dump(exclude_unset=True), settings))


@router.delete("/{endpoint_id}", response_model=EndpointDeleted, responses=ERROR_RESPONSES)
def delete_endpoint(endpoint_id: EndpointId, session: SessionDep, tenant: CurrentTenant) -> EndpointDeleted:
    """Delete an endpoint with its delivery log; nothing more is sent to it. 404 if the tenant has no such endpoint."""
    service.delete_endpoint(session, endpoint_id, tenant.id)
    return EndpointDeleted(id=endpoint_id)


@router.post("/{endpoint_id}/rotate-secret", response_model=EndpointObject, responses=ERROR_RESPONSES)
def rotate_secret(endpoint_id: EndpointId, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep,
                  body: RotateSecret | None = None) -> EndpointObject:
    """Replace the signing secret; the answer carries the new one this once. Until ``previous_secret_expires_at``
    (``expire_previous_in_s``, default 24 h) messages carry a signature with each secret, so a receiver can switch
    without missing a message. 404 if the tenant has no such endpoint."""
    row = service.rotate_secret(session, endpoint_id, tenant.id, body.expire_previous_in_s if body else None, settings)
    return _view(row, with_secret=True)


@router.post("/{endpoint_id}/test", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryObject, responses=ERROR_RESPONSES)
def send_test(endpoint_id: EndpointId, session: SessionDep, tenant: CurrentTenant) -> DeliveryObject:
    """Queue a ``webhook.test`` event to the endpoint; a worker delivers it like any other (see its delivery log).
    404; 422 ``webhook_disabled``."""
    return _delivery(service.send_test(session, endpoint_id, tenant.id), [])


@router.get("/{endpoint_id}/deliveries", response_model=Page[DeliveryObject], responses=ERROR_RESPONSES)
def list_deliveries(endpoint_id: EndpointId, session: SessionDep, tenant: CurrentTenant, limit: Limit = 50,
                    after: Annotated[str | None, Query(description="Return deliveries after this message id.")] = None,
                    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query(description="Only this status.")] = None,
                    ) -> Page[DeliveryObject]:
    """The endpoint's delivery log, newest first: each event sent, its status, and every attempt (time, status code or
    error, duration in ms, the start of the answer). 404 if the tenant has no such endpoint."""
    rows, more = service.list_deliveries(session, endpoint_id, tenant.id, limit=limit, after=after, status=status)
    return Page[DeliveryObject](data=[_delivery(d, a) for d, a in rows], has_more=more)
