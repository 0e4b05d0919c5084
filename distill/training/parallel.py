"""Data-parallel training over N processes on one machine (``training.devices``): the per-rank handle the trainer
uses (``Parallel``), the device check, and rank 0's group of helper processes (``RankGroup``).

How (settled by ``bench/lm_ddp_prototype.py``): PyTorch ``DistributedDataParallel`` (Li et al. 2020, "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training") over gloo on the CPU or NCCL on CUDA. Each rank
trains on a fixed slice of every global batch (rank r: rows r, r + N, ...), so the data order is one process's; the
loss terms are scaled by ``local count · N / global count`` (tokens or rows, all-reduced each step) so that DDP's
gradient average equals the single-process gradient of the global batch. Stop, hand-back and deadline decisions are
rank 0's, all-reduced with that count, so every rank leaves at the same step and none waits in a collective for a
rank that is gone.

Launch: the job process (a Celery pool child holding the job's reporter, lease and cancel checks) stays rank 0 and
starts ranks 1..N-1 as plain interpreters (``python -m <module> <handoff.json> <rank>``) that meet it through a
``TCPStore`` on 127.0.0.1. Not ``torchrun``: its elastic agent would become the parent of every rank, rank 0 included,
so the job's reporter would have to be rebuilt inside a child; not ``torch.multiprocessing.spawn``: it re-imports the
parent's ``__main__`` (the Celery worker) in each child and pickles the arguments. A helper learns everything from the
handoff file (JSON, plus safetensors files the task's driver writes next to it) and never unpickles anything.

A helper that dies (killed, out of memory, an exception) closes its connections; rank 0's next collective then fails
and ``RankGroup.failure`` turns that into ``DistillError('training_process_failed')`` naming the rank, how it ended and
the last line of its log (``workdir/parallel-rank<r>.log``). Each helper asks for a parent-death signal first thing
(``die_with_parent``), so a killed worker leaves no rank behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import DistillError, StopRequested, first_line

PG_TIMEOUT_S = 1800  # a collective waits this long for the other ranks (rank 0's epoch-end evaluation runs meanwhile)
START_TIMEOUT_S = 900  # helpers must have loaded their inputs by then
EXIT_GRACE_S = 5.0  # after a failure on rank 0, seconds the helpers get to leave on their own before SIGTERM/SIGKILL
FINISH_GRACE_S = 60.0  # after the last pass, seconds the helpers get to exit (they have nothing left but to leave)
LOG_NAME = "parallel-rank{rank}.log"


def backend_for(device: torch.device) -> str:
    """The collective backend of ``device``: 'nccl' on CUDA, 'gloo' on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_devices(n: int, device: torch.device) -> None:
    """Refuse ``training.devices = n`` when this worker cannot run ``n`` ranks on ``device``: on CUDA at most
    ``torch.cuda.device_count()`` (one GPU per rank, NCCL); on the CPU at most its usable cores (one gloo process
    each). Raises ``DistillError('invalid_spec', param='training.devices')``; ``n == 1`` always passes."""

    if n == 1:
        return
    if not dist.is_available():
        raise DistillError("invalid_spec", f"training.devices={n} needs torch.distributed, which this PyTorch build lacks", "training.devices")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if n > count:
            raise DistillError("invalid_spec", f"training.devices={n} needs {n} CUDA devices (one per process); this worker has {count}",
                               "training.devices")
        if not dist.is_nccl_available():
            raise DistillError("invalid_spec", f"training.devices={n} on CUDA needs the NCCL backend, which this PyTorch build lacks",
                               "training.devices")
        return
    cores = usable_cores()
    if n > cores:
        raise DistillError("invalid_spec", f"training.devices={n} runs {n} processes on the CPU but this worker has {cores} usable "
                           f"core(s); use at most {cores} (or device cuda on a GPU worker)", "training.devices")
    if not dist.is_gloo_available():
        raise DistillError("invalid_spec", f"training.devices={n} on the CPU needs the gloo backend, which this PyTorch build lacks",
                           "training.devices")


