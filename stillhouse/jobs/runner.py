"""Running one job on a worker: claim its lease in SQL, call the distillation core, publish artifacts and the
report, and always end in a final status (never left ``running`` by an exception), or hand the job back when the
worker shuts down.

Every write is conditional on this process still holding the job's lease (``stillhouse.jobs.leases``): a second delivery
of a job whose lease is live exits at once without writing anything, and a process that lost its lease (another
worker took the job over after it stopped answering) stops at its next step without writing anything more.
"""

from __future__ import annotations

import logging
import mimetypes
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from stillhouse import metrics
from stillhouse.db import database_unavailable, get_engine, session_factory
from stillhouse.jobs import leases, states
from stillhouse.jobs.queue import enqueue_job, mark_sent
from stillhouse.models import Artifact, File, Job, JobEvent, JobFile, Metric, utcnow
from stillhouse.registry import export_mlflow, is_epoch_metric
from stillhouse.settings import Settings, get_settings
from stillhouse.storage import ArtifactStore, StoreError, get_store, sha256_file
from stillhouse.jobs.scratch import CheckpointMirror
from stillhouse.teacher_cache import StoreSharedCache
from stillhouse.jobs import handback
from distill.errors import DistillError, StopRequested
from distill.formats import FileInput
from distill.job import run_job
from distill.results import JobInputs
from distill.spec import JobSpec
from stillhouse.jobs.reporter import CANCEL, HANDBACK, PRUNED, LeaseLost, SqlReporter
from stillhouse.sweeps.pruning import PRUNED_CODE, for_job as trial_pruning

log = logging.getLogger("stillhouse.worker")

CONTENT_TYPES = {".safetensors": "application/octet-stream", ".onnx": "application/octet-stream", ".json": "application/json",
                 ".zip": "application/zip"}


@dataclass(frozen=True)
class Claimed:
    """A job this process now holds: its ``attempt`` (1 = first start), the ``runtime_s`` it used in earlier
    attempts, and its ``spec`` (JSON)."""

    attempt: int
    runtime_s: float
    spec: dict


class Lease:
    """The lease this process holds on a job, renewed by a daemon heartbeat thread every ``ttl_s / 3`` seconds.

    Each renewal is ``UPDATE jobs SET lease_expires_at = now + ttl, runtime_s = ... WHERE id = :job AND lease_owner =
    :owner``; when it matches no row (the job was taken over or finished) or no renewal succeeded for ``ttl_s``
    seconds (database unreachable: the lease may have expired and been claimed), ``lost()`` turns true for good.
    ``runtime_s()``: the job's running seconds, earlier attempts included.
    """

    def __init__(self, sessions, job_id: str, owner: str, ttl_s: float, runtime_before_s: float) -> None:
        self.sessions, self.job_id, self.owner, self.ttl_s = sessions, job_id, owner, ttl_s
        self._before = runtime_before_s
        self._t0 = self._last_ok = time.monotonic()
        self._lost = threading.Event()
        self.taken_over = False  # True once a renewal matched no row: someone else holds the job, or it ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def runtime_s(self) -> float:
        """Seconds the job has run: earlier attempts plus this one so far."""
        return self._before + (time.monotonic() - self._t0)

    def lost(self) -> bool:
        """True once the lease is (or may be) held by someone else."""
        if not self._lost.is_set() and time.monotonic() - self._last_ok > self.ttl_s:
            log.warning("job %s: lease not renewed for %.1f s; stopping", self.job_id, time.monotonic() - self._last_ok)
            self._lost.set()
        return self._lost.is_set()

    def renew(self) -> bool:
        """Extend the lease by ``ttl_s`` from now and record the runtime; False (and ``lost()``) when it is gone.
        Raises the database's error when it cannot be reached."""
        with self.sessions.begin() as s:
            res = s.execute(update(Job).where(Job.id == self.job_id, Job.lease_owner == self.owner,
                                              Job.status.in_([states.RUNNING, states.CANCELLING]))
                            .values(lease_expires_at=leases.expiry(utcnow(), self.ttl_s), runtime_s=self.runtime_s())
                            .execution_options(synchronize_session=False))
        if res.rowcount != 1:
            self.taken_over = True
            self._lost.set()
            return False
        self._last_ok = time.monotonic()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    log.warning("job %s: lease of %s was taken over; stopping at the next step without writing", self.job_id, self.owner)
                    return
            except Exception as e:  # noqa: BLE001 - retry until lost() says the lease may be gone
                log.warning("job %s: lease renewal failed (%s: %s)", self.job_id, type(e).__name__, e)
                if self.lost():
                    return

    def start(self) -> "Lease":
        """Start the heartbeat thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the heartbeat (the lease stays as last written; final transitions clear it)."""
        self._stop.set()
        self._thread.join(timeout=5)


