"""A small job's fixed cost beyond its own training, on mnist5k (kd, teacher-output cache on), without and with the
shared teacher cache (``distill.shared_cache``), through the distillation core as a worker runs it.

fixed = the job's wall time (``report.wall_time_s.total``) − its training time (``report.training.training_time_s``):
loading, the teacher-output cache, evaluation (the teacher's latency at batch 1 and 64 × 50 iterations unless the
shared cache has it), export. 'cold' is the first job of a teacher on a fresh shared cache (it measures and stores),
'warm' a later one (a sweep's second and later trials). Target (issue 12): warm fixed ≤ 0.3 s.

    .venv/bin/python bench/trial_fixed_cost.py [--epochs 1 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.service_vs_bare import OUT, job_spec, make_teacher  # noqa: E402
from distill.formats import FileInput  # noqa: E402
from distill.job import run_job  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.results import JobInputs  # noqa: E402
from distill.shared_cache import DirCache  # noqa: E402
from distill.spec import JobSpec  # noqa: E402


def one(teacher: Path, epochs: int, shared: DirCache | None, work: Path) -> dict:
    """Run one job; returns {'total', 'training', 'fixed', phases...} in seconds and the cache.shared block."""
    spec = JobSpec.model_validate(job_spec("file_teacher", epochs, cache="on"))
    inputs = JobInputs(teacher=FileInput(path=teacher, format="safetensors", bytes=teacher.stat().st_size), files={})
    r = run_job(spec, inputs, work, RecordingReporter(), shared=shared).report
    wall = r["wall_time_s"]
    return {"total": wall["total"], "training": r["training"]["training_time_s"], "fixed": wall["total"] - r["training"]["training_time_s"],
            "phases": {k: v for k, v in wall.items() if k != "total"}, "shared": r["cache"].get("shared")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = OUT / "mnist5k_teacher.safetensors"
    if not teacher.exists():
        make_teacher(teacher)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        one(teacher, 1, None, tmp / "warmup")  # imports, first-call costs
        rows = []
        for epochs in args.epochs:
            cache = DirCache(tmp / f"cache-{epochs}")
            cold = one(teacher, epochs, cache, tmp / f"cold-{epochs}")
            for mode, shared in (("none", None), ("warm", cache)):
                runs = [one(teacher, epochs, shared, tmp / f"{mode}-{epochs}-{i}") for i in range(args.repeats)]
                rows.append((epochs, mode, runs))
            rows.append((epochs, "cold", [cold]))
        print(f"mnist5k, kd, cache on, {args.threads} thread(s); seconds, median of {args.repeats} (cold: 1 run)")
        print(f"{'epochs':>6} {'shared cache':>12} {'total':>7} {'training':>8} {'fixed':>7}  phases (median run)")
        for epochs, mode, runs in rows:
            med = sorted(runs, key=lambda r: r["fixed"])[len(runs) // 2]
            phases = ", ".join(f"{k} {v:.3f}" for k, v in med["phases"].items())
            print(f"{epochs:>6} {mode:>12} {statistics.median(r['total'] for r in runs):7.3f} "
                  f"{statistics.median(r['training'] for r in runs):8.3f} {statistics.median(r['fixed'] for r in runs):7.3f}  {phases}")


if __name__ == "__main__":
    main()
