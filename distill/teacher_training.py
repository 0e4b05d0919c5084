"""Plain supervised training of a classifier from the registry, and saving it as a stillhouse safetensors file.

Used by the demo and the tests to make a teacher (e.g. a ``cnn`` on ``digits``); not part of a KD job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DistillError
from .formats import ARCH_METADATA_KEY
from .models import build, describe
from .spec import ArchitectureSpec


def _as_tensor(a: Any, dtype: torch.dtype) -> torch.Tensor:
    return a.to(dtype) if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a), dtype=dtype)


def filled_architecture(arch: ArchitectureSpec | dict[str, Any], input_shape: list[int] | None = None,
                        num_classes: int | None = None) -> dict[str, Any]:
    """``arch`` as a filled ``{"name", "kwargs"}`` dict, with ``input_shape``/``num_classes`` added when absent.
    Raises ``DistillError('invalid_spec')`` when they are absent and not given."""
    a = arch.model_dump() if isinstance(arch, ArchitectureSpec) else dict(arch)
    kwargs = dict(a.get("kwargs", {}))
    if "input_shape" not in kwargs and input_shape is not None:
        kwargs["input_shape"] = [int(d) for d in input_shape]
    if "num_classes" not in kwargs and num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    return describe(a["name"], kwargs)


def train_classifier(arch: ArchitectureSpec | dict[str, Any], data_x: Any, data_y: Any, epochs: int, seed: int,
                     lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 1e-4) -> nn.Module:
    """Train architecture ``arch`` on ``(data_x [N, *input_shape] float, data_y [N] int labels ≥ 0)`` with
    cross-entropy, AdamW (``lr``, ``weight_decay``), a per-step cosine schedule and shuffled mini-batches of
    ``batch_size``, for ``epochs`` epochs, on the CPU.

    ``input_shape``/``num_classes`` default to ``data_x.shape[1:]`` and ``max(data_y) + 1``. Deterministic for
    a given ``seed``. Returns the model in ``eval()`` mode, with its filled architecture dict attached as
    ``model.stillhouse_architecture``. Raises ``DistillError('invalid_spec')`` for a bad architecture or
    unlabelled data. A digits ``cnn`` with channels [64, 128], hidden 256 reaches ~98-99% validation top-1 in
    15 epochs with lr 2e-3 (measured: 99.4% in about 5 s on one CPU thread).
    """
    x = _as_tensor(data_x, torch.float32)
    y = _as_tensor(data_y, torch.int64)
    if y.numel() == 0 or int(y.min()) < 0:
        raise DistillError("invalid_spec", "train_classifier needs fully labelled data (labels >= 0)", "data_y")
    filled = filled_architecture(arch, list(x.shape[1:]), int(y.max()) + 1)
    torch.manual_seed(seed)
    model = build(filled["name"], filled["kwargs"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    steps_per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size] if n >= batch_size else perm
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    model.stillhouse_architecture = filled  # type: ignore[attr-defined]
    return model


def save_model(model: nn.Module, arch_spec: ArchitectureSpec | dict[str, Any], path: str | Path) -> int:
    """Write ``model``'s state dict to ``path`` as safetensors with the ``stillhouse.architecture`` metadata
    (JSON ``{"name", "kwargs"}``, filled), so it loads as a teacher without ``teacher.architecture``.

    ``arch_spec`` must include input_shape and num_classes (or be the dict from ``train_classifier``'s
    ``model.stillhouse_architecture``). Returns the file size in bytes. Raises ``DistillError('invalid_spec')``
    for an incomplete architecture.
    """
    from safetensors.torch import save_file

    filled = filled_architecture(arch_spec)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    save_file(tensors, str(path), metadata={ARCH_METADATA_KEY: json.dumps(filled)})
    return path.stat().st_size
