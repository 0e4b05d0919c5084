"""The sweep: repairs what a crash leaves behind, so no accepted job is lost and none is left ``running`` forever.

One pass (``sweep``) does, each step a compare-and-set so any number of sweepers (the API and every worker's
main process run one each, every ``STILLHOUSE_SWEEP_INTERVAL_S``) can race safely:

- **unsent** queued jobs (``enqueued_at IS NULL`` for longer than ``STILLHOUSE_UNSENT_GRACE_S``: the API committed
  the row and died before sending the message, or a hand-back could not reach the broker): send them;
- **unclaimed** queued jobs (sent ``STILLHOUSE_UNCLAIMED_RESEND_S`` or more ago and still not claimed, while a live
  worker consuming their queue has a free slot: the message was taken off the broker and lost, e.g. a worker group
  killed between ``received`` and the claim, or an embedded-broker message file read by a worker that died; on
  Redis it would come back only after the visibility timeout): send them again, oldest first, as many as there are
  free slots, at most once per ``STILLHOUSE_UNCLAIMED_RESEND_S`` each (``enqueued_at`` moves on with each send). A
  message that was not lost after all is then delivered twice, which is harmless: the first delivery claims the
  job, the second finds it leased or finished and exits without writing;
- **dead leases** (a running/cancelling job whose lease expired: its worker died whole, so no broker redelivers):
  - ``cancelling`` → ``cancelled`` (nothing was published);
  - used up its ``training.max_runtime_s`` (``runtime_s``) → ``failed`` / ``max_runtime_exceeded``;
  - started ``STILLHOUSE_MAX_ATTEMPTS`` times after worker deaths (``attempt - handbacks``) → ``failed`` /
    ``worker_lost``;
  - lease expired more than ``STILLHOUSE_WORKER_LOST_TIMEOUT_S`` ago and no worker took it up → ``failed`` /
    ``worker_lost``;
  - otherwise sent again, once per expiry (``enqueued_at`` older than the expiry), for any worker to resume from
    its last checkpoint.
- **sweeps**: every running sweep with an ended trial not yet told to Optuna, or room for a new trial, takes a step,
  and so does every cancelled sweep whose last trial ended before its final step (front, ``sweep.cancelled``)
  (``stillhouse.sweeps.scheduler.advance_live``).

``python -m app sweep`` runs the loop alone (``python -m stillhouse.jobs.sweep --once``: one pass, printed as JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from stillhouse.db import session_factory
from stillhouse.jobs import leases, states
from stillhouse.jobs.queue import enqueue_job
from stillhouse.jobs.workers import live_workers
from stillhouse.models import Job, JobEvent, utcnow
from stillhouse.settings import Settings, get_settings
from stillhouse.storage import StoreError, get_store
from stillhouse.sweeps.scheduler import advance_live

log = logging.getLogger("stillhouse.sweep")

BATCH = 500  # most jobs looked at per category and pass


@dataclass
class SweepResult:
    """Job ids acted on by one pass: ``sent`` (queued, never sent), ``resent`` (lease expired, sent again),
    ``unclaimed`` (queued, sent but not claimed in time, sent again), ``worker_lost`` and ``max_runtime`` (failed with
    that code), ``cancelled`` (cancelling, worker gone), ``send_errors`` (the broker refused; retried next pass)."""

    sent: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    unclaimed: list[str] = field(default_factory=list)
    worker_lost: list[str] = field(default_factory=list)
    max_runtime: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    send_errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(asdict(self).values())


def _send_marked(sessions: sessionmaker[Session], job_id: str, marked: datetime, previous: datetime | None,
                 send: Callable[[str], None], result: SweepResult, bucket: list[str]) -> None:
    """Send the message of a job whose ``enqueued_at`` this sweeper just set to ``marked``; on a broker error put
    ``previous`` back (only if nobody changed it since), so the next pass tries again."""
    try:
        send(job_id)
        bucket.append(job_id)
    except Exception as e:  # noqa: BLE001 - any broker failure: retried by the next pass
        log.warning("sweep could not send %s: %s: %s", job_id, type(e).__name__, e)
        result.send_errors.append(job_id)
        with sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.enqueued_at == marked).values(enqueued_at=previous)
                      .execution_options(synchronize_session=False))


def _drop_workdir(settings: Settings, job_id: str) -> None:
    store = get_store(settings)
    try:
        store.delete(f"{store.job_key(job_id)}/work")
    except StoreError as e:  # left-over checkpoints cost space, not correctness
        log.warning("sweep could not remove the checkpoints of %s (%s)", job_id, e)


def _send_unsent(sessions: sessionmaker[Session], now: datetime, settings: Settings, send: Callable[[str], None],
                 result: SweepResult) -> None:
    cutoff = now - timedelta(seconds=settings.unsent_grace_s)
    with sessions() as s:
        ids = list(s.scalars(select(Job.id).where(Job.status == states.QUEUED, Job.enqueued_at.is_(None), Job.updated_at <= cutoff)
                             .order_by(Job.created_at).limit(BATCH)))
    for job_id in ids:
        with sessions.begin() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.status == states.QUEUED, Job.enqueued_at.is_(None))
                            .values(enqueued_at=now).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                continue  # sent by someone else meanwhile
            s.add(JobEvent(job_id=job_id, type="requeued", message="its message had never reached the broker; sent by the sweep",
                           data={"reason": "unsent"}))
        _send_marked(sessions, job_id, now, None, send, result, result.sent)


def _free_slots(session: Session, settings: Settings) -> dict[str, int]:
    """``{queue: free job slots}``: the concurrency of the live workers consuming each queue (``workers`` table) minus
    the jobs running or cancelling on it."""
    slots: dict[str, int] = {}
    for w in live_workers(settings):
        for q in w.queues or []:
            slots[q] = slots.get(q, 0) + (w.concurrency or 1)
    if slots:
        busy = session.execute(select(Job.queue, func.count()).where(Job.status.in_([states.RUNNING, states.CANCELLING]))
                               .group_by(Job.queue))
        for q, n in busy:
            q = q or settings.queue
            if q in slots:
                slots[q] -= n
    return slots


def _resend_unclaimed(sessions: sessionmaker[Session], now: datetime, settings: Settings, send: Callable[[str], None],
                      result: SweepResult) -> None:
    cutoff = now - timedelta(seconds=settings.unclaimed_resend_s)
    with sessions() as s:
        jobs = list(s.execute(select(Job.id, Job.queue, Job.enqueued_at).where(Job.status == states.QUEUED, Job.enqueued_at <= cutoff)
                              .order_by(Job.enqueued_at).limit(BATCH)))
        free = _free_slots(s, settings) if jobs else {}
    for job in jobs:
        queue = job.queue or settings.queue
        if free.get(queue, 0) <= 0:
            continue  # every worker of that queue is busy (or none is up): the job is waiting its turn, not lost
        with sessions.begin() as s:
            res = s.execute(update(Job).where(Job.id == job.id, Job.status == states.QUEUED, Job.enqueued_at == job.enqueued_at)
                            .values(enqueued_at=now).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                continue  # claimed, cancelled or sent again by someone else meanwhile
            waited = (now - job.enqueued_at).total_seconds()
            s.add(JobEvent(job_id=job.id, type="requeued",
                           message=f"sent {waited:.0f} s ago and claimed by no worker while one was free "
                                   f"(STILLHOUSE_UNCLAIMED_RESEND_S={settings.unclaimed_resend_s:g}); its message was "
                                   "presumably lost: sent again",
                           data={"reason": "unclaimed", "waited_s": round(waited, 1)}))
        free[queue] -= 1
        _send_marked(sessions, job.id, now, job.enqueued_at, send, result, result.unclaimed)


def _max_runtime_s(job: Job) -> float | None:
    value = (job.spec or {}).get("training", {}).get("max_runtime_s")
    return float(value) if value is not None else None


def _repair_dead_leases(sessions: sessionmaker[Session], now: datetime, settings: Settings, send: Callable[[str], None],
                        result: SweepResult) -> None:
    with sessions() as s:
        jobs = list(s.scalars(select(Job).where(Job.status.in_([states.RUNNING, states.CANCELLING]),
                                                leases.dead_lease_clause(now)).order_by(Job.updated_at).limit(BATCH)))
    for job in jobs:
        expired_at = job.lease_expires_at or job.updated_at
        # the same job, attempt and still-dead lease as seen: nobody claimed or finished it since
        same = [Job.attempt == job.attempt, leases.dead_lease_clause(now)]
        limit = _max_runtime_s(job)
        with sessions.begin() as s:
            if job.status == states.CANCELLING:
                if states.transition(s, job.id, states.CANCELLED, only_from={states.CANCELLING}, where=same, phase=None,
                                     event="cancelled; its worker stopped answering before it stopped the job, nothing published"):
                    result.cancelled.append(job.id)
                continue
            if limit is not None and (job.runtime_s or 0.0) >= limit:
                code, msg = "max_runtime_exceeded", (f"the job ran {job.runtime_s:.1f} s of training.max_runtime_s={limit:g} s "
                                                     "before its worker stopped answering")
                bucket = result.max_runtime
            elif job.attempt - job.handbacks >= settings.max_attempts:
                code, msg = "worker_lost", (f"the worker running this job died {job.attempt - job.handbacks} times; giving up "
                                            f"(STILLHOUSE_MAX_ATTEMPTS={settings.max_attempts})")
                bucket = result.worker_lost
            elif (now - expired_at).total_seconds() >= settings.worker_lost_timeout_s:
                code, msg = "worker_lost", (f"its worker stopped answering at {expired_at.isoformat()} and no worker took the job "
                                            f"up within STILLHOUSE_WORKER_LOST_TIMEOUT_S={settings.worker_lost_timeout_s:g} s")
                bucket = result.worker_lost
            else:
                code = None
            if code is not None:
                if states.transition(s, job.id, states.FAILED, only_from={states.RUNNING}, where=same, error_code=code,
                                     error_message=msg, phase=None, event=f"failed: {code}", data={"code": code, "message": msg}):
                    bucket.append(job.id)
                continue
            if job.enqueued_at is not None and job.enqueued_at > expired_at:
                continue  # already sent again for this expiry; waiting for a worker
            res = s.execute(update(Job).where(Job.id == job.id, Job.status == states.RUNNING, *same,
                                              Job.enqueued_at.is_not_distinct_from(job.enqueued_at))
                            .values(enqueued_at=now).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                continue
            s.add(JobEvent(job_id=job.id, type="requeued",
                           message=f"its worker stopped answering (lease of {job.lease_owner} expired at {expired_at.isoformat()}); "
                                   "sent again to resume from its last checkpoint",
                           data={"reason": "lease_expired", "lease_owner": job.lease_owner}))
        _send_marked(sessions, job.id, now, job.enqueued_at, send, result, result.resent)
    for job_id in result.cancelled + result.worker_lost + result.max_runtime:
        _drop_workdir(settings, job_id)


def sweep(session_factory: sessionmaker[Session], now: datetime, settings: Settings,
          send: Callable[[str], None] | None = None) -> SweepResult:
    """One sweep pass at ``now`` (UTC) over the database of ``session_factory`` (see the module docstring).

    ``send(job_id)`` sends a job's message (default: ``stillhouse.jobs.queue.enqueue_job`` with ``settings``); a send that
    raises is recorded in ``send_errors`` and retried by the next pass. Database errors propagate.
    """
    if send is None:
        def send(job_id: str) -> None:
            enqueue_job(job_id, settings)

    result = SweepResult()
    _repair_dead_leases(session_factory, now, settings, send, result)
    _send_unsent(session_factory, now, settings, send, result)
    _resend_unclaimed(session_factory, now, settings, send, result)
    advance_live(session_factory, settings)  # sweeps: tell ended trials, ask for new ones (stillhouse.sweeps.scheduler)
    if result:
        log.info("sweep: %s", {k: v for k, v in asdict(result).items() if v})
    return result


def run_sweeper(settings: Settings, stop: threading.Event) -> None:
    """Sweep every ``settings.sweep_interval_s`` seconds until ``stop`` is set; errors (database or broker down) are
    logged and the next pass tries again."""
    sessions = session_factory(settings)
    while not stop.is_set():
        try:
            sweep(sessions, utcnow(), settings)
        except (OperationalError, ProgrammingError) as e:  # database down, or not migrated yet (a worker started with the API)
            log.warning("sweep skipped: database not reachable or not migrated yet (%s); retrying in %g s",
                        str(e.orig if hasattr(e, "orig") else e).splitlines()[0], settings.sweep_interval_s)
        except Exception:  # noqa: BLE001 - keep sweeping through outages
            log.exception("sweep failed; retrying in %g s", settings.sweep_interval_s)
        stop.wait(settings.sweep_interval_s)


def start_sweeper(settings: Settings | None = None, name: str = "stillhouse-sweep") -> Callable[[], None]:
    """Run ``run_sweeper`` in a daemon thread; returns a function that stops it (waiting up to 5 s)."""
    settings = settings or get_settings()
    stop = threading.Event()
    thread = threading.Thread(target=run_sweeper, args=(settings, stop), name=name, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=5)

    return stopper


def main(argv: list[str] | None = None) -> int:
    """``python -m stillhouse.jobs.sweep [--once]``: sweep forever (until SIGINT/SIGTERM), or one pass printed as JSON."""
    ap = argparse.ArgumentParser(prog="python -m stillhouse.jobs.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--once", action="store_true", help="one pass, print what it did as JSON, exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.once:
        print(json.dumps(asdict(sweep(session_factory(settings), utcnow(), settings))))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("sweeping every %g s", settings.sweep_interval_s)
    run_sweeper(settings, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
