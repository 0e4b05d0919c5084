"""``/v1/jobs``: create, list, read, cancel; events, metrics, report, artifacts."""

from __future__ import annotations

import logging
from typing import Annotated, Any, AsyncIterator, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, SessionDep, SettingsDep, StoreDep
from app.errors import ERROR_RESPONSES, ErrorResponse, ServiceUnavailable, Unprocessable, json_error_responses
from app.jobs import service
from app.jobs.download import ArtifactResponse, StoreArtifactResponse
from app.jobs.stream import job_events
from app.jobs.schemas import (
    ArtifactList,
    ArtifactObject,
    EventObject,
    JobCreate,
    JobDeleted,
    JobObject,
    JobValidation,
    MetricObject,
    Status,
)
from app.pagination import Limit, Page
from app.reports.service import job_report_html
from distill.report import Report
from stillhouse.storage import StoreError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("stillhouse.api")

MAX_ID = 2**63 - 1  # ids are 64-bit integers in SQL
JobId = Annotated[str, Path(description="Job id, 'job_…'.")]
_409 = {409: {"model": ErrorResponse, "description": "Conflict with the job's state"}}


def _artifact(job_id: str, a: Any) -> ArtifactObject:
    return ArtifactObject(name=a.name, bytes=a.bytes, sha256=a.sha256, content_type=a.content_type, created_at=a.created_at,
                          url=f"/v1/jobs/{job_id}/artifacts/{a.name}")


_ROLE = r"(teacher|data\.train|data\.validation|data\.transfer)"
_PENDING_PATTERN = rf"^(\s*{_ROLE}\s*(,\s*{_ROLE}\s*)*)?$"  # what the dry run accepts in 'pending'


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobObject,
             responses={200: {"model": JobValidation, "description": "dry_run=true: the spec is valid; nothing was created"},
                        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body"},
                        429: {"model": ErrorResponse, "description": "The tenant's live-job limit is reached (see Retry-After)"},
                        **ERROR_RESPONSES,
                        503: {"model": ErrorResponse, "description": "broker_unavailable (the broker is unreachable) or "
                                                                     "database_unavailable (with Retry-After)"}})
def create_job(body: JobCreate, session: SessionDep, tenant: CurrentTenant, response: Response,
               idempotency_key: Annotated[str | None, Header(
                   alias="Idempotency-Key", min_length=1, max_length=255,
                   description="Any string up to 255 characters, unique per tenant. Repeating a request with the same key and "
                               "body returns the job the first one created (201, header Idempotent-Replayed: true) and starts "
                               "nothing; the same key with another body gets 409 idempotency_key_reused.")] = None,
               dry_run: Annotated[bool, Query(description="Only validate: answer 200 with a job.validation object, or the "
                                                          "error a real creation would get; create and upload nothing.")] = False,
               pending: Annotated[str | None, Query(
                   description="With dry_run: comma-separated file roles (teacher, data.train, data.validation, data.transfer) "
                               "whose files are not uploaded yet. Their file_id may be any placeholder ('file_pending'); the "
                               "checks that need those files run at the real creation.", max_length=200,
                   pattern=_PENDING_PATTERN)] = None) -> Any:
    """Create a distillation job from a spec (plus optional ``metadata``), owned by the caller's tenant; it is queued
    and sent to a worker after the commit.

    422 for an invalid spec (unknown fields, numbers out of range, missing, wrong-purpose or other tenants' files,
    unknown architectures, metadata over its limits: 16 keys, 64/512 characters); 409 ``idempotency_key_reused``;
    429 ``too_many_jobs`` when the tenant already has its limit of live (queued, running, cancelling) jobs, with
    ``Retry-After`` in seconds; 503 ``broker_unavailable`` if the broker cannot be reached.

    ``dry_run=true`` runs the same validation and answers 200 with a ``job.validation`` object without creating the
    job (``stillhouse submit`` does this before uploading a spec's local files); ``pending`` names the files still to
    be uploaded. Limits (live jobs, idempotency keys) are checked at the real creation only.
    """
    spec = body.spec()
    if dry_run:
        roles = frozenset(r.strip() for r in pending.split(",")) if pending else frozenset()  # an empty one is unknown
        service.dry_run(session, spec, tenant.id, pending=roles)
        validation = JobValidation(spec=spec, metadata=body.metadata, pending=sorted(roles))
        return JSONResponse(validation.model_dump(mode="json"), status_code=200)
    job, replayed = service.create_job(session, spec, tenant.id, idempotency_key=idempotency_key, metadata=body.metadata)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return service.to_schema(job)


