"""The sweep scheduler: asks Optuna for trials, sends each as an ordinary job, tells Optuna each trial's scores.

A sweep advances in steps (``advance``); a step is taken by whichever process gets there first, under a
compare-and-set on ``sweeps.version`` (so any number of processes may race: one wins each step, the others retry):

1. every trial job that ended and was not told yet is told to Optuna (``complete`` with its objective values, read
   from the job's report, which scores the student on the selection split; ``failed``/``cancelled`` as FAIL);
2. unless the sweep stops (``max_trials`` created, the grid exhausted, ``max_runtime_s`` passed: its live trials are
   then cancelled), new trials are asked of Optuna (``study.ask``) until ``max_parallel`` are in flight, each
   committed as a queued job with ``sweep_id`` and then sent to the workers like any job. Trials are jobs for the
   tenant's live-job limit too (``stillhouse.jobs.limits``: queued, running, cancelling jobs, trials or not): under
   the tenant lock, no more trials are created than the tenant has free slots, so a sweep never takes its tenant
   over the limit; with no slot free the sweep waits (``waiting_for_job_slot``), it does not fail, and a step is
   taken again when one of the tenant's jobs ends (``job_finished``: on a worker, or a queued job the API cancels;
   ``job_slots_freed`` after the API cancels a sweep) or by the repair loop;
3. once the sweep stops and no trial is live, its front (Optuna's ``best_trials``: the non-dominated trials) is
   written with each member's held-out validation top-1 and interval, and the sweep ends ``succeeded`` (``failed``
   when no trial completed).

Steps are taken by the worker that finishes a trial (``job_finished``, called by the Celery task right after the job
ends: the next trial is queued at once, so a sweep's wall time stays close to its trials' own), by the API after a
sweep is created or cancelled, and by the repair loop (``advance_live``, every ``STILLHOUSE_SWEEP_INTERVAL_S``, in
``stillhouse.jobs.sweep``), which catches up whatever a dead worker left (its trial resumes as every job does, on
another worker; the trial's job, not a new one, finishes it). The worker side is where trials end, so it is where the
next one is asked for without waiting for a poll; the repair loop is the safety net.

Optuna's study lives in the service's database through Optuna's RDB storage: PostgreSQL in the ``optuna`` schema of
the service's own database (Optuna keeps its own ``alembic_version``, which must not meet the service's), SQLite in a
sibling file ``<database>.optuna.db``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from stillhouse.db import session_factory
from stillhouse.jobs import states
from stillhouse.jobs.limits import free_job_slots, lock_tenant_row
from stillhouse.jobs.queue import enqueue_job, mark_sent, queue_for
from stillhouse.models import Job, JobEvent, JobFile, Sweep, SweepTrial, new_id, utcnow
from stillhouse.settings import Settings, get_settings
from stillhouse.sweeps.spec import CategoricalDim, FloatDim, IntDim, LayersDim, SweepSpec, encode_choice, trial_spec
from stillhouse.webhooks import outbox
from distill.spec import JobSpec

log = logging.getLogger("stillhouse.sweeps")
optuna.logging.set_verbosity(optuna.logging.WARNING)

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
SWEEP_TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
PRUNED_CODE = "trial_pruned"
"""``jobs.error_code`` of a trial's job its sweep's pruner stopped (status ``cancelled``; ``stillhouse.sweeps.pruning``)."""
STEP_WAIT_S = 60.0  # how long a caller keeps trying while other processes take the sweep's steps


# -- Optuna ------------------------------------------------------------------------------------------------------
def optuna_url(database_url: str) -> tuple[str, dict[str, Any]]:
    """Optuna's storage URL and engine arguments for the service's database URL: PostgreSQL → the same database,
    schema ``optuna``; SQLite → the file ``<database>.optuna.db``."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return database_url, {"connect_args": {"options": "-csearch_path=optuna"}, "pool_pre_ping": True}
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return str(url.set(database=str(Path(url.database)) + ".optuna.db")), {"connect_args": {"timeout": 30}}
    raise ValueError(f"sweeps need PostgreSQL or a SQLite file, not {url.get_backend_name()}")


