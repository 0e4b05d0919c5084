"""What a careful reviewer adds to a classification report: error bars on every compared top-1 and warnings about
how the numbers were obtained.

Torch-free (numpy, and scipy through ``distill.stats``): the job hands it per-row correctness vectors and the data
as numpy arrays, and it returns the report's JSON pieces (``distill.report``: ``val_top1_interval``,
``Comparison``, ``ReportWarning``).

- ``error_bars``: a Wilson 95% interval for each top-1 (teacher, distilled student, student alone) and paired
  comparisons (paired bootstrap interval of the difference, exact McNemar p) of distilled vs alone and teacher vs
  student, on the same validation rows;
- ``gain_sentence``: the summary's verdict on distillation, which says "no measurable difference" whenever the
  interval covers 0 (never "helped"/"did not help" on noise);
- ``data_warnings`` / ``teacher_warning``: a validation split under ``SMALL_VALIDATION_ROWS`` rows (with the interval
  it implies), a class with fewer than ``FEW_CLASS_ROWS`` validation rows, rows of the validation data or the
  transfer set that also occur among the training rows (by hash of the row's bytes), and a teacher near-perfect on
  its training rows (``MEMORISED_TOP1``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .stats import BOOTSTRAP_RESAMPLES, mcnemar_exact, paired_bootstrap_interval, wilson_interval

__all__ = ["FEW_CLASS_ROWS", "MEMORISED_TOP1", "SMALL_VALIDATION_ROWS", "compare", "data_warnings", "error_bars",
           "gain_sentence", "overlap_count", "teacher_warning", "top1_interval"]

SMALL_VALIDATION_ROWS = 500  # at 90% top-1, 500 rows give a Wilson interval of about ±2.6 points; 40 rows ±10
FEW_CLASS_ROWS = 10  # a class top-1 from fewer rows moves by 10 points or more per row
MEMORISED_TOP1 = 0.99  # teacher top-1 on its training rows at or above this: its soft labels are close to the labels


def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def top1_interval(correct: np.ndarray | None) -> list[float] | None:
    """Wilson 95% interval ``[low, high]`` (fractions, 4 decimals) of the top-1 given by a per-row correctness vector
    ``[N]``; None for None or N = 0."""
    if correct is None or len(correct) == 0:
        return None
    ci = wilson_interval(int(np.count_nonzero(correct)), len(correct))
    return [_r(ci[0]), _r(ci[1])] if ci else None


def compare(a_correct: np.ndarray, b_correct: np.ndarray, a: str, b: str, seed: int) -> dict[str, Any] | None:
    """A ``Comparison`` (JSON) of two models on the same rows (correctness vectors ``[N]``): difference of top-1
    ``a - b`` and its paired bootstrap 95% interval (``BOOTSTRAP_RESAMPLES`` resamples, ``seed``) in points, the exact
    McNemar test and the verdict ('no measurable difference' when the interval covers 0). None when N = 0. Raises
    ``ValueError`` for vectors of different lengths."""
    interval = paired_bootstrap_interval(a_correct, b_correct, seed=seed)
    if interval is None:
        return None
    mc = mcnemar_exact(a_correct, b_correct)
    diff = (np.count_nonzero(a_correct) - np.count_nonzero(b_correct)) / len(a_correct)
    low, high = interval
    verdict = "a better" if low > 0 else "b better" if high < 0 else "no measurable difference"
    return {"a": a, "b": b, "rows": len(a_correct), "difference_points": _r(100 * diff, 2),
            "interval_points": [_r(100 * low, 2), _r(100 * high, 2)], "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "bootstrap_seed": seed, "a_only": mc.a_only, "b_only": mc.b_only, "mcnemar_p": float(f"{mc.p_value:.3g}"),
            "verdict": verdict}


def error_bars(*, teacher: np.ndarray | None, student: np.ndarray | None, alone: np.ndarray | None,
               seed: int) -> dict[str, Any]:
    """Error bars of a classification report from per-row correctness vectors ``[N]`` on the labelled validation rows
    (teacher, distilled student, student trained alone; None where absent): ``{'teacher', 'student', 'alone'}``
    Wilson intervals (``top1_interval``) and ``'comparisons'`` {'teacher_vs_student', 'distilled_vs_alone'} (only
    those measurable; None when none is)."""
    comparisons: dict[str, Any] = {}
    if teacher is not None and student is not None and len(student):
        comparisons["teacher_vs_student"] = compare(teacher, student, "teacher", "distilled student", seed)
    if alone is not None and student is not None and len(student):
        comparisons["distilled_vs_alone"] = compare(student, alone, "distilled student", "student alone", seed)
    return {"teacher": top1_interval(teacher), "student": top1_interval(student), "alone": top1_interval(alone),
            "comparisons": comparisons or None}


def gain_sentence(distilled: float | None, alone: float | None, comparison: dict[str, Any] | None) -> str:
    """The summary's sentence on distillation vs the student trained alone (top-1 fractions), from the
    'distilled_vs_alone' ``comparison``: 'helped'/'did not help' only when its 95% interval excludes 0, else 'no
    measurable difference' with the interval and McNemar p. Empty when not measured."""
    if distilled is None or alone is None or comparison is None:
        return ""
    gain, (low, high), p = comparison["difference_points"], comparison["interval_points"], comparison["mcnemar_p"]
    bars = f"95% interval [{low:+.2f}, {high:+.2f}] points, McNemar p = {p:.2g}, {comparison['rows']:,} validation rows"
    if comparison["verdict"] == "a better":
        return (f" Distillation helped: the distilled student's top-1 ({distilled:.1%}) is {gain:.2f} points above the same "
                f"student trained alone ({alone:.1%}; {bars}).")
    if comparison["verdict"] == "b better":
        return (f" Distillation did not help: the same student trained alone reached {alone:.1%} top-1, {-gain:.2f} points "
                f"above the distilled student's {distilled:.1%} ({bars}).")
    return (f" No measurable difference between the distilled student ({distilled:.1%}) and the same student trained "
            f"alone ({alone:.1%}): {gain:+.2f} points, {bars}.")


