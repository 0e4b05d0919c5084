"""What one teacher gives every job and sweep trial that uses it, computed once and kept in a shared cache.

Entries per teacher (its file's sha256, format and architecture make the ``teacher_key``):

- the **profile** (``teacher_profile``): forward FLOPs per sample, p50/p95 latency (ms) at each batch size on the
  worker's device and thread count, and the teacher's validation logits ``[N_val, K]`` (its top-1 and the agreement
  are computed from them), keyed further by the sha256 of the validation tensor. A job used to re-measure the
  teacher's latency at every evaluation (batch 64 × 50 iterations: most of a small job's evaluation time);
- the **layout decision** (``teacher_layout``): whether the teacher runs in the channels-last memory layout, the
  outcome of ``Teacher.use_channels_last``'s check (two teacher passes over a training batch) on this device and
  thread count, keyed further by the sha256 of that batch;
- the **training outputs** (``shared_teacher_outputs``): logits ``[N, K]`` and the features the method reads, for
  every training row, keyed further by the sha256 of the training tensor (so the preprocessing and the split are in
  the key), the layers and the device type. Across a sweep the teacher then runs over the training data once.

The cache itself is any ``SharedCache`` (``DirCache``: a local folder; the service puts it in its artifact store).
Entries are written whole (temp file + rename) and are pure functions of their key, so two writers racing are
harmless; ``SharedCache.lock`` lets the first of several concurrent trials compute while the others wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from safetensors.torch import load_file, save_file

from .report_builders import rnd
from .teachers import Teacher
from .training.tensor import batched_logits, teacher_outputs

__all__ = ["SharedCache", "DirCache", "TeacherProfile", "teacher_key", "tensor_sha256", "teacher_profile", "shared_teacher_logits",
           "shared_teacher_outputs", "teacher_layout", "outputs_key", "profile_key"]


class SharedCache(Protocol):
    """A key → file store shared by every job of the service (keys are ``/``-separated, e.g.
    ``teachers/<sha>/profile-<sha>.json``)."""

    def load(self, key: str) -> Path | None:
        """A local path holding entry ``key`` (read it, do not modify it), or None when there is none."""

    def save(self, src: Path, key: str) -> None:
        """Store the file ``src`` as entry ``key`` (replacing one already there)."""

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Hold a lock named ``key`` for the block (best effort: at worst two holders compute the same entry)."""

    def busy(self, key: str) -> bool:
        """True when another holder has the lock named ``key`` right now (a peek, for ordering work: by the time the
        caller acts it may have changed)."""


