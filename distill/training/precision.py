"""Device and numeric precision of a training pass, in one place: autocast, gradient scaling, per-device RNG state
and the float32 view of a forward pass's outputs.

Everything the trainer does that depends on the hardware goes through ``Precision``; adapters and methods contain
no device or precision code. This is also where data-parallel training (DDP under ``torchrun``) would plug in:
wrapping the student, sharding each epoch's batches by rank, all-reducing the loss accumulators.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..errors import DistillError


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``torch.bfloat16`` / ``torch.float16`` for 'bf16' / 'fp16', None for 'fp32' (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run: 'fp16' needs CUDA (its gradient scaler and kernels).
    Raises ``DistillError('invalid_spec', param='training.precision')``."""
    if precision == "fp16" and device.type != "cuda":
        raise DistillError("invalid_spec", f"precision 'fp16' needs CUDA but the job runs on {device.type}; use 'bf16' or 'fp32'",
                           "training.precision")


def _as_float32(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, dict):
        return {k: _as_float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_float32(v) for v in obj)
    return obj


class Precision:
    """``training.precision`` on ``device``: 'fp32' (no autocast), 'bf16' (``torch.autocast`` with bfloat16, CPU or
    CUDA) or 'fp16' (CUDA only, with a ``torch.amp.GradScaler``; Micikevicius et al. 2018, "Mixed Precision
    Training"). Only the student's forward pass runs under autocast; losses are computed in float32.
    Raises ``DistillError('invalid_spec')`` for fp16 off CUDA."""

    def __init__(self, precision: str, device: torch.device) -> None:
        check_precision(precision, device)
        self.name = precision
        self.device = device
        self.amp_dtype = autocast_dtype(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the student's forward pass runs in (a no-op for fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def float32(self, outputs: Any) -> Any:
        """``outputs`` (a tensor, or dicts/lists/tuples of them) with every reduced-precision floating tensor cast to
        float32, so losses are computed in float32; returned unchanged under fp32."""
        return outputs if self.amp_dtype is None else _as_float32(outputs)

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Clear the gradients, back-propagate the scalar ``loss`` (scaled under fp16) and take the optimizer step
        (skipped by the scaler when fp16 gradients overflowed)."""
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's state (empty without one), saved in checkpoints."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (a missing scaler state leaves the scaler fresh)."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The global RNG states that dropout draws from: 'cpu', and 'cuda' on a CUDA device (ByteTensors)."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``rng_state()`` output."""
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)