def _claim(sessions, job_id: str, owner: str, settings: Settings) -> Claimed | None:
    """Take job ``job_id``'s lease with one compare-and-set and move it to running (attempt + 1).

    It succeeds only when the job is queued, or running with a dead lease (expired, or held by a process of this
    host that no longer exists). None when the job must not run here: unknown, finished, leased by a live process
    (a second delivery: nothing is written), or a redelivery that ends it (a cancelling job whose worker died ->
    cancelled; started ``max_attempts`` times after worker deaths -> failed ``worker_lost``).
    """
    now = utcnow()
    with sessions() as s:
        job = s.get(Job, job_id)
    if job is None:
        log.warning("job %s does not exist; dropping the message", job_id)
        return None
    if job.status in states.TERMINAL:
        log.info("job %s is already %s; dropping this delivery", job_id, job.status)
        return None
    if job.status != states.QUEUED and not leases.lease_dead(job.lease_owner, job.lease_expires_at, now):
        log.info("job %s is leased by %s until %s; this delivery exits without side effects", job_id, job.lease_owner,
                 job.lease_expires_at.isoformat() if job.lease_expires_at else "?")
        return None
    seen_dead = job.lease_owner if job.status != states.QUEUED and leases.owner_dead_here(job.lease_owner) else None
    same = [Job.attempt == job.attempt, leases.dead_lease_clause(now, seen_dead)]
    with sessions.begin() as s:
        if job.status == states.CANCELLING:
            if states.transition(s, job_id, states.CANCELLED, where=same, phase=None,
                                 event="cancelled; its worker died before it stopped the job, nothing published"):
                _drop_workdir(get_store(settings), job_id)
            return None
        if job.status == states.RUNNING and job.attempt - job.handbacks >= settings.max_attempts:
            msg = (f"the worker running this job died {job.attempt - job.handbacks} times; giving up "
                   f"(STILLHOUSE_MAX_ATTEMPTS={settings.max_attempts})")
            if states.transition(s, job_id, states.FAILED, only_from={states.RUNNING}, where=same, error_code="worker_lost",
                                 error_message=msg, phase=None, event="failed: worker_lost", data={"code": "worker_lost", "message": msg}):
                _drop_workdir(get_store(settings), job_id)
            return None
        attempt = job.attempt + 1
        how, reason = _resume_reason(s, job, seen_dead)
        ok = states.transition(
            s, job_id, states.RUNNING, where=same, attempt=attempt, worker=socket.gethostname(), lease_owner=owner,
            lease_expires_at=leases.expiry(now, settings.lease_ttl_s), started_at=job.started_at or now,
            event=f"{how} on {owner} (attempt {attempt})",
            data={"attempt": attempt, "worker": owner, **({"resumed": reason} if reason else {})},
        )
    if not ok:
        log.info("job %s was claimed or changed by someone else meanwhile; this delivery exits", job_id)
        return None
    return Claimed(attempt=attempt, runtime_s=float(job.runtime_s or 0.0), spec=job.spec)


RESUME_REASONS = ("worker_process_gone", "lease_expired", "database_error", "handback")
"""What a resumed job's ``running`` status event says in ``data.resumed``: its worker's process was found gone on this
host; its lease expired (the worker froze, or could not reach the database, or its machine is gone); its worker
handed it back after losing the database; its worker handed it back on shutdown."""


def _resume_reason(session, job: Job, seen_dead: str | None) -> tuple[str, str | None]:
    """(the start's wording, its ``RESUME_REASONS`` entry or None for a first start) for ``job`` as read before its claim."""
    if job.status == states.RUNNING:
        if seen_dead:
            return f"resumed after its worker process ({job.lease_owner}) was found gone", "worker_process_gone"
        expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
        return (f"resumed after the lease of {job.lease_owner} expired at {expired} (its worker froze, lost the database or "
                "its machine)", "lease_expired")
    if not job.handbacks:
        return "started", None
    last = session.scalar(select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.type == "status")
                          .order_by(JobEvent.id.desc()).limit(1)) or {}
    if last.get("reason") == "database_error":
        return f"resumed after {last.get('worker', 'its worker')} handed it back on a database error", "database_error"
    if last.get("reason") == "lease_expired":
        return (f"resumed after {last.get('worker', 'its worker')} handed it back, its lease not renewed in time (frozen, or "
                "the database unreachable)", "lease_expired")
    return "resumed after a hand-back", "handback"


