"""Why method 'auto' returns the student alone on mnist5k with all labels (issue 11): what the selection split says about
a distilled candidate against the student alone, at several candidate budgets, next to what the full job measures on
the validation rows nobody trained on.

    .venv/bin/python bench/auto_selection_signals.py [--seeds 0 1 2] [--epochs 30] [--budgets 4 9 30] [--case kd]

For each seed it prints
- ``truth``: the case trained like the job's winner (all 4,000 training rows of the default split, ``--epochs``
  epochs) against the student alone (the job's baseline), scored on the 1,000 validation rows, which neither the
  teacher nor any candidate saw;
- ``selection``: the same pair trained as method auto's candidates (the 3,200 training rows left after
  ``distill.auto.selection_rows`` carves its split, seeded 0 as a default job's) for each of ``--budgets`` epochs
  (4: what the default plan gives each of 4 candidates at 30 epochs; 9: 2 candidates; 30: the job's own epochs),
  scored on the 800 selection rows, once with the bench teacher (bench/service_vs_bare.py's cnn [32, 64], trained on
  all 4,000 training rows, so on the selection rows too: ~100% top-1 there) and once with the same teacher recipe
  trained without the selection rows (cached as bench/out/mnist5k_teacher_no_selection.safetensors).

Every gain is distilled - alone in points with its paired bootstrap 95% interval (``distill.review``). The spec's
defaults otherwise (lr 1e-2, AdamW, cosine, batch 64, mlp [64]); one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.methods_study import CASES, MLP, _npz, _teacher  # noqa: E402
from distill import auto  # noqa: E402
from distill.data import load_builtin, split_validation  # noqa: E402
from distill.formats import FileInput  # noqa: E402
from distill.job import run_job  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.results import JobInputs  # noqa: E402
from distill.spec import JobSpec  # noqa: E402


def _no_selection_teacher(x: np.ndarray, y: np.ndarray, rest: np.ndarray) -> Path:
    """The bench teacher's architecture and recipe trained on the candidates' rows ``rest`` only (cached)."""
    path = ROOT / "bench" / "out" / "mnist5k_teacher_no_selection.safetensors"
    if not path.exists():
        from bench.service_vs_bare import TEACHER_ARCH
        from distill.teacher_training import save_model, train_classifier

        model = train_classifier(TEACHER_ARCH, x[rest], y[rest], epochs=8, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, model.stillhouse_architecture, path)
    return path


def _gain(teacher: Path, files: dict[str, FileInput], method: dict[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    """One job (``method`` with the default baseline) on ``files`` (file_l training rows, file_v scored rows): the
    teacher's, the student alone's and the distilled student's top-1 there and the paired comparison."""
    fi = FileInput(teacher, "safetensors", teacher.stat().st_size)
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "file_teacher"}, "student": {"architecture": MLP},
        "data": {"train": {"file_id": "file_l"}, "validation": {"file_id": "file_v"}}, "method": method,
        "training": {"epochs": epochs, "batch_size": 64, "seed": seed},
        "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1]}, "export": {"formats": ["safetensors"]}})
    with tempfile.TemporaryDirectory() as wd:
        r = run_job(spec, JobInputs(teacher=fi, files={"file_teacher": fi, **files}), Path(wd), RecordingReporter()).report
    c = r["comparisons"]["distilled_vs_alone"]
    return {"teacher": r["teacher"]["val_top1"], "alone": r["baseline"]["val_top1"], "distilled": r["student"]["val_top1"],
            "gain": c["difference_points"], "interval": c["interval_points"]}


def main() -> None:
    """Print the truth and the selection signals per seed and budget."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30, help="the job's epochs (the truth's)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 9, 30], help="candidate epochs on the selection split")
    ap.add_argument("--case", default="kd", choices=[c for c in CASES if c != "auto"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y, _ = load_builtin("mnist5k")
    tr, va = split_validation(y, 0.2, seed=0)
    rest, sel = auto.selection_rows(torch.from_numpy(y[tr]), 0)
    rest, sel = tr[rest], tr[sel]
    teachers = {"trained on the selection rows (the bench teacher)": _teacher(0),
                "trained without them": _no_selection_teacher(x, y, rest)}
    method = CASES[args.case]
    print(f"case {args.case} {method}; gain = distilled - alone, points [paired bootstrap 95% interval]")
    print("| seed | what | rows trained / scored | epochs | teacher | teacher top-1 there | alone | distilled | gain |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        full = {"file_l": _npz(tmp / "tr.npz", X=x[tr], y=y[tr]), "file_v": _npz(tmp / "va.npz", X=x[va], y=y[va])}
        cand = {"file_l": _npz(tmp / "rest.npz", X=x[rest], y=y[rest]), "file_v": _npz(tmp / "sel.npz", X=x[sel], y=y[sel])}
        for seed in args.seeds:
            rows = [("truth (validation rows)", full, args.epochs, "bench teacher", teachers[next(iter(teachers))])]
            rows += [("selection split", cand, e, name, path) for e in args.budgets for name, path in teachers.items()]
            for what, files, epochs, tname, tpath in rows:
                g = _gain(tpath, files, method, epochs, seed)
                n_tr, n_sc = (tr.size, va.size) if files is full else (rest.size, sel.size)
                lo, hi = g["interval"]
                print(f"| {seed} | {what} | {n_tr:,} / {n_sc:,} | {epochs} | {tname} | {100 * g['teacher']:.1f}% | "
                      f"{100 * g['alone']:.1f}% | {100 * g['distilled']:.1f}% | {g['gain']:+.2f} [{lo:+.2f}, {hi:+.2f}] |",
                      flush=True)


if __name__ == "__main__":
    main()
