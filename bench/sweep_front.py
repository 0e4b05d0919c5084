"""A real sweep on mnist5k (issue 12's Done-means run): API + 2 workers over PostgreSQL + Redis, a CNN teacher, MLP
widths × depths and kd temperature/alpha, 12 trials; then the same trials as separate jobs with the shared teacher
cache off (``STILLHOUSE_SHARED_TEACHER_CACHE=false``: each job runs the teacher over the training rows itself).

Prints, side by side from one run:
- the sweep's wall time (created → finished) against the sum of its trials' training times / workers (target ≤ 1.2);
- teacher passes over the training rows (trials reporting cache.shared.teacher_outputs = 'computed'; target 1 per
  sweep) against the separate jobs' (each job that cached the teacher's outputs computed them);
- the front as a table (held-out validation top-1 with 95% Wilson interval, selection top-1, bytes, p50 latency), each
  member's held-out top-1 reproduced by evaluating its downloaded student on the validation split.

    .venv/bin/python bench/sweep_front.py [--trials 12] [--epochs 5] [--workers 2] [--skip-separate] [--events N]
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
from bench.service_vs_bare import OUT, make_teacher, tree_cpu_seconds  # noqa: E402
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
        # 'ready.' is the main process; its pool child then imports what a job needs and opens Optuna's storage
        # (several seconds): a sweep started before would time a worker's start-up, not its trials
        while not all(all(w in (self.out / f"worker{i}.log").read_text(errors="replace") for w in ("ready.", "worker child:"))
                      for i in range(n)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            time.sleep(0.3)

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds used so far by each process (and its children), by name."""
        return {name: tree_cpu_seconds(p.pid) for name, p in self.procs.items()}

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
    ap.add_argument("--events", type=int, default=0, help="print the events of the first N trials (where their time went)")
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
        cpu0 = svc.cpu_seconds()
        sw = c.create_sweep(body)
        final = c.wait_sweep(sw["id"], poll_s=1.0, timeout_s=args.timeout_s)
        cpu = {k: v - cpu0[k] for k, v in svc.cpu_seconds().items()}
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
        timeline(c, final, trials, args.workers, cpu, args.events)
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


def timeline(c: Stillhouse, sweep: dict, trials: list[dict], workers: int, cpu: dict[str, float], show_events: int = 0) -> None:
    """Where the sweep's wall time went, from the trial jobs' timestamps and reports (medians over trials): the step
    (a trial ends → the next one is created: tell, ask, commit), the pick-up (created → started on a worker: send,
    delivery, claim), the job on the worker (started → finished) split into the core's run (report wall_time_s.total,
    of which training) and the worker's own part (inputs, reporter, publishing, the final write); and the CPU seconds
    the API and the workers used meanwhile (less noisy than wall time on a shared machine)."""
    import statistics

    jobs = sorted((c.get_job(t["job_id"]) for t in trials), key=lambda j: j.created_at)
    done = [j for j in jobs if j.started_at and j.finished_at]
    if not done:
        return
    ends = sorted(j.finished_at.timestamp() for j in done)
    steps = []
    for j in jobs[workers:]:
        before = [e for e in ends if e <= j.created_at.timestamp()]
        if before:
            steps.append(j.created_at.timestamp() - before[-1])
    reports = {j.id: c.report(j.id) for j in done if j.status == "succeeded"}
    core = [r.wall_time_s["total"] for r in reports.values()]
    train = [r.training.training_time_s for r in reports.values()]
    on_worker = [(j.finished_at - j.started_at).total_seconds() for j in done]
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    print(f"  per trial (median of {len(done)}): step {med(steps):.3f} s; pick-up {med([(j.started_at - j.created_at).total_seconds() for j in done]):.3f} s; "
          f"on the worker {med(on_worker):.3f} s = core {med(core):.3f} s (training {med(train):.3f} s, rest {med([a - b for a, b in zip(core, train)]):.3f} s)"
          f" + worker {med([w - r.wall_time_s['total'] for w, r in zip(on_worker, reports.values())]):.3f} s")
    t0 = _ts(sweep["created_at"])
    print("  | trial | created s | started s | finished s | core s | training s | teacher outputs | core phases (s) |")
    for t, j in zip(sorted(trials, key=lambda t: t["number"]), sorted(jobs, key=lambda j: int(j.metadata.get("trial", 0)))):
        r = reports.get(j.id)
        print(f"  | {t['number']:>5} | {j.created_at.timestamp() - t0:9.3f} | {(j.started_at.timestamp() - t0) if j.started_at else float('nan'):9.3f} | "
              f"{(j.finished_at.timestamp() - t0) if j.finished_at else float('nan'):10.3f} | {r.wall_time_s['total'] if r else float('nan'):6.3f} | "
              f"{r.training.training_time_s if r else float('nan'):10.3f} | {t['teacher_outputs'] or '-':>15} | "
              + (" ".join(f"{k[:8]} {v:.2f}" for k, v in r.wall_time_s.items() if k != "total") if r else "") + " |")
    for j in jobs[:show_events]:
        print(f"  events of trial {j.metadata.get('trial')} (s after the sweep's creation):")
        for e in c.events(j.id):
            print(f"    {e.created_at.timestamp() - t0:8.3f} {e.type}: {e.message[:110]}")
    first, last = jobs[0].created_at.timestamp(), ends[-1]
    print(f"  sweep created -> first trial created {first - _ts(sweep['created_at']):.3f} s; last trial finished -> sweep finished "
          f"{_ts(sweep['finished_at']) - last:.3f} s; sum of trial jobs on the workers / {workers} = {sum(on_worker) / workers:.1f} s")
    print("  CPU seconds during the sweep: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) +
          f"; workers' CPU / sum of training = {sum(v for k, v in cpu.items() if k.startswith('worker')) / sum(train):.2f}")


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main())
