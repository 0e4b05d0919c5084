"""Chaos run (issue 15): jobs keep coming while worker pool children (busy and idle) are SIGKILLed, whole worker
groups are SIGKILLed and restarted, workers are frozen (SIGSTOP) past their lease, and the database is restarted;
then every job must end, once.

For each backend, on loopback only: the embedded default (SQLite + the filesystem broker; no database restart, it
is a file) and PostgreSQL + Redis (a throwaway PostgreSQL server of its own, ``tests.durability.ThrowawayPostgres``,
so restarting it touches nothing else; Redis on ``--redis-url`` with a queue of its own). It starts the API
(``python -m app serve``) and ``--workers`` workers (``python -m worker``, each in its own process group), uploads a
small digits CNN teacher, submits a digits job every ``--submit-every-s`` seconds for ``--duration-s`` seconds while
one fault happens every ``--fault-every-s`` seconds (round robin), then waits up to ``--drain-s`` seconds for every job
to end, with the faults stopped. Requests answered 503 during a database restart are retried (same Idempotency-Key).

Prints one table: jobs submitted, succeeded, failed per error code, stuck (not finished after the drain), duplicate
metric rows (the same job, name, split, step and epoch more than once), faults done, and HTTP answers seen by the
client (500s and dropped connections are defects; 503s are expected during the restart). Target: 0 stuck,
0 duplicates, 0 failed for a transient cause, 0 HTTP 500 / dropped.

    .venv/bin/python bench/chaos.py [--backends sqlite,postgres] [--duration-s 150] [--drain-s 300] [--workers 2]

Bounded: each backend takes at most ``duration + drain + ~60`` seconds. Exit status 0 when the targets are met.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import ApiError, Stillhouse  # noqa: E402
from tests.durability import ThrowawayPostgres, stop_process_groups  # noqa: E402

FAULTS_SQLITE = ["busy_child", "idle_child", "group_kill", "freeze"]
FAULTS_PG = FAULTS_SQLITE + ["db_restart"]
ENV = {"STILLHOUSE_TORCH_THREADS": "1", "STILLHOUSE_PROGRESS_INTERVAL_S": "0.3", "STILLHOUSE_LEASE_TTL_S": "4",
       "STILLHOUSE_SWEEP_INTERVAL_S": "1", "STILLHOUSE_UNSENT_GRACE_S": "10", "STILLHOUSE_UNCLAIMED_RESEND_S": "20",
       "STILLHOUSE_WORKER_HEARTBEAT_S": "2", "STILLHOUSE_WORKER_LOST_TIMEOUT_S": "900", "STILLHOUSE_MAX_ATTEMPTS": "6"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_spec(teacher_id: str, epochs: int) -> dict:
    """A small digits job: CNN teacher -> MLP [64] student, ``epochs`` epochs, safetensors export."""
    return {"name": "chaos", "teacher": {"file_id": teacher_id},
            "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}},
            "data": {"train": {"builtin": "digits"}, "validation": {"fraction": 0.2, "seed": 0}},
            "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
            "training": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.005}, "seed": 0},
            "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1]}, "export": {"formats": ["safetensors"]}}


def make_teacher(folder: Path) -> Path:
    """A digits CNN teacher trained for 4 epochs (as tests/models.py does), saved as safetensors."""
    import torch

    from distill.data import load_builtin, split_validation
    from distill.teacher_training import save_model, train_classifier

    torch.set_num_threads(1)
    x, y, _ = load_builtin("digits")
    tr, _ = split_validation(y, 0.2, 0)
    arch = {"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64}}
    model = train_classifier(arch, x[tr], y[tr], epochs=4, seed=0, lr=3e-3)
    path = folder / "teacher.safetensors"
    save_model(model, model.stillhouse_architecture, path)
    return path


class Stack:
    """The API and the workers of one backend, each in a process group of its own."""

    def __init__(self, name: str, folder: Path, env: dict[str, str], workers: int) -> None:
        self.name, self.folder = name, folder
        self.env = {**os.environ, **ENV, **env, "STILLHOUSE_PORT": str(free_port())}
        self.procs: dict[str, subprocess.Popen] = {}
        self.url = f"http://127.0.0.1:{self.env['STILLHOUSE_PORT']}"
        self.spawn("api", [sys.executable, "-m", "app", "serve"])
        for i in range(workers):
            self.spawn(f"w{i}", [sys.executable, "-m", "worker"])

    def spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def workers(self) -> list[str]:
        return [n for n in self.procs if n.startswith("w")]

    def close(self) -> None:
        """Stop every process (frozen ones too)."""
        stop_process_groups(self.procs.values())


def busy_pids(engine: sa.Engine) -> set[int]:
    """Pids (this host) holding a running job's lease (none known while the database is down)."""
    try:
        with engine.connect() as c:
            owners = list(c.execute(sa.text("SELECT lease_owner FROM jobs WHERE status IN ('running', 'cancelling') "
                                            "AND lease_owner IS NOT NULL")))
    except sa.exc.OperationalError:
        return set()
    return {int(o.split(":")[-2]) for (o,) in owners if o.count(":") >= 2 and o.split(":")[-2].isdigit()}


