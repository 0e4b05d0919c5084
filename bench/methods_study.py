"""The methods study behind the README's methods table (issue 11): each case distilled on mnist5k through the core (as
the worker runs it) with the default baseline, for several seeds, budgets and label regimes, each comparison with its
paired bootstrap 95% interval and exact McNemar p (``distill.review``). Prints one Markdown row per run and a summary
per (case, regime, epochs): mean gain, and on how many seeds the interval lies above 0, covers 0, or lies below.

    .venv/bin/python bench/methods_study.py [--seeds 0 1 2] [--epochs 10 30] [--regimes all few] [--cases kd dkd ...]

Regimes: ``all``: the 4,000 training rows of the default split, all labelled; ``few``: 200 of them labelled (20 per
class), the other 3,800 as an unlabelled transfer set (``data.transfer``). Validation: the same 1,000 rows in both (the
default split's, given as a validation file in ``few``). The teacher is bench/service_vs_bare.py's cnn [32, 64],
trained on the 4,000 labelled rows. The spec's own defaults apply unless a case sets them (learning rate, DKD's beta and
warm-up, a FitNets extra's weight); ``--lr`` overrides the learning rate of every case. Case ``auto`` (the default
method, ``distill.auto``) shows the chosen candidate, the selection's cost (fraction of the job's training steps and
of its wall time), the rule that chose, the selection split's size and the selection intervals in the case column.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service_vs_bare import make_teacher  # noqa: E402
from distill.data import load_builtin, split_validation  # noqa: E402
from distill.formats import FileInput  # noqa: E402
from distill.job import run_job  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.results import JobInputs  # noqa: E402
from distill.spec import JobSpec  # noqa: E402

MLP = {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}
# mlp [64]: 0 flatten 1 Linear 2 ReLU 3 Linear; teacher cnn [32, 64] / 128: ... 9 Linear 10 ReLU 11 Linear
CASES: dict[str, dict[str, Any]] = {
    "auto": {"name": "auto"},  # the default: the case column shows the chosen candidate and the selection's cost
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "kd_t2": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
    "hard_label": {"name": "hard_label", "alpha": 0.9},
    "dkd": {"name": "dkd", "temperature": 4.0},
    "dkd_paper": {"name": "dkd", "temperature": 4.0, "beta": 8.0, "warmup_epochs": 1},
    "kd_fitnet": {"name": "kd", "temperature": 4.0, "alpha": 0.9,
                  "extra": [{"name": "fitnet", "student_layer": "2", "teacher_layer": "10"}]},
    "kd_fitnet_w1": {"name": "kd", "temperature": 4.0, "alpha": 0.9,
                     "extra": [{"name": "fitnet", "weight": 1.0, "student_layer": "2", "teacher_layer": "10"}]},
}
FEW_LABELS_PER_CLASS = 20


def _npz(path: Path, **arrays: np.ndarray) -> FileInput:
    np.savez(path, **arrays)
    return FileInput(path, "npz", path.stat().st_size)


def _data(regime: str, tmp: Path) -> tuple[dict[str, Any], dict[str, FileInput]]:
    """The spec's data block and the files it names for a regime."""
    if regime == "all":
        return {"train": {"builtin": "mnist5k"}, "validation": {"fraction": 0.2, "seed": 0}}, {}
    x, y, _ = load_builtin("mnist5k")
    tr, va = split_validation(y, 0.2, seed=0)
    rng = np.random.default_rng(0)
    labelled = np.concatenate([rng.permutation(tr[y[tr] == c])[:FEW_LABELS_PER_CLASS] for c in range(10)])
    rest = np.setdiff1d(tr, labelled)
    files = {"file_l": _npz(tmp / "labelled.npz", X=x[labelled], y=y[labelled]),
             "file_u": _npz(tmp / "transfer.npz", X=x[rest]),
             "file_v": _npz(tmp / "val.npz", X=x[va], y=y[va])}
    return {"train": {"file_id": "file_l"}, "transfer": {"file_id": "file_u"}, "validation": {"file_id": "file_v"}}, files


