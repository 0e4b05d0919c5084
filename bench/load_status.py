"""Load test: 20 jobs at once on PostgreSQL + Redis with 2 worker processes while 50 clients poll job status.

Creates a fresh PostgreSQL database (as tests/conftest.py does: ``CREATE DATABASE`` on 127.0.0.1:5432 as
``postgres``, dropped at the end) and a fresh Redis queue name, applies the migrations, starts the API
(uvicorn, real HTTP on loopback) and 2 worker processes (``python -m worker``, 1 job and 1 torch thread
each), trains a tiny digits CNN teacher (``distill.teacher_training``, as the tests do) and uploads it,
submits 20 small digits jobs at once, and meanwhile runs 50 concurrent pollers (asyncio + httpx, one
connection each) doing ``GET /v1/jobs/{id}`` in a loop over the job ids until every job has ended.

Checks: no 5xx on any request; every job ``succeeded`` (none lost); for each job its metric rows are
exactly what the training loop logs for its spec (per step: the loss terms + total every
``log_every_steps`` steps and at each epoch end; per epoch: the epoch means, lr, train top-1, val top-1,
agreement; see ``distill/training/trainer.py``), and its steps equal ``epochs x steps_per_epoch``.
Prints requests/s and p50/p95/p99 latency (ms, as a client sees it) of the status endpoint while the jobs
run, and again for ``--idle-s`` seconds after they ended (the same pollers, no training on the cores).

    .venv/bin/python bench/load_status.py [--jobs 20] [--pollers 50] [--epochs 4] [--api-workers 1] [--api-key KEY]

Target (issue 5): p99 < 50 ms and >= 500 requests/s for GET /v1/jobs/{id}. The pollers, the API and the
two training workers share this machine's cores; the figures say what one machine gives, not the API alone.
Exit code 0 when every check passes (the latency/throughput targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG_ADMIN_URL = os.environ.get("STILLHOUSE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("STILLHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
TEACHER = {"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64}}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database() -> tuple[str, callable]:
    """A fresh PostgreSQL database; returns its SQLAlchemy URL and a function that drops it."""
    import sqlalchemy as sa

    name = f"stillhouse_load_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def train_teacher(path: Path) -> None:
    """Train the tiny digits CNN teacher (6 epochs, 1 thread, as the tests do) and save it as safetensors at ``path``."""
    import torch

    from distill.data import load_builtin, split_validation
    from distill.teacher_training import save_model, train_classifier

    torch.set_num_threads(1)
    x, y, _ = load_builtin("digits")
    tr, _ = split_validation(y, 0.2, seed=0)
    model = train_classifier(TEACHER, x[tr], y[tr], epochs=6, seed=0)
    save_model(model, model.stillhouse_architecture, path)


def job_spec(teacher_id: str, i: int, epochs: int) -> dict:
    """The spec of load job ``i``: digits, mlp [32] student, kd, ``epochs`` epochs, seed ``i``, safetensors export only."""
    return {
        "name": f"load-{i:02d}",
        "teacher": {"file_id": teacher_id},
        "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [32]}}},
        "data": {"train": {"builtin": "digits"}, "validation": {"fraction": 0.2, "seed": 0}},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.005}, "seed": i,
                     "log_every_steps": 5},
        "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1]},
        "export": {"formats": ["safetensors"]},
    }


def expected_metric_rows(spec: dict, n_train: int, val_labelled: bool = True) -> tuple[int, int]:
    """(rows, steps) that the trainer (``distill.training.Trainer``) logs for ``spec`` on ``n_train`` labelled training rows: at every
    ``log_every_steps``-th global step and at each epoch's last step, one row per loss term + 'total'; at each
    epoch end, the epoch means of the same terms, 'lr', train 'top1', val 'top1' (when validation has labels)
    and 'agreement'. Term names come from the method the spec builds (kd with labels: kd, ce)."""
    from distill.training import steps_per_epoch
    from distill.methods import build_method
    from distill.spec import JobSpec

    s = JobSpec.model_validate(spec)
    terms = len(build_method(s.method, has_labels=True, all_labelled=True).term_names) + 1
    spe = steps_per_epoch(n_train, min(s.training.batch_size, n_train))
    every = s.training.log_every_steps
    log_points = 0
    for e in range(1, s.training.epochs + 1):
        log_points += sum(1 for st in range((e - 1) * spe + 1, e * spe + 1) if st % every == 0 or st == e * spe)
    per_epoch = terms + 1 + 1 + (1 if val_labelled else 0) + 1
    return log_points * terms + s.training.epochs * per_epoch, s.training.epochs * spe


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (uvicorn workers), from /proc."""
    total = 0.0
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    for p in [pid, *children]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the pollers)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Stats:
    """Latencies (seconds) and status codes of the status polls of one phase, and the CPU seconds the API
    (``api_pid``) and this process (the pollers) used meanwhile."""

    def __init__(self, api_pid: int) -> None:
        self.latencies: list[float] = []
        self.codes: dict[int, int] = {}
        self.errors: list[str] = []
        self.api_pid = api_pid
        self.t0 = time.perf_counter()
        self.t1: float | None = None
        self.cpu0 = (cpu_seconds(api_pid), own_cpu_seconds())
        self.cpu1: tuple[float, float] | None = None

    def end(self) -> None:
        """Close the phase: its end time and CPU seconds."""
        self.t1 = time.perf_counter()
        self.cpu1 = (cpu_seconds(self.api_pid), own_cpu_seconds())

    def summary(self, name: str) -> str:
        """One line of req/s and p50/p95/p99/max latency (ms) and status codes, plus CPU per request."""
        secs = (self.t1 or time.perf_counter()) - self.t0
        lat = sorted(self.latencies)
        if not lat:
            return f"{name}: no requests"

        def pct(p: float) -> float:
            return 1000 * lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))]

        cpu = ""
        if self.cpu1:
            api, own = (self.cpu1[0] - self.cpu0[0]), (self.cpu1[1] - self.cpu0[1])
            cpu = (f"\n    CPU per request: API {1000 * api / len(lat):.2f} ms ({api / secs:.2f} cores), pollers {1000 * own / len(lat):.2f} ms "
                   f"({own / secs:.2f} cores); machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        return (f"{name}: {len(lat):,} requests in {secs:.1f} s = {len(lat) / secs:,.0f} req/s; latency ms p50 {pct(50):.1f} "
                f"p95 {pct(95):.1f} p99 {pct(99):.1f} max {1000 * lat[-1]:.1f}; status codes {dict(sorted(self.codes.items()))}{cpu}")