_STORAGES: "weakref.WeakSet[optuna.storages.RDBStorage]" = weakref.WeakSet()  # this process's, for _after_fork


@functools.lru_cache(maxsize=8)
def _storage_for(database_url: str) -> optuna.storages.RDBStorage:
    url, kwargs = optuna_url(database_url)
    rdb = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    _STORAGES.add(rdb)
    return rdb


def _after_fork() -> None:
    """In a forked child (a Celery pool child that replaces a dead one is forked from a main process whose repair loop
    has stepped sweeps): let go of the Optuna storages' pooled connections, which are the parent's, without closing
    them (``Engine.dispose(close=False)``, SQLAlchemy's recipe for pools across ``os.fork``, as ``worker.tasks`` does
    for the service's own engine), so the child opens its own instead of talking over the parent's sockets."""
    for rdb in list(_STORAGES):
        rdb.engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork)


def storage(settings: Settings | None = None) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage of this service's database (one per process and URL)."""
    return _storage_for((settings or get_settings()).resolved_database_url)


def _param_names(path: str, dim: Any) -> list[str]:
    return [f"{path}.width", f"{path}.depth"] if isinstance(dim, LayersDim) else [path]


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """Optuna's distribution of every sampled parameter (a ``layers`` dimension is two: width and depth; categorical
    choices are JSON text, since Optuna's choices are scalars)."""
    out: dict[str, BaseDistribution] = {}
    for path, dim in spec.search_space.items():
        if isinstance(dim, FloatDim):
            out[path] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        elif isinstance(dim, IntDim):
            out[path] = IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        elif isinstance(dim, CategoricalDim):
            out[path] = CategoricalDistribution([encode_choice(c) for c in dim.choices])
        else:
            out[f"{path}.width"] = CategoricalDistribution(list(dim.widths))
            out[f"{path}.depth"] = CategoricalDistribution(list(dim.depths))
    return out