class DirCache:
    """``SharedCache`` as a local folder ``root`` (the embedded default, tests and benchmarks); locks are ``flock`` on
    files under ``root/.locks``, so they hold between the processes of one machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"cache key {key!r} leaves the cache folder")
        return p

    def load(self, key: str) -> Path | None:
        """The entry's path, None when missing."""
        p = self._path(key)
        return p if p.is_file() else None

    def save(self, src: Path, key: str) -> None:
        """Copy ``src`` into place through a temp file renamed over the entry."""
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while chunk := inp.read(1024 * 1024):
                    out.write(chunk)
            os.replace(tmp, dst)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _lock_file(self, key: str) -> Path:
        d = self.root / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        return d / hashlib.sha256(key.encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive ``flock`` on ``root/.locks/<sha256(key)>`` for the block."""
        with open(self._lock_file(key), "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def busy(self, key: str) -> bool:
        """True when another process (or another open of the file) holds the ``flock`` of ``key`` now."""
        with open(self._lock_file(key), "a+b") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def teacher_key(teacher_sha256: str, fmt: str, architecture: Any) -> str:
    """sha256 hex naming a teacher: its file's sha256, its format and the architecture it was built with."""
    return _digest({"sha256": teacher_sha256, "format": fmt, "architecture": architecture})


def tensor_sha256(x: torch.Tensor) -> str:
    """sha256 hex of a tensor's dtype, shape and bytes (the data's identity after loading, preprocessing and split)."""
    t = x.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}|{list(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class TeacherProfile:
    """A teacher's measurements on one device and validation tensor: ``flops_per_sample`` (None when not countable),
    ``latency_ms`` ``{str(batch): {'p50', 'p95'}}`` (ms), ``val_logits`` ``[N_val, K]`` float32 on the CPU, and
    ``cached``: True when they were read from the shared cache rather than measured by this job."""

    flops_per_sample: int | None
    latency_ms: dict[str, dict[str, float | None]]
    val_logits: torch.Tensor
    cached: bool


def _measure(teacher: Teacher, val_x: torch.Tensor, device: torch.device, batch_sizes: list[int], iterations: int,
             logits: torch.Tensor | None = None) -> TeacherProfile:
    if logits is None:
        with torch.inference_mode():
            logits = batched_logits(teacher, val_x.to(device)).float().cpu().clone()
    lat = {}
    for b in batch_sizes:
        t = teacher.latency(b, iterations)
        lat[str(b)] = {"p50": rnd(t["p50_ms"]), "p95": rnd(t["p95_ms"])}
    return TeacherProfile(teacher.flops_per_sample, lat, logits, cached=False)


def profile_key(tkey: str, val_x: torch.Tensor, device: torch.device, batch_sizes: list[int], iterations: int) -> str:
    """The cache key of the teacher's profile (``teacher_profile``, its JSON part) for these validation rows, device,
    this process's thread count, batch sizes and timed iterations."""
    pkey = _digest({"device": str(device), "threads": torch.get_num_threads(), "batch_sizes": list(batch_sizes),
                    "iterations": iterations, "val": tensor_sha256(val_x)})
    return f"teachers/{tkey}/profile-{pkey}.json"


def teacher_profile(teacher: Teacher, tkey: str, val_x: torch.Tensor, device: torch.device, batch_sizes: list[int],
                    iterations: int, cache: SharedCache | None) -> TeacherProfile:
    """The teacher's FLOPs, latency at ``batch_sizes`` (``iterations`` timed calls each) and validation logits for
    ``val_x [N_val, ...]``: read from ``cache`` under ``tkey`` when an earlier job of the same teacher, data, device and
    thread count measured them, else measured now (and stored). Without a cache, always measured."""
    if cache is None:
        return _measure(teacher, val_x, device, batch_sizes, iterations)
    meta_key = profile_key(tkey, val_x, device, batch_sizes, iterations)
    logits_key = meta_key.removesuffix(".json") + ".safetensors"
    with cache.lock(meta_key):
        meta_path, logits_path = cache.load(meta_key), cache.load(logits_key)
        if meta_path is not None and logits_path is not None:
            meta = json.loads(meta_path.read_text())
            return TeacherProfile(meta["flops_per_sample"], meta["latency_ms"], load_file(str(logits_path))["val_logits"], cached=True)
        # the validation logits through their own entry, which the job's training passes read too (the agreement)
        prof = _measure(teacher, val_x, device, batch_sizes, iterations, shared_teacher_logits(teacher, tkey, val_x.to(device), cache))
        with tempfile.TemporaryDirectory() as d:
            save_file({"val_logits": prof.val_logits.contiguous()}, str(Path(d) / "l.safetensors"))
            cache.save(Path(d) / "l.safetensors", logits_key)  # the logits first: the JSON marks the entry complete
            (Path(d) / "m.json").write_text(json.dumps({"flops_per_sample": prof.flops_per_sample, "latency_ms": prof.latency_ms,
                                                        "device": str(device), "threads": torch.get_num_threads()}))
            cache.save(Path(d) / "m.json", meta_key)
        return prof


def outputs_key(tkey: str, x: torch.Tensor, layers: list[str]) -> str:
    """The cache key of the teacher's outputs (``shared_teacher_outputs``) on training rows ``x`` for ``layers``."""
    return f"teachers/{tkey}/outputs-{_digest({'train': tensor_sha256(x), 'layers': sorted(layers), 'device': x.device.type})}.safetensors"


def shared_teacher_outputs(teacher: Teacher, tkey: str, x: torch.Tensor, layers: list[str], cache: SharedCache,
                           param: str | None = None, key: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool, str]:
    """The teacher's logits ``[N, K]`` and features ``{layer: [N, ...]}`` for the training rows ``x [N, ...]`` (on
    ``x``'s device), as ``teacher_outputs`` computes them, read from ``cache`` when a job of the same teacher and
    training tensor stored them (the first of several concurrent jobs computes, the others wait on its lock and read).
    ``key``: ``outputs_key(tkey, x, layers)`` when the caller has it. Returns (logits, features, hit, key). Raises what
    ``teacher_outputs`` raises."""
    key = key or outputs_key(tkey, x, layers)
    with cache.lock(key):
        path = cache.load(key)
        if path is not None:
            t = load_file(str(path), device=str(x.device))
            return t.pop("logits"), {k[len("feature/"):]: v for k, v in t.items()}, True, key
        logits, feats = teacher_outputs(teacher, x, layers, param=param)
        with tempfile.TemporaryDirectory() as d:
            tensors = {"logits": logits.detach().contiguous(), **{f"feature/{k}": v.detach().contiguous() for k, v in feats.items()}}
            save_file(tensors, str(Path(d) / "o.safetensors"))
            cache.save(Path(d) / "o.safetensors", key)
        return logits, feats, False, key



def shared_teacher_logits(teacher: Teacher, tkey: str, x: torch.Tensor, cache: SharedCache) -> torch.Tensor:
    """The teacher's logits ``[N, K]`` (float32, CPU) for ``x [N, ...]``, read from ``cache`` when a job of the same
    teacher and tensor stored them, else computed and stored (e.g. the held-out split every sweep trial reports)."""
    key = f"teachers/{tkey}/logits-{_digest({'x': tensor_sha256(x), 'device': x.device.type})}.safetensors"
    with cache.lock(key):
        path = cache.load(key)
        if path is not None:
            return load_file(str(path))["logits"]
        with torch.inference_mode():
            logits = batched_logits(teacher, x).float().cpu().clone()
        with tempfile.TemporaryDirectory() as d:
            save_file({"logits": logits.contiguous()}, str(Path(d) / "l.safetensors"))
            cache.save(Path(d) / "l.safetensors", key)
        return logits


def teacher_layout(teacher: Teacher, tkey: str, sample: torch.Tensor, cache: SharedCache | None) -> str | None:
    """``teacher.use_channels_last(sample)`` (``sample``: a training batch ``[B, C, H, W]`` on the teacher's device),
    its decision read from ``cache`` when a job of the same teacher, batch, device and thread count made it: then the
    teacher is switched (``Teacher.set_channels_last``) without running the check's two teacher passes. Returns the
    report's note (the one the check gave) when the teacher now runs channels-last, else None. The check depends on
    the model and data only (never on a timing), so reading it back gives the job exactly the teacher the check would."""
    if cache is None:
        return teacher.use_channels_last(sample)
    key = f"teachers/{tkey}/layout-{_digest({'sample': tensor_sha256(sample), 'device': str(sample.device), 'threads': torch.get_num_threads()})}.json"
    with cache.lock(key):
        path = cache.load(key)
        if path is not None:
            note = json.loads(path.read_text())["channels_last_note"]
            if note is not None:
                teacher.set_channels_last()
            return note
        note = teacher.use_channels_last(sample)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "layout.json").write_text(json.dumps({"channels_last_note": note}))
            cache.save(Path(d) / "layout.json", key)
        return note
