"""``method: auto``: pick the method (or none: the student alone) by short candidate trainings on a selection split.

The job (``distill.job``) carves a *selection split* from the labelled training rows (``AUTO_SELECTION_FRACTION``,
stratified, seeded by ``data.validation.seed``; never the reported validation split), trains every candidate of
``candidates()`` on the remaining training rows for ``plan_budget``'s epochs, scores each by its top-1 on the selection
split, and ``choose`` picks the winner: the best selection top-1, provided it beats the student alone at the spec's
learning rate outside the paired-bootstrap noise (Efron & Tibshirani 1993; the 95% interval of the difference must lie
above 0), else that student alone wins (what the job's baseline trains) -- except with few labels (most training rows
unlabelled and a teacher measurably better than the student alone on the selection split), where a tie goes to the
best distilled candidate unless it is measurably worse. When the teacher has memorised the selection rows (its top-1
there at least ``distill.review.MEMORISED_TOP1``: it was trained on them, the usual case, as the selection split is
carved from the training rows), a distilled candidate's selection score is optimistic, so it must beat the student alone
by more than ``MEMORISED_MARGIN_POINTS``. The winner is then retrained on all training rows for the job's full epochs
and reported on the untouched validation split.

Candidates are plain dicts validated through the job spec's ``method`` field (``method_spec``), so they follow the
spec's own method models. The teacher's outputs on the training rows are computed once (the teacher-output cache) and
sliced for the candidates (``slice_rows``): the candidates cost no teacher passes over the training rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .data import DataBundle, split_validation
from .spec import JobSpec, parse_method
from .review import MEMORISED_TOP1
from .stats import paired_bootstrap_interval
from .training import TeacherCache, steps_per_epoch

__all__ = ["AUTO_SELECTION_FRACTION", "CANDIDATE_METHODS", "LR_FACTORS", "ALONE", "Candidate", "Plan", "candidates",
           "method_spec", "plan_budget", "selection_rows", "slice_rows", "choose", "Choice", "fallback_method",
           "FEW_LABELS_UNLABELLED_FRACTION", "MEMORISED_MARGIN_POINTS"]

AUTO_SELECTION_FRACTION = 0.2
"""Fraction of the labelled training rows carved out as the selection split of method 'auto'."""
ALONE = "student_alone"
"""The candidate that trains the student without the teacher (cross-entropy on the labels only)."""
CANDIDATE_METHODS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    (ALONE, None),
    ("kd_t4_a0.9", {"name": "kd", "temperature": 4.0, "alpha": 0.9}),
    ("kd_t2_a0.5", {"name": "kd", "temperature": 2.0, "alpha": 0.5}),
    ("hard_label", {"name": "hard_label"}),
)
"""The documented candidate set (issue 11): the student alone, Hinton KD (Hinton et al. 2015) at T 4 alpha 0.9 and T 2
alpha 0.5, and hard labels (the teacher's argmax; Touvron et al. 2021). ``None``: no teacher."""
LR_FACTORS: tuple[float, ...] = (1.0,)
"""Candidates run at the spec's learning rate times each factor. Only 1: with (1, 3) (issue 11: the learning rate moved
mlp [32] from 0.891 to 0.925 top-1), the 2-epoch candidates of a 30-epoch mnist5k job picked the 3x lr on every seed
(they favour a high lr), and the winner retrained at 3x for 30 epochs scored -2.0 / +1.2 / -0.7 points against the
student alone at the spec's lr with a bare top-1 choice, -1.4 / +1.2 / +0.3 with the noise rule of ``choose`` (``bench/methods_study.py --cases auto
--epochs 30``, seeds 0-2). ``candidates(lr, factors)`` still takes other factors."""


@dataclass(frozen=True)
class Candidate:
    """One candidate: ``name`` (e.g. 'kd_t4_a0.9@lr0.03'), ``method`` (the plain method dict, None for the student
    alone) and ``lr`` (peak learning rate)."""

    name: str
    method: dict[str, Any] | None
    lr: float

    @property
    def alone(self) -> bool:
        """True for the student trained without the teacher."""
        return self.method is None


def candidates(lr: float, factors: tuple[float, ...] = LR_FACTORS) -> list[Candidate]:
    """The candidates at the spec's peak learning rate ``lr`` times each of ``factors``, student alone first."""
    return [Candidate(f"{name}@lr{lr * f:g}", method, lr * f) for f in factors for name, method in CANDIDATE_METHODS]


def method_spec(spec: JobSpec, method: dict[str, Any]) -> Any:
    """``method`` (a plain dict) validated as the job spec's ``method`` field (``distill.spec.parse_method``: its
    per-method model). ``spec``: the job's spec (kept so a later spec-dependent default can be filled). Raises
    ``pydantic.ValidationError`` for an invalid dict."""
    return parse_method(method)


def fallback_method(spec: JobSpec) -> Any:
    """The method a job with ``method: auto`` runs when there is no selection (text tasks, no labels, a budget too
    small): kd T4 alpha 0.9 (the first distilled candidate)."""
    return method_spec(spec, dict(CANDIDATE_METHODS[1][1] or {}))


@dataclass(frozen=True)
class Plan:
    """The selection's budget: ``candidates``, ``epochs`` each, their total ``steps`` and the job's ``job_steps``
    (training.epochs x steps per epoch on all training rows); ``epochs`` 0 means no selection fits (``note`` says why)."""

    candidates: list[Candidate]
    epochs: int
    steps: int
    job_steps: int
    note: str | None = None


def plan_budget(lr: float, epochs: int, batch_size: int, n_train: int, n_rest: int, budget: float) -> Plan:
    """How long each candidate trains so that all of them together take at most ``budget`` (fraction) of the job's
    training steps: ``floor(budget x epochs x spe(n_train) / (candidates x spe(n_rest)))`` epochs each (spe: steps per
    epoch at ``batch_size``, as the trainer counts them, ``n_rest``: training rows left after the selection carve). With
    fewer than one epoch each for ``candidates(lr)``, the candidates at the spec's lr alone; fewer still, no selection."""
    job_steps = epochs * steps_per_epoch(n_train, min(batch_size, n_train))
    spe = steps_per_epoch(n_rest, min(batch_size, n_rest))
    for factors in dict.fromkeys((LR_FACTORS, (1.0,))):
        cands = candidates(lr, factors)
        each = math.floor(budget * job_steps / (len(cands) * spe))
        if each >= 1:
            return Plan(cands, each, each * spe * len(cands), job_steps)
    return Plan([], 0, 0, job_steps, note=f"a selection budget of {budget:g} x {job_steps} steps cannot give "
                f"{len(CANDIDATE_METHODS)} candidates one epoch ({spe} steps) each: ran kd T4 alpha 0.9 without a selection "
                "(raise training.epochs or method.selection_budget)")


def selection_rows(train_y: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, selection)`` row indices of the training rows: ``AUTO_SELECTION_FRACTION`` of the labelled rows carved
    out (``distill.data.split_validation``, stratified when it can be, seeded); unlabelled rows stay in ``rest``."""
    return split_validation(train_y.numpy(), AUTO_SELECTION_FRACTION, seed)


def slice_rows(data: DataBundle, cache: TeacherCache | None, rest: np.ndarray,
               selection: np.ndarray) -> tuple[DataBundle, TeacherCache | None]:
    """The candidates' data: ``data``'s training rows ``rest`` as training rows, ``selection`` as the validation rows
    (the reported validation split is not in it), and the teacher-output cache sliced to ``rest`` (same rows, same
    order, so no teacher pass)."""
    r, s = torch.from_numpy(rest), torch.from_numpy(selection)
    counts = {**data.counts, "train": int(rest.size), "labelled": int((data.train_y[r] >= 0).sum()), "validation": int(selection.size)}
    counts["unlabelled"] = counts["train"] - counts["labelled"]
    sub = replace(data, train_x=data.train_x[r], train_y=data.train_y[r], val_x=data.train_x[s], val_y=data.train_y[s],
                  counts=counts, holdout_x=None, holdout_y=None)
    sliced = None
    if cache is not None:
        rd = r.to(cache.logits.device)
        sliced = TeacherCache(logits=cache.logits[rd], features={k: v[rd] for k, v in cache.features.items()},
                              seconds=0.0, bytes=cache.bytes)
    return sub, sliced


FEW_LABELS_UNLABELLED_FRACTION = 0.5
"""Few-labels regime of ``choose``: at least this fraction of the candidates' training rows has no label (a transfer
set or label -1), so the student alone learns from a minority of the rows the distilled candidates learn from."""


MEMORISED_MARGIN_POINTS = 2.0
"""With a teacher that memorised the selection rows (top-1 >= ``MEMORISED_TOP1`` there), the least a distilled
candidate's paired-bootstrap 95% interval (candidate - student alone, points) must lie above for it to win outright.
The selection split is carved from the training rows, so a teacher trained on them has seen their labels, and a
student distilled from it inherits that: measured on mnist5k (kd T4 alpha 0.9, mlp [64], lr 1e-2, seeds 0-2,
``bench/auto_selection_signals.py``), kd - alone on the 800 selection rows was +2.00 / +2.38 / +2.25 points with the
bench teacher (100% top-1 there) against +1.50 / +0.50 / +1.38 with the same teacher recipe trained without those rows
(97.0% there) at 30 candidate epochs, +1.62 / +1.38 / +1.50 against +0.38 / +0.62 / +0.88 at 9: an inflation of up to
1.9 points; the same kd retrained on all 4,000 rows scored -1.00 / +0.40 / +0.20 points against the student alone on
the 1,000 validation rows neither had seen. Without the margin, those 9- and 30-epoch selections would have returned kd
on every seed (-1.0 points on seed 0)."""


@dataclass(frozen=True)
class Choice:
    """What ``choose`` picked: the ``winner``, ``reason`` (a sentence for the report), ``rule`` ('best' when the best
    candidate is the reference student alone or beat it outside the noise; 'tie_to_alone'; 'memorised_teacher_tie_to_alone';
    'few_labels_tie_to_distilled'),
    ``interval_points`` (paired-bootstrap 95% interval of the compared candidate minus the student alone on the selection
    split, points; None when the student alone is best and the few-labels rule did not apply) and
    ``teacher_vs_alone_points`` (the teacher minus the student alone there, points; None without the teacher's
    correctness) and ``margin_points`` (what the low end of a distilled candidate's interval had to exceed to win
    outright, whichever candidate was best: 0, or ``MEMORISED_MARGIN_POINTS`` with a teacher that memorised the selection
    rows; rule 'memorised_teacher_tie_to_alone' when only that margin kept one from winning)."""

    winner: Candidate
    reason: str
    rule: str
    interval_points: list[float] | None = None
    teacher_vs_alone_points: list[float] | None = None
    margin_points: float = 0.0


def _points(a: np.ndarray, b: np.ndarray, seed: int) -> list[float] | None:
    """Paired-bootstrap 95% interval of top-1(a) - top-1(b) on the same rows, in points (2 decimals); None for no rows."""
    iv = paired_bootstrap_interval(a, b, seed=seed)
    return [round(100 * iv[0], 2), round(100 * iv[1], 2)] if iv is not None else None


def choose(scores: list[tuple[Candidate, np.ndarray]], seed: int, *, teacher_correct: np.ndarray | None = None,
           unlabelled_fraction: float = 0.0) -> Choice:
    """The winner among ``(candidate, per-row correctness on the selection split [S] bool)`` (see ``Choice``).

    The reference is the first student-alone candidate (the student alone at the spec's learning rate: what the job's
    baseline trains). The best selection top-1 (first listed on equal top-1) wins only when it beats the reference
    outside the noise (paired-bootstrap 95% interval above 0; Efron & Tibshirani 1993); otherwise (a tie) the reference
    wins. Measured reason (issue 11, mnist5k, 30 epochs): short candidates favour the 3x learning rate, which then lost
    2 points at the full budget, so any departure from the plain student alone must be clear.

    A teacher that memorised the selection rows (``teacher_correct`` mean at least ``MEMORISED_TOP1``) raises that bar
    for distilled candidates to ``MEMORISED_MARGIN_POINTS`` (their selection scores are optimistic: see that constant);
    a distilled best whose interval lies above 0 but not above the margin is a tie (rule
    'memorised_teacher_tie_to_alone', or the few-labels rule below when it applies).

    One exception, the few-labels regime: when at least ``FEW_LABELS_UNLABELLED_FRACTION`` of the candidates' training
    rows are unlabelled (``unlabelled_fraction``) and the teacher (``teacher_correct``: its correctness on the same
    selection rows) beats the student alone outside the noise, a tie goes to the best distilled candidate instead,
    provided that candidate is not measurably worse than the student alone (its interval does not lie below 0). The
    student alone learns from the labelled minority only; the distilled candidates from every row through a teacher
    shown to be better. Measured reason (issue 11, mnist5k, 200 labels + 3,800 transfer rows, 30 epochs): the selection
    split keeps 40 labelled rows, too few to resolve kd's +12 to +14 points (the tie rule chose the student alone on 2
    of 3 seeds). A teacher no better than the student alone (e.g. an untrained one) keeps the tie with the student alone.
    """
    top = [(c, float(v.mean()) if v.size else 0.0) for c, v in scores]
    best = max(range(len(top)), key=lambda i: (top[i][1], -i))
    ref = next((i for i, (c, _) in enumerate(top) if c.alone), None)
    if ref is None:
        c, t = top[best]
        return Choice(c, f"it had the best selection top-1 ({100 * t:.1f}%)", "best")
    rn = top[ref][0].name
    pts = _points(scores[best][1], scores[ref][1], seed) if best != ref else None
    teacher_pts = _points(teacher_correct, scores[ref][1], seed) if teacher_correct is not None else None
    teacher_top1 = float(teacher_correct.mean()) if teacher_correct is not None and teacher_correct.size else None
    memorised = teacher_top1 is not None and teacher_top1 >= MEMORISED_TOP1
    bar = MEMORISED_MARGIN_POINTS if memorised else 0.0  # what a distilled candidate must clear (reported)
    margin = 0.0 if top[best][0].alone else bar
    if pts is not None and pts[0] > margin:
        bn, diff = top[best][0].name, 100 * (top[best][1] - top[ref][1])
        above = f"above the {margin:g}-point margin for a teacher that memorised the selection rows" if margin else "outside the noise"
        return Choice(top[best][0], f"{bn} beat the student alone ({rn}) by {diff:+.1f} points on the selection split, 95% "
                                    f"paired-bootstrap interval [{pts[0]:+.1f}, {pts[1]:+.1f}] {above}", "best", pts,
                      teacher_pts, bar)
    few = _few_labels(scores, top, ref, seed, teacher_pts, unlabelled_fraction)
    if few is not None:
        return replace(few, margin_points=bar)
    if margin and pts is not None and pts[0] > 0:
        bn, diff = top[best][0].name, 100 * (top[best][1] - top[ref][1])
        return Choice(top[ref][0], f"a tie goes to the student alone: the best candidate, {bn}, scored {diff:+.1f} points over "
                                   f"{rn} on the selection split (95% paired-bootstrap interval [{pts[0]:+.1f}, {pts[1]:+.1f}]), "
                                   f"but the teacher is {teacher_top1:.1%} on those rows (it was trained on them), which "
                                   f"inflates a distilled candidate's score there, and the interval does not clear the "
                                   f"{margin:g}-point margin that allows for it", "memorised_teacher_tie_to_alone", pts,
                      teacher_pts, bar)
    if best == ref:
        c, t = top[best]
        return Choice(c, f"the student alone had the best selection top-1 ({c.name}, {100 * t:.1f}%): the teacher did not "
                         "help here", "best", None, teacher_pts, bar)
    bn, diff = top[best][0].name, 100 * (top[best][1] - top[ref][1])
    lo, hi = pts if pts is not None else (diff, diff)
    return Choice(top[ref][0], f"a tie goes to the student alone: the best candidate, {bn}, scored {diff:+.1f} points over "
                               f"{rn} on the selection split, within the noise (95% paired-bootstrap interval [{lo:+.1f}, "
                               f"{hi:+.1f}] covers 0)", "tie_to_alone", pts, teacher_pts, bar)


def _few_labels(scores: list[tuple[Candidate, np.ndarray]], top: list[tuple[Candidate, float]], ref: int, seed: int,
                teacher_pts: list[float] | None, unlabelled_fraction: float) -> Choice | None:
    """``choose``'s few-labels rule: the best distilled candidate when it applies (see ``choose``; ``teacher_pts``: the
    teacher minus the student alone on the selection split, points), else None."""
    distilled = [i for i, (c, _) in enumerate(top) if not c.alone]
    if unlabelled_fraction < FEW_LABELS_UNLABELLED_FRACTION or not distilled:
        return None
    alone = scores[ref][1]
    if teacher_pts is None or teacher_pts[0] <= 0:
        return None
    bd = max(distilled, key=lambda i: (top[i][1], -i))
    pts = _points(scores[bd][1], alone, seed)
    if pts is None or pts[1] < 0:
        return None
    (c, t), (rc, rt), n = top[bd], top[ref], len(alone)
    return Choice(c, f"few labels: {unlabelled_fraction:.0%} of the candidates' training rows are unlabelled, which only "
                     f"the teacher's outputs use, and the teacher beat the student alone on the selection split ({n} labelled "
                     f"rows) by 95% interval [{teacher_pts[0]:+.1f}, {teacher_pts[1]:+.1f}] points; {c.name} "
                     f"({100 * t:.1f}%) vs {rc.name} ({100 * rt:.1f}%), [{pts[0]:+.1f}, {pts[1]:+.1f}] points, is within "
                     "what so few rows can resolve and not measurably worse, so the tie goes to the distilled candidate",
                  "few_labels_tie_to_distilled", pts, teacher_pts)
