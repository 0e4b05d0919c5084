"""``/v1/jobs``: create, list, read, cancel; events, metrics, report, artifacts."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, SessionDep, SettingsDep, StoreDep
from app.errors import ERROR_RESPONSES, ErrorResponse, ServiceUnavailable
from app.jobs import service
from app.jobs.download import ArtifactResponse, StoreArtifactResponse
from app.jobs.schemas import (
    ArtifactList,
    ArtifactObject,
    EventObject,
    JobObject,
    MetricObject,
    Status,
)
from app.pagination import Limit, Page
from app.reports.service import job_report_html
from distill.report import Report
from distill.spec import JobSpec
from stillhouse.storage import StoreError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("stillhouse.api")

MAX_ID = 2**63 - 1  # ids are 64-bit integers in SQL
JobId = Annotated[str, Path(description="Job id, 'job_…'.")]
_409 = {409: {"model": ErrorResponse, "description": "Conflict with the job's state"}}


def _artifact(job_id: str, a: Any) -> ArtifactObject:
    return ArtifactObject(name=a.name, bytes=a.bytes, sha256=a.sha256, content_type=a.content_type, created_at=a.created_at,
                          url=f"/v1/jobs/{job_id}/artifacts/{a.name}")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobObject,
             responses={409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body"},
                        429: {"model": ErrorResponse, "description": "The tenant's live-job limit is reached (see Retry-After)"},
                        503: {"model": ErrorResponse, "description": "Broker unreachable"}, **ERROR_RESPONSES})
def create_job(spec: JobSpec, session: SessionDep, tenant: CurrentTenant, response: Response,
               idempotency_key: Annotated[str | None, Header(
                   alias="Idempotency-Key", min_length=1, max_length=255,
                   description="Any string up to 255 characters, unique per tenant. Repeating a request with the same key and "
                               "body returns the job the first one created (201, header Idempotent-Replayed: true) and starts "
                               "nothing; the same key with another body gets 409 idempotency_key_reused.")] = None) -> JobObject:
    """Create a distillation job from a spec, owned by the caller's tenant; it is queued and sent to a worker after
    the commit.

    422 for an invalid spec (unknown fields, numbers out of range, missing, wrong-purpose or other tenants' files,
    unknown architectures); 409 ``idempotency_key_reused``; 429 ``too_many_jobs`` when the tenant already has its
    limit of live (queued, running, cancelling) jobs, with ``Retry-After`` in seconds; 503 ``broker_unavailable``
    if the broker cannot be reached.
    """
    job, replayed = service.create_job(session, spec, tenant.id, idempotency_key=idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return service.to_schema(job)


@router.get("", response_model=Page[JobObject], responses=ERROR_RESPONSES)
def list_jobs(session: SessionDep, tenant: CurrentTenant, limit: Limit = 20,
              after: Annotated[str | None, Query(description="Return jobs after this job id.")] = None,
              status: Annotated[Status | None, Query(description="Only jobs in this status.")] = None) -> Page[JobObject]:
    """List the tenant's jobs, newest first. 422 if ``after`` names none of them."""
    rows, more = service.list_jobs(session, tenant.id, limit=limit, after=after, status=status)
    return Page[JobObject](data=[service.to_schema(j) for j in rows], has_more=more)


@router.get("/{job_id}", response_model=JobObject, responses=ERROR_RESPONSES)
async def get_job(job_id: JobId, tenant: CurrentTenant) -> JobObject:
    """Read a job: status, phase, progress (epoch, step, fraction, eta), error, timings. 404 if the tenant has no such job.

    The endpoint clients poll: one worker-thread hand-off per request (``service.job_status``)."""
    return await run_in_threadpool(service.job_status, job_id, tenant.id)


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


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "The artifact's bytes"},
                       503: {"model": ErrorResponse, "description": "The artifact's bytes are not in this server's storage"},
                       **ERROR_RESPONSES})
def download_artifact(job_id: JobId, name: Annotated[str, Path(description="Artifact name, e.g. student.safetensors.")],
                      session: SessionDep, store: StoreDep, settings: SettingsDep, tenant: CurrentTenant) -> FileResponse:
    """Download an artifact, streamed, with Content-Length, ``ETag`` = its sha256, and ``Range`` support (206;
    a malformed Range is ignored, an unsatisfiable one gets 416 ``range_not_satisfiable``), from the local directory
    or streamed from object storage (ranged GETs, one chunk in memory at a time). 503 ``artifact_unavailable`` when
    the row exists but its bytes are not in the store (API and workers not sharing ``STILLHOUSE_DATA_DIR``, or the
    file removed by hand); 503 ``storage_unavailable`` when the object store cannot be reached."""
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
