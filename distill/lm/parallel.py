"""``training.devices`` > 1 for causal LMs: rank 0's handoff to the helper ranks, and the helper ranks' entry point
(``python -m distill.lm.parallel <handoff.json> <rank>``, started by ``distill.training.RankGroup``).

Rank 0 (the job process) has loaded the teacher, made the token rows and the top-k teacher cache; it writes the
training rows (``parallel-rows.safetensors``: token ids, target masks, row offsets) and the student's config
(``parallel-student/config.json``) into the work folder, and names the cache file (already there,
``lm_teacher_topk.safetensors``) with its fingerprint. A helper rebuilds the student from the config (its weights
are rank 0's: ``DistributedDataParallel`` broadcasts them when it wraps the student, and a resumed run loads the
same checkpoint on every rank), reads the rows and the cache, loads the teacher itself only when it runs at every
step (``cache.teacher_outputs: off``; replicated, inference only), and then trains the same passes as rank 0 (the
distilled student, then with ``evaluation.compare_baseline`` the student alone) through the one trainer, with a
silent reporter: rank 0 alone records metrics, events and checkpoints and evaluates. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..errors import DistillError, StopRequested
from ..reporter import MetricRow
from ..spec import JobSpec
from ..training import Trainer
from ..training.parallel import RankGroup, die_with_parent, join_as_helper, leave, rank_device
from .adapter import CausalLM
from .cache import TopKCache
from .data import Rows
from .methods import NextTokenOnly, build_lm_method
from .models import load_causal_lm

ROWS_FILE = "parallel-rows.safetensors"
STUDENT_DIR = "parallel-student"
MODULE = "distill.lm.parallel"


def save_rows(rows: Rows, path: Path) -> None:
    """``rows`` as safetensors: ``ids`` (int64) and ``mask`` (uint8) of all rows concatenated, ``offsets [rows + 1]``."""

    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows.ids])
    save_file({"ids": torch.from_numpy(np.concatenate(rows.ids).astype(np.int64)),
               "mask": torch.from_numpy(np.concatenate(rows.mask).astype(np.uint8)),
               "offsets": torch.from_numpy(offsets)}, str(path))


def load_rows(path: Path) -> Rows:
    """The ``Rows`` ``save_rows`` wrote (without ``stats``)."""

    t = load_file(str(path))
    ids, mask, off = t["ids"].numpy(), t["mask"].numpy(), t["offsets"].numpy()
    return Rows([ids[off[i]:off[i + 1]].copy() for i in range(len(off) - 1)], [mask[off[i]:off[i + 1]].copy() for i in range(len(off) - 1)])


def passes(fingerprint: str, baseline: bool, baseline_stem: str) -> list[dict[str, Any]]:
    """The training passes every rank runs, in order: the distilled student, then (``baseline``) the student alone."""
    out = [{"method": "main", "fingerprint": fingerprint, "split_prefix": "", "stem": "checkpoint", "owns_metrics": True}]
    if baseline:
        out.append({"method": "baseline", "fingerprint": fingerprint + ":baseline", "split_prefix": "baseline_", "stem": baseline_stem,
                    "owns_metrics": False})
    return out


def start_ranks(group: RankGroup, *, spec: JobSpec, student: torch.nn.Module, rows: Rows, cache: TopKCache | None, cache_path: Path,
                teacher_path: Path, fmt: str, pad_id: int, fingerprint: str, baseline_stem: str):
    """Write the handoff (rows, the student's config, the cache's path) into ``group.workdir`` and start the helpers;
    returns rank 0's ``Parallel``. Raises what ``RankGroup.start`` raises."""
    wd = group.workdir
    save_rows(rows, wd / ROWS_FILE)
    student.config.save_pretrained(str(wd / STUDENT_DIR))
    method = build_lm_method(spec.method)
    handoff = {"spec": spec.model_dump(mode="json"), "rows": str(wd / ROWS_FILE), "student_config": str(wd / STUDENT_DIR),
               "pad_id": int(pad_id), "cache": {"path": str(cache_path), "fingerprint": cache.fingerprint} if cache is not None else None,
               "teacher": {"path": str(teacher_path), "fmt": fmt} if method.needs_teacher and cache is None else None,
               "passes": passes(fingerprint, bool(spec.evaluation.compare_baseline), baseline_stem)}
    return group.start(handoff)


