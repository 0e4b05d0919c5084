"""CPU per status read: ``GET /v1/jobs/{id}`` of the service vs a minimal FastAPI + SQLAlchemy app reading the same
row (``bench/minimal_status_app.py``), side by side on SQLite and on PostgreSQL.

For each database: a fresh one (the embedded default's SQLite file under the data directory, the service given no
database URL, as a new user runs it; a PostgreSQL database created on 127.0.0.1:5432 as ``postgres`` and
dropped at the end), migrated, with one queued job whose spec is a realistic digits KD spec. Both apps run as uvicorn
processes (one worker, no access log) on loopback; one keep-alive client sends ``--requests`` sequential GETs to one
app, then to the other, for ``--rounds`` alternating rounds, and reads each server's user + system CPU seconds
(``/proc``) before and after its round. Prints, per database and app, the median CPU ms per request over the rounds
(with the min-max range) and the ratio service / minimal (target of issue 14: <= 1.15).

    .venv/bin/python bench/status_read.py [--requests 2000] [--rounds 7] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.load_status import cpu_seconds, free_port  # noqa: E402

PG_ADMIN_URL = os.environ.get("STILLHOUSE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _spec() -> dict:
    from distill.spec import JobSpec

    return JobSpec.model_validate({
        "name": "digits-cnn-to-mlp", "teacher": {"file_id": "file_0123456789abcdef01234567"},
        "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}},
        "data": {"train": {"builtin": "digits"}, "validation": {"fraction": 0.2}},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "training": {"epochs": 20, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 1e-3}},
        "export": {"formats": ["safetensors", "onnx"]},
    }).model_dump(mode="json")


def prepare(url: str, data_dir: Path) -> str:
    """Migrate the database at ``url`` and add one running job with progress (and a live lease, so the API's sweep leaves
    it alone); returns its id."""
    from datetime import timedelta

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from stillhouse.db import migrate
    from stillhouse.models import File, Job, utcnow
    from stillhouse.settings import Settings

    data_dir.mkdir(parents=True, exist_ok=True)
    migrate(Settings(database_url=url, data_dir=data_dir))
    engine = create_engine(url)
    job_id = f"job_{uuid.uuid4().hex[:24]}"
    with Session(engine) as s:
        s.add(File(id="file_0123456789abcdef01234567", purpose="teacher", filename="t.safetensors", bytes=1, sha256="0" * 64,
                   format="safetensors", details={}, storage_key="files/x"))
        s.add(Job(id=job_id, name="digits-cnn-to-mlp", status="running", phase="training", spec=_spec(), attempt=1, started_at=utcnow(),
                  progress_epoch=3, progress_epochs=20, progress_step=75, progress_total_steps=500, progress_fraction=0.15,
                  progress_eta_s=42.0, job_metadata={"dag": "nightly"}, lease_owner="bench-host:1:x",
                  lease_expires_at=utcnow() + timedelta(hours=2)))
        s.commit()
    engine.dispose()
    return job_id


def start(cmd: list[str], env: dict[str, str], log: Path, base: str) -> subprocess.Popen:
    """Start a server and wait until it answers."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/docs", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    raise RuntimeError(f"{cmd} did not start:\n{log.read_text()[-2000:]}")


def measure(client: httpx.Client, pid: int, path: str, n: int) -> float:
    """CPU ms of process ``pid`` per request over ``n`` sequential GETs of ``path`` (each must be 200)."""
    before = cpu_seconds(pid)
    for _ in range(n):
        r = client.get(path)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return 1000 * (cpu_seconds(pid) - before) / n


def run(kind: str, url: str, work: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Both apps on one database; returns {app: [CPU ms per request per round]}."""
    job_id = prepare(url, work / "data")
    env = {**os.environ, "STILLHOUSE_DATABASE_URL": url, "STILLHOUSE_DATA_DIR": str(work / "data"),
           "STILLHOUSE_BENCH_DATABASE_URL": url, "OMP_NUM_THREADS": "1", "STILLHOUSE_SWEEP_INTERVAL_S": "3600",
           "STILLHOUSE_BROKER_URL": "filesystem://"}
    if kind == "sqlite":  # the service on its embedded default: no database URL, the file under the data directory
        del env["STILLHOUSE_DATABASE_URL"]
    apps = {"service": "app.main:app", "minimal": "bench.minimal_status_app:app"}
    procs, clients, out = {}, {}, {name: [] for name in apps}
    try:
        for name, target in apps.items():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            procs[name] = start([sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
                                 "--no-access-log", "--log-level", "warning"], env, work / f"{kind}-{name}.log", base)
            clients[name] = httpx.Client(base_url=base, timeout=30)
            measure(clients[name], procs[name].pid, f"/v1/jobs/{job_id}", max(200, args.requests // 10))  # warm-up
        a = clients["service"].get(f"/v1/jobs/{job_id}").json()
        assert a["id"] == job_id and a["status"] == "running" and a["progress"]["step"] == 75, a
        for r in range(args.rounds):
            order = list(apps) if r % 2 == 0 else list(apps)[::-1]
            for name in order:
                out[name].append(measure(clients[name], procs[name].pid, f"/v1/jobs/{job_id}", args.requests))
    except Exception:
        for name in procs:
            print(f"--- {name} log:\n" + (work / f"{kind}-{name}.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for c in clients.values():
            c.close()
        for p in procs.values():
            p.terminate()
            p.wait(timeout=20)
    return out


def main() -> int:
    """Run the comparison on SQLite and PostgreSQL (``--only`` one of them) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per app and round")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (the median is reported)")
    ap.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stillhouse-status-read-"))
    rows = []
    try:
        for kind in ("sqlite", "postgres"):
            if args.only and kind != args.only:
                continue
            if kind == "sqlite":
                url, drop = f"sqlite:///{work / 'data' / 'stillhouse.db'}", (lambda: None)
            else:
                from bench.load_status import create_database

                url, drop = create_database()
            try:
                res = run(kind, url, work, args)
            finally:
                drop()
            med = {k: statistics.median(v) for k, v in res.items()}
            rows.append((kind, res, med))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nGET /v1/jobs/{{id}}: server CPU ms per request, median of {args.rounds} rounds x {args.requests} sequential requests "
          f"(min-max); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'database':<10} {'service':>22} {'minimal app':>22} {'ratio':>7}")
    for kind, res, med in rows:
        cells = [f"{med[k]:.3f} ({min(res[k]):.3f}-{max(res[k]):.3f})" for k in ("service", "minimal")]
        print(f"{kind:<10} {cells[0]:>22} {cells[1]:>22} {med['service'] / med['minimal']:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