def decode(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's sampled ``params`` as {spec path: value}."""
    out: dict[str, Any] = {}
    for path, dim in spec.search_space.items():
        if isinstance(dim, LayersDim):
            out[path] = [int(params[f"{path}.width"])] * int(params[f"{path}.depth"])
        elif isinstance(dim, CategoricalDim):
            out[path] = json.loads(params[path])
        else:
            out[path] = params[path]
    return out


def sampler(spec: SweepSpec, offset: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler, seeded with ``sampler.seed + offset`` (``offset``: trials created so far, so a sampler
    rebuilt for each step does not repeat its random draws)."""
    s, seed = spec.sampler, spec.sampler.seed + offset
    multi = len(spec.objectives) > 1
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        grid: dict[str, list[Any]] = {}
        for path, dim in spec.search_space.items():
            if isinstance(dim, LayersDim):
                grid[f"{path}.width"], grid[f"{path}.depth"] = list(dim.widths), list(dim.depths)
            elif isinstance(dim, CategoricalDim):
                grid[path] = [encode_choice(c) for c in dim.choices]
            else:
                grid[path] = dim.grid()
        return optuna.samplers.GridSampler(grid, seed=spec.sampler.seed)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population_size or max(2, spec.budget.max_trials // 3), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, spec.budget.max_trials // 3)),
                                      multivariate=not multi)


def create_study(spec: SweepSpec, study_name: str, settings: Settings | None = None) -> None:
    """Create the sweep's Optuna study (directions from its objectives)."""
    optuna.create_study(storage=storage(settings), study_name=study_name, directions=[o.direction for o in spec.objectives],
                        load_if_exists=True)


# -- scores --------------------------------------------------------------------------------------------------------
def objective_values(spec: SweepSpec, report: dict[str, Any] | None) -> list[float] | None:
    """The objective values of a trial from its job's report (in the sweep's order), None when one is missing."""
    if not report:
        return None
    student = report.get("student") or {}
    out = []
    for o in spec.objectives:
        if o.name == "top1":
            v = student.get("val_top1")
        elif o.name == "bytes":
            v = student.get("bytes")
        else:
            v = ((student.get("latency_ms") or {}).get(str(o.batch_size)) or {}).get("p50")
        if v is None:
            return None
        out.append(float(v))
    return out


# -- steps ---------------------------------------------------------------------------------------------------------
def _claim_step(s: Session, sweep_id: str) -> Sweep | None:
    """Bump the sweep's version (compare-and-set) inside ``s``'s transaction; the sweep row, or None when another
    process bumped it meanwhile (retry) — raises LookupError for an unknown sweep."""
    sweep = s.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None:
        raise LookupError(sweep_id)
    res = s.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.version == sweep.version)
                    .values(version=sweep.version + 1, updated_at=utcnow()).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        s.rollback()
        return None
    sweep.version += 1
    return sweep


def _wants_trials(sweep: Sweep, spec: SweepSpec, live: int) -> bool:
    """Whether the sweep's own budget leaves room for a new trial now (the tenant's limit aside): running, not stopped,
    fewer than ``max_parallel`` live trials, and neither ``max_trials``, the grid nor ``max_runtime_s`` used up (the
    last two set ``stop_reason`` only at the next step)."""
    grid = spec.grid_size()
    return (sweep.status == RUNNING and sweep.stop_reason is None and live < spec.budget.max_parallel
            and sweep.trials_created < spec.budget.max_trials and (grid is None or sweep.trials_created < grid)
            and utcnow() - sweep.created_at <= timedelta(seconds=spec.budget.max_runtime_s))


def waiting_for_job_slot(s: Session, sweep: Sweep, spec: SweepSpec, settings: Settings | None = None) -> bool:
    """True when the sweep would start a trial but its tenant is at its live-job limit (it waits for a slot)."""
    live = s.scalar(select(func.count()).select_from(SweepTrial).where(SweepTrial.sweep_id == sweep.id,
                                                                        SweepTrial.told.is_(False))) or 0
    return _wants_trials(sweep, spec, live) and free_job_slots(s, sweep.tenant_id, settings or get_settings()) == 0


def _needs_step(s: Session, sweep: Sweep, spec: SweepSpec, settings: Settings) -> bool:
    """Cheap check (no Optuna, no lock): a trial ended untold, room for a new trial (in the sweep's budget and under
    the tenant's live-job limit), or the runtime budget passed."""
    if sweep.status in (SUCCEEDED, FAILED):
        return False
    rows = s.execute(select(SweepTrial.told, Job.status).join(Job, Job.id == SweepTrial.job_id)
                     .where(SweepTrial.sweep_id == sweep.id)).all()
    if any(not told and status in states.TERMINAL for told, status in rows):
        return True
    live = sum(1 for told, _ in rows if not told)
    if sweep.status == CANCELLED:
        return live == 0 and sweep.front is None
    if live == 0:
        return True
    over = utcnow() - sweep.created_at > timedelta(seconds=spec.budget.max_runtime_s)
    return over or (_wants_trials(sweep, spec, live) and free_job_slots(s, sweep.tenant_id, settings) > 0)


def advance(sweep_id: str, settings: Settings | None = None, *, force: bool = False) -> list[str]:
    """Take one step of sweep ``sweep_id`` (see the module's doc) and send the trials it created; returns their job
    ids. Without ``force`` it first checks cheaply whether there is anything to do. Raises LookupError for an
    unknown sweep."""
    settings = settings or get_settings()
    sessions = session_factory(settings)
    deadline = time.monotonic() + STEP_WAIT_S
    while time.monotonic() < deadline:
        with sessions() as s:
            sweep = s.get(Sweep, sweep_id)
            if sweep is None:
                raise LookupError(sweep_id)
            spec = SweepSpec.model_validate(sweep.spec)
            if not force and not _needs_step(s, sweep, spec, settings):
                return []
        t0 = time.perf_counter()
        created = _step(sessions, settings, sweep_id)
        if created is not None:
            t1 = time.perf_counter()
            for job_id, queue in created:
                _send(sessions, settings, job_id, queue)
            log.info("sweep %s: step in %.3f s (+ %.3f s sending %d trial(s))", sweep_id, t1 - t0, time.perf_counter() - t1,
                     len(created))
            return [j for j, _ in created]
        time.sleep(0.05)  # another process took this step; look again (it may have done what this call was for)
    log.warning("sweep %s: could not take a step for %g s (busy); the repair loop will", sweep_id, STEP_WAIT_S)
    return []


def _step(sessions: sessionmaker[Session], settings: Settings, sweep_id: str) -> list[tuple[str, str]] | None:
    """One step under the compare-and-set; returns the (job id, queue) of the trials created (to send after commit),
    or None when another process took the step meanwhile."""
    with sessions() as s:
        sweep = _claim_step(s, sweep_id)
        if sweep is None:
            return None
        if sweep.status in (SUCCEEDED, FAILED):
            s.commit()
            return []
        spec = SweepSpec.model_validate(sweep.spec)
        # told with a passive sampler: GridSampler.after_trial calls study.stop() once the grid is done, which Optuna
        # allows only inside study.optimize; the sweep's own sampler is put in for the asks
        study = optuna.load_study(study_name=sweep.study_name, storage=storage(settings), sampler=optuna.samplers.RandomSampler())
        trials = s.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(SweepTrial.number)).all()
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.sweep_id == sweep_id))}
        _tell_finished(s, spec, study, trials, jobs)
        study.sampler = sampler(spec, sweep.trials_created)
        live = [t for t in trials if not t.told]
        if sweep.status == CANCELLED:  # no new trial; the front of what completed, once the last live trial ended
            if not live and sweep.front is None:
                _finish(s, sweep, spec, study)
            s.commit()
            return []
        over = utcnow() - sweep.created_at > timedelta(seconds=spec.budget.max_runtime_s)
        if sweep.stop_reason is None:
            grid = spec.grid_size()
            if over:
                sweep.stop_reason = "max_runtime_s"
            elif sweep.trials_created >= spec.budget.max_trials:
                sweep.stop_reason = "max_trials"
            elif grid is not None and sweep.trials_created >= grid:
                sweep.stop_reason = "search_space_exhausted"
        if over:
            for t in live:
                _cancel_job(s, t.job_id, "cancelled: the sweep's budget.max_runtime_s passed")
        created: list[tuple[str, str]] = []
        if sweep.stop_reason is None:
            room = min(spec.budget.max_parallel - len(live), spec.budget.max_trials - sweep.trials_created)
            grid = spec.grid_size()
            if grid is not None:
                room = min(room, grid - sweep.trials_created)
            if room > 0:  # trials are jobs of the tenant: never past its live-job limit (the tenant lock, as POST /v1/jobs)
                room = min(room, free_job_slots(s, sweep.tenant_id, settings) if lock_tenant_row(s, sweep.tenant_id) else 0)
            for _ in range(max(0, room)):
                try:
                    created.append(_new_trial(s, sweep, spec, study))
                except UnbuildableTrial as e:  # values that pass alone but not together: stop, saying which
                    sweep.stop_reason, sweep.error_message = INVALID_SEARCH_SPACE, str(e)
                    break
            if sweep.stop_reason is None and sweep.trials_created >= spec.budget.max_trials:
                sweep.stop_reason = "max_trials"
        if not live and not created and sweep.stop_reason is not None:
            _finish(s, sweep, spec, study)
        s.commit()
        return created


