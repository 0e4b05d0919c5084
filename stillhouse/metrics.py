"""Prometheus metrics (``prometheus-client`` in multiprocess mode): every API process, worker main process and worker
pool child of one machine writes its samples to files in one directory, and ``GET /metrics`` on the API adds them
up. Names carry the ``stillhouse_`` prefix and base units (seconds, bytes); no label holds a job or tenant id.

The directory is ``PROMETHEUS_MULTIPROC_DIR`` when set, else ``STILLHOUSE_METRICS_DIR``, else
``<data_dir>/metrics/<hostname>`` (one per machine, also on a shared data directory). It is chosen when this module is
first imported, before ``prometheus_client`` creates any value, and exported as ``PROMETHEUS_MULTIPROC_DIR`` so the
processes a process starts use the same one. Live gauges of dead processes are removed (``mark_process_dead``) when
a process starts; counters and histograms of ended processes stay in the totals (wipe the directory when all the
machine's stillhouse processes are stopped, as prometheus_client asks, to start the totals from zero).

Job counts by status and the queue depth are read from the database when ``/metrics`` is scraped
(``DatabaseCollector``), so they are right across machines; the rest is counted where it happens.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _metrics_dir() -> Path:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if os.environ.get("STILLHOUSE_METRICS_DIR"):
        return Path(os.environ["STILLHOUSE_METRICS_DIR"])
    return Path(os.environ.get("STILLHOUSE_DATA_DIR") or "var") / "metrics" / socket.gethostname()


METRICS_DIR = _metrics_dir().resolve()
METRICS_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)

import psutil  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

if not isinstance(values.ValueClass, type) or values.ValueClass.__name__ != "MmapedValue":  # imported before the directory was set
    values.ValueClass = values.MultiProcessValue()

HTTP_REQUESTS = Counter("stillhouse_http_requests_total", "HTTP requests answered by the API, by method, route template and status.",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram("stillhouse_http_request_duration_seconds", "Time to answer an HTTP request (to the response's start "
                          "for streams), by method and route template, seconds.", ["method", "route"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
EVENT_STREAMS = Gauge("stillhouse_event_streams", "Open job event streams (server-sent events).", multiprocess_mode="livesum")
JOBS_FINISHED = Counter("stillhouse_jobs_finished_total", "Jobs a worker ran to a final status, by status.", ["status"])
JOB_DURATION = Histogram("stillhouse_job_run_duration_seconds", "Seconds a job ran on its last worker attempt, by final status.",
                         ["status"], buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
PHASE_DURATION = Histogram("stillhouse_job_phase_duration_seconds", "Seconds a job spent in each phase (loading_teacher, "
                           "generating_transfer_set, caching_teacher_outputs, training, evaluating, exporting).", ["phase"],
                           buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
TEACHER_CACHE_JOBS = Counter("stillhouse_teacher_cache_jobs_total", "Succeeded jobs by whether their teacher outputs were cached "
                             "(computed once, reused every epoch).", ["cached"])
TEACHER_CACHE_HITS = Counter("stillhouse_teacher_cache_hits_total", "Training rows served from the teacher-output cache instead of "
                             "a teacher forward pass.")
WEBHOOK_ATTEMPTS = Counter("stillhouse_webhook_attempts_total", "Webhook delivery attempts by outcome (success, http_error, "
                           "no_answer, refused).", ["outcome"])
WEBHOOK_DURATION = Histogram("stillhouse_webhook_attempt_duration_seconds", "Seconds one webhook attempt took.",
                             buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def forget_dead_processes() -> int:
    """Remove the live-gauge files of processes that no longer run (``mark_process_dead``); returns how many pids."""
    pids = set()
    for p in METRICS_DIR.glob("gauge_live*_*.db"):
        try:
            pids.add(int(p.stem.rsplit("_", 1)[1]))
        except ValueError:
            continue
    dead = [pid for pid in pids if not psutil.pid_exists(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(METRICS_DIR))
    return len(dead)


def observe_job(status: str, seconds: float, report: dict | None = None) -> None:
    """Count a job a worker ended with ``status`` after ``seconds`` on this attempt; from a succeeded job's report, its
    teacher-cache use."""
    JOBS_FINISHED.labels(status=status).inc()
    JOB_DURATION.labels(status=status).observe(max(0.0, seconds))
    cache = (report or {}).get("cache") or {}
    if status == "succeeded" and cache:
        TEACHER_CACHE_JOBS.labels(cached="true" if cache.get("teacher_outputs") else "false").inc()
        TEACHER_CACHE_HITS.inc(max(0, int(cache.get("teacher_passes_saved") or 0)))


class PhaseClock:
    """Times a job's phases: ``switch(phase)`` closes the current phase (observing its seconds) and opens the next;
    ``close()`` ends the last one."""

    def __init__(self) -> None:
        self._phase: str | None = None
        self._t0 = 0.0

    def switch(self, phase: str | None) -> None:
        """Observe the phase that ends now and start timing ``phase`` (None: none)."""
        import time

        now = time.monotonic()
        if self._phase is not None:
            PHASE_DURATION.labels(phase=self._phase).observe(now - self._t0)
        self._phase, self._t0 = phase, now

    def close(self) -> None:
        """Observe the phase in progress, if any."""
        self.switch(None)


class DatabaseCollector:
    """Gauges read from SQL at scrape time: ``stillhouse_jobs{status}`` (every status, 0 included), ``stillhouse_queue_depth``
    (queued jobs) and ``stillhouse_queue_oldest_age_seconds``. ``read`` returns {status: count} and the oldest queued
    job's creation time (or None)."""

    def __init__(self, read) -> None:
        self._read = read

    def collect(self):
        """The gauges (nothing when the database cannot be read: the scrape still shows the process metrics)."""
        import datetime as dt

        try:
            counts, oldest = self._read()
        except Exception:  # noqa: BLE001 - an unreachable database must not fail the scrape
            return
        jobs = GaugeMetricFamily("stillhouse_jobs", "Jobs by status (from the database, all tenants).", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("stillhouse_queue_depth", "Jobs queued and not yet started by a worker.", value=counts.get("queued", 0))
        age = 0.0 if oldest is None else max(0.0, (dt.datetime.now(dt.timezone.utc) - oldest).total_seconds())
        yield GaugeMetricFamily("stillhouse_queue_oldest_age_seconds", "Seconds the oldest queued job has waited (0: none).", value=age)


class _OwnFamilies:
    """The ``stillhouse_*`` families of another collector. Libraries a worker or the API imports (MLflow's client, for
    one) create Prometheus metrics of their own, and in multiprocess mode those land in ``METRICS_DIR`` too; they are
    not this service's to publish."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def collect(self):
        return (fam for fam in self.inner.collect() if fam.name.startswith("stillhouse_"))


def exposition(read_database) -> bytes:
    """The text exposition of all processes' ``stillhouse_*`` metrics in ``METRICS_DIR`` plus the database gauges."""
    registry = CollectorRegistry()
    registry.register(_OwnFamilies(multiprocess.MultiProcessCollector(None, path=str(METRICS_DIR))))
    registry.register(DatabaseCollector(read_database))
    return generate_latest(registry)
