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

``--holdout N`` (issue 11: do the report's intervals cover the accuracy on rows the job never saw?): mnist5k has no
rows beyond the 5,000 a default job reads, so N rows (stratified, seed 0) are taken out of the default split's 4,000
training rows before anything else: the teacher is retrained without them (``bench/out/mnist5k_teacher_holdoutN``),
the job gets the other 4,000 - N training rows as a file (``few``: 200 of them labelled, the rest as the transfer set)
and the same 1,000 validation rows, and the returned student, the baseline and the teacher are scored on the N rows.
Each row then shows those held-out top-1s and whether the report's Wilson 95% interval covers each (y/n), and the run
ends with the count. Even a perfect interval covers a held-out estimate of the same size less often than 95%: the
held-out figure has its own noise (for equal sizes about 83%, P(|Z| < 1.96 / sqrt 2)).
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
    "auto_budget1": {"name": "auto", "selection_budget": 1.0},  # candidates as long as the job allows (4 x 9 epochs at 30)
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


def holdout_rows(y: np.ndarray, tr: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)``: ``n`` of the training rows ``tr`` held out (stratified, seed 0), the others kept; ``held`` is
    empty for ``n`` 0."""
    if n <= 0:
        return tr, tr[:0]
    kept, held = split_validation(y[tr], n / tr.size, seed=0)
    return np.sort(tr[kept]), np.sort(tr[held])


def _data(regime: str, tmp: Path, holdout: int = 0) -> tuple[dict[str, Any], dict[str, FileInput]]:
    """The spec's data block and the files it names for a regime (``holdout``: training rows the job never sees)."""
    if regime == "all" and holdout <= 0:
        return {"train": {"builtin": "mnist5k"}, "validation": {"fraction": 0.2, "seed": 0}}, {}
    x, y, _ = load_builtin("mnist5k")
    tr, va = split_validation(y, 0.2, seed=0)
    tr, _ = holdout_rows(y, tr, holdout)
    if regime == "all":
        files = {"file_l": _npz(tmp / "train.npz", X=x[tr], y=y[tr]), "file_v": _npz(tmp / "val.npz", X=x[va], y=y[va])}
        return {"train": {"file_id": "file_l"}, "validation": {"file_id": "file_v"}}, files
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


def _teacher(holdout: int) -> Path:
    """The teacher file: bench/service_vs_bare.py's, trained on the default split's training rows, or (``holdout`` > 0)
    the same architecture and recipe trained without the held-out rows (cached under bench/out)."""
    if holdout <= 0:
        path = ROOT / "bench" / "out" / "mnist5k_teacher.safetensors"
        if not path.exists():
            make_teacher(path)
        return path
    path = ROOT / "bench" / "out" / f"mnist5k_teacher_holdout{holdout}.safetensors"
    if not path.exists():
        from bench.service_vs_bare import TEACHER_ARCH
        from distill.teacher_training import save_model, train_classifier

        x, y, _ = load_builtin("mnist5k")
        tr, _ = split_validation(y, 0.2, seed=0)
        kept, _ = holdout_rows(y, tr, holdout)
        model = train_classifier(TEACHER_ARCH, x[kept], y[kept], epochs=8, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, model.stillhouse_architecture, path)
    return path


def _top1(model: Any, x: torch.Tensor, y: np.ndarray) -> float:
    """Top-1 of ``model`` (a ``distill.teachers.Teacher`` or an ``nn.Module``) on ``x`` [N, 1, 28, 28] / ``y`` [N], fraction."""
    from distill.training import batched_logits

    if isinstance(model, torch.nn.Module):
        model.eval()
    with torch.inference_mode():
        return float((batched_logits(model, x).argmax(1).numpy() == y).mean())


def _covers(interval: list[float] | None, value: float) -> str:
    """'y' when ``value`` lies in ``interval`` [low, high] (fractions), 'n' otherwise, '–' without an interval."""
    if not interval:
        return "–"
    return "y" if interval[0] <= value <= interval[1] else "n"


def main() -> None:
    """Run every (case, regime, epochs, seed) and print the rows and the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--regimes", nargs="+", default=["all", "few"], choices=["all", "few"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--lr", type=float, default=None, help="learning rate of every case (default: the spec's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--holdout", type=int, default=0, help="training rows held out of the job and the teacher, to score "
                    "the returned student on (0: none, the default split as the README's tables)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from distill.teachers import load_teacher

    teacher = _teacher(args.holdout)
    fi = FileInput(teacher, "safetensors", teacher.stat().st_size)
    x_all, y_all, _ = load_builtin("mnist5k")
    held = holdout_rows(y_all, split_validation(y_all, 0.2, seed=0)[0], args.holdout)[1]
    hx, hy = torch.as_tensor(x_all[held], dtype=torch.float32), y_all[held]
    extra = (" held-out top-1 returned / alone / teacher (covered by the report's interval: its Wilson 95% interval) |"
             if held.size else "")
    print(f"| case | labels | epochs | seed | lr | teacher | alone | distilled | gain (points) [95% interval] | McNemar p | verdict | wall |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if held.size else ""))
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    covered = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for regime in args.regimes:
            data, files = _data(regime, tmp, args.holdout)
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
                            res = run_job(spec, JobInputs(teacher=fi, files={"file_teacher": fi, **files}), Path(wd),
                                          RecordingReporter())
                            r, shown_held = res.report, ""
                            if held.size:
                                student = next(p for p in res.artifacts if p.name == "student.safetensors")
                                tops = {"student": _top1(load_teacher(student, "safetensors", None, torch.device("cpu")), hx, hy),
                                        "baseline": _top1(res.baseline_student, hx, hy) if res.baseline_student is not None else None,
                                        "teacher": _top1(load_teacher(teacher, "safetensors", None, torch.device("cpu")), hx, hy)}
                                ivs = {k: (r.get(k) or {}).get("val_top1_interval") for k in tops}
                                marks = {k: _covers(ivs[k], v) if v is not None else "–" for k, v in tops.items()}
                                covered += [(k, m) for k, m in marks.items() if m in "yn"]
                                shown_held = " " + " / ".join(
                                    (f"{100 * v:.1f}% ({marks[k]}" + (f": [{100 * ivs[k][0]:.1f}, {100 * ivs[k][1]:.1f}])"
                                                                     if ivs[k] else ")")) if v is not None else "–"
                                    for k, v in tops.items()) + " |"
                        c = r["comparisons"]["distilled_vs_alone"]
                        results.setdefault((case, regime, epochs), []).append(c)
                        lo, hi = c["interval_points"]
                        n_tr = 4000 - int(held.size)
                        label = (f"all {n_tr:,}" if regime == "all" else
                                 f"{10 * FEW_LABELS_PER_CLASS} + {n_tr - 10 * FEW_LABELS_PER_CLASS:,} transfer")
                        sel = r.get("selection")
                        shown = case if not sel else (f"{case} → {sel['chosen'] or 'kd (no selection)'} (selection "
                                                      f"{sel['steps_fraction']:.0%} of steps, "
                                                      f"{sel['cost_fraction_of_job_time'] or 0:.0%} of time; {_rule(sel)})")
                        print(f"| {shown} | {label} | {epochs} | {seed} | {spec.training.optimizer.lr:g} | "
                              f"{100 * r['teacher']['val_top1']:.1f}% | {100 * r['baseline']['val_top1']:.1f}% | "
                              f"{100 * r['student']['val_top1']:.1f}% | {c['difference_points']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                              f"{c['mcnemar_p']:.2g} | {c['verdict'].replace('a better', 'distilled better').replace('b better', 'alone better')} "
                              f"| {time.perf_counter() - t0:.0f} s |{shown_held}", flush=True)
    if covered:
        counts = {k: (sum(m == "y" for kk, m in covered if kk == k), sum(kk == k for kk, _ in covered)) for k in dict(covered)}
        words = {"student": "returned student", "baseline": "student alone (baseline)",
                 "teacher": "teacher (one model: the same rows in every run)"}
        print(f"\nheld-out ({held.size:,} rows neither the job nor the teacher saw): the report's Wilson 95% interval covers "
              "the held-out top-1 in " + "; ".join(f"{y} of {n} runs for the {words[k]}" for k, (y, n) in counts.items()))
    print("\n| case | labels | epochs | mean gain (points) | seeds distilled better / no measurable difference / alone better |")
    print("|---|---|---|---|---|")
    for (case, regime, epochs), cs in results.items():
        verdicts = [c["verdict"] for c in cs]
        print(f"| {case} | {regime} | {epochs} | {np.mean([c['difference_points'] for c in cs]):+.2f} | "
              f"{verdicts.count('a better')} / {verdicts.count('no measurable difference')} / {verdicts.count('b better')} |")


if __name__ == "__main__":
    main()
