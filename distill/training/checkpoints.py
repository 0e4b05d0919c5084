"""Training checkpoints that survive corruption: the last two good ones are kept, each carries a digest of its own
content, and a checkpoint that cannot be read is reported and skipped in favour of the one before it.

A training pass (the distilled student, the baseline, the prune fine-tune) writes its checkpoints as
``<stem>-epoch<E>-step<S>.pt`` (at an epoch end) and ``<stem>-epoch<E>-step<S>-partial.pt`` (within epoch E + 1, when
the job is handed back), ``E`` being the epochs completed and ``S`` the optimizer steps taken. Every name is new, so
writing one never touches the previous checkpoint: it goes to a temporary file and is renamed into place, then all but the two
newest are deleted. Each file holds a sha256 ``digest`` over its tensors and
values; loading checks it, so a file changed or damaged after it was written (a truncated copy, a flipped bit, which
``torch.load`` itself does not notice in tensor data) is refused rather than resumed from. Files are read with
``torch.load(weights_only=True)`` only. Writes are not ``fsync``-ed (an epoch's checkpoint is written while the next
epoch trains, and a slow flush on a busy disk would leave the newest one unwritten for longer): a file an operating
system crash left incomplete fails its digest, and the previous checkpoint is used instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import first_line
from ..reporter import Reporter
from ..spec import JobSpec

CHECKPOINT_VERSION = 1  # written at epoch ends
PARTIAL_CHECKPOINT_VERSION = 2  # written within an epoch when a job is handed back (``partial`` holds the epoch's state)
KEEP = 2  # good checkpoints kept per training pass
UNREADABLE_SUFFIX = ".unreadable"  # an unreadable checkpoint is renamed so, kept for inspection and never read again


def spec_fingerprint(spec: JobSpec) -> str:
    """sha256 of everything in the spec that changes training (not name, evaluation, export or registry): a checkpoint
    is only resumed by a job with the same fingerprint."""
    payload = spec.model_dump(mode="json", exclude={"name", "evaluation", "export", "registry"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CheckpointUnreadable(Exception):
    """A checkpoint file that cannot be used: ``torch.load`` failed, it is not a checkpoint, or its digest does not
    match its content. The message says which."""


def _cpu_state(obj: Any) -> Any:
    """A snapshot of ``obj`` with every tensor copied to a new CPU tensor (safe to save while training goes on)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_state(v) for v in obj)
    return obj


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{obj!r}".encode())