def _inputs(sessions, store: ArtifactStore, job_id: str, workdir: Path) -> JobInputs:
    """The job's uploads as local files (from object storage: downloaded once per machine, checked against their sha256)."""
    with sessions() as s:
        rows = s.execute(select(JobFile.role, File).join(File, File.id == JobFile.file_id).where(JobFile.job_id == job_id)).all()
    by_role = {role: f for role, f in rows}
    files = {}
    for f in by_role.values():
        try:
            files[f.id] = FileInput(path=store.job_input(f.storage_key, workdir, sha256=f.sha256), format=f.format, bytes=f.bytes,
                                  sha256=f.sha256)
        except FileNotFoundError as e:
            raise StoreError(f"the bytes of file {f.id} ({f.filename}) are missing from the artifact store") from e
    teacher = by_role["teacher"]
    return JobInputs(teacher=files[teacher.id], files=files)


def _drop_workdir(store: ArtifactStore, job_id: str) -> None:
    """Remove the job's working folder: checkpoints in the store and this machine's scratch copy."""
    try:
        store.delete(f"{store.job_key(job_id)}/work")
    except StoreError as e:  # left-over checkpoints cost space, not correctness (a new job has a new id)
        log.warning("job %s: could not remove its checkpoints from the store (%s)", job_id, e)


def _stage_artifacts(store: ArtifactStore, job_id: str, attempt: int, paths: list[Path]) -> tuple[str, list[Artifact]]:
    """Describe the artifacts (name, bytes, sha256) and publish them to ``jobs/<id>/artifacts/attempt-<n>/`` (a folder
    of this attempt only: moved there in a local store, uploaded to object storage); returns the folder's key and the
    rows to insert."""
    folder = f"{store.job_key(job_id)}/artifacts/attempt-{attempt}"
    rows = []
    for p in paths:
        key = f"{folder}/{p.name}"
        ctype = CONTENT_TYPES.get(p.suffix) or mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        size, digest = p.stat().st_size, sha256_file(p)
        store.publish(p, key)
        rows.append(Artifact(job_id=job_id, name=p.name, bytes=size, sha256=digest, content_type=ctype, storage_key=key))
    return folder, rows


