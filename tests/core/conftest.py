"""Shared fixtures of the distillation-core tests: one small CNN teacher trained on digits per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.distill import FileInput
from worker.distill.data import load_builtin, split_validation
from worker.distill.teacher_training import save_model, train_classifier

torch.set_num_threads(1)

TEACHER_ARCH = {"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64}}


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    """digits X [N,1,8,8] / y [N] and the default (fraction 0.2, seed 0) split indices."""
    x, y, _ = load_builtin("digits")
    tr, va = split_validation(y, 0.2, 0)
    return {"x": x, "y": y, "train_idx": tr, "val_idx": va}


@pytest.fixture(scope="session")
def teacher_model(digits: dict[str, np.ndarray]) -> torch.nn.Module:
    """A small digits CNN teacher (channels [16, 32], hidden 64) trained for 8 epochs on the training split."""
    tr = digits["train_idx"]
    return train_classifier(TEACHER_ARCH, digits["x"][tr], digits["y"][tr], epochs=8, seed=0, lr=3e-3)


@pytest.fixture(scope="session")
def teacher_file(teacher_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> FileInput:
    """The teacher as safetensors with stillhouse architecture metadata."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    size = save_model(teacher_model, teacher_model.stillhouse_architecture, path)
    return FileInput(path, "safetensors", size)
