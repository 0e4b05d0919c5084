"""The top-k teacher cache for language models: the teacher runs once over the training rows, and every later epoch
reads its top-k next-token distributions instead of running it again.

For each training row's target tokens (in row order, positions ascending: the order ``losses.targets`` selects), the
cache keeps ``k`` log-probabilities (float16), their token ids (int32) and the log of the remaining mass (float32) —
``losses.cache_bytes_per_token(k)`` bytes a token instead of the vocabulary's logits. It is stored as one safetensors
file with the settings it was made with (k, temperature, rows, a fingerprint of the rows and the teacher), so that
a resumed job reuses it and a changed job does not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .data import Rows, collate
from .losses import TopK, cache_bytes_per_token, cache_fidelity_kl, full_logits_bytes_per_token, target_logits, topk_from_logits

VALUE_DTYPE = torch.float16
ID_DTYPE = torch.int32


def rows_fingerprint(rows: Rows, extra: dict[str, Any] | None = None) -> str:
    """sha256 (hex) of the rows' token ids and masks and of ``extra`` (settings, the teacher's identity)."""
    h = hashlib.sha256(json.dumps(extra or {}, sort_keys=True).encode())
    for ids, mask in zip(rows.ids, rows.mask):
        h.update(np.int64(len(ids)).tobytes())
        h.update(ids.astype(np.int64).tobytes())
        h.update(mask.astype(np.uint8).tobytes())
    return h.hexdigest()


@dataclass
class TopKCache:
    """Top-k teacher distributions for every target token of a set of rows.

    ``logp`` ``[N, k]`` float16, ``ids`` ``[N, k]`` int32, ``rest`` ``[N]`` float32 for the ``N`` target tokens of
    all rows, row after row; ``offsets`` ``[rows + 1]`` int64: row ``i``'s tokens are ``offsets[i]:offsets[i+1]``.
    ``k``, ``temperature`` and ``fingerprint`` (of the rows and settings it was made for)."""

    logp: torch.Tensor
    ids: torch.Tensor
    rest: torch.Tensor
    offsets: torch.Tensor
    k: int
    temperature: float
    fingerprint: str

    @property
    def tokens(self) -> int:
        """Target tokens held (N)."""
        return int(self.rest.shape[0])

    @property
    def bytes(self) -> int:
        """Bytes of the cached tensors (offsets included)."""
        return int(sum(t.numel() * t.element_size() for t in (self.logp, self.ids, self.rest, self.offsets)))

    def for_rows(self, index: np.ndarray | list[int], device: torch.device | str = "cpu") -> TopK:
        """The ``TopK`` of the target tokens of the rows at ``index`` in that order, matching ``losses.targets`` of a
        batch collated from the same rows in the same order (``[M, k]`` on ``device``, values as float32)."""
        off = self.offsets
        parts = [torch.arange(int(off[i]), int(off[i + 1])) for i in index]
        sel = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return TopK(self.logp[sel].to(device, torch.float32), self.ids[sel].to(device, torch.long), self.rest[sel].to(device))

    def save(self, path: str | Path) -> int:
        """Write the cache as one safetensors file (atomically: a temporary name, then a rename). Returns its bytes."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"logp": self.logp.contiguous(), "ids": self.ids.contiguous(), "rest": self.rest.contiguous(),
                   "offsets": self.offsets.contiguous()}, str(tmp),
                  metadata={"k": str(self.k), "temperature": repr(float(self.temperature)), "fingerprint": self.fingerprint})
        tmp.replace(path)
        return path.stat().st_size

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> "TopKCache | None":
        """The cache stored at ``path``; None when the file is missing, unreadable, or made for another fingerprint."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if fingerprint is not None and meta.get("fingerprint") != fingerprint:
                    return None
                t = {name: f.get_tensor(name) for name in ("logp", "ids", "rest", "offsets")}
            return cls(t["logp"], t["ids"], t["rest"], t["offsets"], int(meta["k"]), float(meta["temperature"]),
                       meta["fingerprint"])
        except Exception:  # noqa: BLE001 - a broken or partial file is rebuilt, never trusted
            return None


def teacher_logits(teacher: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The teacher's logits ``[B, T, V]`` (float32) under ``inference_mode``, no key/value cache kept."""
    with torch.inference_mode():
        return teacher(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits.float()


def teacher_target_logits(teacher: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The teacher's logits at the target positions ``[M, V]`` (float32) under ``inference_mode``
    (``losses.target_logits``: the output layer on those positions only where the model type allows)."""
    with torch.inference_mode():
        return target_logits(teacher, ids, attention_mask, mask)[0].float()


def build_cache(teacher: nn.Module, rows: Rows, *, k: int, temperature: float, pad_id: int, batch_size: int = 8,
                device: torch.device | str = "cpu", fingerprint: str = "",
                progress: Callable[[int, int], None] | None = None) -> TopKCache:
    """Run the teacher once over ``rows`` (length-sorted batches of ``batch_size``) and keep the top-``k`` of its
    next-token distribution at ``temperature`` for every target token. ``progress(rows_done, rows_total)`` is called
    after each batch. Returns the cache on the CPU."""
    n = len(rows)
    counts = np.array([int(m[1:].sum()) for m in rows.mask], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    logp = torch.empty((total, k), dtype=VALUE_DTYPE)
    ids_out = torch.empty((total, k), dtype=ID_DTYPE)
    rest = torch.empty((total,), dtype=torch.float32)
    order = np.argsort(rows.lengths, kind="stable")
    done = 0
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        ids, att, tgt = collate(rows, index, pad_id, device)
        logits = teacher_target_logits(teacher, ids, att, tgt)
        top = topk_from_logits(logits, k, temperature)
        pos = 0
        for i in index:
            c = int(counts[i])
            a = int(offsets[i])
            logp[a:a + c] = top.logp[pos:pos + c].to("cpu", VALUE_DTYPE)
            ids_out[a:a + c] = top.ids[pos:pos + c].to("cpu", ID_DTYPE)
            rest[a:a + c] = top.rest[pos:pos + c].to("cpu")
            pos += c
        done += len(index)
        if progress is not None:
            progress(done, n)
    return TopKCache(logp, ids_out, rest, torch.from_numpy(offsets), k, float(temperature), fingerprint)


class FidelityMeter:
    """Accumulates what a top-``k`` cache at ``temperature`` loses on batches of the teacher's selected logits
    ``[M, V]`` (``add``), up to ``max_tokens`` tokens; ``summary()`` gives the figures of ``cache_fidelity``."""

    def __init__(self, k: int, temperature: float, max_tokens: int = 50_000) -> None:
        self.k, self.temperature, self.max_tokens = k, temperature, max_tokens
        self.kls: list[torch.Tensor] = []
        self.rest_mass: list[torch.Tensor] = []
        self.seen, self.vocab = 0, None

    def add(self, logits: torch.Tensor) -> None:
        """Measure one batch (ignored once ``max_tokens`` were measured)."""
        if self.seen >= self.max_tokens:
            return
        self.vocab = logits.shape[-1]
        self.kls.append(cache_fidelity_kl(logits, self.k, self.temperature).cpu())
        self.rest_mass.append(topk_from_logits(logits, self.k, self.temperature).rest.exp().cpu())
        self.seen += logits.shape[0]

    def summary(self) -> dict[str, Any]:
        """``{k, tokens, kl_mean_nats, kl_p95_nats, rest_mass_mean, bytes_per_token, full_logits_bytes_per_token}``."""
        kl = torch.cat(self.kls) if self.kls else torch.zeros(0)
        mass = torch.cat(self.rest_mass) if self.rest_mass else torch.zeros(0)
        return {
            "k": self.k,
            "tokens": int(kl.numel()),
            "kl_mean_nats": float(kl.mean()) if kl.numel() else None,
            "kl_p95_nats": float(kl.quantile(0.95)) if kl.numel() else None,
            "rest_mass_mean": float(mass.mean()) if mass.numel() else None,
            "bytes_per_token": cache_bytes_per_token(self.k),
            "full_logits_bytes_per_token": full_logits_bytes_per_token(self.vocab) if self.vocab else None,
        }


def cache_fidelity(teacher: nn.Module, rows: Rows, *, k: int, temperature: float, pad_id: int, batch_size: int = 8,
                   device: torch.device | str = "cpu", max_tokens: int = 50_000) -> dict[str, Any]:
    """What the top-``k`` cache loses, measured on (validation) ``rows``: the mean and 95th percentile over target
    tokens of ``KL(p ‖ p̂)`` in nats between the teacher's full distribution and the cache's reconstruction
    (``losses.cache_fidelity_kl``), the mean mass outside the top k, and the bytes per token of the cache against
    float16 full-vocabulary logits. At most ``max_tokens`` tokens are measured (rows in order)."""
    meter = FidelityMeter(k, temperature, max_tokens)
    for start in range(0, len(rows), batch_size):
        index = list(range(start, min(start + batch_size, len(rows))))
        ids, att, tgt = collate(rows, index, pad_id, device)
        logits = teacher_target_logits(teacher, ids, att, tgt)
        meter.add(logits)
        if meter.seen >= max_tokens:
            break
    return meter.summary()


__all__ = ["FidelityMeter", "TopKCache", "build_cache", "cache_fidelity", "rows_fingerprint", "teacher_logits", "teacher_target_logits"]