def execute(job_id: str, settings: Settings | None = None) -> str | None:
    """Run job ``job_id`` to a final status; returns that status, ``queued`` when it was handed back, or None when
    this process did not run it or lost it (see ``_claim``; a lost lease ends the run without writing anything).

    Success publishes artifacts and the report and moves the job to ``succeeded`` in one transaction; a cancel ends
    it ``cancelled`` with nothing published; a ``DistillError`` ends it ``failed`` with its code; any other exception
    ends it ``failed`` with ``internal_error`` and the exception text. When the worker shuts down
    (``stillhouse.jobs.handback``), the job stops before its next step, keeps a checkpoint of that step, moves back to
    ``queued`` (``handbacks + 1``) and its message is sent again. Each of these writes happens only while this
    process holds the job's lease.
    """
    settings = settings or get_settings()
    sessions = session_factory(settings)
    store = get_store(settings)
    if threading.current_thread() is threading.main_thread():
        handback.install_child_handler()  # again: a pool may re-point signals after the child's initializer
    if handback.requested():  # this worker is shutting down: leave the job to another one
        log.info("job %s delivered while this worker shuts down; sending it back to the queue untouched", job_id)
        _resend(sessions, settings, job_id)
        return None
    owner = leases.owner_id()
    claimed = _claim(sessions, job_id, owner, settings)
    if claimed is None:
        return None
    lease = Lease(sessions, job_id, owner, settings.lease_ttl_s, claimed.runtime_s).start()
    workdir = store.scratch_dir(job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    mirror = CheckpointMirror(store, job_id, workdir, may_write=lambda: not lease.lost())
    pruning = trial_pruning(sessions, job_id, settings)
    reporter = SqlReporter(sessions, job_id, interval_s=settings.progress_interval_s, owner=owner, lease_lost=lease.lost,
                           handback=handback.requested, prune_check=pruning.observe if pruning is not None else None)
    t0 = time.monotonic()
    try:
        try:
            spec = JobSpec.model_validate(claimed.spec)
            inputs = _inputs(sessions, store, job_id, workdir)
            mirror.restore()
            mirror.start()
            result = run_job(spec, inputs, workdir, reporter, runtime_used_s=claimed.runtime_s,
                             max_unpacked_bytes=settings.max_unpacked_bytes,
                             shared=StoreSharedCache(store, get_engine(settings)) if settings.shared_teacher_cache else None)
            mirror.stop()
            reporter.flush()
            if reporter.cancel_requested():
                raise StopRequested()
            return _succeed(sessions, store, job_id, owner, claimed.attempt, lease, result, workdir, time.monotonic() - t0, spec)
        except StopRequested:
            if reporter.stop_reason == HANDBACK:
                return _hand_back(sessions, settings, job_id, owner, reporter, lease, mirror)
            if reporter.stop_reason == PRUNED:
                reporter.flush()
                return _pruned(sessions, store, job_id, owner, lease, reporter.pruned or "pruned")
            if reporter.stop_reason != CANCEL:
                raise LeaseLost(f"job {job_id}: lease lost")
            reporter.flush()
            return _cancelled(sessions, store, job_id, owner, lease, "cancelled; stopped between steps, nothing published")
        except LeaseLost:
            raise
        except DistillError as e:
            log.warning("job %s failed: %s", job_id, e)
            return _fail(sessions, store, job_id, owner, lease, e.code, e.message, reporter)
        except StoreError as e:
            log.warning("job %s failed: %s", job_id, e)
            return _fail(sessions, store, job_id, owner, lease, "storage_unavailable", str(e), reporter)
        except Exception as e:  # noqa: BLE001 - the job must end failed, never stuck running
            if database_unavailable(e):  # transient: never a reason to fail the job
                return _hand_back_after_db_error(sessions, settings, job_id, owner, lease, mirror, e)
            log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
            return _fail(sessions, store, job_id, owner, lease, "internal_error", f"{type(e).__name__}: {e}", reporter)
    except LeaseLost:
        if not lease.taken_over and not reporter.lease_taken:  # not renewed in time: frozen, or the database unreachable
            try:
                return _hand_back_after_db_error(sessions, settings, job_id, owner, lease, mirror, None)
            except LeaseLost:
                pass
        log.warning("job %s: this process (%s) lost its lease; stopped without writing anything more", job_id, owner)
        return None
    finally:
        mirror.stop()
        reporter.phase_clock.close()
        lease.stop()


def _succeed(sessions, store: ArtifactStore, job_id: str, owner: str, attempt: int, lease: Lease, result, workdir: Path,
             seconds: float, spec: JobSpec) -> str | None:
    """Publish the artifacts and move the job to ``succeeded`` in one transaction, while holding the lease; then, when
    the spec asks for it, export the student to the model registry (``_export_registry``). A job cancelled meanwhile
    ends ``cancelled`` with its staged artifacts deleted; a lost lease publishes nothing."""
    if lease.lost():
        raise LeaseLost(job_id)
    folder, rows = _stage_artifacts(store, job_id, attempt, list(result.artifacts))
    pending = ({"mlflow": {"status": "pending", "tracking_uri": spec.registry.mlflow.tracking_uri,
                           "model_name": spec.registry.mlflow.model_name, "alias": spec.registry.mlflow.alias}}
               if spec.registry is not None else None)
    with sessions.begin() as s:
        ok = states.transition(s, job_id, states.SUCCEEDED, holder=owner, report=result.report, phase=None, progress_eta_s=0.0,
                               runtime_s=lease.runtime_s(), registry_export=pending, event=f"succeeded in {seconds:.1f} s")
        if ok:
            s.query(Artifact).filter(Artifact.job_id == job_id).delete()
            s.add_all(rows)
    if ok:
        _drop_workdir(store, job_id)
        metrics.observe_job(states.SUCCEEDED, lease.runtime_s(), result.report)
        if spec.registry is not None:
            _export_registry(sessions, store, job_id, spec, result.report, rows)
        return states.SUCCEEDED
    store.delete(folder)
    return _cancelled(sessions, store, job_id, owner, lease, "cancelled while exporting; nothing published")


def _export_registry(sessions, store: ArtifactStore, job_id: str, spec: JobSpec, report, rows: list[Artifact]) -> None:
    """Log the succeeded job to MLflow and register its student (``stillhouse.registry``); record the outcome in
    ``jobs.registry_export`` and an event (``registry`` or ``registry_failed``). A failed export leaves the job
    succeeded: its artifacts are published either way."""
    cfg = spec.registry.mlflow
    report = report if isinstance(report, dict) else report.model_dump(mode="json")
    with sessions() as s:
        metrics = [(m.name, m.split, m.epoch, m.value) for m in s.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id))
                   if is_epoch_metric(m.name, m.split)]
        teacher_sha = s.scalar(select(File.sha256).join(JobFile, JobFile.file_id == File.id)
                               .where(JobFile.job_id == job_id, JobFile.role == "teacher"))
    try:
        files = {r.name: store.local_path(r.storage_key, sha256=r.sha256) for r in rows}
        out = export_mlflow(cfg, job_id=job_id, job_name=spec.name, spec=spec.model_dump(mode="json"), report=report,
                            metrics=metrics, files=files, teacher_sha256=teacher_sha)
        kind = "registry"
        message = (f"student registered in MLflow as {out['model_name']} version {out['version']}"
                   + (f" (alias {out['alias']})" if out.get("alias") else "") + f", run {out['run_id']}")
    except Exception as e:  # noqa: BLE001 - any failure of the export is reported, the job stays succeeded
        log.warning("job %s: MLflow export to %s failed: %s: %s", job_id, cfg.tracking_uri, type(e).__name__, e)
        out = {"status": "failed", "tracking_uri": cfg.tracking_uri, "model_name": cfg.model_name, "alias": cfg.alias,
               "error": f"{type(e).__name__}: {e}"[:2000]}
        kind, message = "registry_failed", f"MLflow export to {cfg.tracking_uri} failed: {out['error']}"
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(registry_export={"mlflow": out}, updated_at=utcnow())
                  .execution_options(synchronize_session=False))
        s.add(JobEvent(job_id=job_id, type=kind, message=message, data=out))