def _rule(sel: dict[str, Any]) -> str:
    """The selection's rule, split size and intervals (points) for the case column."""
    iv, tv = sel.get("interval_points"), sel.get("teacher_vs_alone_points")
    fmt = (lambda v: f"[{v[0]:+.1f}, {v[1]:+.1f}]" if v else "–")
    return (f"rule {sel.get('rule') or '–'}, {sel.get('selection_rows', 0)} selection rows, candidate − alone {fmt(iv)}, "
            f"teacher − alone {fmt(tv)}")


def main() -> None:
    """Run every (case, regime, epochs, seed) and print the rows and the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--regimes", nargs="+", default=["all", "few"], choices=["all", "few"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--lr", type=float, default=None, help="learning rate of every case (default: the spec's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = ROOT / "bench" / "out" / "mnist5k_teacher.safetensors"
    if not teacher.exists():
        make_teacher(teacher)
    fi = FileInput(teacher, "safetensors", teacher.stat().st_size)
    print("| case | labels | epochs | seed | lr | teacher | alone | distilled | gain (points) [95% interval] | McNemar p | verdict | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for regime in args.regimes:
            data, files = _data(regime, tmp)
            for case in args.cases:
                for epochs in args.epochs:
                    for seed in args.seeds:
                        training: dict[str, Any] = {"epochs": epochs, "batch_size": 64, "seed": seed}
                        if args.lr is not None:
                            training["optimizer"] = {"lr": args.lr}
                        spec = JobSpec.model_validate({
                            "teacher": {"file_id": "file_teacher"}, "student": {"architecture": MLP}, "data": data,
                            "method": CASES[case], "training": training,
                            "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1]},
                            "export": {"formats": ["safetensors"]}})
                        t0 = time.perf_counter()
                        with tempfile.TemporaryDirectory() as wd:
                            r = run_job(spec, JobInputs(teacher=fi, files={"file_teacher": fi, **files}), Path(wd),
                                        RecordingReporter()).report
                        c = r["comparisons"]["distilled_vs_alone"]
                        results.setdefault((case, regime, epochs), []).append(c)
                        lo, hi = c["interval_points"]
                        label = "all 4,000" if regime == "all" else f"{10 * FEW_LABELS_PER_CLASS} + 3,800 transfer"
                        sel = r.get("selection")
                        shown = case if not sel else (f"{case} → {sel['chosen'] or 'kd (no selection)'} (selection "
                                                      f"{sel['steps_fraction']:.0%} of steps, "
                                                      f"{sel['cost_fraction_of_job_time'] or 0:.0%} of time; {_rule(sel)})")
                        print(f"| {shown} | {label} | {epochs} | {seed} | {spec.training.optimizer.lr:g} | "
                              f"{100 * r['teacher']['val_top1']:.1f}% | {100 * r['baseline']['val_top1']:.1f}% | "
                              f"{100 * r['student']['val_top1']:.1f}% | {c['difference_points']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                              f"{c['mcnemar_p']:.2g} | {c['verdict'].replace('a better', 'distilled better').replace('b better', 'alone better')} "
                              f"| {time.perf_counter() - t0:.0f} s |", flush=True)
    print("\n| case | labels | epochs | mean gain (points) | seeds distilled better / no measurable difference / alone better |")
    print("|---|---|---|---|---|")
    for (case, regime, epochs), cs in results.items():
        verdicts = [c["verdict"] for c in cs]
        print(f"| {case} | {regime} | {epochs} | {np.mean([c['difference_points'] for c in cs]):+.2f} | "
              f"{verdicts.count('a better')} / {verdicts.count('no measurable difference')} / {verdicts.count('b better')} |")


if __name__ == "__main__":
    main()