def _metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[KEY]=VALUE`` query parameters as {KEY: VALUE}. Raises Unprocessable (422) for an empty or too long
    key, a repeated key or too many of them."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not (name.startswith("metadata[") and name.endswith("]")):
            continue
        key = name[len("metadata["):-1]
        if not 1 <= len(key) <= 64 or key in found or len(found) >= 16:
            raise Unprocessable(f"{name}: metadata filters need keys of 1-64 characters, each at most once, 16 at most",
                                param=name)
        found[key] = value
    return found


@router.get("", response_model=Page[JobObject], responses=ERROR_RESPONSES,
            openapi_extra={"parameters": [{"name": "metadata[KEY]", "in": "query", "required": False, "schema": {"type": "string"},
                                           "description": "Only jobs whose metadata KEY equals this value; repeat for several "
                                                          "keys (all must match), e.g. ?metadata[dag]=nightly&metadata[run_id]=42."}]})
def list_jobs(request: Request, session: SessionDep, tenant: CurrentTenant, limit: Limit = 20,
              after: Annotated[str | None, Query(description="Return jobs after this job id.")] = None,
              status: Annotated[Status | None, Query(description="Only jobs in this status.")] = None) -> Page[JobObject]:
    """List the tenant's jobs, newest first, optionally of one status and metadata (``metadata[KEY]=VALUE``, all must
    match). 404 if ``after`` names none of them."""
    rows, more = service.list_jobs(session, tenant.id, limit=limit, after=after, status=status, metadata=_metadata_filter(request))
    return Page[JobObject](data=[service.to_schema(j) for j in rows], has_more=more)


@router.get("/{job_id}", response_model=JobObject, responses=ERROR_RESPONSES)
async def get_job(job_id: JobId, tenant: CurrentTenant) -> Response:
    """Read a job: status, phase, progress (epoch, step, fraction, eta), error, timings, metadata. 404 if the tenant has
    no such job.

    The endpoint clients poll: one worker-thread hand-off per request and the JSON made there (``service.job_status``)."""
    return Response(await run_in_threadpool(service.job_status, job_id, tenant.id), media_type="application/json")


@router.delete("/{job_id}", response_model=JobDeleted, responses={**_409, **ERROR_RESPONSES})
def delete_job(job_id: JobId, session: SessionDep, store: StoreDep, tenant: CurrentTenant) -> JobDeleted:
    """Delete a finished job (succeeded, failed or cancelled) with its events, metrics, report and artifacts; its
    artifacts' bytes no longer count against the tenant's storage quota (``freed_bytes``). The files it used stay
    (delete them with DELETE /v1/files/{id}). 404 if the tenant has no such job; 409 ``job_not_finished`` while it is
    queued, running or cancelling (cancel it first)."""
    return JobDeleted(id=job_id, freed_bytes=service.delete_job(session, store, job_id, tenant.id))


@router.post("/{job_id}/cancel", response_model=JobObject, responses={**_409, **ERROR_RESPONSES})
def cancel_job(job_id: JobId, session: SessionDep, tenant: CurrentTenant) -> JobObject:
    """Cancel a job: queued -> cancelled at once; running -> cancelling -> cancelled within one step.
    409 ``job_not_cancellable`` once it has finished."""
    return service.to_schema(service.cancel_job(session, job_id, tenant.id))