async def poller(base: str, headers: dict, ids: list[str], offset: int, state: dict) -> None:
    """One client: GET /v1/jobs/{id} in a loop over ``ids`` on its own connection; records into ``state['stats']``."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # made before the clock starts: creating 50 clients (an SSL context each) stalls the event loop for seconds
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        state["ready"] += 1
        await state["go"].wait()
        i = offset
        while not state["stop"]:
            job_id = ids[i % len(ids)]
            i += 1
            stats: Stats = state["stats"]
            t = time.perf_counter()
            try:
                r = await client.get(f"/v1/jobs/{job_id}")
            except httpx.HTTPError as e:
                stats.errors.append(f"{type(e).__name__}: {e}")
                continue
            stats.latencies.append(time.perf_counter() - t)
            stats.codes[r.status_code] = stats.codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                state["last"][job_id] = r.json()["status"]


async def run_load(base: str, headers: dict, teacher_id: str, args: argparse.Namespace, api_pid: int) -> tuple[list[str], Stats, Stats]:
    """Submit the jobs at once, poll with ``args.pollers`` clients until every job ended, then ``args.idle_s`` more seconds; returns (job ids, stats while jobs ran, stats after)."""
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        t = time.perf_counter()
        resps = await asyncio.gather(*[client.post("/v1/jobs", json=job_spec(teacher_id, i, args.epochs)) for i in range(args.jobs)])
        bad = [r for r in resps if r.status_code != 201]
        if bad:
            raise RuntimeError(f"job creation failed: {bad[0].status_code} {bad[0].text}")
        ids = [r.json()["id"] for r in resps]
        print(f"submitted {len(ids)} jobs in {time.perf_counter() - t:.2f} s", flush=True)
    state = {"stop": False, "stats": None, "last": {}, "ready": 0, "go": asyncio.Event()}
    tasks = [asyncio.create_task(poller(base, headers, ids, k, state)) for k in range(args.pollers)]
    while state["ready"] < args.pollers:
        await asyncio.sleep(0.01)
    state["stats"] = Stats(api_pid)
    state["go"].set()
    final = {"succeeded", "failed", "cancelled"}
    t = time.perf_counter()
    while True:
        await asyncio.sleep(1.0)
        done = sum(1 for j in ids if state["last"].get(j) in final)
        if int(time.perf_counter() - t) % 10 == 0:
            print(f"  {time.perf_counter() - t:5.0f} s: {done}/{len(ids)} jobs ended, {len(state['stats'].latencies):,} polls", flush=True)
        if done == len(ids):
            break
        if time.perf_counter() - t > args.timeout_s:
            print(f"timed out after {args.timeout_s} s with {done}/{len(ids)} jobs ended", flush=True)
            break
    busy = state["stats"]
    busy.end()
    idle = Stats(api_pid)
    state["stats"] = idle
    await asyncio.sleep(args.idle_s)
    idle.end()
    state["stop"] = True
    await asyncio.gather(*tasks)
    return ids, busy, idle


def main() -> int:
    """Run the load test; exit code 0 when no 5xx, no job lost and every job's metric rows are as logged."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--pollers", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per job (digits, mlp [32])")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes of the API")
    ap.add_argument("--worker-nice", type=int, default=0, help="run the training workers at this nice level (e.g. 10: the "
                    "kernel then gives the API and PostgreSQL the cores first)")
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds of polling after the jobs ended")
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY' (auth is off on loopback by default)")
    args = ap.parse_args()

    out = ROOT / "bench" / "out" / "load"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    url, drop = create_database()
    queue = f"stillhouse-load-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "STILLHOUSE_DATABASE_URL": url, "STILLHOUSE_BROKER_URL": REDIS_URL, "STILLHOUSE_QUEUE": queue,
           "STILLHOUSE_DATA_DIR": str(out / "data"), "STILLHOUSE_PORT": str(port), "STILLHOUSE_TORCH_THREADS": "1",
           "STILLHOUSE_WORKER_CONCURRENCY": "1", "OMP_NUM_THREADS": "1"}
    procs: dict[str, subprocess.Popen] = {}
    ok = True
    try:
        from stillhouse.db import migrate
        from stillhouse.settings import Settings

        migrate(Settings(database_url=url, data_dir=out / "data"))
        if args.api_workers > 1:
            api_cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                       "--workers", str(args.api_workers), "--no-access-log", "--log-level", "warning"]
        else:
            api_cmd = [sys.executable, "-m", "app", "serve"]
        nice = ["nice", "-n", str(args.worker_nice)] if args.worker_nice else []
        cmds = {"api": api_cmd, **{f"worker{i}": [*nice, sys.executable, "-m", "worker"] for i in range(args.workers)}}
        for name, cmd in cmds.items():
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=(out / f"{name}.log").open("w"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or procs["api"].poll() is not None:
                raise RuntimeError("API not ready:\n" + (out / "api.log").read_text()[-3000:])
            time.sleep(0.3)
        teacher = out / "teacher.safetensors"
        t = time.perf_counter()
        train_teacher(teacher)
        with teacher.open("rb") as fh:
            r = httpx.post(base + "/v1/files", headers=headers, files={"file": (teacher.name, fh)}, data={"purpose": "teacher"}, timeout=60)
        r.raise_for_status()
        teacher_id = r.json()["id"]
        print(f"teacher trained and uploaded in {time.perf_counter() - t:.1f} s ({teacher_id}); API {args.api_workers} process(es), "
              f"{args.workers} workers (nice {args.worker_nice}), {args.jobs} jobs x {args.epochs} epochs, {args.pollers} pollers", flush=True)

        ids, busy, idle = asyncio.run(run_load(base, headers, teacher_id, args, procs["api"].pid))

        # ---------------------------------------------------------------- checks
        c = httpx.Client(base_url=base, headers=headers, timeout=60)
        n5xx = sum(v for k, v in {**busy.codes}.items() if k >= 500) + sum(v for k, v in idle.codes.items() if k >= 500)
        transport_errors = busy.errors + idle.errors
        statuses: dict[str, int] = {}
        metric_faults = []
        for job_id in ids:
            job = c.get(f"/v1/jobs/{job_id}").json()
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
            if job["status"] != "succeeded":
                metric_faults.append(f"{job_id}: {job['status']} {job.get('error')}")
                continue
            rows, after = [], None
            while True:
                page = c.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 10000, **({"after": after} if after else {})}).json()
                rows += page["data"]
                if not page["has_more"]:
                    break
                after = page["data"][-1]["id"]
            report = c.get(f"/v1/jobs/{job_id}/report").json()
            want_rows, want_steps = expected_metric_rows(job["spec"], report["data"]["train"])
            keys = [(m["name"], m["split"], m["step"]) for m in rows]
            if len(rows) != want_rows or len(set(keys)) != len(keys) or report["training"]["steps"] != want_steps \
                    or job["progress"]["total_steps"] != want_steps:
                metric_faults.append(f"{job_id}: {len(rows)} metric rows ({len(set(keys))} distinct), expected {want_rows}; steps "
                                     f"{report['training']['steps']} / progress total {job['progress']['total_steps']}, expected {want_steps}")
        print()
        print(busy.summary("GET /v1/jobs/{id} while jobs ran"))
        print(idle.summary(f"GET /v1/jobs/{{id}} for {args.idle_s:.0f} s after  "))
        print(f"jobs: {statuses}; 5xx responses: {n5xx}; transport errors: {len(transport_errors)}"
              + (f" (first: {transport_errors[0]})" if transport_errors else ""))
        print(f"metric rows: {'all exactly as logged' if not metric_faults else 'FAULTS'}"
              + (f" (expected {want_rows} rows and {want_steps} steps per job)" if not metric_faults else ""))
        for f in metric_faults[:10]:
            print("  " + f)
        ok = n5xx == 0 and not transport_errors and statuses.get("succeeded", 0) == len(ids) and not metric_faults
        lat = sorted(busy.latencies)
        p99 = 1000 * lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else float("nan")
        rps = len(lat) / ((busy.t1 or 0) - busy.t0) if lat else 0.0
        print(f"target p99 < 50 ms and >= 500 req/s while jobs run: p99 {p99:.1f} ms, {rps:,.0f} req/s -> "
              f"{'met' if p99 < 50 and rps >= 500 else 'NOT met'}")
        print("checks: " + ("PASS" if ok else "FAIL"))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            import redis

            redis.Redis.from_url(REDIS_URL).delete(queue)
        except Exception:  # noqa: BLE001 - best effort
            pass
        drop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
