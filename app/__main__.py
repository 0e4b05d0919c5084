"""``python -m app``: run the API (``serve``), the API and one worker together (``up``), or the sweep alone (``sweep``).

``up`` is what ``make up`` runs: both processes in the foreground on the configured settings
(the embedded default needs no server); Ctrl-C (SIGINT) or SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import uvicorn

from app.settings import get_settings


def serve() -> None:
    """Run the API with uvicorn on ``STILLHOUSE_HOST``:``STILLHOUSE_PORT``."""
    s = get_settings()
    uvicorn.run("app.main:app", host=s.host, port=s.port, log_level="info", access_log=False)


def up() -> int:
    """Run API + worker as child processes until Ctrl-C or one of them exits; returns an exit code."""
    s = get_settings()
    env = dict(os.environ)
    if not s.torch_threads:
        # The API shares this machine with the worker: keep one core for it. Measured on 2 cores during
        # `make demo`: 2 intra-op threads made the worker's training phase 2.2x slower than 1 (18.5 s vs 8.5 s).
        cores = s.resolved_torch_threads() * s.worker_concurrency
        env["STILLHOUSE_TORCH_THREADS"] = str(max(1, (cores - 1) // s.worker_concurrency))
    procs = [
        subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env),
        subprocess.Popen([sys.executable, "-m", "worker"], env=env),
    ]
    print(f"stillhouse: API on http://{s.host}:{s.port} + 1 worker with {env.get('STILLHOUSE_TORCH_THREADS')} torch thread(s) per job "
          f"(database {s.resolved_database_url.split('@')[-1]}, broker {s.broker_url.split('@')[-1]}); Ctrl-C stops both",
          flush=True)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    while not stopping:
        for p in procs:
            if p.poll() is not None:
                code = p.returncode or 1
                stopping = True
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    return code


def main() -> None:
    """Command-line entry: ``python -m app [serve|up|sweep]`` (default ``serve``)."""
    ap = argparse.ArgumentParser(prog="python -m app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="serve", choices=["serve", "up", "sweep"])
    args = ap.parse_args()
    if args.command == "up":
        sys.exit(up())
    if args.command == "sweep":  # the sweep loop alone (app/sweep.py)
        from app.sweep import main as sweep_main

        sys.exit(sweep_main([]))
    serve()


if __name__ == "__main__":
    main()
