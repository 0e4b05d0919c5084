"""The baseline of ``bench/status_read.py``: the least a FastAPI app does to answer ``GET /v1/jobs/{id}`` from the same
row — one SQLAlchemy ORM read of ``jobs`` (the report column left out, as the service does) in a sync endpoint, the
columns returned as JSON. No authentication, no settings, no response model, default engine options.

    STILLHOUSE_BENCH_DATABASE_URL=sqlite:////tmp/x.db uvicorn bench.minimal_status_app:app
"""

from __future__ import annotations

import os

from fastapi import FastAPI, HTTPException
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, defer

from stillhouse.models import Job

engine = create_engine(os.environ["STILLHOUSE_BENCH_DATABASE_URL"])
app = FastAPI()
_COLUMNS = [c.key for c in Job.__mapper__.column_attrs if c.key != "report"]


@app.get("/v1/jobs/{job_id}")
def get_job(job_id: str) -> dict:
    """The job row's columns (no report) as JSON; 404 when there is no such row."""
    with Session(engine) as s:
        job = s.scalars(select(Job).options(defer(Job.report)).where(Job.id == job_id)).first()
        if job is None:
            raise HTTPException(404, "no such job")
        return {k: getattr(job, k) for k in _COLUMNS}