def state_digest(state: dict[str, Any]) -> str:
    """sha256 (hex) over every entry of a checkpoint ``state`` except 'digest': tensors by dtype, shape and raw bytes,
    other values by ``repr``, dict keys in sorted order, so a state and its ``torch.load`` round trip agree."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any], snapshot_taken: bool = False) -> int:
    """``torch.save`` ``state`` (tensors, numbers, strings, nested dicts/lists only) with its ``digest`` to ``path``
    atomically: write ``path.tmp``, then ``os.replace`` it into place, so a killed writer leaves no partial file under
    the final name. ``snapshot_taken``: ``state`` is already a private CPU copy. Returns the size in bytes.
    Raises ``OSError``."""
    snap = state if snapshot_taken else _cpu_state(state)
    snap = {**snap, "digest": state_digest(snap)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(snap, tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``save_checkpoint``, read with ``torch.load(weights_only=True)`` and checked against its
    digest. Raises ``CheckpointUnreadable`` (and ``FileNotFoundError`` when absent)."""
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the file is unusable
        raise CheckpointUnreadable(f"torch.load failed: {first_line(e)}") from None
    if not isinstance(obj, dict) or "digest" not in obj:
        raise CheckpointUnreadable("it is not a stillhouse training checkpoint (no digest)")
    if state_digest(obj) != obj["digest"]:
        raise CheckpointUnreadable("its content does not match its sha256 digest (changed or damaged after it was written)")
    return obj


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """``read_checkpoint``, or None when the file is absent or unreadable (for callers that only look)."""
    try:
        return read_checkpoint(path)
    except (FileNotFoundError, CheckpointUnreadable):
        return None


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint on disk: ``path``, ``epoch`` (epochs completed), ``step`` (optimizer steps) and ``partial``
    (written within epoch ``epoch + 1`` at a hand-back)."""

    path: Path
    epoch: int
    step: int
    partial: bool

    @property
    def lost_epoch(self) -> int:
        """The epoch whose work this checkpoint holds: ``epoch``, or ``epoch + 1`` for a partial one."""
        return self.epoch + 1 if self.partial else self.epoch

    def describe(self) -> str:
        """E.g. 'the checkpoint of epoch 8 (step 184)' or 'the hand-back checkpoint within epoch 9 (step 190)'."""
        if self.partial:
            return f"the hand-back checkpoint within epoch {self.epoch + 1} (step {self.step})"
        return f"the checkpoint of epoch {self.epoch} (step {self.step})"


class CheckpointStore:
    """The checkpoints of one training pass in ``folder``, named after ``stem`` (see the module docstring).

    ``submit(state)`` writes an epoch-end checkpoint in a background thread (the next epoch trains meanwhile; at most
    one write in flight), ``save(state)`` writes one at once (a hand-back), ``wait()`` blocks until the last write is
    done and re-raises its error. ``load_latest(reporter)`` returns the newest good checkpoint: each newer one that
    cannot be read is reported as event ``checkpoint_unreadable`` (with the epoch whose work is lost and the epoch
    resumed from instead, or none) and renamed ``*.unreadable``; ``last_loaded`` is the path of the one it returned.
    After each write only the ``keep`` newest remain.
    """

    def __init__(self, folder: Path, stem: str, keep: int = KEEP) -> None:
        self.folder = Path(folder)
        self.stem = stem
        self.keep = keep
        self._pattern = re.compile(rf"^{re.escape(stem)}-epoch(\d+)-step(\d+)(-partial)?\.pt$")
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_bytes = 0
        self.last_loaded: Path | None = None  # the file load_latest last returned

    def path_for(self, epoch: int, step: int, partial: bool) -> Path:
        """Where the checkpoint of ``epoch`` completed epochs and ``step`` steps goes."""
        return self.folder / f"{self.stem}-epoch{epoch}-step{step}{'-partial' if partial else ''}.pt"

    def files(self) -> list[CheckpointFile]:
        """The pass's checkpoint files, newest first (by step; a hand-back one before an epoch-end one of its step)."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = self._pattern.match(p.name)
            if m:
                found.append(CheckpointFile(p, int(m.group(1)), int(m.group(2)), m.group(3) is not None))
        return sorted(found, key=lambda f: (f.step, f.partial), reverse=True)

    def load_latest(self, reporter: Reporter) -> dict[str, Any] | None:
        """The newest checkpoint that reads back intact, or None (none written, or none readable). Reports every
        newer unreadable one (event ``checkpoint_unreadable``, data: epoch (whose work is lost), step, file, reason,
        fallback_epoch, fallback_step) and sets it aside as ``<name>.unreadable``."""
        bad: list[tuple[CheckpointFile, str]] = []
        state = None
        for f in self.files():
            try:
                state = read_checkpoint(f.path)
                self.last_loaded = f.path
                break
            except FileNotFoundError:
                continue
            except CheckpointUnreadable as e:
                bad.append((f, str(e)))
                with contextlib.suppress(OSError):
                    os.replace(f.path, f.path.with_name(f.path.name + UNREADABLE_SUFFIX))
        for f, reason in bad:
            if state is not None:
                epoch, step = int(state["epoch"]), int(state["step"])
                where = f"resuming from the checkpoint of epoch {epoch} (step {step}) instead" if "partial" not in state else \
                    f"resuming from the hand-back checkpoint within epoch {epoch + 1} (step {step}) instead"
                then = f"{where}: the work after step {step} is done again"
            else:
                epoch = step = None
                then = "no earlier good checkpoint: training starts over from epoch 1"
            reporter.event("checkpoint_unreadable", f"{f.describe()} ({f.path.name}) cannot be read: {reason}; {then}",
                           {"epoch": f.lost_epoch, "step": f.step, "file": f.path.name, "reason": reason,
                            "fallback_epoch": epoch, "fallback_step": step})
        return state

    def _prune(self) -> None:
        for f in self.files()[self.keep:]:
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()

    def remove_all(self) -> None:
        """Delete every checkpoint of this pass (they belong to another spec and would shadow this run's)."""
        self.wait()
        for f in self.files():
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()

    def clear_temporary(self) -> None:
        """Remove ``*.tmp`` files a killed writer of this pass left behind."""
        if self.folder.is_dir():
            for p in self.folder.glob(f"{self.stem}-*.pt.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()

    def _write(self, path: Path, snapshot: dict[str, Any]) -> None:
        try:
            self.last_bytes = save_checkpoint(path, snapshot, snapshot_taken=True)
            self._prune()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = e

    def submit(self, state: dict[str, Any]) -> None:
        """Snapshot ``state`` now (tensors copied to CPU, so training may change the originals), wait for any write
        still running, then write it in the background. ``state`` needs 'epoch', 'step' and, within an epoch,
        'partial'."""
        snapshot = _cpu_state(state)
        path = self.path_for(int(state["epoch"]), int(state["step"]), "partial" in state)
        self.wait()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write, args=(path, snapshot), name="stillhouse-checkpoint", daemon=True)
        self._thread.start()

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` now (after any write in flight), then keep only the newest ``keep``. Raises ``OSError``."""
        self.submit(state)
        self.wait()

    def writing(self) -> bool:
        """True while a background write is still in flight (its file is not complete on disk yet)."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until no write is in flight; raise the last write's error (as ``OSError`` etc.)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