class SilentReporter:
    """A helper rank's reporter: records nothing (rank 0 records for the job) and never asks to stop (rank 0's stop
    flags reach it through the trainer's all-reduce)."""

    def phase(self, phase: str) -> None:
        """Ignored."""

    def progress(self, **kw: Any) -> None:
        """Ignored."""

    def metrics(self, rows: Sequence[MetricRow]) -> None:
        """Ignored."""

    def event(self, type: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Ignored."""

    def discard_metrics_after(self, epoch: int, splits: Sequence[str] | None = None, step: int | None = None) -> None:
        """Ignored."""

    def should_stop(self) -> bool:
        """False: the stop is rank 0's decision."""
        return False

    def checkpoint_on_stop(self) -> bool:
        """False (rank 0 saves the hand-back checkpoint)."""
        return False


def run_helper(handoff: dict[str, Any], rank: int) -> None:
    """Train the handoff's passes as rank ``rank`` (≥ 1). Raises ``StopRequested`` / ``DistillError`` when the group
    agreed to stop, and whatever a collective raises when rank 0 is gone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(int(handoff["threads"]))
    spec = JobSpec.model_validate(handoff["spec"])
    device = rank_device(torch.device(handoff["device"]), rank)
    rows = load_rows(Path(handoff["rows"]))
    cache = None
    if handoff["cache"] is not None:
        cache = TopKCache.load(handoff["cache"]["path"], handoff["cache"]["fingerprint"])
        if cache is None:
            raise DistillError("internal_error", f"rank {rank}: the teacher cache {handoff['cache']['path']} cannot be read")
    teacher = None
    if handoff["teacher"] is not None:
        teacher = load_causal_lm(Path(handoff["teacher"]["path"]), handoff["teacher"]["fmt"]).to(device)
    config = AutoConfig.from_pretrained(handoff["student_config"])
    par = join_as_helper(handoff, rank)
    empty = Rows([], [])
    workdir = Path(handoff["workdir"])
    for p in handoff["passes"]:
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device).train()
        method = build_lm_method(spec.method) if p["method"] == "main" else NextTokenOnly()
        adapter = CausalLM(student, teacher if method.needs_teacher else None, method, rows, int(handoff["pad_id"]), empty, device,
                           cache if p["method"] == "main" else None, None)
        Trainer(adapter, spec.training, device=device, workdir=workdir, reporter=SilentReporter(), deadline=math.inf,
                fingerprint=p["fingerprint"], split_prefix=p["split_prefix"], checkpoint_stem=p["stem"],
                owns_metrics=p["owns_metrics"], parallel=par).fit()


def _joined() -> bool:

    return dist.is_available() and dist.is_initialized()


def main(argv: list[str]) -> int:
    """Entry point of a helper rank: ``<handoff.json> <rank>``. Exit status 0 after training or an agreed stop, 1 on
    an error (its traceback goes to the rank's log, whose last line rank 0 quotes)."""

    handoff, rank = json.loads(Path(argv[0]).read_text()), int(argv[1])
    die_with_parent(int(handoff["parent_pid"]))
    try:
        run_helper(handoff, rank)
    except (StopRequested, DistillError) as e:
        if not _joined():  # before joining nothing is agreed: this rank failed to start
            traceback.print_exc()
            return 1
        print(f"rank {rank}: stopped with the group: {e}", flush=True)
    except BaseException as e:  # noqa: BLE001 - anything else is this rank's failure
        traceback.print_exc()
        print(f"rank {rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
        leave()
        return 1
    leave()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
