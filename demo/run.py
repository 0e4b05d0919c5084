"""``make demo``: the whole product in one run, on the embedded default (SQLite, filesystem broker, ./var).

1. makes the demo teacher (a digits CNN) if demo/out/teacher.safetensors is missing;
2. starts the API and one Celery worker (``python -m app up``);
3. with the ``stillhouse`` command: submits demo/spec.yaml (uploading the teacher), follows the job
   with a live progress bar, downloads the student and prints the compression report;
4. stops what it started, and checks the report's promise (student ≥ 10x smaller, top-1 within 3 points).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent


def sh(*args: str, capture: bool = False) -> str:
    """Run a command, echoing it; exits the demo if it fails."""
    print(f"\n$ {' '.join(args)}", flush=True)
    res = subprocess.run(args, cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None)
    if res.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(args)}` exited with {res.returncode}")
    return (res.stdout or "").strip()


def main() -> int:
    """Run the demo; returns the process exit code."""
    port = int(os.environ.get("STILLHOUSE_PORT", "8000"))
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"demo: port {port} is busy (is `make up` running?); stop it or set STILLHOUSE_PORT")
    teacher = DEMO / "out" / "teacher.safetensors"
    if not teacher.exists():
        sh(sys.executable, "demo/make_teacher.py", str(teacher))
    out = DEMO / "out" / "student"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "STILLHOUSE_PORT": str(port)}
    env.pop("STILLHOUSE_DATABASE_URL", None)
    env.pop("STILLHOUSE_BROKER_URL", None)
    api_url = f"http://127.0.0.1:{port}"
    os.environ["STILLHOUSE_API_URL"] = api_url
    log = (ROOT / "var").mkdir(exist_ok=True) or open(ROOT / "var" / "demo-server.log", "w")
    print(f"$ python -m app up   (API {api_url} + 1 worker; log in var/demo-server.log)", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "app", "up"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from client import Stillhouse

        with Stillhouse(api_url) as c:
            c.wait_ready(timeout_s=90)
        stillhouse = str(BIN / "stillhouse")
        job_id = sh(stillhouse, "submit", "demo/spec.yaml", capture=True).splitlines()[-1]
        sh(stillhouse, "wait", job_id)
        sh(stillhouse, "download", job_id, "--dir", str(out.relative_to(ROOT)))
        sh(stillhouse, "report", job_id)
        with Stillhouse(api_url) as c:
            r = c.report(job_id)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    ratio, drop = r.compression_ratio, r.top1_drop_points
    ok = ratio >= 10 and drop is not None and drop <= 3
    print(f"\ndemo {'OK' if ok else 'MISSED ITS TARGET'}: student {ratio:.1f}x smaller than the teacher "
          f"(target >= 10x), top-1 {drop:.2f} points below it (target <= 3). Student files in {out.relative_to(ROOT)}/; "
          f"the API and worker are stopped.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