def _hashes(x: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


def overlap_count(rows: np.ndarray, others: np.ndarray) -> int:
    """How many of ``rows`` ``[N, ...]`` also occur (byte for byte, hashed with BLAKE2b) among ``others`` ``[M, ...]``
    (same dtype and sample shape)."""
    if len(rows) == 0 or len(others) == 0:
        return 0
    seen = set(_hashes(others))
    return sum(h in seen for h in _hashes(rows))


def data_warnings(*, train_x: np.ndarray, train_y: np.ndarray, transfer_rows: int, val_x: np.ndarray, val_y: np.ndarray,
                  validation_file: bool, student_correct: np.ndarray | None) -> list[dict[str, Any]]:
    """``ReportWarning`` JSON about a tensor job's data: ``train_x [N, ...]`` / ``train_y [N]`` (the last
    ``transfer_rows`` being the unlabelled transfer set), ``val_x`` / ``val_y`` (-1 = unlabelled), whether the
    validation rows came from a file, and the student's per-row correctness (for the interval a small split implies).
    Codes: small_validation, few_validation_rows_per_class, validation_overlaps_training, transfer_overlaps_training,
    transfer_overlaps_validation."""
    out: list[dict[str, Any]] = []
    labelled = val_y >= 0
    n_val = int(labelled.sum())
    if 0 < n_val < SMALL_VALIDATION_ROWS:
        k = int(np.count_nonzero(student_correct)) if student_correct is not None else int(round(0.9 * n_val))
        low, high = wilson_interval(k, n_val)
        out.append({"code": "small_validation", "param": "data.validation",
                    "message": f"the validation split has {n_val} labelled rows (under {SMALL_VALIDATION_ROWS}): a top-1 of "
                               f"{k / n_val:.1%} measured on it has a 95% interval of [{low:.1%}, {high:.1%}], "
                               f"±{50 * (high - low):.1f} points; smaller differences cannot be told apart. Hold out more "
                               "rows (data.validation.fraction) or give a larger validation file"})
    if n_val:
        classes = np.unique(np.concatenate([train_y[train_y >= 0], val_y[labelled]]))
        counts = {int(c): int((val_y == c).sum()) for c in classes}
        few = {c: n for c, n in counts.items() if n < FEW_CLASS_ROWS}
        if few:
            listed = ", ".join(f"class {c}: {n}" for c, n in sorted(few.items())[:10]) + (", …" if len(few) > 10 else "")
            out.append({"code": "few_validation_rows_per_class", "param": "data.validation",
                        "message": f"{len(few)} class(es) have fewer than {FEW_CLASS_ROWS} validation rows ({listed}): their "
                                   "per-class top-1 rests on a handful of rows and moves by 10 points or more per row"})
    n_own = len(train_x) - transfer_rows
    own, transfer = train_x[:n_own], train_x[n_own:]
    dup = overlap_count(val_x, own)
    if dup:
        where = "validation file" if validation_file else "validation split"
        out.append({"code": "validation_overlaps_training", "param": "data.validation",
                    "message": f"{dup} of the {len(val_x)} rows of the {where} also occur among the training rows: the "
                               "validation top-1 is optimistic on them (remove the duplicates)"})
    if transfer_rows:
        dup_t = overlap_count(transfer, own)
        if dup_t:
            out.append({"code": "transfer_overlaps_training", "param": "data.transfer",
                        "message": f"{dup_t} of the {transfer_rows} transfer-set rows also occur among the training rows: "
                                   "they add no new inputs and weigh those rows twice"})
        dup_v = overlap_count(transfer, val_x)
        if dup_v:
            out.append({"code": "transfer_overlaps_validation", "param": "data.transfer",
                        "message": f"{dup_v} of the {transfer_rows} transfer-set rows also occur among the validation rows: "
                                   "the student was fitted to the teacher's outputs on them, so its validation top-1 is "
                                   "optimistic"})
    return out


def teacher_warning(train_top1: float | None, rows: int, val_top1: float | None) -> dict[str, Any] | None:
    """``ReportWarning`` JSON (code teacher_memorised_training) when the teacher's top-1 on ``rows`` labelled training
    rows (``train_top1``, fraction) is at least ``MEMORISED_TOP1``: it has memorised them, so its soft labels there
    carry little beyond the labels (a transfer set of unseen rows, or a higher temperature, gives the student more).
    None otherwise."""
    if train_top1 is None or rows == 0 or train_top1 < MEMORISED_TOP1:
        return None
    val = f" against {val_top1:.1%} on the validation rows" if val_top1 is not None else ""
    return {"code": "teacher_memorised_training", "param": "data.transfer",
            "message": f"the teacher is near-perfect on the training rows ({train_top1:.2%} top-1 on {rows:,} labelled rows"
                       f"{val}): it fits them almost perfectly (memorised), so its soft labels on them carry little beyond the labels; "
                       "an unlabelled transfer set of rows it was not trained on gives the student more to learn from"}
