"""Business logic of sweeps: create (validate the base spec and every edge of the search space, commit, then take
the first step), read, trials, front, cancel. Tenant scoping in ``readable`` (one place)."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.limits import check_job_slot, lock_tenant
from app.errors import Conflict, NotFound, Unprocessable
from app.jobs.service import validate_references
from app.pagination import newest_first
from app.sweeps.schemas import FrontMember, FrontObject, SweepObject, TrialObject
from distill.spec import JobSpec
from stillhouse.models import Job, Sweep, SweepTrial, new_id
from stillhouse.settings import get_settings
from stillhouse.sweeps import scheduler
from stillhouse.sweeps.spec import SweepSpec, corner_specs, trial_spec


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return loc, err.get("msg", "invalid")


def _check(session: Session, spec_json: dict[str, Any], tenant_id: str, prefix: str, param: str | None = None) -> JobSpec:
    """Validate one job spec the sweep would run; 422 naming ``param`` (or ``prefix`` + the job spec's field)."""
    try:
        job = JobSpec.model_validate(spec_json)
    except ValidationError as e:
        loc, msg = _first_error(e)
        where = param or f"{prefix}.{loc}"
        # a dimension whose values the job spec refuses at its path: code invalid_search_space (no JSON Schema of the sweep
        # can say which values a path of the job spec takes)
        raise Unprocessable(f"{where}: {msg}" + (f" (at {loc})" if param and loc else ""), param=where,
                            **({"code": "invalid_search_space"} if param else {})) from e
    try:
        validate_references(session, job, tenant_id)
    except Unprocessable as e:
        where = param or (f"{prefix}.{e.param}" if e.param else prefix)
        raise Unprocessable(f"{where}: {e.message}", param=where, code=e.code) from e
    return job


def create_sweep(session: Session, spec: SweepSpec, tenant_id: str) -> Sweep:
    """Create a running sweep of ``tenant_id``, its Optuna study, and its first ``max_parallel`` trials (queued jobs
    sent to the workers after the commit).

    Every edge value of every dimension is applied to the base spec and validated as a job would be (fields,
    ranges, files of the tenant, architectures), so a search space that cannot be built gets 422 naming
    ``search_space.<path>`` now rather than failed trials later; a bad base spec gets 422 naming ``base.<field>``.

    Trials are jobs of the tenant for its live-job limit (queued, running, cancelling): a tenant already at its limit
    gets 429 ``too_many_jobs`` (with ``Retry-After``) exactly as ``POST /v1/jobs`` answers, and nothing is created.
    Under the limit, the sweep starts at most as many trials as the tenant has slots left (fewer than
    ``max_parallel`` when it has fewer), and later ones only while it is under the limit: the sweep then waits
    (``waiting_for_job_slot`` on the sweep), it never fails for the limit.
    Raises Unprocessable (422), TooManyRequests (429 ``too_many_jobs``)."""
    _check(session, trial_spec(spec, {}), tenant_id, "base")
    for path, spec_json in corner_specs(spec):
        _check(session, spec_json, tenant_id, "search_space", param=f"search_space.{path}")
    session.rollback()
    check_job_slot(session, lock_tenant(session, tenant_id), get_settings())  # held until the sweep's commit; 429 releases it
    sweep_id = new_id("swp")
    sweep = Sweep(id=sweep_id, tenant_id=tenant_id, name=spec.name, status=scheduler.RUNNING, spec=spec.model_dump(mode="json"),
                  study_name=f"stillhouse-{sweep_id}", version=0, trials_created=0)
    scheduler.create_study(spec, sweep.study_name)
    session.add(sweep)
    session.commit()
    scheduler.advance(sweep_id, force=True)
    session.expire_all()
    return readable(session, sweep_id, tenant_id)


def readable(session: Session, sweep_id: str, tenant_id: str) -> Sweep:
    """The sweep, if it belongs to ``tenant_id``. Raises NotFound (404) alike for unknown ids and other tenants' sweeps."""
    sweep = session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant_id == tenant_id))
    if sweep is None:
        raise NotFound(f"no sweep {sweep_id!r}", param="sweep_id")
    return sweep