def children(p: subprocess.Popen) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(p.pid).children()]
    except psutil.Error:
        return []


def holds_no_lock(engine: sa.Engine, sqlite_file: Path | None, pids: list[int]) -> bool:
    """True when the frozen processes hold no database lock others would wait on (SQLite: the write lock; PostgreSQL:
    a lock on their jobs' rows)."""
    if sqlite_file is not None:
        import sqlite3

        conn = sqlite3.connect(sqlite_file, timeout=0.3)
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    try:
        with engine.connect() as c, c.begin():
            c.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
            c.execute(sa.text("SELECT id FROM jobs WHERE status = 'running' FOR UPDATE"))
        return True
    except sa.exc.DBAPIError:
        return False


def run_backend(kind: str, args: argparse.Namespace, teacher: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"chaos-{kind}-"))
    pg = None
    env = {"STILLHOUSE_DATA_DIR": str(folder / "data"), "STILLHOUSE_QUEUE": f"chaos-{uuid.uuid4().hex[:8]}"}
    if kind == "postgres":
        pg = ThrowawayPostgres()
        pg.start()
        env |= {"STILLHOUSE_DATABASE_URL": pg.url, "STILLHOUSE_BROKER_URL": args.redis_url}
        db_url = pg.url
        from stillhouse.db import migrate
        from stillhouse.settings import Settings

        migrate(Settings(database_url=pg.url))
        sqlite_file = None
    else:
        env["STILLHOUSE_BROKER_URL"] = "filesystem://"
        sqlite_file = folder / "data" / "stillhouse.db"
        db_url = f"sqlite:///{sqlite_file}"
    stack = Stack(kind, folder, env, args.workers)
    engine = sa.create_engine(db_url, pool_pre_ping=True, connect_args={"timeout": 30} if sqlite_file else {})
    http = collections.Counter()
    faults = collections.Counter()
    jobs: list[str] = []
    try:
        c = Stillhouse(stack.url, timeout=60)
        c.wait_ready(timeout_s=120)
        for w in stack.workers():
            while "ready." not in (folder / f"{w}.log").read_text(errors="replace"):
                time.sleep(0.5)
        tid = c.upload(teacher, "teacher").id
        stop = threading.Event()

        def submit() -> None:
            while not stop.is_set():
                key = uuid.uuid4().hex
                for _ in range(120):
                    try:
                        jobs.append(c.create_job(job_spec(tid, args.epochs), idempotency_key=key).id)
                        http["201"] += 1
                        break
                    except ApiError as e:
                        http[str(e.status or "dropped")] += 1
                        time.sleep(1)
                stop.wait(args.submit_every_s)

        def poll() -> None:
            with httpx.Client(base_url=stack.url, timeout=30) as h:
                while not stop.is_set():
                    try:
                        http[str(h.get("/v1/jobs", params={"limit": 20}).status_code)] += 1
                    except httpx.TransportError:
                        http["dropped"] += 1
                    stop.wait(0.5)

        threads = [threading.Thread(target=submit, daemon=True), threading.Thread(target=poll, daemon=True)]
        for t in threads:
            t.start()
        cycle = itertools.cycle(FAULTS_PG if pg else FAULTS_SQLITE)
        t_end = time.monotonic() + args.duration_s
        rr = itertools.count()
        while time.monotonic() < t_end:
            time.sleep(args.fault_every_s)
            fault = next(cycle)
            names = stack.workers()
            name = names[next(rr) % len(names)]
            proc = stack.procs[name]
            busy = busy_pids(engine)
            kids = children(proc)
            if fault in ("busy_child", "idle_child"):
                pick = [k for k in kids if (k in busy) == (fault == "busy_child")]
                if not pick:  # try the other workers
                    pick = [k for n in names for k in children(stack.procs[n]) if (k in busy) == (fault == "busy_child")]
                if not pick:
                    faults[f"{fault} (skipped: none)"] += 1
                    continue
                os.kill(pick[0], signal.SIGKILL)
            elif fault == "group_kill":
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                stack.spawn(name, [sys.executable, "-m", "worker"])
            elif fault == "freeze":
                frozen = False
                for _ in range(30):
                    os.killpg(proc.pid, signal.SIGSTOP)
                    time.sleep(0.3)
                    if holds_no_lock(engine, sqlite_file, kids):
                        frozen = True
                        break
                    os.killpg(proc.pid, signal.SIGCONT)
                    time.sleep(0.2)
                if not frozen:
                    faults["freeze (skipped: always in a transaction)"] += 1
                    continue
                time.sleep(3 * float(ENV["STILLHOUSE_LEASE_TTL_S"]))
                os.killpg(proc.pid, signal.SIGCONT)
            elif fault == "db_restart":
                pg.stop("fast")
                time.sleep(2)
                pg.start()
            faults[fault] += 1
        stop.set()
        for t in threads:
            t.join(timeout=150)
        deadline = time.monotonic() + args.drain_s
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    live = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')")).scalar()
            except sa.exc.OperationalError:
                live = -1
            if not live:
                break
            time.sleep(2)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, error_code, count(*) FROM jobs GROUP BY status, error_code")).all()
            dup = conn.execute(sa.text("SELECT count(*) FROM (SELECT job_id FROM metrics GROUP BY job_id, name, split, step, epoch "
                                       "HAVING count(*) > 1) d")).scalar()
            attempts = conn.execute(sa.text("SELECT max(attempt), sum(handbacks) FROM jobs")).first()
        by = collections.Counter()
        for status, code, n in rows:
            by[status if status != "failed" else f"failed:{code}"] += n
        stuck = sum(n for k, n in by.items() if k.split(":")[0] not in ("succeeded", "failed", "cancelled"))
        return {"backend": kind, "submitted": len(set(jobs)), "by_status": dict(by), "stuck": stuck, "duplicate_metric_rows": dup,
                "faults": dict(faults), "http": dict(http), "max_attempt": attempts[0], "handbacks": attempts[1] or 0,
                "logs": str(folder)}
    finally:
        stack.close()
        engine.dispose()
        if pg is not None:
            pg.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--duration-s", type=float, default=150)
    ap.add_argument("--drain-s", type=float, default=300)
    ap.add_argument("--fault-every-s", type=float, default=10)
    ap.add_argument("--submit-every-s", type=float, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--redis-url", default=os.environ.get("STILLHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11"))
    args = ap.parse_args()
    teacher = make_teacher(Path(tempfile.mkdtemp(prefix="chaos-teacher-")))
    results = [run_backend(k.strip(), args, teacher) for k in args.backends.split(",") if k.strip()]
    ok = True
    print(f"\nchaos: {args.duration_s:g} s of faults every {args.fault_every_s:g} s, a job every {args.submit_every_s:g} s, "
          f"{args.workers} workers, drain {args.drain_s:g} s")
    print(f"{'backend':<10}{'submitted':>10}{'succeeded':>10}  {'failed (code: n)':<24}{'stuck':>6}{'dup rows':>9}  faults / HTTP")
    for r in results:
        failed = {k.split(":", 1)[1]: n for k, n in r["by_status"].items() if k.startswith("failed:")}
        print(f"{r['backend']:<10}{r['submitted']:>10}{r['by_status'].get('succeeded', 0):>10}  "
              f"{(', '.join(f'{k}: {n}' for k, n in failed.items()) or '-'):<24}{r['stuck']:>6}{r['duplicate_metric_rows']:>9}  "
              f"{r['faults']} / {r['http']} (max attempt {r['max_attempt']}, hand-backs {r['handbacks']}; logs {r['logs']})")
        ok &= not failed and r["stuck"] == 0 and r["duplicate_metric_rows"] == 0 and not r["http"].get("500") and not r["http"].get("dropped")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
