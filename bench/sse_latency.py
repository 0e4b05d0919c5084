"""SSE event latency: from an event's row committed (as a worker writes it) to its arrival at a client reading
``GET /v1/jobs/{id}/events/stream``, on SQLite (the embedded default) and PostgreSQL.

For each database: a fresh one (as ``bench/status_read.py`` makes it) with one running job, the API as a uvicorn
process on loopback with ``STILLHOUSE_EVENTS_POLL_INTERVAL_S`` = ``--poll``, one client thread on the stream
(httpx-sse). This process then commits ``--events`` events, ``--gap-ms`` apart on average (uniform 0.2-1.8x), each
stamped with ``time.time()`` right after its commit; the client stamps each on arrival. Prints p50/p95/max of
arrival - commit (ms) per database. Expect about half the poll interval on average, plus the read and the hop.

    .venv/bin/python bench/sse_latency.py [--events 60] [--poll 0.25] [--gap-ms 150] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.load_status import create_database, free_port  # noqa: E402
from bench.status_read import prepare, start  # noqa: E402


def run(kind: str, url: str, work: Path, args: argparse.Namespace) -> list[float]:
    """Latencies (ms) of ``args.events`` events on one database."""
    from httpx_sse import connect_sse
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from stillhouse.models import JobEvent

    job_id = prepare(url, work / "data")
    port = free_port()
    env = {**os.environ, "STILLHOUSE_DATABASE_URL": url, "STILLHOUSE_DATA_DIR": str(work / "data"), "OMP_NUM_THREADS": "1",
           "STILLHOUSE_SWEEP_INTERVAL_S": "3600", "STILLHOUSE_BROKER_URL": "filesystem://",
           "STILLHOUSE_EVENTS_POLL_INTERVAL_S": str(args.poll)}
    base = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                  "--log-level", "warning"], env, work / f"{kind}-api.log", base)
    arrived: dict[int, float] = {}
    ready = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=60)) as client, \
                connect_sse(client, "GET", f"/v1/jobs/{job_id}/events/stream") as source:
            ready.set()
            for sse in source.iter_sse():
                if sse.event == "event" and '"bench ' in sse.data:
                    arrived[int(sse.id)] = time.time()
                    if len(arrived) >= args.events:
                        return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ready.wait(30)
    time.sleep(1.0)
    engine = create_engine(url)
    committed: dict[int, float] = {}
    try:
        for i in range(args.events):
            with Session(engine) as s:
                ev = JobEvent(job_id=job_id, type="checkpoint", message=f"bench {i}")
                s.add(ev)
                s.commit()
                committed[ev.id] = time.time()
            time.sleep(args.gap_ms / 1000 * random.uniform(0.2, 1.8))
        t.join(timeout=30)
    finally:
        engine.dispose()
        proc.terminate()
        proc.wait(timeout=20)
    missing = set(committed) - set(arrived)
    if missing:
        raise RuntimeError(f"{len(missing)} events never arrived: {sorted(missing)}; arrived {sorted(arrived)}")
    return [1000 * (arrived[i] - committed[i]) for i in committed]


def main() -> int:
    """Measure on SQLite and PostgreSQL (``--only`` one) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60)
    ap.add_argument("--poll", type=float, default=0.25, help="STILLHOUSE_EVENTS_POLL_INTERVAL_S of the API")
    ap.add_argument("--gap-ms", type=float, default=150.0, help="mean gap between events, ms")
    ap.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stillhouse-sse-"))
    rows = []
    try:
        for kind in ("sqlite", "postgres"):
            if args.only and kind != args.only:
                continue
            url, drop = (f"sqlite:///{work / 'sse.db'}", lambda: None) if kind == "sqlite" else create_database()
            try:
                lat = sorted(run(kind, url, work, args))
            finally:
                drop()
            rows.append((kind, lat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nSSE event latency, commit -> client, {args.events} events, poll interval {args.poll} s; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'database':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for kind, lat in rows:
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(f"{kind:<10} {statistics.median(lat):>8.1f} {p95:>8.1f} {lat[-1]:>8.1f} {statistics.mean(lat):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
