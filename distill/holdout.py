"""The held-out validation split of a job scored on a selection split (``data.selection``, sweep trials): teacher and
student evaluated on it once, at the end, with 95% Wilson score intervals of top-1 (Wilson 1927)."""

from __future__ import annotations

from typing import Any

import torch
from scipy.stats import binomtest
from torch import nn

from .data import DataBundle
from .report_builders import rnd
from .shared_cache import SharedCache, shared_teacher_logits
from .teachers import Teacher
from .training.tensor import batched_logits


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """[low, high] of a proportion ``correct / n`` (Wilson score interval, Wilson 1927; scipy's binomtest); None for n = 0."""
    if n <= 0:
        return None
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [rnd(float(ci.low)), rnd(float(ci.high))]


def holdout_block(teacher: Teacher, student: nn.Module, data: DataBundle, device: torch.device, *,
                  tkey: str = "", shared: SharedCache | None = None) -> dict[str, Any] | None:
    """The report's 'holdout' block for ``data.holdout_x [N, ...]`` / ``holdout_y [N]`` (None when the job has no
    held-out split): rows, student and teacher top-1 (fractions) with their 95% intervals, and agreement. The teacher's
    logits come from ``shared`` when a job of the same teacher stored them (``shared_teacher_logits``)."""
    if data.holdout_x is None or data.holdout_y is None or data.holdout_x.shape[0] == 0:
        return None
    x, y = data.holdout_x.to(device), data.holdout_y.to(device)
    student.eval()
    with torch.inference_mode():
        s_pred = batched_logits(student, x).argmax(1)
    t_logits = shared_teacher_logits(teacher, tkey, x, shared) if shared is not None else None
    if t_logits is None:
        with torch.inference_mode():
            t_logits = batched_logits(teacher, x)
    t_pred = t_logits.to(device).argmax(1)
    mask = y >= 0
    n = int(mask.sum())
    s_ok, t_ok = int((s_pred[mask] == y[mask]).sum()), int((t_pred[mask] == y[mask]).sum())
    return {"rows": n, "student_val_top1": rnd(s_ok / n) if n else None, "student_interval95": wilson_interval(s_ok, n),
            "teacher_val_top1": rnd(t_ok / n) if n else None, "teacher_interval95": wilson_interval(t_ok, n),
            "agreement": rnd(float((s_pred == t_pred).float().mean()))}
