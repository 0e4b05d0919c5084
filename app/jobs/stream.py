"""``GET /v1/jobs/{id}/events/stream``: a job's events as server-sent events (FastAPI's own SSE support), resumable
with ``Last-Event-ID``, ending when the job ends.

The stream reads the database every ``STILLHOUSE_EVENTS_POLL_INTERVAL_S`` seconds (the events the workers write
are rows in SQL, whichever process or machine wrote them; no broker or extra server is involved) and sends:

- ``event: event`` for each row of the job's events (id = the event's id, data = the ``EventObject`` JSON), in id order;
- ``event: job`` with the job object (as ``GET /v1/jobs/{id}`` returns it) whenever the job row changed: status,
  phase, progress; no id, so a reconnect resumes after the last *event* seen;
- ``event: end`` with ``{"job_id", "status"}`` once the job is finished (or deleted), after its last events; then
  the stream closes;
- ``event: error`` with the error shape (``database_unavailable``) when the database cannot be reached mid-stream;
  then the stream closes cleanly, and a reconnect with ``Last-Event-ID`` resumes.

Idle streams carry a ``: ping`` comment every 15 s (FastAPI), so proxies keep them open.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import anyio
from fastapi.sse import ServerSentEvent
from pydantic_core import to_json
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.jobs.schemas import EventObject
from app.jobs.service import STATUS_READ, job_view
from stillhouse import metrics
from stillhouse.db import database_unavailable, get_engine
from stillhouse.jobs.states import TERMINAL
from stillhouse.models import JobEvent

BATCH = 500
"""Most events read per poll; a job with more pending sends them in several polls without waiting."""
RETRY_MS = 2000
"""The reconnection delay the stream advises EventSource clients (``retry:``), ms."""

_EVENTS = select(JobEvent.id, JobEvent.created_at, JobEvent.type, JobEvent.message, JobEvent.data)


def _poll(job_id: str, tenant_id: str, after: int | None) -> tuple[Any, list[Any]]:
    """(the job's row or None when it is gone, its events with id > ``after``, at most ``BATCH``), read in autocommit;
    the row is read first, so a finished job's final events are among those read after it."""
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(STATUS_READ, {"job_id": job_id, "tenant_id": tenant_id}).first()
        if row is None:
            return None, []
        q = _EVENTS.where(JobEvent.job_id == job_id)
        if after is not None:
            q = q.where(JobEvent.id > after)
        return row, list(conn.execute(q.order_by(JobEvent.id).limit(BATCH)))


async def job_events(job_id: str, tenant_id: str, after: int | None, poll_s: float) -> AsyncIterator[ServerSentEvent]:
    """The server-sent events of tenant ``tenant_id``'s job ``job_id`` from event id ``after`` on (None: all), polled
    every ``poll_s`` seconds, until the job is finished; see the module doc. The caller checks the job exists first."""
    metrics.EVENT_STREAMS.inc()
    try:
        async for message in _job_events(job_id, tenant_id, after, poll_s):
            yield message
    finally:
        metrics.EVENT_STREAMS.dec()


async def _job_events(job_id: str, tenant_id: str, after: int | None, poll_s: float) -> AsyncIterator[ServerSentEvent]:
    seen_update = None
    first = True
    while True:
        try:
            row, events = await run_in_threadpool(_poll, job_id, tenant_id, after)
        except Exception as e:
            if not database_unavailable(e):
                raise
            # the response has started, so no 503 now: say why in the stream and end it cleanly; the client reconnects
            # with Last-Event-ID after ``retry`` ms (and gets 503 database_unavailable until the database is back)
            yield ServerSentEvent(event="error", retry=RETRY_MS, data={"error": {
                "code": "database_unavailable", "message": "the database cannot be reached; reconnect to resume", "param": None}})
            return
        if row is None:  # deleted while streaming
            yield ServerSentEvent(event="end", data={"job_id": job_id, "status": None}, retry=RETRY_MS if first else None)
            return
        for e in events:
            ev = EventObject(id=e.id, created_at=e.created_at, type=e.type, message=e.message, data=e.data)
            yield ServerSentEvent(event="event", id=str(e.id), raw_data=ev.model_dump_json(), retry=RETRY_MS if first else None)
            first = False
            after = e.id
        if len(events) == BATCH:
            continue  # more are waiting
        if row.updated_at != seen_update:
            seen_update = row.updated_at
            yield ServerSentEvent(event="job", raw_data=to_json(job_view(row)).decode(), retry=RETRY_MS if first else None)
            first = False
        if row.status in TERMINAL:
            yield ServerSentEvent(event="end", data={"job_id": job_id, "status": row.status})
            return
        await anyio.sleep(poll_s)