def _cancelled(sessions, store: ArtifactStore, job_id: str, owner: str, lease: Lease, event: str) -> str | None:
    with sessions.begin() as s:
        ok = states.transition(s, job_id, states.CANCELLED, only_from={states.CANCELLING}, holder=owner,
                               phase=None, runtime_s=lease.runtime_s(), event=event)
    if not ok:
        raise LeaseLost(job_id)
    _drop_workdir(store, job_id)
    metrics.observe_job(states.CANCELLED, lease.runtime_s())
    return states.CANCELLED


def _pruned(sessions, store: ArtifactStore, job_id: str, owner: str, lease: Lease, message: str) -> str | None:
    """End a sweep trial its sweep's pruner stopped: ``cancelled`` (from running) with error code ``trial_pruned`` and the
    pruner's ``message``, nothing published (``stillhouse.sweeps.pruning``)."""
    with sessions.begin() as s:
        ok = states.transition(s, job_id, states.CANCELLED, only_from={states.RUNNING}, holder=owner, phase=None,
                               runtime_s=lease.runtime_s(), error_code=PRUNED_CODE, error_message=message, event=message,
                               data={"code": PRUNED_CODE})
    if not ok:  # cancelled by the user meanwhile (cancelling), or the lease lost
        return _cancelled(sessions, store, job_id, owner, lease, "cancelled; stopped between steps, nothing published")
    _drop_workdir(store, job_id)
    metrics.observe_job(states.CANCELLED, lease.runtime_s())
    return states.CANCELLED


def _fail(sessions, store: ArtifactStore, job_id: str, owner: str, lease: Lease, code: str, message: str,
          reporter: SqlReporter) -> str | None:
    try:
        reporter.flush()
    except LeaseLost:
        raise
    except Exception:  # noqa: BLE001 - the failure itself must still be recorded
        log.exception("could not flush metrics of %s", job_id)
    with sessions.begin() as s:
        ok = states.transition(s, job_id, states.FAILED, holder=owner, error_code=code, error_message=message[:4000], phase=None,
                               runtime_s=lease.runtime_s(), event=f"failed: {code}", data={"code": code, "message": message[:4000]})
    if not ok:
        raise LeaseLost(job_id)
    _drop_workdir(store, job_id)
    metrics.observe_job(states.FAILED, lease.runtime_s())
    return states.FAILED


