"""``/v1/sweeps``: create, list, read, trials, front (JSON and an HTML page), cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, SessionDep
from app.errors import ERROR_RESPONSES, ErrorResponse, json_error_responses
from app.pagination import Limit, Page
from app.sweeps import page, service
from app.sweeps.schemas import FrontObject, SweepObject, TrialObject
from stillhouse.sweeps.spec import SweepSpec

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
SweepId = Annotated[str, Path(description="Sweep id, 'swp_…'.")]
_409 = {409: {"model": ErrorResponse, "description": "The sweep has already ended"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepObject, responses=ERROR_RESPONSES)
def create_sweep(body: SweepSpec, session: SessionDep, tenant: CurrentTenant) -> Any:
    """Start a sweep: a base job spec, a search space ({dotted path in the job spec: dimension}: float, int,
    categorical, or layers = widths × depths), objectives (top1 up, latency_p50_ms at a batch size down, bytes down),
    an Optuna sampler (tpe, nsga2, random, grid) and a budget (max_trials, max_parallel, max_runtime_s). Each trial is an
    ordinary job (``sweep_id`` on it) scored on a selection split carved from the training rows; at most max_parallel
    run at once. 422 naming the field for a bad base spec (``base.…``) or a search space that cannot be built
    (``search_space.<path>``, checked at every dimension's edge values). Trials are jobs for the tenant's live-job
    limit: 429 ``too_many_jobs`` (Retry-After) when the tenant is already at it, as for POST /v1/jobs; otherwise the
    sweep starts trials only while the tenant is under it and waits meanwhile (``waiting_for_job_slot``)."""
    return service.to_schema(session, service.create_sweep(session, body, tenant.id))


@router.get("", response_model=Page[SweepObject], responses=ERROR_RESPONSES)
def list_sweeps(session: SessionDep, tenant: CurrentTenant, limit: Limit = 20,
                after: Annotated[str | None, Query(description="A sweep id: continue after it.", max_length=64)] = None) -> Any:
    """The caller's sweeps, newest first."""
    rows, more = service.list_sweeps(session, tenant.id, limit=limit, after=after)
    return Page[SweepObject](data=[service.to_schema(session, r) for r in rows], has_more=more)


@router.get("/{sweep_id}", response_model=SweepObject, responses=ERROR_RESPONSES)
def get_sweep(sweep_id: SweepId, session: SessionDep, tenant: CurrentTenant) -> Any:
    """Status, progress (trials created / succeeded / running / queued / failed / cancelled) and the best trial so far.
    404 for an unknown id or another tenant's sweep."""
    return service.to_schema(session, service.readable(session, sweep_id, tenant.id))


@router.get("/{sweep_id}/trials", response_model=Page[TrialObject], responses=ERROR_RESPONSES)
def list_trials(sweep_id: SweepId, session: SessionDep, tenant: CurrentTenant) -> Any:
    """Every trial: number, job, params, the job's status, and once done its selection-split scores and whether it
    reused the shared teacher outputs."""
    return Page[TrialObject](data=service.trials(session, sweep_id, tenant.id), has_more=False)


@router.get("/{sweep_id}/front", response_model=FrontObject, responses=ERROR_RESPONSES)
def get_front(sweep_id: SweepId, session: SessionDep, tenant: CurrentTenant) -> Any:
    """The non-dominated trials (on the selection-split scores), each with its held-out validation top-1 and 95%
    interval, bytes, latency and student link; ``final`` once the sweep ended."""
    return service.front(session, sweep_id, tenant.id)


@router.get("/{sweep_id}/front.html", response_class=HTMLResponse, responses=json_error_responses())
async def front_page(sweep_id: SweepId, session: SessionDep, tenant: CurrentTenant) -> HTMLResponse:
    """The sweep as an HTML page: the front plotted (top-1 vs p50 latency, marker area ~ bytes) beside the teacher,
    the front and the trials as tables."""

    def build() -> str:
        sweep = service.to_schema(session, service.readable(session, sweep_id, tenant.id))
        return page.render(sweep, service.front(session, sweep_id, tenant.id), service.trials(session, sweep_id, tenant.id))

    return HTMLResponse(await run_in_threadpool(build))


@router.post("/{sweep_id}/cancel", response_model=SweepObject, responses={**_409, **ERROR_RESPONSES})
def cancel_sweep(sweep_id: SweepId, session: SessionDep, tenant: CurrentTenant) -> Any:
    """Cancel: no new trial; queued trials are cancelled at once, running ones stop at their next step. Cancelling
    twice is harmless; 409 ``sweep_not_cancellable`` once the sweep has ended."""
    return service.to_schema(session, service.cancel_sweep(session, sweep_id, tenant.id))
