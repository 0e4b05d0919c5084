"""Measurements for the compression report: FLOPs, latency percentiles, device choice."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import DistillError


def resolve_device(name: str) -> torch.device:
    """Map a spec device ('auto' | 'cpu' | 'cuda') to a ``torch.device``.

    'auto' picks CUDA when available, else CPU. Raises ``DistillError('invalid_spec')`` for 'cuda' on a
    worker without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DistillError("invalid_spec", "training.device is 'cuda' but this worker has no CUDA device", "training.device")
    if name not in ("cpu", "cuda"):
        raise DistillError("invalid_spec", f"unknown device {name!r}", "training.device")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU), so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(module: nn.Module, input_shape: list[int], device: torch.device) -> int | None:
    """Forward FLOPs of ``module`` for one sample ``Tensor[1, *input_shape]`` (zeros), counted with
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs; only matmul/conv-like ops
    are counted, elementwise ops are not). Returns None when the module cannot be traced by the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_shape, device=device)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(x)
    except Exception:  # noqa: BLE001 - exotic modules the counter cannot follow
        return None
    return int(counter.get_total_flops())


def latency_ms(fn: Callable[[], object], iterations: int, device: torch.device, warmup: int = 5) -> dict[str, float]:
    """Time ``fn`` (one forward pass) ``iterations`` times after ``warmup`` untimed calls.

    Returns ``{"p50_ms": ..., "p95_ms": ...}``: the median and 95th percentile of per-call wall time in
    milliseconds (CUDA synchronised around every call).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times[i] = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3)}


def module_latency(
    module: nn.Module, input_shape: list[int], batch_size: int, iterations: int, device: torch.device
) -> dict[str, float]:
    """p50/p95 latency in ms of ``module`` (in its current mode, under ``inference_mode``) on a zero batch
    ``Tensor[batch_size, *input_shape]`` on ``device``. See ``latency_ms``."""
    x = torch.zeros(batch_size, *input_shape, device=device)

    def run() -> object:
        with torch.inference_mode():
            return module(x)

    return latency_ms(run, iterations, device)
