"""A real sweep on mnist5k (issue 12's Done-means run): API + 2 workers over PostgreSQL + Redis, a CNN teacher, MLP
widths × depths and kd temperature/alpha, 12 trials; then the same trials as separate jobs with the shared teacher
cache off (``STILLHOUSE_SHARED_TEACHER_CACHE=false``: each job runs the teacher over the training rows itself).

Prints, side by side from one run:
- the sweep's wall time (created → finished) against the sum of its trials' training times / workers (target ≤ 1.2);
- teacher passes over the training rows (trials reporting cache.shared.teacher_outputs = 'computed'; target 1 per
  sweep) against the separate jobs' (each job that cached the teacher's outputs computed them);
- the front as a table (held-out validation top-1 with 95% Wilson interval, selection top-1, bytes, p50 latency), each
  member's held-out top-1 reproduced by evaluating its downloaded student on the validation split.

    .venv/bin/python bench/sweep_front.py [--trials 12] [--epochs 5] [--workers 2] [--skip-separate]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.load_status import REDIS_URL, create_database, free_port  # noqa: E402
from bench.service_vs_bare import OUT, make_teacher  # noqa: E402
from client import Stillhouse  # noqa: E402
from distill.data import load_data  # noqa: E402
from distill.models import build  # noqa: E402
from distill.spec import DataSpec  # noqa: E402

STUDENT_SPACE = {"student.architecture.kwargs.hidden_sizes": {"type": "layers", "widths": [16, 64, 256], "depths": [1, 2]},
                 "method.temperature": {"type": "float", "low": 1.0, "high": 8.0},
                 "method.alpha": {"type": "float", "low": 0.5, "high": 1.0}}


def base_spec(teacher_id: str, epochs: int) -> dict:
    """mnist5k (80/20 split, seed 0), an MLP student, kd, AdamW 3e-3 cosine, batch 64, teacher outputs cached."""
    return {"name": "mnist5k-sweep", "teacher": {"file_id": teacher_id},
            "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}},
            "data": {"train": {"builtin": "mnist5k"}, "validation": {"fraction": 0.2, "seed": 0}},
            "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9}, "cache": {"teacher_outputs": "on"},
            "training": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
                         "schedule": "cosine", "seed": 0},
            "evaluation": {"latency_batch_sizes": [1, 64], "latency_iterations": 50},
            "export": {"formats": ["safetensors"]}}


class Services:
    """API + worker processes on one PostgreSQL database and Redis queue."""

    def __init__(self, out: Path, url: str, workers: int) -> None:
        self.out, self.port = out, free_port()
        self.env = {**os.environ, "STILLHOUSE_DATABASE_URL": url, "STILLHOUSE_BROKER_URL": REDIS_URL,
                    "STILLHOUSE_QUEUE": f"stillhouse-sweep-{uuid.uuid4().hex[:8]}", "STILLHOUSE_DATA_DIR": str(out / "data"),
                    "STILLHOUSE_PORT": str(self.port), "STILLHOUSE_TORCH_THREADS": "1", "STILLHOUSE_WORKER_CONCURRENCY": "1",
                    "OMP_NUM_THREADS": "1"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.spawn("api", [sys.executable, "-m", "app", "serve"])
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("API not ready:\n" + (out / "api.log").read_text()[-3000:])
            time.sleep(0.3)
        self.start_workers(workers, {})
        self.client = Stillhouse(self.base, timeout=60)

    def spawn(self, name: str, cmd: list[str], extra: dict[str, str] | None = None) -> None:
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(extra or {})},
                                            stdout=(self.out / f"{name}.log").open("a"), stderr=subprocess.STDOUT)

    def start_workers(self, n: int, extra: dict[str, str]) -> None:
        for i in range(n):
            name = f"worker{i}"
            self.spawn(name, [sys.executable, "-m", "worker"], extra)
        deadline = time.monotonic() + 120
        while not all("ready." in (self.out / f"worker{i}.log").read_text(errors="replace") for i in range(n)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            time.sleep(0.3)

    def stop_workers(self) -> None:
        for name in [n for n in self.procs if n.startswith("worker")]:
            p = self.procs.pop(name)
            p.terminate()
            p.wait(timeout=60)
            log = self.out / f"{name}.log"
            log.rename(self.out / f"{name}-before-restart.log")  # the next start waits for its own 'ready.'

    def close(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def reproduce(c: Stillhouse, job_id: str, data, d: Path) -> float:
    """The downloaded student's top-1 on the validation split (fraction)."""
    path = c.download(job_id, "student.safetensors", d / job_id)
    arch = json.loads(c.download(job_id, "student.json", d / job_id).read_text())["architecture"]
    model = build(arch["name"], arch["kwargs"])
    model.load_state_dict(load_file(str(path)))
    with torch.inference_mode():
        return float((model.eval()(data.val_x).argmax(1) == data.val_y).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"])
    ap.add_argument("--skip-separate", action="store_true", help="do not run the trials again as separate jobs")
    ap.add_argument("--timeout-s", type=float, default=3600)
    args = ap.parse_args()
    out = ROOT / "bench" / "out" / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    teacher_path = OUT / "mnist5k_teacher.safetensors"
    if not teacher_path.exists():
        make_teacher(teacher_path)
    url, drop = create_database()
    svc = None
    try:
        from stillhouse.db import migrate
        from stillhouse.settings import Settings

        migrate(Settings(database_url=url, data_dir=out / "data"))
        svc = Services(out, url, args.workers)
        c = svc.client
        teacher = c.upload(teacher_path, "teacher")
        body = {"name": "mnist5k", "base": base_spec(teacher.id, args.epochs), "search_space": STUDENT_SPACE,
                "sampler": {"name": args.sampler, "seed": 0}, "budget": {"max_trials": args.trials, "max_parallel": args.workers}}
        sw = c.create_sweep(body)
        final = c.wait_sweep(sw["id"], poll_s=1.0, timeout_s=args.timeout_s)
        trials = c.sweep_trials(sw["id"])
        front = c.sweep_front(sw["id"])
        wall = (_ts(final["finished_at"]) - _ts(final["created_at"]))
        train_sum = sum(t["training_time_s"] or 0 for t in trials)
        computed = [t["teacher_outputs"] for t in trials].count("computed")
        print(f"sweep {sw['id']}: {final['status']} ({final['stop_reason']}), {len(trials)} trials, {args.workers} workers, "
              f"{args.epochs} epochs each, sampler {args.sampler}")
        print(f"  wall {wall:.1f} s; sum of trials' training {train_sum:.1f} s / {args.workers} workers = {train_sum / args.workers:.1f} s;"
              f" ratio {wall / (train_sum / args.workers):.2f} (target <= 1.2)")
        print(f"  teacher passes over the training rows: {computed} (target 1); reused by {[t['teacher_outputs'] for t in trials].count('reused')} trials")
        data = load_data(DataSpec.model_validate(body["base"]["data"]), {})
        t = front.get("teacher") or {}
        print("\nfront (chosen on the selection split; top-1 on the held-out validation split, 95% Wilson interval):")
        print(f"| {'trial':>5} | {'hidden_sizes':<12} | {'T':>5} | {'alpha':>5} | {'val top-1':>9} | {'95% interval':>13} | "
              f"{'reproduced':>10} | {'sel. top-1':>10} | {'bytes':>9} | {'p50 ms b1':>9} | {'p50 ms b64':>10} |")
        print("|" + "|".join("-" * (w + 2) for w in (5, 12, 5, 5, 9, 13, 10, 10, 9, 9, 10)) + "|")
        if t:
            ci = t.get("interval95") or [0, 0]
            print(f"| {'T':>5} | {'(teacher)':<12} | {'':>5} | {'':>5} | {100 * (t['val_top1'] or 0):8.2f}% | {100 * ci[0]:5.1f}-{100 * ci[1]:5.1f}% | "
                  f"{'':>10} | {'':>10} | {t['bytes']:>9,} | {t['latency_ms']['1']['p50']:9.3f} | {t['latency_ms']['64']['p50']:10.3f} |")
        sizes = []
        for m in sorted(front["data"], key=lambda m: m["bytes"]):
            h, p = m["holdout"], m["params"]
            rep = reproduce(c, m["job_id"], data, out / "students")
            sizes.append(m["bytes"])
            print(f"| {m['trial']:>5} | {str(p['student.architecture.kwargs.hidden_sizes']):<12} | {p['method.temperature']:5.2f} | "
                  f"{p['method.alpha']:5.2f} | {100 * h['student_val_top1']:8.2f}% | {100 * h['student_interval95'][0]:5.1f}-"
                  f"{100 * h['student_interval95'][1]:5.1f}% | {100 * rep:9.2f}% | {100 * m['selection_top1']:9.2f}% | "
                  f"{m['bytes']:>9,} | {m['latency_ms']['1']['p50']:9.3f} | {m['latency_ms']['64']['p50']:10.3f} |")
        print(f"  front: {len(sizes)} members spanning {max(sizes) / min(sizes):.1f}x in bytes" if sizes else "  front: empty")
        if not args.skip_separate:
            svc.stop_workers()
            svc.start_workers(args.workers, {"STILLHOUSE_SHARED_TEACHER_CACHE": "false"})
            specs = [c.get_job(tr["job_id"]).spec for tr in trials]
            t0 = time.monotonic()
            jobs = [c.create_job({k: v for k, v in s.items()}) for s in specs]
            done = [c.wait(j.id, timeout_s=args.timeout_s) for j in jobs]
            sep_wall = time.monotonic() - t0
            passes = sum(1 for j in done if j.status == "succeeded" and c.report(j.id).cache.teacher_outputs)
            print(f"\nthe same {len(done)} trials as separate jobs, shared teacher cache off: wall {sep_wall:.1f} s, "
                  f"teacher passes over the training rows {passes} (sweep: {computed})")
        return 0
    finally:
        if svc is not None:
            svc.close()
        drop()


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main())
