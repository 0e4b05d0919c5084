"""Evaluation of a finished student against its teacher on the validation data: top-1, agreement, mean KL,
parameters, FLOPs and latency, and the one-sentence summary of a report."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import DataBundle
from .loop import batched_logits
from .measure import count_flops, module_latency
from .models import parameter_count
from .teachers import Teacher


def rnd(x: float | None, digits: int = 4) -> float | None:
    """Round for the report (None and non-finite values become None)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return rnd(a / b, digits)


def evaluate(teacher: Teacher, student: nn.Module, data: DataBundle, device: torch.device, latency_batch_sizes: list[int],
             latency_iterations: int) -> dict[str, Any]:
    """Validation comparison of ``teacher`` and ``student`` (eval mode) on ``data.val_x`` / ``val_y``.

    Returns {'teacher': {...}, 'student': {...}, 'agreement', 'mean_kl'}: per model 'val_top1' (fraction, None
    without validation labels), 'parameters', 'flops_per_sample' (FlopCounterMode, batch of 1; None when not
    countable) and 'latency_ms' {str(batch): {'p50', 'p95'}} in milliseconds on ``device``; 'agreement' is the
    fraction of validation samples where both argmaxes agree; 'mean_kl' is KL(teacher ‖ student) at T=1 in nats,
    batchmean.
    """
    student.eval()
    vx = data.val_x.to(device)
    vy = data.val_y.to(device)
    with torch.inference_mode():
        t_logits = batched_logits(teacher, vx)
        s_logits = batched_logits(student, vx)
        t_pred, s_pred = t_logits.argmax(1), s_logits.argmax(1)
        agreement = float((t_pred == s_pred).float().mean())
        mean_kl = float(F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), log_target=True, reduction="batchmean"))
        mask = vy >= 0
        labelled = bool(mask.any())
        t_top1 = float((t_pred[mask] == vy[mask]).float().mean()) if labelled else None
        s_top1 = float((s_pred[mask] == vy[mask]).float().mean()) if labelled else None
    shape = list(data.input_shape)
    t_lat, s_lat = {}, {}
    for b in latency_batch_sizes:
        t = teacher.latency(b, latency_iterations)
        s = module_latency(student, shape, b, latency_iterations, device)
        t_lat[str(b)] = {"p50": rnd(t["p50_ms"]), "p95": rnd(t["p95_ms"])}
        s_lat[str(b)] = {"p50": rnd(s["p50_ms"]), "p95": rnd(s["p95_ms"])}
    return {
        "teacher": {"val_top1": rnd(t_top1), "parameters": teacher.parameters, "flops_per_sample": teacher.flops_per_sample, "latency_ms": t_lat},
        "student": {"val_top1": rnd(s_top1), "parameters": parameter_count(student),
                    "flops_per_sample": count_flops(student, shape, device), "latency_ms": s_lat},
        "agreement": rnd(agreement), "mean_kl": rnd(mean_kl, 6),
    }


def summary_sentence(report: dict[str, Any]) -> str:
    t, s = report["teacher"], report["student"]
    text = f"The {s['architecture']['name']} student has {s['parameters']:,} parameters vs the teacher's {t['parameters']:,}"
    details = []
    if report["compression_ratio"]:
        details.append(f"{report['compression_ratio']:.1f}x smaller on disk")
    bs = next(iter(report["speedup"]), None)
    sp = report["speedup"].get(bs) if bs is not None else None
    if sp:
        details.append(f"{sp:.1f}x faster at batch {bs}" if sp >= 1 else f"{1 / sp:.2f}x slower at batch {bs}")
    if details:
        text += f" ({', '.join(details)})"
    text += f" and agrees with it on {report['agreement']:.1%} of validation samples"
    drop = report["top1_drop_points"]
    if drop is not None:
        rel = f"{drop:.1f} points below" if drop >= 0 else f"{-drop:.1f} points above"
        text += f"; its validation top-1 is {s['val_top1']:.1%}, {rel} the teacher's {t['val_top1']:.1%}"
    return text + "."