def _tell_finished(s: Session, spec: SweepSpec, study: optuna.Study, trials: list[SweepTrial], jobs: dict[str, Job]) -> None:
    for t in trials:
        job = jobs.get(t.job_id)
        if t.told or job is None or job.status not in states.TERMINAL:
            continue
        values = objective_values(spec, job.report) if job.status == states.SUCCEEDED else None
        if values is not None:
            study.tell(t.number, values, skip_if_finished=True)
            t.state, t.values = "complete", values
            t.training_time_s = ((job.report or {}).get("training") or {}).get("training_time_s")
        elif job.status == states.CANCELLED and job.error_code == PRUNED_CODE:  # stopped early by the sweep's pruner
            study.tell(t.number, state=TrialState.PRUNED, skip_if_finished=True)
            t.state = "pruned"
        else:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            t.state = "failed" if job.status != states.CANCELLED else "cancelled"
        t.told = True


INVALID_SEARCH_SPACE = "invalid_search_space"
"""``stop_reason`` of a sweep whose sampled values made a job spec that does not validate (the sweep then fails)."""


class UnbuildableTrial(ValueError):
    """A sampled trial whose job spec does not validate: each dimension's edge values are checked alone at creation,
    but some values only fail together (``method.name: hard_label`` with a sampled ``method.temperature``)."""


