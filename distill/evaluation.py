"""Evaluation of a finished student against its teacher on the validation data: top-1, agreement, mean KL,
parameters, FLOPs and latency (the report's parts and summary are built from these by ``distill.report_builders``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import DataBundle
from .training.tensor import batched_logits
from .measure import count_flops, module_latency
from .models import parameter_count
from .report_builders import rnd
from .shared_cache import TeacherProfile
from .teachers import Teacher


def evaluate(teacher: Teacher, student: nn.Module, data: DataBundle, device: torch.device, latency_batch_sizes: list[int],
             latency_iterations: int, teacher_measured: TeacherProfile | None = None) -> dict[str, Any]:
    """Validation comparison of ``teacher`` and ``student`` (eval mode) on ``data.val_x`` / ``val_y``.

    Returns {'teacher': {...}, 'student': {...}, 'agreement', 'mean_kl', 'extra', 'val_correct'}: 'extra' is
    ``classification_metrics`` (top-5, per-class accuracy, ECE, teacher-student confusion); per model 'val_top1' (fraction, None
    without validation labels), 'parameters', 'flops_per_sample' (FlopCounterMode, batch of 1; None when not
    countable) and 'latency_ms' {str(batch): {'p50', 'p95'}} in milliseconds on ``device``; 'agreement' is the
    fraction of validation samples where both argmaxes agree; 'mean_kl' is KL(teacher ‖ student) at T=1 in nats,
    batchmean; 'val_correct' {'teacher', 'student'}: numpy bool ``[N_labelled]`` per labelled validation row (in order),
    whether the model's argmax is the label (None each without validation labels), for the report's error bars.
    ``teacher_measured`` (``distill.shared_cache.teacher_profile``, for the same validation data, batch sizes
    and iterations): the teacher's validation logits, FLOPs and latency measured once per teacher, used instead of
    running and timing the teacher again.
    """
    student.eval()
    vx = data.val_x.to(device)
    vy = data.val_y.to(device)
    with torch.inference_mode():
        t_logits = teacher_measured.val_logits.to(device) if teacher_measured is not None else batched_logits(teacher, vx)
        s_logits = batched_logits(student, vx)
        t_pred, s_pred = t_logits.argmax(1), s_logits.argmax(1)
        agreement = float((t_pred == s_pred).float().mean())
        mean_kl = float(F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), log_target=True, reduction="batchmean"))
        mask = vy >= 0
        labelled = bool(mask.any())
        t_top1 = float((t_pred[mask] == vy[mask]).float().mean()) if labelled else None
        s_top1 = float((s_pred[mask] == vy[mask]).float().mean()) if labelled else None
        correct = {who: (pred[mask] == vy[mask]).cpu().numpy() if labelled else None
                   for who, pred in (("teacher", t_pred), ("student", s_pred))}
    shape = list(data.input_shape)
    t_lat, s_lat = {}, {}
    for b in latency_batch_sizes:
        if teacher_measured is not None and str(b) in teacher_measured.latency_ms:
            t_lat[str(b)] = dict(teacher_measured.latency_ms[str(b)])
        else:
            t = teacher.latency(b, latency_iterations)
            t_lat[str(b)] = {"p50": rnd(t["p50_ms"]), "p95": rnd(t["p95_ms"])}
        s = module_latency(student, shape, b, latency_iterations, device)
        s_lat[str(b)] = {"p50": rnd(s["p50_ms"]), "p95": rnd(s["p95_ms"])}
    extra = classification_metrics(t_logits.float().cpu(), s_logits.float().cpu(), vy.cpu())
    return {
        "extra": extra,
        "teacher": {"val_top1": rnd(t_top1), "parameters": teacher.parameters, "latency_ms": t_lat,
                    "flops_per_sample": teacher_measured.flops_per_sample if teacher_measured is not None else teacher.flops_per_sample},
        "student": {"val_top1": rnd(s_top1), "parameters": parameter_count(student),
                    "flops_per_sample": count_flops(student, shape, device), "latency_ms": s_lat},
        "agreement": rnd(agreement), "mean_kl": rnd(mean_kl, 6), "val_correct": correct,
    }


def evaluate_variant(model: nn.Module, data: DataBundle, batch_sizes: list[int], iterations: int) -> dict[str, Any]:
    """Validation top-1 (fraction; None without labels) and CPU latency p50/p95 (ms) per batch size of an extra
    student artifact (e.g. the int8-quantised one), run on the CPU where such models run."""
    cpu = torch.device("cpu")
    model = model.to(cpu).eval()
    with torch.inference_mode():
        pred = batched_logits(model, data.val_x).argmax(1)
    mask = data.val_y >= 0
    top1 = float((pred[mask] == data.val_y[mask]).float().mean()) if bool(mask.any()) else None
    lat = {}
    for b in batch_sizes:
        m = module_latency(model, list(data.input_shape), b, iterations, cpu)
        lat[str(b)] = {"p50": rnd(m["p50_ms"]), "p95": rnd(m["p95_ms"])}
    return {"val_top1": rnd(top1), "latency_ms": lat, "device": "cpu"}


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float | None:
    """Fraction of labelled rows (``labels >= 0``) whose label is among the ``k`` largest of ``logits [N, K]``; None without labels."""
    mask = labels >= 0
    if not bool(mask.any()):
        return None
    top = logits[mask].topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[mask].unsqueeze(1)).any(dim=1).float().mean())


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float | None:
    """Expected calibration error (Naeini et al. 2015; the 15-bin form of Guo et al. 2017): the sample-weighted mean
    over equal-width confidence bins of |accuracy − mean confidence|, on labelled rows of ``logits [N, K]``. A fraction
    in [0, 1]; None without labels."""
    mask = labels >= 0
    if not bool(mask.any()):
        return None
    probs = logits[mask].softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels[mask]).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if bool(inside.any()):
            ece += inside.float().mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(ece)


def classification_metrics(t_logits: torch.Tensor, s_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Report block comparing teacher and student on validation data (``t_logits``/``s_logits`` ``[N, K]``, ``labels [N]``,
    -1 = unlabelled):

    - ``top5`` {teacher, student}: top-5 accuracy, only when K >= 10 (else None);
    - ``per_class_top1`` {teacher: [K], student: [K]}: top-1 per true class (None for a class without rows);
    - ``ece`` {teacher, student}: expected calibration error (15 bins);
    - ``teacher_student_confusion``: [K][K] counts of (teacher prediction, student prediction) on all rows, and
      ``disagreements_top`` the five most frequent off-diagonal pairs {teacher_class, student_class, count}.
    """
    k = t_logits.shape[1]
    t_pred, s_pred = t_logits.argmax(1), s_logits.argmax(1)
    per_class: dict[str, list[float | None]] = {"teacher": [], "student": []}
    for c in range(k):
        rows = labels == c
        for who, pred in (("teacher", t_pred), ("student", s_pred)):
            per_class[who].append(rnd(float((pred[rows] == c).float().mean())) if bool(rows.any()) else None)
    confusion = torch.zeros((k, k), dtype=torch.long)
    confusion.index_put_((t_pred, s_pred), torch.ones_like(t_pred), accumulate=True)
    off = [(int(confusion[i, j]), i, j) for i in range(k) for j in range(k) if i != j and confusion[i, j] > 0]
    off.sort(reverse=True)
    has_labels = bool((labels >= 0).any())
    return {
        "top5": {"teacher": rnd(top_k_accuracy(t_logits, labels, 5)), "student": rnd(top_k_accuracy(s_logits, labels, 5))}
        if k >= 10 and has_labels else None,
        "per_class_top1": per_class if has_labels else None,
        "ece": {"teacher": rnd(expected_calibration_error(t_logits, labels)), "student": rnd(expected_calibration_error(s_logits, labels))}
        if has_labels else None,
        "teacher_student_confusion": confusion.tolist(),
        "disagreements_top": [{"teacher_class": i, "student_class": j, "count": n} for n, i, j in off[:5]],
    }
