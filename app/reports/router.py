"""``/v1/reports``: several jobs' reports side by side; ``/v1/jobs/{id}/report.html``: one as a page."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, SessionDep
from app.errors import ERROR_RESPONSES, ErrorResponse
from app.reports import service
from distill.report import Report

router = APIRouter(tags=["reports"])
_409 = {409: {"model": ErrorResponse, "description": "A job has no report yet"},
        500: {"model": ErrorResponse, "description": "A stored report cannot be read (report_unreadable)"}}
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
# errors of an HTML route are JSON too: declared by content, not "model" (which would take the route's text/html)
_HTML_ROUTE_ERRORS = {code: {"description": spec["description"], "content": _JSON_ERROR}
                      for code, spec in {**_409, **ERROR_RESPONSES}.items()}


class ReportList(BaseModel):
    """Several reports, in the order asked for."""

    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[Report] = Field(..., description="One compression report per job (the same object as GET /v1/jobs/{id}/report).")
    has_more: bool = Field(False, description="Always false.")


@router.get("/v1/reports", response_model=ReportList, responses={200: {"content": {"text/html": {}}}, **_409, **ERROR_RESPONSES})
async def compare_reports(session: SessionDep, tenant: CurrentTenant,
                          job_ids: Annotated[str, Query(description="Comma-separated job ids (at most 20), e.g. job_a,job_b.",
                                                        pattern=service.JOB_IDS_PATTERN)],
                          format: Annotated[Literal["json", "html"], Query(description="'json' or 'html' (a page with the reports side by side).")] = "json"):
    """Compare several jobs: their reports side by side (JSON list, or one HTML page with tables and plots).
    404 for an unknown job (or another tenant's), 409 ``report_not_ready`` for a job that has not succeeded, 422 for a bad
    ``job_ids``, 500 ``report_unreadable`` for a damaged stored report."""
    ids = service.parse_job_ids(job_ids)
    if format == "html":
        return HTMLResponse(await run_in_threadpool(service.compare_html, session, ids, tenant.id))
    return ReportList(data=await run_in_threadpool(service.compare, session, ids, tenant.id))


@router.get("/v1/jobs/{job_id}/report.html", response_class=HTMLResponse, responses=_HTML_ROUTE_ERRORS)
async def report_page(job_id: Annotated[str, Path(description="Job id, 'job_…'.")], session: SessionDep,
                      tenant: CurrentTenant) -> HTMLResponse:
    """The report of a succeeded job as an HTML page: tables and plots (loss terms and validation accuracy per
    epoch, accuracy vs size, latency). Same as ``GET /v1/jobs/{id}/report?format=html``. 404 if the tenant has no such job."""
    return HTMLResponse(await run_in_threadpool(service.job_report_html, session, job_id, tenant.id))