def _new_trial(s: Session, sweep: Sweep, spec: SweepSpec, study: optuna.Study) -> tuple[str, str]:
    """Ask Optuna for a trial and add its job (queued, unsent) and row to ``s``; returns (job id, queue). Raises
    ``UnbuildableTrial`` (the Optuna trial told failed, nothing added) when the sampled values make an invalid job
    spec."""
    trial = study.ask(distributions(spec))
    values = decode(spec, trial.params)
    try:
        job_spec = JobSpec.model_validate(trial_spec(spec, values, f"{spec.name or sweep.id} trial {trial.number}"))
    except ValidationError as e:
        study.tell(trial, state=TrialState.FAIL)
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(spec)"
        raise UnbuildableTrial(f"trial {trial.number}'s values {json.dumps(values, default=str)} do not make a valid job "
                               f"spec ({where}: {first['msg']}): the search space combines values that do not go together; "
                               "search them in separate sweeps") from e
    spec_json = job_spec.model_dump(mode="json")
    job = Job(id=new_id("job"), tenant_id=sweep.tenant_id, name=job_spec.name, status=states.QUEUED, spec=spec_json, attempt=0,
              queue=queue_for(spec_json), job_metadata={"sweep_id": sweep.id, "trial": str(trial.number)}, sweep_id=sweep.id)
    s.add(job)
    s.flush()
    for role, file_id in job_spec.file_ids().items():
        s.add(JobFile(job_id=job.id, role=role, file_id=file_id))
    s.add(JobEvent(job_id=job.id, type="status", message=f"job created and queued as trial {trial.number} of sweep {sweep.id}",
                   data={"status": states.QUEUED, "sweep_id": sweep.id, "trial": trial.number}))
    s.add(SweepTrial(sweep_id=sweep.id, number=trial.number, job_id=job.id, params=values))
    sweep.trials_created += 1
    return job.id, job.queue


def _send(sessions: sessionmaker[Session], settings: Settings, job_id: str, queue: str) -> None:
    try:
        enqueue_job(job_id, settings, queue=queue)
    except Exception as e:  # noqa: BLE001 - any broker failure: the repair loop sends jobs left unsent
        log.warning("trial job %s: could not send (%s: %s); the repair loop will", job_id, type(e).__name__, e)
        return
    with sessions() as s:
        mark_sent(s, job_id)


def _cancel_job(s: Session, job_id: str, why: str) -> None:
    (states.transition(s, job_id, states.CANCELLED, only_from={states.QUEUED}, event=why)
     or states.transition(s, job_id, states.CANCELLING, only_from={states.RUNNING}, event=why + "; stopping at the next step"))


