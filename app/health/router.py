"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from stillhouse.db import get_engine
from app.errors import DB_RETRY_AFTER_S, ErrorResponse, ServiceUnavailable
from stillhouse.jobs.queue import broker_ok
from stillhouse.storage import get_store

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """Health answer."""

    status: Literal["ok"] = Field("ok", description="Always 'ok' when answered with 200.")
    checks: dict[str, str] = Field(default_factory=dict, description="Per dependency: 'ok'.")


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers HTTP."""
    return Health()


def _db_ok() -> str | None:
    try:
        with get_engine().connect() as c:
            c.execute(text("SELECT 1"))
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse, "description": "A dependency is down"}})
async def readyz() -> Health:
    """Readiness: the database answers ``SELECT 1``, the broker accepts a connection and the artifact store is usable
    (the data directory is writable, or the S3 bucket answers a HEAD). 503 ``unavailable`` otherwise, naming which,
    with ``Retry-After``."""
    db, broker = await run_in_threadpool(_db_ok), await run_in_threadpool(broker_ok)
    store = await run_in_threadpool(lambda: get_store().check())
    failed = [(k, v) for k, v in (("database", db), ("broker", broker), ("artifact store", store)) if v]
    if failed:
        raise ServiceUnavailable("; ".join(f"{k}: {v}" for k, v in failed), headers={"Retry-After": str(DB_RETRY_AFTER_S)})
    return Health(checks={"database": "ok", "broker": "ok", "artifact_store": "ok"})
