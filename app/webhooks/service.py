"""Business logic of webhook endpoints: register (SSRF-checked URL, secret shown once), list, read, update, delete,
rotate the secret, send a test event, and the delivery log. Tenant scoping in one place: ``readable``."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.errors import NotFound, Unprocessable
from app.pagination import newest_first
from stillhouse.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, new_id, utcnow
from stillhouse.settings import Settings
from stillhouse.webhooks import outbox, signing, targets


def readable(tenant_id: str) -> Select:
    """The tenant's endpoints (every read and change goes through this statement)."""
    return select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)


def get_endpoint(session: Session, endpoint_id: str, tenant_id: str) -> WebhookEndpoint:
    """One of the tenant's endpoints. Raises NotFound (404) alike for unknown ids and other tenants' endpoints."""
    row = session.scalars(readable(tenant_id).where(WebhookEndpoint.id == endpoint_id)).first()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", param="endpoint_id")
    return row


def check_target(url: str, settings: Settings) -> None:
    """Refuse a URL that is not a deliverable target (see ``stillhouse.webhooks.targets``). Raises Unprocessable (422
    ``webhook_target_refused``)."""
    try:
        targets.resolve(url, allow_private=settings.webhook_allow_private_targets)
    except targets.TargetRefused as e:
        raise Unprocessable(f"url: {e}", param="url", code="webhook_target_refused") from e


def create_endpoint(session: Session, tenant_id: str, url: str, events: list[str], description: str | None,
                    settings: Settings) -> WebhookEndpoint:
    """Register an endpoint with a new secret and commit; the returned row's ``secret`` is shown once. Raises
    Unprocessable (422 ``webhook_target_refused``)."""
    check_target(url, settings)
    row = WebhookEndpoint(id=new_id("whep"), tenant_id=tenant_id, url=url, events=list(dict.fromkeys(events)), description=description,
                          secret=signing.new_secret(), enabled=True)
    session.add(row)
    session.commit()
    return row


def list_endpoints(session: Session, tenant_id: str, *, limit: int, after: str | None) -> tuple[list[WebhookEndpoint], bool]:
    """The tenant's endpoints newest first; (rows, has_more). Raises NotFound (404) for an unknown ``after``."""
    anchor = session.scalars(readable(tenant_id).where(WebhookEndpoint.id == after)).first() if after else None
    if after and anchor is None:
        raise NotFound(f"after: no webhook endpoint {after!r} to continue from", param="after")
    return newest_first(session, readable(tenant_id), WebhookEndpoint, limit=limit, anchor=anchor)


def update_endpoint(session: Session, endpoint_id: str, tenant_id: str, changes: dict, settings: Settings) -> WebhookEndpoint:
    """Apply ``changes`` (url, events, description, enabled) and commit; re-enabling clears ``disabled_reason``. Raises
    NotFound (404), Unprocessable (422 ``webhook_target_refused``)."""
    row = get_endpoint(session, endpoint_id, tenant_id)
    if changes.get("url") is not None:
        check_target(changes["url"], settings)
        row.url = changes["url"]
    if changes.get("events") is not None:
        row.events = list(dict.fromkeys(changes["events"]))
    if "description" in changes:
        row.description = changes["description"]
    if changes.get("enabled") is not None:
        row.enabled = changes["enabled"]
        if row.enabled:
            row.disabled_reason = None
    row.updated_at = utcnow()
    session.commit()
    return row


def delete_endpoint(session: Session, endpoint_id: str, tenant_id: str) -> None:
    """Delete an endpoint and its delivery log; pending deliveries are dropped. Raises NotFound (404)."""
    row = get_endpoint(session, endpoint_id, tenant_id)
    for d in session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id)):
        session.query(WebhookAttempt).filter(WebhookAttempt.delivery_id == d.id).delete(synchronize_session=False)
        session.delete(d)
    session.delete(row)
    session.commit()


def rotate_secret(session: Session, endpoint_id: str, tenant_id: str, expire_previous_in_s: float | None,
                  settings: Settings) -> WebhookEndpoint:
    """Give the endpoint a new secret (returned once); the old one also signs for ``expire_previous_in_s`` seconds
    (default ``STILLHOUSE_WEBHOOK_SECRET_GRACE_S``). Raises NotFound (404)."""
    row = get_endpoint(session, endpoint_id, tenant_id)
    grace = settings.webhook_secret_grace_s if expire_previous_in_s is None else expire_previous_in_s
    now = utcnow()
    row.previous_secret, row.previous_secret_expires_at = (row.secret, now + timedelta(seconds=grace)) if grace > 0 else (None, None)
    row.secret = signing.new_secret()
    row.updated_at = now
    session.commit()
    return row


def send_test(session: Session, endpoint_id: str, tenant_id: str) -> WebhookDelivery:
    """Queue a ``webhook.test`` event for the endpoint (delivered like any other, even if it does not subscribe to
    job events). Raises NotFound (404), Unprocessable (422 ``webhook_disabled``) for a disabled endpoint."""
    row = get_endpoint(session, endpoint_id, tenant_id)
    if not row.enabled:
        raise Unprocessable(f"webhook endpoint {endpoint_id} is disabled ({row.disabled_reason or 'paused'}); enable it first",
                            param="endpoint_id", code="webhook_disabled")
    d = outbox.add_delivery(session, row.id, outbox.TEST_EVENT, outbox.body(outbox.TEST_EVENT, {"object": "webhook_endpoint", "id": row.id}))
    session.commit()
    return d


def list_deliveries(session: Session, endpoint_id: str, tenant_id: str, *, limit: int, after: str | None,
                    status: str | None) -> tuple[list[tuple[WebhookDelivery, list[WebhookAttempt]]], bool]:
    """The endpoint's deliveries newest first, each with its attempts oldest first; (rows, has_more). Raises NotFound
    (404) for an unknown endpoint or ``after``."""
    get_endpoint(session, endpoint_id, tenant_id)
    q = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status:
        q = q.where(WebhookDelivery.status == status)
    anchor = session.scalars(q.where(WebhookDelivery.id == after)).first() if after else None
    if after and anchor is None:
        raise NotFound(f"after: no delivery {after!r} of this endpoint to continue from", param="after")
    rows, more = newest_first(session, q, WebhookDelivery, limit=limit, anchor=anchor)
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        for a in session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(attempts)))
                                 .order_by(WebhookAttempt.id)):
            attempts[a.delivery_id].append(a)
    return [(d, attempts[d.id]) for d in rows], more


def payload(d: WebhookDelivery) -> dict:
    """The JSON body of a delivery, parsed."""
    return json.loads(d.body)