def _finish(s: Session, sweep: Sweep, spec: SweepSpec, study: optuna.Study) -> None:
    """Write the front and end the sweep (succeeded with at least one completed trial, else failed; a cancelled sweep
    stays cancelled), and add its ``sweep.<status>`` webhook deliveries to the same transaction
    (``stillhouse.webhooks.outbox.sweep_finished``). A sweep's front is written once (this runs under the step's
    compare-and-set, only while ``front`` is None), so each sweep's event is emitted exactly once: for a succeeded or
    failed sweep at its last step, for a cancelled one when its last running trial has stopped and its front (of the
    trials that completed) is known."""
    if sweep.front is not None:
        return
    sweep.front = front_rows(s, sweep, spec, study)
    sweep.finished_at = sweep.finished_at or utcnow()
    if sweep.status == RUNNING:
        sweep.status = SUCCEEDED if sweep.front and sweep.stop_reason != INVALID_SEARCH_SPACE else FAILED
        if not sweep.front and not sweep.error_message:
            sweep.error_message = "no trial completed"
    outbox.sweep_finished(s, sweep.id, sweep.tenant_id, sweep.status, len(sweep.front))


def front_rows(s: Session, sweep: Sweep, spec: SweepSpec, study: optuna.Study | None = None) -> list[dict[str, Any]]:
    """The non-dominated completed trials (Optuna's ``best_trials`` over the selection-split scores), each with its
    job, params, scores and the held-out validation evaluation from its report (top-1 with a 95% interval)."""
    trials = {t.number: t for t in s.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id, SweepTrial.state == "complete"))}
    if not trials:
        return []
    study = study or optuna.load_study(study_name=sweep.study_name, storage=storage())
    numbers = sorted({t.number for t in study.best_trials} & set(trials))
    out = []
    for n in numbers:
        t = trials[n]
        job = s.get(Job, t.job_id)
        report = job.report or {}
        student = report.get("student") or {}
        out.append({"trial": n, "job_id": t.job_id, "params": t.params,
                    "scores": {o.label: v for o, v in zip(spec.objectives, t.values or [])},
                    "selection_top1": student.get("val_top1"), "bytes": student.get("bytes"),
                    "parameters": student.get("parameters"), "latency_ms": student.get("latency_ms"),
                    "holdout": report.get("holdout"),
                    "student_artifact": f"/v1/jobs/{t.job_id}/artifacts/student.safetensors"})
    return out


# -- entry points --------------------------------------------------------------------------------------------------
def job_finished(job_id: str, settings: Settings | None = None) -> list[str]:
    """Called after job ``job_id`` ended (on a worker, or cancelled while queued by the API): when it is a trial, advance
    its sweep (tell Optuna, ask for the next trial at once); then the tenant's other running sweeps, since the job's end
    freed one of the tenant's live-job slots that a sweep may be waiting for (``job_slots_freed``). Never raises (the
    repair loop catches up); returns the trial jobs created."""
    settings = settings or get_settings()
    try:
        with session_factory(settings)() as s:
            row = s.execute(select(Job.sweep_id, Job.tenant_id).where(Job.id == job_id)).first()
    except Exception:  # noqa: BLE001 - the sweep is advanced by the repair loop too
        log.exception("could not advance the sweeps after job %s", job_id)
        return []
    if row is None:
        return []
    return job_slots_freed(row.tenant_id, settings, first=row.sweep_id)


def job_slots_freed(tenant_id: str, settings: Settings | None = None, *, first: str | None = None) -> list[str]:
    """Some of tenant ``tenant_id``'s live jobs ended (a trial or job finished, the API cancelled queued jobs or a whole
    sweep): advance sweep ``first`` (the ended trial's, or the cancelled one) and then the tenant's other running
    sweeps, oldest first, so one waiting for a free job slot (``waiting_for_job_slot``) starts its trial now rather than
    at the next repair pass. Each ``advance`` checks cheaply first, so sweeps with nothing to do cost one read. Never
    raises (the repair loop catches up); returns the trial jobs created."""
    settings = settings or get_settings()
    try:
        with session_factory(settings)() as s:
            others = list(s.scalars(select(Sweep.id).where(Sweep.tenant_id == tenant_id, Sweep.status == RUNNING)
                                    .order_by(Sweep.created_at).limit(100)))
        out: list[str] = []
        for sweep_id in ([first] if first else []) + [o for o in others if o != first]:
            out += advance(sweep_id, settings)
        return out
    except Exception:  # noqa: BLE001 - the sweep is advanced by the repair loop too
        log.exception("could not advance the sweeps of tenant %s after its jobs ended", tenant_id)
        return []


