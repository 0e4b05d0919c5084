"""Make the demo teacher: a CNN trained on scikit-learn's 8x8 digits, saved as safetensors with
stillhouse's architecture metadata (so the job spec needs no teacher architecture).

The teacher is trained only on the rows that the job's default validation split (fraction 0.2,
seed 0) keeps for training, so its validation top-1 in the report is honest.

    python demo/make_teacher.py [OUT]        # default demo/out/teacher.safetensors
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from distill.data import load_builtin, split_validation
from distill.teacher_training import save_model, train_classifier

ARCH = {"name": "cnn", "kwargs": {"channels": [64, 128], "kernel_size": 3, "hidden": 256}}


def main(out: Path) -> None:
    """Train and save the teacher to ``out``; prints its validation top-1, parameters and bytes."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    x, y, _ = load_builtin("digits")
    tr, va = split_validation(y, 0.2, seed=0)
    model = train_classifier(ARCH, x[tr], y[tr], epochs=15, seed=0)
    with torch.inference_mode():
        acc = (model(torch.as_tensor(x[va])).argmax(1) == torch.as_tensor(y[va])).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    size = save_model(model, model.stillhouse_architecture, out)
    params = sum(p.numel() for p in model.parameters())
    print(f"demo teacher: cnn {ARCH['kwargs']['channels']} on digits, validation top-1 {100 * acc:.2f}%, "
          f"{params:,} parameters, {size:,} bytes, trained in {time.perf_counter() - t0:.1f} s -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out" / "teacher.safetensors")