def _hand_back(sessions, settings: Settings, job_id: str, owner: str, reporter: SqlReporter, lease: Lease,
               mirror: CheckpointMirror) -> str | None:
    """The worker shuts down: upload its checkpoint (object storage), release the lease, move the job back to
    ``queued`` (``handbacks + 1``; its checkpoint stays in the work folder) and send its message again. A job cancelled
    meanwhile ends ``cancelled`` instead."""
    reporter.flush()
    mirror.stop()
    try:
        mirror.sync()
    except (StoreError, OSError) as e:  # the next worker resumes from the last checkpoint that made it
        log.warning("job %s: could not upload its hand-back checkpoint (%s)", job_id, e)
    with sessions.begin() as s:
        ok = states.transition(s, job_id, states.QUEUED, only_from={states.RUNNING}, holder=owner, lease_owner=None,
                               lease_expires_at=None, enqueued_at=None, handbacks=Job.handbacks + 1, phase=None,
                               progress_eta_s=None, runtime_s=lease.runtime_s(), event=f"handed back by {owner} on shutdown",
                               data={"worker": owner, "reason": "shutdown"})
    if not ok:
        return _cancelled(sessions, get_store(settings), job_id, owner, lease, "cancelled; stopped between steps, nothing published")
    log.info("job %s handed back on shutdown", job_id)
    _resend(sessions, settings, job_id)
    return states.QUEUED


DB_WAIT_S = 2.0  # seconds between tries to reach the database again after losing it mid-job


def _hand_back_after_db_error(sessions, settings: Settings, job_id: str, owner: str, lease: Lease, mirror: CheckpointMirror,
                              error: BaseException | None) -> str | None:
    """The database went away mid-job (``error``; None: the lease could not be renewed in time: the same outage seen by
    the heartbeat, or this process was frozen). Training has stopped; the job keeps its checkpoints. Wait for the
    database, trying every ``DB_WAIT_S`` seconds, then, if this process still holds the lease, hand the job back
    (``queued``, ``handbacks + 1``: not counted as an attempt; event data ``reason``: ``database_error``, or
    ``lease_expired`` without ``error``) and send its message again,
    so a worker resumes it from its last checkpoint. Never fails it. Returns ``queued``, or None when the job was
    taken over, cancelled or finished meanwhile (nothing is written then) or this worker shuts down while waiting
    (the lease then expires and the sweep re-sends the job). With object storage, checkpoints written after the
    mirror's last upload stay on this machine (only a lease holder uploads); the next worker resumes from the store's."""
    cause = str(error.orig if getattr(error, "orig", None) is not None else error).splitlines()[0] if error else "lease not renewed in time"
    reason = "database_error" if error is not None else "lease_expired"
    log.warning("job %s: database unreachable mid-job (%s); keeping the job and handing it back once the database answers",
                job_id, cause)
    lease.stop()
    mirror.stop()  # no final upload: the lease may be someone else's by now (the mirror uploaded while it was held)
    while True:
        try:
            with sessions.begin() as s:
                ok = states.transition(s, job_id, states.QUEUED, only_from={states.RUNNING}, holder=owner, lease_owner=None,
                                       lease_expires_at=None, enqueued_at=None, handbacks=Job.handbacks + 1, phase=None,
                                       progress_eta_s=None, runtime_s=lease.runtime_s(),
                                       event=f"handed back by {owner} after a database error ({cause[:200]})"
                                       if error is not None else f"handed back by {owner}: its lease was not renewed in time",
                                       data={"worker": owner, "reason": reason, "error": cause[:500]})
                status = None if ok else s.scalar(select(Job.status).where(Job.id == job_id, Job.lease_owner == owner))
            break
        except Exception as e:  # noqa: BLE001 - only an outage is waited out
            if not database_unavailable(e):
                raise
            if handback.requested():
                log.warning("job %s: worker shutting down while the database is unreachable; the sweep re-sends the job "
                            "once its lease expired", job_id)
                return None
            time.sleep(DB_WAIT_S)
    if not ok:
        if status == states.CANCELLING:
            return _cancelled(sessions, get_store(settings), job_id, owner, lease, "cancelled; stopped between steps, nothing published")
        log.warning("job %s: this process (%s) lost its lease; stopped without writing anything more", job_id, owner)
        return None
    log.info("job %s handed back after a database error", job_id)
    _resend(sessions, settings, job_id)
    return states.QUEUED


def _resend(sessions, settings: Settings, job_id: str) -> None:
    """Send the job's message again and record it; when the broker cannot be reached, mark the job unsent so the
    sweep sends it."""
    try:
        enqueue_job(job_id, settings)
    except Exception as e:  # noqa: BLE001 - any broker failure: the sweep sends it later
        log.warning("job %s: could not send its message again (%s: %s); the sweep will", job_id, type(e).__name__, e)
        with sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == states.QUEUED).values(enqueued_at=None, updated_at=utcnow())
                      .execution_options(synchronize_session=False))
        return
    with sessions() as s:
        mark_sent(s, job_id)
