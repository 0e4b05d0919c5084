"""Which workers run, and which queues they consume: so a job that no running worker can serve (a ``gpu`` job with
only CPU workers up) says so in its status instead of waiting silently.

Each worker's main process keeps a row in ``workers`` (``WorkerHeartbeat``: written at start, every
``STILLHOUSE_WORKER_HEARTBEAT_S`` seconds, deleted at a clean stop). A worker not seen for ``STALE_FACTOR`` heartbeats
is taken as gone. ``waiting_reason`` answers from that table, read at most once per ``CACHE_S`` seconds per process
(the status read clients poll must stay cheap).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import delete, select, update

from stillhouse.db import session_factory
from stillhouse.models import Worker, utcnow
from stillhouse.settings import Settings, get_settings

log = logging.getLogger("stillhouse.worker")

STALE_FACTOR = 3  # heartbeats missed before a worker is taken as gone
PURGE_AFTER_S = 24 * 3600  # rows of workers gone this long are deleted by any worker's heartbeat
CACHE_S = 5.0


class WorkerHeartbeat:
    """Records this worker (``worker_id``, its ``queues``, ``concurrency`` and ``devices``) in ``workers`` every
    ``interval_s`` seconds from a daemon thread, and removes the row on ``stop()``. Database errors are logged and
    retried at the next beat (the row then ages, and the worker looks gone until the database answers again)."""

    def __init__(self, settings: Settings, worker_id: str, hostname: str, queues: list[str], concurrency: int,
                 devices: dict) -> None:
        self.settings, self.worker_id, self.hostname = settings, worker_id, hostname
        self.queues, self.concurrency, self.devices = list(queues), concurrency, devices
        self.interval_s = settings.worker_heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stillhouse-worker-heartbeat", daemon=True)

    def beat(self) -> None:
        """Write this worker's row now (insert or update) and purge rows of long-gone workers. Raises the database's error."""
        now = utcnow()
        with session_factory(self.settings).begin() as s:
            res = s.execute(update(Worker).where(Worker.id == self.worker_id)
                            .values(last_seen_at=now, queues=self.queues).execution_options(synchronize_session=False))
            if res.rowcount == 0:
                s.add(Worker(id=self.worker_id, hostname=self.hostname, queues=self.queues, concurrency=self.concurrency,
                             devices=self.devices, started_at=now, last_seen_at=now))
            s.execute(delete(Worker).where(Worker.last_seen_at < now - timedelta(seconds=PURGE_AFTER_S))
                      .execution_options(synchronize_session=False))

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - retried at the next beat
                log.warning("worker heartbeat failed (%s: %s)", type(e).__name__, e)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> "WorkerHeartbeat":
        """Start beating (the first beat right away); returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and delete this worker's row (best effort)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            with session_factory(self.settings).begin() as s:
                s.execute(delete(Worker).where(Worker.id == self.worker_id).execution_options(synchronize_session=False))
        except Exception as e:  # noqa: BLE001 - the row ages out instead
            log.warning("could not remove this worker's row (%s: %s)", type(e).__name__, e)


def live_workers(settings: Settings | None = None) -> list[Worker]:
    """Workers seen within ``STALE_FACTOR`` heartbeats, newest first."""
    s = settings or get_settings()
    cutoff = utcnow() - timedelta(seconds=STALE_FACTOR * s.worker_heartbeat_s)
    with session_factory(s)() as session:
        return list(session.scalars(select(Worker).where(Worker.last_seen_at >= cutoff).order_by(Worker.last_seen_at.desc())))


_cache: dict[str, tuple[float, dict[str, int]]] = {}
_cache_lock = threading.Lock()


def served_queues(settings: Settings | None = None) -> dict[str, int]:
    """``{queue: number of live workers consuming it}``, from a copy at most ``CACHE_S`` seconds old."""
    s = settings or get_settings()
    key = s.resolved_database_url
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
    counts: dict[str, int] = {}
    for w in live_workers(s):
        for q in w.queues or []:
            counts[q] = counts.get(q, 0) + 1
    with _cache_lock:
        _cache[key] = (now, counts)
    return counts


def waiting_reason(queue: str, settings: Settings | None = None) -> str | None:
    """Why a queued job on ``queue`` cannot start, or None when some live worker consumes that queue."""
    s = settings or get_settings()
    served = served_queues(s)
    if served.get(queue):
        return None
    others = ", ".join(f"{q} ({n})" for q, n in sorted(served.items())) or "none"
    kind = "GPU " if queue == s.gpu_queue else ""
    return (f"no running worker consumes the {kind}queue {queue!r} (workers seen in the last "
            f"{STALE_FACTOR * s.worker_heartbeat_s:g} s, by queue: {others}); the job waits until one starts, e.g. "
            f"STILLHOUSE_WORKER_QUEUES={queue} python -m worker")
