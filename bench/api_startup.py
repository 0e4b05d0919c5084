"""The API process's start-up time and resident memory, and whether it loads torch (issue 9, item 4).

Starts ``python -m app serve`` on an embedded data directory (SQLite + the file broker, as a new user runs it; a first,
uncounted start migrates it), ``--rounds`` times, and for each start measures: seconds from ``Popen`` until ``GET /readyz`` answers 200, the
process's resident set (VmRSS, MiB) once ready and again after ``--polls`` reads of ``GET /v1/jobs``,
and whether ``torch`` is among the modules it imported (read from ``/proc/<pid>/maps``: a mapped ``libtorch``).
Prints the median and range of each figure. ``--root`` measures another checkout (e.g. a worktree of an older
commit) with this machine's venv, for a before/after pair run side by side.

    .venv/bin/python bench/api_startup.py [--rounds 5] [--polls 200] [--root PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.load_status import free_port  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident set of ``pid`` in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def torch_loaded(pid: int) -> bool:
    """True when the process has torch's shared library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def one_start(root: Path, data: str, polls: int) -> dict[str, float | bool]:
    """One API start on the data directory ``data``; returns ready_s, rss_ready_mib, rss_polled_mib, torch."""
    port = free_port()
    env = {**os.environ, "STILLHOUSE_DATA_DIR": data, "STILLHOUSE_PORT": str(port)}
    env.pop("STILLHOUSE_DATABASE_URL", None)
    env.pop("STILLHOUSE_BROKER_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited with {proc.returncode}")
            time.sleep(0.02)
        ready_s = time.perf_counter() - t0
        rss_ready = rss_mib(proc.pid)
        with httpx.Client(base_url=url, timeout=10) as c:
            for _ in range(polls):
                c.get("/v1/jobs").raise_for_status()
        return {"ready_s": ready_s, "rss_ready_mib": rss_ready, "rss_polled_mib": rss_mib(proc.pid),
                "torch": torch_loaded(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    """Parse the arguments, run the starts, print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--polls", type=int, default=200)
    ap.add_argument("--root", type=Path, default=ROOT)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        one_start(a.root.resolve(), data, 0)  # the first start migrates the new database: not counted
        runs = [one_start(a.root.resolve(), data, a.polls) for _ in range(a.rounds)]
    print(f"API start-up of {a.root.resolve()} ({a.rounds} starts, embedded default)")
    for key, unit in (("ready_s", "s"), ("rss_ready_mib", "MiB"), ("rss_polled_mib", "MiB")):
        vals = [float(r[key]) for r in runs]
        print(f"  {key:16s} median {statistics.median(vals):7.2f} {unit}  (range {min(vals):.2f}-{max(vals):.2f})")
    print(f"  torch loaded     {sum(bool(r['torch']) for r in runs)}/{len(runs)} starts")


if __name__ == "__main__":
    main()
