"""Running one job on a worker: claim it in SQL, call the distillation core, publish artifacts and
the report, and always end in a final status (never left ``running`` by an exception)."""

from __future__ import annotations

import logging
import mimetypes
import shutil
import socket
import time
import traceback
from pathlib import Path

from sqlalchemy import select

from app.db import session_factory
from app.jobs import states
from app.models import Artifact, File, Job, JobFile
from app.settings import Settings, get_settings
from app.storage import LocalStore, sha256_file
from worker.distill.errors import DistillError, StopRequested
from worker.distill.job import FileInput, JobInputs, run_job
from worker.distill.spec import JobSpec
from worker.reporter_sql import SqlReporter

log = logging.getLogger("stillhouse.worker")

CONTENT_TYPES = {".safetensors": "application/octet-stream", ".onnx": "application/octet-stream", ".json": "application/json",
                 ".zip": "application/zip"}


def _claim(sessions, job_id: str, max_attempts: int) -> Job | None:
    """Move the job to running (attempt + 1). None when it must not run (unknown, finished, cancelled,
    or redelivered after ``max_attempts`` starts: then it fails with ``worker_lost``)."""
    with sessions.begin() as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        if job.status == states.CANCELLING:
            states.transition(s, job_id, states.CANCELLED, event="cancelled before the redelivered task resumed")
            return None
        redelivered = job.status == states.RUNNING
        if redelivered and job.attempt >= max_attempts:
            states.transition(s, job_id, states.FAILED, error_code="worker_lost", phase=None,
                              error_message=f"the worker running this job died {job.attempt} times; giving up "
                                            f"(STILLHOUSE_MAX_ATTEMPTS={max_attempts})", event="failed: worker_lost")
            return None
        ok = states.transition(
            s, job_id, states.RUNNING, attempt=job.attempt + 1, worker=socket.gethostname(),
            started_at=job.started_at or states.utcnow(),
            event=f"{'resumed after redelivery' if redelivered else 'started'} on {socket.gethostname()} (attempt {job.attempt + 1})",
        )
        if not ok:
            log.info("job %s is %s; not running it", job_id, job.status)
            return None
    with sessions() as s:
        return s.get(Job, job_id)


def _inputs(sessions, store: LocalStore, job_id: str) -> JobInputs:
    with sessions() as s:
        rows = s.execute(select(JobFile.role, File).join(File, File.id == JobFile.file_id).where(JobFile.job_id == job_id)).all()
    by_role = {role: f for role, f in rows}
    files = {f.id: FileInput(path=store.path(f.storage_key), format=f.format, bytes=f.bytes) for f in by_role.values()}
    teacher = by_role["teacher"]
    return JobInputs(teacher=files[teacher.id], files=files)


def _publish(sessions, store: LocalStore, job_id: str, paths: list[Path]) -> None:
    """Move artifacts to ``jobs/<id>/artifacts/`` and record them (name, bytes, sha256)."""
    rows = []
    for p in paths:
        key = f"{store.job_key(job_id)}/artifacts/{p.name}"
        dst = store.path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), dst)
        ctype = CONTENT_TYPES.get(dst.suffix) or mimetypes.guess_type(dst.name)[0] or "application/octet-stream"
        rows.append(Artifact(job_id=job_id, name=p.name, bytes=dst.stat().st_size, sha256=sha256_file(dst),
                             content_type=ctype, storage_key=key))
    with sessions.begin() as s:
        s.query(Artifact).filter(Artifact.job_id == job_id).delete()
        s.add_all(rows)


def execute(job_id: str, settings: Settings | None = None) -> str | None:
    """Run job ``job_id`` to a final status; returns that status (None when the job was not run).

    Success publishes artifacts and the report and moves the job to ``succeeded``; a cancel ends it
    ``cancelled`` with nothing published; a ``DistillError`` ends it ``failed`` with its code; any
    other exception ends it ``failed`` with ``internal_error`` and the exception text.
    """
    settings = settings or get_settings()
    sessions = session_factory(settings)
    store = LocalStore(settings)
    job = _claim(sessions, job_id, settings.max_attempts)
    if job is None:
        return None
    workdir = store.path(f"{store.job_key(job_id)}/work")
    workdir.mkdir(parents=True, exist_ok=True)
    reporter = SqlReporter(sessions, job_id, interval_s=settings.progress_interval_s)
    t0 = time.monotonic()
    try:
        spec = JobSpec.model_validate(job.spec)
        result = run_job(spec, _inputs(sessions, store, job_id), workdir, reporter, max_unpacked_bytes=settings.max_unpacked_bytes)
        reporter.flush()
        if reporter.should_stop():
            raise StopRequested()
        _publish(sessions, store, job_id, list(result.artifacts))
        with sessions.begin() as s:
            ok = states.transition(s, job_id, states.SUCCEEDED, report=result.report, phase=None, progress_eta_s=0.0,
                                   event=f"succeeded in {time.monotonic() - t0:.1f} s")
            if not ok:  # cancelled while exporting: unpublish
                s.query(Artifact).filter(Artifact.job_id == job_id).delete()
        if not ok:
            store.delete(f"{store.job_key(job_id)}/artifacts")
            with sessions.begin() as s:
                states.transition(s, job_id, states.CANCELLED, event="cancelled while exporting; nothing published")
        shutil.rmtree(workdir, ignore_errors=True)
        return states.SUCCEEDED if ok else states.CANCELLED
    except StopRequested:
        reporter.flush()
        with sessions.begin() as s:
            states.transition(s, job_id, states.CANCELLED, phase=None, event="cancelled; stopped between steps, nothing published")
        shutil.rmtree(workdir, ignore_errors=True)
        return states.CANCELLED
    except DistillError as e:
        log.warning("job %s failed: %s", job_id, e)
        return _fail(sessions, job_id, e.code, e.message, reporter, workdir)
    except Exception as e:  # noqa: BLE001 - the job must end failed, never stuck running
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        return _fail(sessions, job_id, "internal_error", f"{type(e).__name__}: {e}", reporter, workdir)


def _fail(sessions, job_id: str, code: str, message: str, reporter: SqlReporter, workdir: Path) -> str:
    try:
        reporter.flush()
    except Exception:  # noqa: BLE001 - the failure itself must still be recorded
        log.exception("could not flush metrics of %s", job_id)
    with sessions.begin() as s:
        states.transition(s, job_id, states.FAILED, error_code=code, error_message=message[:4000], phase=None,
                          event=f"failed: {code}", data={"code": code, "message": message[:4000]})
    shutil.rmtree(workdir, ignore_errors=True)
    return states.FAILED
