"""Text data for a job: the training texts (+ unlabelled transfer texts), a validation split, tokenisation
once per job, and length-sorted batches with dynamic padding so CPU time is spent on real tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..data import split_validation
from ..errors import DistillError
from ..formats import FileInput
from ..spec import DataSpec, DatasetRef, FileDataset
from ..text_data import classify_csv, load_rotten_tomatoes, read_text_dataset


@dataclass
class TextBundle:
    """Texts and labels (int64, -1 = unlabelled) for training and validation, label names, row counts."""

    train_texts: list[str]
    train_labels: np.ndarray
    val_texts: list[str]
    val_labels: np.ndarray
    label_names: list[str] | None
    counts: dict[str, int]
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """Max label + 1 over train and validation (None without labels)."""
        ys = np.concatenate([self.train_labels, self.val_labels])
        ys = ys[ys >= 0]
        return int(ys.max()) + 1 if ys.size else None


def _read(ref: DatasetRef, files: Mapping[str, FileInput], text_column: str, param: str, label_names: list[str] | None = None):
    """One text dataset; a CSV without ``text_column`` uses its only non-numeric column (as detected at upload).
    ``label_names``: map string labels onto these ids (the training file's), so train and validation agree."""
    if ref.builtin is not None:
        if ref.builtin != "rotten_tomatoes":
            raise DistillError("invalid_spec", f"{param}: built-in {ref.builtin!r} is not a text dataset; use rotten_tomatoes", param)
        return load_rotten_tomatoes()
    f = files.get(ref.file_id or "")
    if f is None:
        raise DistillError("invalid_spec", f"{param}: file {ref.file_id} is not available to this job", param)
    if f.format not in ("jsonl", "csv"):
        raise DistillError("invalid_spec", f"{param}: text tasks need JSONL or CSV with a text column, got {f.format}", param)
    if f.format == "csv":
        text_column = classify_csv(f.path, ref.label_column, text_column) or text_column
    return read_text_dataset(f.path, f.format, text_column=text_column, label_column=ref.label_column, label_names=label_names)


def load_text_data(spec: DataSpec, files: Mapping[str, FileInput]) -> TextBundle:
    """Read the training texts, hold out ``validation.fraction`` of the labelled ones (stratified, seeded by
    ``validation.seed``; the same ``split_validation`` as tensor data) or read the validation file, and
    append the transfer set's texts unlabelled. Raises DistillError (invalid_spec, invalid_file)."""
    train = _read(spec.train, files, spec.text_column, "data.train")
    labels = np.asarray(train.labels if train.labels is not None else np.full(len(train.texts), -1), dtype=np.int64)
    if spec.validation.file_id:
        val = _read(FileDataset(file_id=spec.validation.file_id, label_column=spec.validation.label_column), files,
                    spec.text_column, "data.validation", label_names=train.label_names)
        tr_idx = np.arange(len(train.texts))
        val_texts = list(val.texts)
        val_labels = np.asarray(val.labels if val.labels is not None else np.full(len(val_texts), -1), dtype=np.int64)
        vdesc = {"file_id": spec.validation.file_id, "rows": len(val_texts)}
    else:
        tr_idx, va_idx = split_validation(labels, spec.validation.fraction, spec.validation.seed)
        val_texts = [train.texts[i] for i in va_idx]
        val_labels = labels[va_idx]
        vdesc = {"fraction": spec.validation.fraction, "seed": spec.validation.seed, "rows": int(va_idx.size)}
    texts = [train.texts[i] for i in tr_idx]
    ys = labels[tr_idx]
    n_transfer = 0
    if spec.transfer is not None:
        tr = _read(spec.transfer, files, spec.text_column, "data.transfer")
        texts += list(tr.texts)
        n_transfer = len(tr.texts)
        ys = np.concatenate([ys, np.full(n_transfer, -1, dtype=np.int64)])
    counts = {"train": len(texts), "labelled": int((ys >= 0).sum()), "unlabelled": int((ys < 0).sum()),
              "transfer": n_transfer, "validation": len(val_texts)}
    return TextBundle(texts, ys, val_texts, val_labels, train.label_names, counts, vdesc)


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text (special tokens added, truncated to ``max_length``, no padding)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_attention_mask=False)
    return enc["input_ids"]


def length_batches(lengths: np.ndarray, batch_size: int, seed: int, *, shuffle: bool = True, pool: int = 50) -> list[np.ndarray]:
    """Index batches of similar length: indices are shuffled (``seed``), cut into pools of ``pool`` batches,
    sorted by length inside each pool, batched, and the batch order shuffled again, so padding is small
    while the order still varies per epoch. Without ``shuffle``: globally length-sorted batches."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    chunk = batch_size * pool
    batches = []
    for i in range(0, n, chunk):
        part = perm[i:i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def collate(ids: list[list[int]], index: np.ndarray, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[B, T]`` (int64) for the texts at ``index``, padded to the batch's longest."""
    rows = [ids[i] for i in index]
    t = max(len(r) for r in rows)
    out = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for k, r in enumerate(rows):
        out[k, :len(r)] = torch.as_tensor(r)
        mask[k, :len(r)] = 1
    return out.to(device), mask.to(device)