def advance_live(sessions: sessionmaker[Session], settings: Settings) -> list[str]:
    """The repair loop's pass: advance every running sweep that has something to do, and every cancelled one whose
    final step (front, ``sweep.cancelled`` webhook) is still to come: its last trial may have ended without a worker's
    ``job_finished`` (a dead lease's ``cancelling`` job is ended by the repair loop itself). Returns the sweeps
    advanced."""
    with sessions() as s:
        ids = list(s.scalars(select(Sweep.id).where(or_(Sweep.status == RUNNING, and_(Sweep.status == CANCELLED,
                                                                                     Sweep.front.is_(None))))
                             .limit(500)))
    done = []
    for sweep_id in ids:
        try:
            advance(sweep_id, settings)
            done.append(sweep_id)
        except Exception:  # noqa: BLE001 - one sweep's trouble must not stop the others
            log.exception("could not advance sweep %s", sweep_id)
    return done


def cancel(s: Session, sweep_id: str) -> bool:
    """Cancel a running sweep: no new trial, its queued trials cancelled at once and its running ones asked to stop
    (``cancelling``); the final step (told, front) happens as they end. Commits. False when it had already ended."""
    res = s.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.status == RUNNING)
                    .values(status=CANCELLED, stop_reason="cancelled", version=Sweep.version + 1, updated_at=utcnow(),
                            finished_at=utcnow()).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        s.rollback()
        return False
    for job_id in s.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(states.LIVE))):
        _cancel_job(s, job_id, "cancelled with its sweep")
    s.commit()
    return True


def progress(s: Session, sweep: Sweep) -> dict[str, Any]:
    """{'trials': {'created', 'done', 'running', 'queued', 'failed', 'cancelled', 'pruned' (stopped early by the
    pruner; not among 'cancelled')}, 'best': the best completed trial by
    the first objective ({'trial', 'job_id', 'scores'}) or None, 'waiting_for_job_slot': True while the sweep would
    start a trial but its tenant is at its live-job limit}."""
    spec = SweepSpec.model_validate(sweep.spec)
    counts = dict(s.execute(select(Job.status, func.count()).where(Job.sweep_id == sweep.id).group_by(Job.status)).all())
    pruned = s.scalar(select(func.count()).select_from(Job).where(Job.sweep_id == sweep.id, Job.status == states.CANCELLED,
                                                                 Job.error_code == PRUNED_CODE)) or 0
    done = [t for t in s.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id, SweepTrial.state == "complete"))]
    best = None
    if done:
        sign = 1 if spec.objectives[0].direction == "maximize" else -1
        b = max(done, key=lambda t: sign * (t.values or [0])[0])
        best = {"trial": b.number, "job_id": b.job_id, "scores": {o.label: v for o, v in zip(spec.objectives, b.values or [])}}
    return {"trials": {"created": sweep.trials_created, "max_trials": spec.budget.max_trials,
                       "succeeded": counts.get(states.SUCCEEDED, 0), "running": counts.get(states.RUNNING, 0) + counts.get(states.CANCELLING, 0),
                       "queued": counts.get(states.QUEUED, 0), "failed": counts.get(states.FAILED, 0),
                       "cancelled": counts.get(states.CANCELLED, 0) - pruned, "pruned": pruned},
            "best": best, "waiting_for_job_slot": waiting_for_job_slot(s, sweep, spec)}