@router.get("/{job_id}/events", response_model=Page[EventObject], responses=ERROR_RESPONSES)
def list_events(job_id: JobId, session: SessionDep, tenant: CurrentTenant, limit: Limit = 100,
                after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only events with a larger id.")] = None) -> Page[EventObject]:
    """A job's events (status and phase changes, resumes, errors), oldest first."""
    rows, more = service.list_events(session, job_id, tenant.id, after=after, limit=limit)
    return Page[EventObject](data=[EventObject.model_validate(r) for r in rows], has_more=more)


def _stream_start(job_id: JobId, tenant: CurrentTenant, session: SessionDep,
                  last_event_id: Annotated[str | None, Header(
                      alias="Last-Event-ID", max_length=20,
                      description="Resume after this event id (EventSource sends it when it reconnects).")] = None,
                  after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only events with a larger id (as "
                                                     "Last-Event-ID; the header wins when both are given).")] = None) -> int | None:
    """Check the job is the tenant's (404 before any byte is streamed) and return the event id to resume after.
    Raises Unprocessable (422) for a Last-Event-ID that is not an event id."""
    service.get_job(session, job_id, tenant.id)
    session.rollback()
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit() or int(last_event_id) > MAX_ID:
            raise Unprocessable(f"Last-Event-ID must be an event id (a whole number), got {last_event_id!r}", param="Last-Event-ID")
        return int(last_event_id)
    return after


@router.get("/{job_id}/events/stream", response_class=EventSourceResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "Server-sent events: 'event' (a job event, with its id), 'job' "
                                                               "(the job object when it changed), 'end' (the job finished)"},
    **json_error_responses()})
async def stream_events(job_id: JobId, tenant: CurrentTenant, settings: SettingsDep,
                        after: Annotated[int | None, Depends(_stream_start)]) -> AsyncIterator[ServerSentEvent]:
    """The job's events live, as server-sent events (``text/event-stream``), ending when the job ends.

    ``event: event`` carries each event of ``GET /v1/jobs/{id}/events`` (with ``id:`` = its event id); ``event: job``
    the job object (status, phase, progress, as ``GET /v1/jobs/{id}``) whenever it changed; ``event: end``
    ``{"job_id", "status"}`` once the job finished, then the stream closes. Reconnect with ``Last-Event-ID`` (or
    ``?after=``) to resume after the last event received; nothing is lost or repeated. New rows are looked for every
    ``STILLHOUSE_EVENTS_POLL_INTERVAL_S`` seconds; an idle stream gets a ``: ping`` comment every 15 s. 404 if the
    tenant has no such job; 422 for a malformed ``Last-Event-ID``."""
    async for message in job_events(job_id, tenant.id, after, settings.events_poll_interval_s):
        yield message


@router.get("/{job_id}/metrics", response_model=Page[MetricObject], responses=ERROR_RESPONSES)
def list_metrics(job_id: JobId, session: SessionDep, tenant: CurrentTenant, limit: Annotated[int, Query(ge=1, le=10000, description="Most rows (1-10000).")] = 1000,
                 after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only rows with a larger id.")] = None,
                 name: Annotated[str | None, Query(description="Only this metric, e.g. 'top1' or 'loss/kd'.")] = None,
                 split: Annotated[str | None, Query(description="Only 'train' or 'val'.")] = None) -> Page[MetricObject]:
    """A job's metric rows (per logged step and per epoch), in recording order."""
    rows, more = service.list_metrics(session, job_id, tenant.id, name=name, split=split, after=after, limit=limit)
    return Page[MetricObject](data=[MetricObject.model_validate(r) for r in rows], has_more=more)


@router.get("/{job_id}/report", response_model=Report,
            responses={200: {"content": {"text/html": {}}, "description": "The report: one variant per task family, selected "
                                                                           "by 'task'"},
                       500: {"model": ErrorResponse, "description": "The stored report cannot be read (report_unreadable)"},
                       **_409, **ERROR_RESPONSES})
