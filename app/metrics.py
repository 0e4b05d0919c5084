"""The API's Prometheus side: ``MetricsMiddleware`` counts every request (by method, route template and status) and
times it; ``GET /metrics`` serves the text exposition of every stillhouse process on this machine plus the job gauges
read from the database (``stillhouse.metrics``)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from stillhouse import metrics
from stillhouse.db import get_engine
from stillhouse.jobs.states import QUEUED, STATUSES
from stillhouse.models import Job

router = APIRouter(tags=["health"])

UNMATCHED = "(unmatched)"
"""The route label of requests no route matched (404s of unknown paths), so scanners cannot grow the label set."""


class MetricsMiddleware:
    """Pure ASGI middleware: ``stillhouse_http_requests_total{method,route,status}`` and
    ``stillhouse_http_request_duration_seconds{method,route}`` (seconds to the response's start, so a long download or
    event stream counts its first byte, not its length). ``route`` is the matched route's template
    (``/v1/jobs/{job_id}``), never the raw path, so no id becomes a label."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500, "timed": False}

        def observe() -> None:
            route = scope.get("route")
            label = getattr(route, "path", None) or UNMATCHED
            metrics.HTTP_DURATION.labels(method=scope["method"], route=label).observe(time.perf_counter() - t0)
            status["timed"] = True

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                observe()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not status["timed"]:
                observe()
            route = scope.get("route")
            metrics.HTTP_REQUESTS.labels(method=scope["method"], route=getattr(route, "path", None) or UNMATCHED,
                                         status=str(status["code"])).inc()


def _read_jobs() -> tuple[dict[str, int], Any]:
    """{status: count} over all jobs (every status present, 0 included) and the oldest queued job's creation time."""
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        counts = {s: 0 for s in STATUSES}
        counts.update({s: n for s, n in conn.execute(select(Job.status, func.count()).group_by(Job.status))})
        oldest = conn.execute(select(func.min(Job.created_at)).where(Job.status == QUEUED)).scalar()
    if oldest is not None and oldest.tzinfo is None:
        from datetime import timezone

        oldest = oldest.replace(tzinfo=timezone.utc)
    return counts, oldest


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}},
                                                                    "description": "Prometheus text exposition format 0.0.4"}})
async def prometheus_metrics() -> Response:
    """Prometheus metrics of this machine's API and worker processes (multiprocess mode) and of the database: requests
    by route and status (``stillhouse_http_requests_total``), latency histograms (``stillhouse_http_request_duration_seconds``),
    jobs by status (``stillhouse_jobs``), queue depth (``stillhouse_queue_depth``, ``stillhouse_queue_oldest_age_seconds``),
    job and phase durations (``stillhouse_job_run_duration_seconds``, ``stillhouse_job_phase_duration_seconds``),
    teacher-cache use (``stillhouse_teacher_cache_*``), webhook attempts and open event streams. Base units; no job or
    tenant ids as labels. Needs no API key (it shows no tenant's data)."""
    body = await run_in_threadpool(metrics.exposition, _read_jobs)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
