"""Tenants, keys and broker messages for the security tests (straight on the database / broker the service uses)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

from tests.conftest import Backend


def make_tenant(name: str, *, max_running_jobs: int | None = None, max_storage_bytes: int | None = None) -> tuple[str, str]:
    """Create tenant ``name`` (with optional limits) and one key for it; returns (tenant id, whole key)."""
    from app.auth import service
    from stillhouse.db import session_factory

    with session_factory()() as s:
        t = service.create_tenant(s, name, max_running_jobs=max_running_jobs, max_storage_bytes=max_storage_bytes)
        _, key = service.create_key(s, name, name=f"{name}-test")
        return t.id, key


def bearer(key: str) -> dict[str, str]:
    """The request headers that authenticate with ``key``."""
    return {"Authorization": f"Bearer {key}"}


def _task_job_id(raw: bytes | str) -> str:
    """The job id carried by one kombu message (JSON envelope, base64 JSON body ``[args, kwargs, embed]``)."""
    msg = json.loads(raw)
    body = msg["body"]
    if msg.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return args[0]


class SentMessages:
    """The broker messages sent since it was made: the queue is shared by a whole test session, so earlier tests'
    messages are subtracted (as a multiset: a second message for one job still shows)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.before = Counter(broker_messages(backend))

    def job_ids(self) -> list[str]:
        """Job ids of the messages sent since, sorted (one entry per message)."""
        return sorted((Counter(broker_messages(self.backend)) - self.before).elements())


def broker_messages(backend: Backend) -> list[str]:
    """The job ids of the messages waiting in ``backend``'s queue (no worker consumes in API tests), in no order."""
    if backend.broker_url.startswith("filesystem://"):
        folder = Path(backend.data_dir) / "broker" / "queue"
        return [_task_job_id(p.read_bytes()) for p in folder.glob(f"*.{backend.queue}.msg")]
    import redis

    r = redis.Redis.from_url(backend.broker_url)
    try:
        out = []
        for key in r.scan_iter(match=f"{backend.queue}*"):
            if r.type(key) == b"list":
                out += [_task_job_id(m) for m in r.lrange(key, 0, -1)]
        return out
    finally:
        r.close()
