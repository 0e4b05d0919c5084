"""Reports for the HTML view and the job-comparison view."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Unprocessable
from app.jobs.service import get_job, get_report
from stillhouse.models import Metric
from app.reports.render import render_html, report_view
from distill.report import AnyReport

EPOCH_SPLITS = ("train_epoch", "val", "baseline_train_epoch", "baseline_val")
MAX_COMPARE = 20
JOB_IDS_PATTERN = r"^\s*[^,\s\x00][^,\x00]*(,\s*[^,\s\x00][^,\x00]*){0,%d}$" % (MAX_COMPARE - 1)
"""What ``parse_job_ids`` accepts: 1 to ``MAX_COMPARE`` comma-separated non-empty ids (no NUL: no query may hold one)."""


def epoch_metrics(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's epoch-level metric rows (loss terms per epoch, validation values) as dicts."""
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.split.in_(EPOCH_SPLITS)).order_by(Metric.id))
    return [{"name": m.name, "split": m.split, "epoch": m.epoch, "step": m.step, "value": m.value} for m in rows]


def job_report_html(session: Session, job_id: str, tenant_id: str) -> str:
    """The HTML page of one of the tenant's succeeded jobs' report. Raises NotFound (404, also for another tenant's
    job), Conflict (409 report_not_ready), InternalError (500 report_unreadable)."""
    report = get_report(session, job_id, tenant_id)
    job = get_job(session, job_id, tenant_id)
    return render_html(f"compression report · {job_id}", [report_view(job_id, job.name, report, epoch_metrics(session, job_id))])


def parse_job_ids(job_ids: str) -> list[str]:
    """``a,b,c`` -> ['a', 'b', 'c'] (order kept, duplicates dropped). Raises Unprocessable (422) for none, an empty one
    or more than ``MAX_COMPARE`` (as ``JOB_IDS_PATTERN`` says in the schema)."""
    parts = [j.strip() for j in job_ids.split(",")]
    if not all(parts):
        raise Unprocessable("job_ids: give one or more job ids separated by commas (no empty ones)", param="job_ids")
    if len(parts) > MAX_COMPARE:
        raise Unprocessable(f"job_ids: at most {MAX_COMPARE} jobs can be compared at once, got {len(parts)}", param="job_ids")
    return list(dict.fromkeys(parts))


def compare(session: Session, job_ids: list[str], tenant_id: str) -> list[AnyReport]:
    """The typed reports of several of the tenant's succeeded jobs, in the given order. Raises NotFound (an unknown id or
    another tenant's) / Conflict naming the first bad id / InternalError (500 report_unreadable)."""
    return [get_report(session, j, tenant_id) for j in job_ids]


def compare_html(session: Session, job_ids: list[str], tenant_id: str) -> str:
    """Several of the tenant's jobs' reports side by side as one HTML page. Raises as ``compare``."""
    views = [report_view(j, get_job(session, j, tenant_id).name, get_report(session, j, tenant_id), epoch_metrics(session, j))
             for j in job_ids]
    return render_html(f"{len(views)} reports side by side", views)
