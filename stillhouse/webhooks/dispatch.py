"""The webhook dispatcher: runs in every worker's main process (a daemon thread, as the sweep does), claims due
deliveries, POSTs them signed, logs each attempt, and schedules retries with backoff.

- A delivery is claimed with one compare-and-set (``locked_until`` in the future), so any number of dispatchers
  can run; a claim that outlives its dispatcher (killed mid-request) expires and another one takes the delivery.
- 2xx: succeeded. 410 Gone: the endpoint is disabled (its reason says so) and its pending deliveries fail. Any other
  answer, no answer, or a refused target: the attempt is logged and the delivery retried after the next delay of
  ``STILLHOUSE_WEBHOOK_RETRY_SCHEDULE_S`` (±10% jitter; the default follows the Standard Webhooks guidance:
  5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), then failed.
- Each attempt is signed anew (``webhook-timestamp`` is the attempt's time; receivers refuse stale ones); the body
  and ``webhook-id`` stay the same, so a receiver can drop duplicates by id.
- The target's host is resolved and checked (``targets``) before every attempt and the connection goes to the
  checked address, the name kept for ``Host`` and TLS (SNI, certificate check). Redirects are not followed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta
from typing import Callable

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from stillhouse import metrics
from stillhouse.db import session_factory
from stillhouse.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from stillhouse.settings import Settings, get_settings
from stillhouse.webhooks import signing, targets

log = logging.getLogger("stillhouse.webhooks")

CLAIM_S = 120.0
"""Seconds a claimed delivery stays with its dispatcher before another may take it (well over one attempt's timeout)."""
USER_AGENT = "stillhouse-webhooks/0.1"


def _claim(sessions: sessionmaker[Session], limit: int) -> list[str]:
    """Ids of up to ``limit`` due pending deliveries, each claimed by a compare-and-set on ``locked_until``."""
    now = utcnow()
    due = (WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
           or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now))
    with sessions() as s:
        ids = list(s.scalars(select(WebhookDelivery.id).where(*due).order_by(WebhookDelivery.next_attempt_at).limit(limit)))
    claimed = []
    for did in ids:
        with sessions.begin() as s:
            res = s.execute(update(WebhookDelivery).where(WebhookDelivery.id == did, *due)
                            .values(locked_until=now + timedelta(seconds=CLAIM_S)).execution_options(synchronize_session=False))
        if res.rowcount == 1:
            claimed.append(did)
    return claimed


def _secrets(ep: WebhookEndpoint) -> list[str]:
    out = [ep.secret]
    if ep.previous_secret and ep.previous_secret_expires_at and ep.previous_secret_expires_at > utcnow():
        out.append(ep.previous_secret)
    return out


def _post(ep: WebhookEndpoint, d: WebhookDelivery, settings: Settings) -> tuple[int | None, str | None, str | None, dict]:
    """One HTTP attempt: (status code or None, error or None, first characters of the answer, details)."""
    try:
        target = targets.resolve(ep.url, allow_private=settings.webhook_allow_private_targets)
    except targets.TargetRefused as e:
        return None, f"target refused: {e}", None, {}
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               **signing.signature_headers(d.id, utcnow(), d.body, _secrets(ep))}
    url = httpx.URL(ep.url)
    host_header = url.netloc.decode("ascii").rsplit("@", 1)[-1]
    pinned = url.copy_with(host=target.address)
    extensions = {"sni_hostname": target.host} if url.scheme == "https" else {}
    try:
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
            resp = client.post(pinned, content=d.body.encode("utf-8"), headers={**headers, "host": host_header},
                               extensions=extensions)
        return resp.status_code, None, resp.text[:500], {"address": target.address}
    except httpx.HTTPError as e:
        return None, f"{type(e).__name__}: {e}"[:1000], None, {"address": target.address}


