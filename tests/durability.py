"""Helpers of the durability tests: jobs committed but never sent, the broker's queue depth, a dead process id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import update

from stillhouse.models import DEFAULT_TENANT, Job, JobEvent, JobFile, new_id, utcnow
from stillhouse.settings import Settings


def commit_unsent_job(settings: Settings, spec: dict, tenant_id: str = DEFAULT_TENANT) -> str:
    """Commit a queued job exactly as ``POST /v1/jobs`` does, but never send its message: what is left when the API
    dies between the commit and the send. Returns the job id."""
    from stillhouse.db import session_factory
    from stillhouse.jobs import states
    from app.jobs.service import validate_references
    from distill.spec import JobSpec

    parsed = JobSpec.model_validate(spec)
    with session_factory(settings).begin() as s:
        files = validate_references(s, parsed, tenant_id)
        job = Job(id=new_id("job"), tenant_id=tenant_id, name=parsed.name, status=states.QUEUED, spec=parsed.model_dump(mode="json"), attempt=0)
        s.add(job)
        s.flush()
        for role, f in files.items():
            s.add(JobFile(job_id=job.id, role=role, file_id=f.id))
        s.add(JobEvent(job_id=job.id, type="status", message="job created and queued", data={"status": states.QUEUED}))
        return job.id


def set_job(settings: Settings, job_id: str, **values) -> None:
    """Write columns of a job row directly (to put it in the state a crash leaves)."""
    from stillhouse.db import session_factory

    with session_factory(settings).begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def ago(seconds: float) -> datetime:
    """UTC now minus ``seconds``."""
    return utcnow() - timedelta(seconds=seconds)


def queue_depth(settings: Settings) -> int:
    """Messages waiting in the settings' queue on its real broker (Redis list or filesystem folder)."""
    from stillhouse.jobs.queue import celery

    with celery(settings).connection_for_read() as conn:
        return conn.default_channel.queue_declare(settings.queue).message_count


def drain_queue(settings: Settings) -> list[str]:
    """Take every waiting message off the queue; returns the job ids they carried, in order."""
    from stillhouse.jobs.queue import celery

    ids = []
    with celery(settings).connection_for_read() as conn:
        ch = conn.default_channel
        while (msg := ch.basic_get(settings.queue, no_ack=True)) is not None:
            ids.append(msg.decode()[0][0])  # Celery message protocol 2: body = [args, kwargs, embed]
    return ids


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stop_process_groups(procs: Iterable[subprocess.Popen], timeout_s: float = 30) -> None:
    """Stop processes that each lead a process group of their own (``start_new_session=True``): SIGCONT then SIGTERM
    to every live one's whole group (a SIGSTOPped worker cannot act on SIGTERM), then wait up to ``timeout_s`` seconds
    for each and SIGKILL the group of any still running. Used by the durability tests' and ``bench/chaos.py``'s
    clusters. Raises nothing for processes that have already exited."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class ThrowawayPostgres:
    """A PostgreSQL server of its own (``initdb`` + ``pg_ctl``) on a free loopback port under a fresh temporary
    folder, run as the ``postgres`` user when this process is root (``initdb`` refuses root), trust authentication,
    so a test can stop and restart *it* (never the machine's own server on 5432). ``url``: the SQLAlchemy URL of its
    ``postgres`` database."""

    def __init__(self) -> None:
        import os
        import shutil
        import socket
        import tempfile

        initdb = shutil.which("initdb")
        if initdb is None:
            raise RuntimeError("initdb is not on PATH")
        self.bin = os.path.dirname(initdb)
        self.root = tempfile.mkdtemp(prefix="stillhouse-pg-")
        os.chmod(self.root, 0o777)
        self.data = os.path.join(self.root, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        self._run(["initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                    "fsync = off\nmax_connections = 200\n")

    def _run(self, argv: list[str], timeout: float = 120) -> None:
        import os

        cmd = [os.path.join(self.bin, argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(["pg_ctl", "-D", self.data, "-l", f"{self.root}/server.log", "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are ended, as a restart does; ``immediate``: as a crash)."""
        self._run(["pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop"])

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        import shutil

        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