def to_schema(session: Session, sweep: Sweep) -> SweepObject:
    """The sweep as its response object (progress counted from its trial jobs)."""
    p = scheduler.progress(session, sweep)
    return SweepObject(id=sweep.id, name=sweep.name, status=sweep.status, stop_reason=sweep.stop_reason, error=sweep.error_message,
                       created_at=sweep.created_at, finished_at=sweep.finished_at, trials=p["trials"], best=p["best"],
                       waiting_for_job_slot=p["waiting_for_job_slot"],
                       spec=SweepSpec.model_validate(sweep.spec))


def list_sweeps(session: Session, tenant_id: str, *, limit: int, after: str | None) -> tuple[list[Sweep], bool]:
    """The tenant's sweeps newest first. Raises NotFound (404) when ``after`` is not one of them (as for jobs and files)."""
    anchor = session.scalar(select(Sweep).where(Sweep.id == after, Sweep.tenant_id == tenant_id)) if after else None
    if after and anchor is None:
        raise NotFound(f"after: no sweep {after!r} to continue from", param="after")
    return newest_first(session, select(Sweep).where(Sweep.tenant_id == tenant_id), Sweep, limit=limit, anchor=anchor)


def trials(session: Session, sweep_id: str, tenant_id: str) -> list[TrialObject]:
    """The sweep's trials in Optuna's order. Raises NotFound (404)."""
    sweep = readable(session, sweep_id, tenant_id)
    spec = SweepSpec.model_validate(sweep.spec)
    rows = session.execute(select(SweepTrial, Job.status, Job.report, Job.error_message).join(Job, Job.id == SweepTrial.job_id)
                           .where(SweepTrial.sweep_id == sweep.id).order_by(SweepTrial.number)).all()
    out = []
    for t, status, report, reason in rows:
        shared = ((report or {}).get("cache") or {}).get("shared") or {}
        out.append(TrialObject(number=t.number, job_id=t.job_id, params=t.params, status=status, state=t.state,
                               scores={o.label: v for o, v in zip(spec.objectives, t.values)} if t.values else None,
                               training_time_s=t.training_time_s, teacher_outputs=shared.get("teacher_outputs"),
                               reason=reason))
    return out


def front(session: Session, sweep_id: str, tenant_id: str) -> FrontObject:
    """The sweep's front (see ``stillhouse.sweeps.scheduler.front_rows``): the stored final one once the sweep ended,
    else the front of the trials completed so far. Raises NotFound (404)."""
    sweep = readable(session, sweep_id, tenant_id)
    spec = SweepSpec.model_validate(sweep.spec)
    final = sweep.front is not None
    rows = sweep.front if final else scheduler.front_rows(session, sweep, spec,
                                                          optuna.load_study(study_name=sweep.study_name, storage=scheduler.storage()))
    teacher = None
    for r in rows:
        job = session.get(Job, r["job_id"])
        rep = (job.report or {}) if job is not None else {}
        if rep.get("teacher"):
            h = rep.get("holdout") or {}
            teacher = {"val_top1": h.get("teacher_val_top1"), "interval95": h.get("teacher_interval95"),
                       "bytes": rep["teacher"].get("bytes"), "parameters": rep["teacher"].get("parameters"),
                       "latency_ms": rep["teacher"].get("latency_ms")}
            break
    return FrontObject(sweep_id=sweep.id, final=final, objectives=[o.label for o in spec.objectives], teacher=teacher,
                       data=[FrontMember(**r) for r in rows])


def cancel_sweep(session: Session, sweep_id: str, tenant_id: str) -> Sweep:
    """Cancel a running sweep (no new trial; queued trials cancelled, running ones stopped at their next step).
    Raises NotFound (404), Conflict (409 ``sweep_not_cancellable``) once it has ended."""
    sweep = readable(session, sweep_id, tenant_id)
    if sweep.status == scheduler.CANCELLED:
        return sweep
    if not scheduler.cancel(session, sweep_id):
        sweep = readable(session, sweep_id, tenant_id)
        if sweep.status != scheduler.CANCELLED:
            raise Conflict(f"sweep {sweep_id} is already {sweep.status}", code="sweep_not_cancellable")
    scheduler.job_slots_freed(tenant_id, first=sweep_id)  # its final step, then the tenant's sweeps waiting for the slots freed
    session.expire_all()
    return readable(session, sweep_id, tenant_id)