def rank_device(device: torch.device, rank: int) -> torch.device:
    """The device of ``rank``: ``cuda:<rank>`` on CUDA (one GPU each), the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else torch.device("cpu")


@dataclass
class Parallel:
    """One rank's view of the process group: ``rank``, ``world`` (processes) and the ``device`` its collectives'
    tensors live on. ``failure`` (rank 0: ``RankGroup.failure``) turns an exception out of a collective into the
    job's error."""

    rank: int
    world: int
    device: torch.device
    failure: Callable[[BaseException], BaseException] | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes checkpoints, metrics, events and artifacts)."""
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of ``t`` (on ``device``) with ``op`` 'sum' or 'max'; returns ``t``."""

        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (UTF-8 bytes in two broadcasts; no pickle). Others pass None."""

        data = (text or "").encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, 0)
        buf = torch.zeros(int(size), dtype=torch.uint8, device=self.device)
        if self.is_main and data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if int(size):
            dist.broadcast(buf, 0)
        return bytes(buf.cpu().tolist()).decode()

    def translate(self, e: BaseException) -> BaseException:
        """The error to raise for ``e`` escaping a training step: ``failure(e)`` where set, else ``e``."""
        return self.failure(e) if self.failure is not None else e


def die_with_parent(parent_pid: int) -> None:
    """In a helper, first thing: on Linux ask for SIGKILL when the parent (rank 0, the job's process) dies
    (``PR_SET_PDEATHSIG``), then exit at once if it is already gone (it died before the request). Elsewhere nothing:
    a helper then ends at its next collective, whose peer is gone."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass
class RankGroup:
    """Rank 0's side of an N-process data-parallel group.

    ``start(handoff)`` writes ``handoff`` (plus the rendezvous address, world size, backend, rank 0's pid and the
    per-rank thread count) to ``workdir/parallel-handoff.json``, starts ranks 1..N-1 as
    ``python -m <module> <file> <rank>`` with their output in ``workdir/parallel-rank<r>.log`` and in a session of
    their own (a Ctrl-C or a signal to the worker's process group reaches rank 0 alone, which decides for all: a
    hand-back stays a hand-back), waits until each has loaded its inputs (checking that none exited and, through
    ``should_stop``, that the job was not cancelled meanwhile), joins the process group and returns rank 0's
    ``Parallel``. ``close(ok)`` gives the helpers ``FINISH_GRACE_S`` to exit after the last pass (``ok``) or
    ``EXIT_GRACE_S`` after a failure, then terminates those left, and leaves the process group. Use as a context
    manager around ``start``: the exit closes.

    Raises (from ``start``) ``DistillError('training_process_failed')`` when a helper exits before joining or does not
    join within ``START_TIMEOUT_S``, and ``StopRequested`` when ``should_stop`` turns true while waiting."""

    world: int
    device: torch.device
    module: str
    workdir: Path
    threads: int
    should_stop: Callable[[], bool] = lambda: False
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    _store: Any = None
    _joined: bool = False
    _threads_before: int | None = None

    def __enter__(self) -> "RankGroup":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)

    def start(self, handoff: dict[str, Any]) -> Parallel:
        """Start the helpers and join them (see the class docstring); returns rank 0's ``Parallel``."""

        self.workdir.mkdir(parents=True, exist_ok=True)
        backend = backend_for(self.device)
        self._store = dist.TCPStore("127.0.0.1", 0, self.world, is_master=True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
        path = self.workdir / "parallel-handoff.json"
        path.write_text(json.dumps({**handoff, "port": int(self._store.port), "world": self.world, "backend": backend,
                                    "parent_pid": os.getpid(), "threads": self.threads, "workdir": str(self.workdir),
                                    "device": self.device.type}))
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the distill package, for the helpers' imports
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for rank in range(1, self.world):
            log = open(self.workdir / LOG_NAME.format(rank=rank), "wb")  # noqa: SIM115 - the child keeps it
            try:
                self.procs[rank] = subprocess.Popen([sys.executable, "-m", self.module, str(path), str(rank)], stdout=log,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                                    start_new_session=True)
            finally:
                log.close()
        self._wait_ready()
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        dist.init_process_group(backend, store=self._store, rank=0, world_size=self.world,
                                timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
        self._joined = True
        dev = torch.device("cuda", torch.cuda.current_device()) if self.device.type == "cuda" else torch.device("cpu")
        return Parallel(0, self.world, dev, failure=self.failure)

    def _wait_ready(self) -> None:
        keys = [f"ready/{r}" for r in range(1, self.world)]
        t0 = time.monotonic()
        while not self._store.check(keys):
            for rank, p in self.procs.items():
                if p.poll() is not None:
                    raise DistillError("training_process_failed", f"training process {rank} of {self.world} exited while starting "
                                       f"({self._how(p)}){self._last_line(rank)}")
            if self.should_stop():
                raise StopRequested("stop requested while the training processes were starting")
            if time.monotonic() - t0 > START_TIMEOUT_S:
                raise DistillError("training_process_failed", f"the {self.world - 1} helper training process(es) did not start "
                                   f"within {START_TIMEOUT_S} s")
            time.sleep(0.1)

    @staticmethod
    def _how(p: subprocess.Popen) -> str:
        rc = p.returncode
        if rc is None:
            return "still running"
        if rc < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-rc).name}"
            return f"killed by signal {-rc}"
        return f"exit status {rc}"

    def _last_line(self, rank: int) -> str:
        try:
            lines = [ln for ln in (self.workdir / LOG_NAME.format(rank=rank)).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f"; its log ends: {lines[-1].strip()[:300]}" if lines else ""

    def failure(self, e: BaseException) -> BaseException:
        """``DistillError('training_process_failed')`` naming the helper that ended (waiting up to 3 s for its exit status)
        when one did, or when ``e`` is a collective's error; else ``e`` itself."""
        deadline = time.monotonic() + 3.0
        dead: list[int] = []
        while True:
            dead = [r for r, p in self.procs.items() if p.poll() is not None and p.returncode != 0]
            if dead or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if dead:
            r = dead[0]
            return DistillError("training_process_failed", f"training process {r} of {self.world} ended during training "
                                f"({self._how(self.procs[r])}){self._last_line(r)}")
        text = str(e)
        if any(s in text for s in ("gloo", "Connection closed", "NCCL", "Connection reset", "ProcessGroup")):
            return DistillError("training_process_failed", f"a collective between the {self.world} training processes failed: "
                                f"{first_line(e)}")
        return e

    def close(self, ok: bool) -> None:
        """Let the helpers exit (``ok``: up to ``FINISH_GRACE_S``; else ``EXIT_GRACE_S``), terminate those left, leave the
        process group and restore rank 0's thread count. Never raises."""

        deadline = time.monotonic() + (FINISH_GRACE_S if ok else EXIT_GRACE_S)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._joined:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self._joined = False
        self._store = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None


def join_as_helper(handoff: dict[str, Any], rank: int) -> Parallel:
    """In a helper (rank ≥ 1), once the caller loaded its inputs: tell rank 0 it is ready, join the process group;
    returns its ``Parallel``. Raises what ``torch.distributed`` raises when rank 0 is gone."""

    store = dist.TCPStore("127.0.0.1", int(handoff["port"]), int(handoff["world"]), is_master=False,
                          timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    store.set(f"ready/{rank}", "1")
    dist.init_process_group(handoff["backend"], store=store, rank=rank, world_size=int(handoff["world"]),
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    device = rank_device(torch.device(handoff["device"]), rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Parallel(rank, int(handoff["world"]), device)


def leave() -> None:
    """Leave the process group (a helper at its end). Never raises."""

    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Parallel", "RankGroup", "backend_for", "check_devices", "die_with_parent", "join_as_helper", "leave", "rank_device", "usable_cores"]