def get_report(job_id: JobId, session: SessionDep, tenant: CurrentTenant,
               format: Annotated[Literal["json", "html"], Query(description="'json', or 'html' for a page with plots.")] = "json"):
    """The compression report of a succeeded job, one variant per task family (``task``: classification,
    sequence_classification, sentence_embedding; reports stored without ``task`` are classification reports).

    Classification: teacher vs student (and the student trained alone) validation top-1 (and top-5, per-class top-1,
    expected calibration error, teacher-student confusion), agreement, mean KL (nats), parameters, bytes on disk,
    compression ratio (teacher bytes / student bytes), FLOPs per sample, latency p50/p95 (ms) per batch size, speedup,
    int8 and pruned variants. Text tasks: layers, parameters, bytes, per-sentence latency (ms), throughput
    (sentences/s), agreement and top-1 or embedding cosine and linear-probe accuracy. All: training (epochs, steps, loss
    terms), teacher-output cache, wall time per phase (s) and a summary sentence. ``format=html`` renders it as a page
    with plots. 409 ``report_not_ready`` before success; 500 ``report_unreadable`` if the stored report is damaged."""
    if format == "html":
        return HTMLResponse(job_report_html(session, job_id, tenant.id))
    return service.get_report(session, job_id, tenant.id)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=ERROR_RESPONSES)
def list_artifacts(job_id: JobId, session: SessionDep, tenant: CurrentTenant) -> ArtifactList:
    """The job's downloadable artifacts (empty until it succeeds)."""
    return ArtifactList(data=[_artifact(job_id, a) for a in service.list_artifacts(session, job_id, tenant.id)])


_ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The artifact's bytes (HEAD: its headers only)"},
    304: {"description": "Not modified: If-None-Match named the artifact's ETag (no body)"},
    503: {"model": ErrorResponse, "description": "The artifact's bytes are not in this server's storage"},
    **ERROR_RESPONSES}


@router.head("/{job_id}/artifacts/{name}", response_class=FileResponse, responses=_ARTIFACT_RESPONSES,
             operation_id="head_artifact", summary="Artifact headers (size, ETag) without the body")
@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse, responses=_ARTIFACT_RESPONSES)
def download_artifact(job_id: JobId, name: Annotated[str, Path(description="Artifact name, e.g. student.safetensors.")],
                      session: SessionDep, store: StoreDep, settings: SettingsDep, tenant: CurrentTenant) -> FileResponse:
    """Download an artifact, streamed, with Content-Length, ``ETag`` = its sha256 (quoted), and ``Range`` support (206;
    a malformed Range is ignored, an unsatisfiable one gets 416 ``range_not_satisfiable``), from the local directory
    or streamed from object storage (ranged GETs, one chunk in memory at a time). ``HEAD`` answers the same headers
    without the body; ``If-None-Match`` with the ETag (or ``*``) answers 304 Not Modified, no body. 503
    ``artifact_unavailable`` when the row exists but its bytes are not in the store (API and workers not sharing
    ``STILLHOUSE_DATA_DIR``, or the file removed by hand); 503 ``storage_unavailable`` when the object store cannot be
    reached."""
    a = service.get_artifact(session, job_id, name, tenant.id)
    if store.is_local:
        path = store.local(a.storage_key)
        if not path.is_file():
            log.error("artifact %s of %s is recorded but %s is missing", a.name, job_id, path)
            raise ServiceUnavailable(f"artifact {a.name!r} of job {job_id} is recorded but its bytes are not in this server's storage; "
                                     "the API and the workers must share STILLHOUSE_DATA_DIR, or use object storage "
                                     "(STILLHOUSE_ARTIFACT_URL; the operator is told in the API log)", code="artifact_unavailable")
        return ArtifactResponse(path, sha256=a.sha256, media_type=a.content_type, filename=a.name)
    try:
        info = store.stat(a.storage_key)
    except StoreError as e:
        log.error("artifact %s of %s: %s", a.name, job_id, e)
        raise ServiceUnavailable(f"artifact {a.name!r} of job {job_id}: the artifact store cannot be read ({e})",
                                 code="storage_unavailable") from e
    if info is None:
        log.error("artifact %s of %s is recorded but object %s is missing from the bucket", a.name, job_id, a.storage_key)
        raise ServiceUnavailable(f"artifact {a.name!r} of job {job_id} is recorded but its bytes are missing from the artifact store "
                                 "(the operator is told in the API log)", code="artifact_unavailable")
    return StoreArtifactResponse(store, info, sha256=a.sha256, media_type=a.content_type, filename=a.name,
                                 chunk=int(settings.upload_chunk_bytes))