def _delay(settings: Settings, attempts: int) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, or None when the schedule is used up."""
    schedule = settings.webhook_retry_schedule_s
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.9, 1.1)


def deliver(sessions: sessionmaker[Session], delivery_id: str, settings: Settings) -> str:
    """Attempt one claimed delivery and record the outcome; returns its status afterwards (pending, succeeded, failed)."""
    with sessions() as s:
        d = s.get(WebhookDelivery, delivery_id)
        ep = s.get(WebhookEndpoint, d.endpoint_id) if d is not None else None
    if d is None:
        return "failed"
    if ep is None or not ep.enabled:
        with sessions.begin() as s:
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
                status="failed", locked_until=None, finished_at=utcnow(), last_error="endpoint disabled")
                .execution_options(synchronize_session=False))
        return "failed"
    t0 = time.perf_counter()
    code, error, excerpt, details = _post(ep, d, settings)
    ms = 1000 * (time.perf_counter() - t0)
    metrics.WEBHOOK_DURATION.observe(ms / 1000)
    outcome = ("success" if 200 <= code < 300 else "http_error") if code is not None else (
        "refused" if error and error.startswith("target refused") else "no_answer")
    metrics.WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc()
    attempts = d.attempts + 1
    now = utcnow()
    values: dict = {"attempts": attempts, "last_status_code": code, "last_error": error, "locked_until": None}
    if code is not None and 200 <= code < 300:
        values.update(status="succeeded", finished_at=now, next_attempt_at=None)
    elif code == 410:
        values.update(status="failed", finished_at=now, next_attempt_at=None, last_error="410 Gone: endpoint disabled")
    else:
        wait = _delay(settings, attempts)
        if wait is None:
            values.update(status="failed", finished_at=now, next_attempt_at=None)
        else:
            values["next_attempt_at"] = now + timedelta(seconds=wait)
    with sessions.begin() as s:
        s.add(WebhookAttempt(delivery_id=delivery_id, attempted_at=now, status_code=code, error=error, duration_ms=round(ms, 1),
                             response_excerpt=excerpt, details=details or None))
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
                  .execution_options(synchronize_session=False))
        if code == 410:
            s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == ep.id).values(
                enabled=False, updated_at=now, disabled_reason=f"the receiver answered 410 Gone at {now.isoformat()} "
                f"(delivery {delivery_id}); re-enable with PATCH /v1/webhooks/{ep.id} {{\"enabled\": true}}")
                .execution_options(synchronize_session=False))
            s.execute(update(WebhookDelivery).where(WebhookDelivery.endpoint_id == ep.id, WebhookDelivery.status == "pending")
                      .values(status="failed", finished_at=now, last_error="endpoint disabled (410 Gone)", locked_until=None)
                      .execution_options(synchronize_session=False))
    level = logging.INFO if values.get("status") == "succeeded" else logging.WARNING
    log.log(level, "webhook %s (%s) to %s: %s", delivery_id, d.event_type, ep.url, code if code is not None else error)
    return values.get("status", "pending")


def deliver_due(settings: Settings | None = None, limit: int = 50) -> int:
    """One dispatcher pass: claim and attempt up to ``limit`` due deliveries (a few at once, so one slow receiver does
    not hold the others). Returns how many were attempted."""
    settings = settings or get_settings()
    sessions = session_factory(settings)
    claimed = _claim(sessions, limit)
    if not claimed:
        return 0
    threads = [threading.Thread(target=deliver, args=(sessions, did, settings), daemon=True) for did in claimed]
    for i in range(0, len(threads), 8):
        batch = threads[i:i + 8]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    return len(claimed)


def run_dispatcher(settings: Settings, stop: threading.Event) -> None:
    """``deliver_due`` every ``STILLHOUSE_WEBHOOK_POLL_INTERVAL_S`` seconds until ``stop`` is set; errors are logged and the
    loop goes on (an unmigrated database or an outage is waited out)."""
    while not stop.is_set():
        try:
            while deliver_due(settings) and not stop.is_set():
                pass
        except (OperationalError, ProgrammingError) as e:
            log.warning("webhook dispatcher: database not usable (%s); retrying", str(e).splitlines()[0])
        except Exception:  # noqa: BLE001 - the dispatcher must survive anything
            log.exception("webhook dispatcher pass failed")
        stop.wait(settings.webhook_poll_interval_s)


def start_dispatcher(settings: Settings | None = None, name: str = "stillhouse-webhooks") -> Callable[[], None]:
    """Run ``run_dispatcher`` in a daemon thread; returns a function that stops it (waiting up to 5 s)."""
    settings = settings or get_settings()
    stop = threading.Event()
    thread = threading.Thread(target=run_dispatcher, args=(settings, stop), name=name, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=5)

    return stopper
