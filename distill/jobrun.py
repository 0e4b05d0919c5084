"""What every job driver (tensor and text) does around its phases: the runtime budget and its deadline, the stop
checks between phases, per-phase wall times, and artifacts that appear only when the whole job succeeded."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .errors import DistillError, StopRequested
from .measure import resolve_device
from .reporter import Reporter
from .spec import JobSpec
from .training import check_precision
from .training.parallel import check_devices

ARTIFACTS_DIR = "artifacts"


@dataclass
class JobRun:
    """One run (attempt) of a job: its ``spec``, ``reporter``, ``workdir``, training ``device``, the
    ``time.perf_counter()`` ``deadline`` of ``training.max_runtime_s`` (less the seconds earlier attempts used) and
    the wall seconds of each phase (``times``)."""

    spec: JobSpec
    reporter: Reporter
    workdir: Path
    device: torch.device
    t_start: float
    deadline: float
    times: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, spec: JobSpec, workdir: Path, reporter: Reporter, runtime_used_s: float, *, parallel: bool = False) -> "JobRun":
        """Check the remaining budget, the device and its precision, ``training.devices`` (``parallel``: the driver trains
        data-parallel; otherwise only 1 is accepted), create ``workdir`` and remove any earlier ``artifacts/``. Raises
        ``DistillError`` ('max_runtime_exceeded' when the budget is used up; 'invalid_spec' for a device, precision or
        number of devices this worker or task cannot run)."""
        t_start = time.perf_counter()
        budget = spec.training.max_runtime_s - runtime_used_s
        if budget <= 0:
            raise DistillError("max_runtime_exceeded", f"the job already used {runtime_used_s:g} s of "
                               f"training.max_runtime_s={spec.training.max_runtime_s:g}", "training.max_runtime_s")
        device = resolve_device(spec.training.device)
        check_precision(spec.training.precision, device)
        if spec.training.devices > 1 and not parallel:
            raise DistillError("invalid_spec", f"training.devices={spec.training.devices}: data-parallel training is available for "
                               "task causal_lm only; this task trains in one process (training.devices: 1)", "training.devices")
        check_devices(spec.training.devices, device)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        final_dir = workdir / ARTIFACTS_DIR
        if final_dir.exists():
            shutil.rmtree(final_dir)
        return cls(spec, reporter, workdir, device, t_start, t_start + budget)

    @property
    def final_dir(self) -> Path:
        """``workdir/artifacts``: exists only after ``artifacts()`` succeeded."""
        return self.workdir / ARTIFACTS_DIR

    def check(self, where: str, *, stop: bool = True, deadline: bool = True) -> None:
        """Raise ``StopRequested`` when the reporter says stop (``stop``), then ``DistillError('max_runtime_exceeded')``
        when the deadline passed (``deadline``); ``where`` ends the message (e.g. 'after training')."""
        if stop and self.reporter.should_stop():
            raise StopRequested(f"stop requested {where}")
        if deadline and time.perf_counter() > self.deadline:
            raise DistillError("max_runtime_exceeded", f"training.max_runtime_s={self.spec.training.max_runtime_s:g} s reached {where}",
                               "training.max_runtime_s")

    @contextlib.contextmanager
    def phase(self, name: str, *, announce: bool = True, key: str | None = None) -> Iterator[None]:
        """Time the block as ``times[key or name]``; with ``announce``, enter reporter phase ``name`` first."""
        if announce:
            self.reporter.phase(name)
        t0 = time.perf_counter()
        yield
        self.times[key or name] = time.perf_counter() - t0

    @contextlib.contextmanager
    def artifacts(self) -> Iterator[Path]:
        """A fresh temporary folder in ``workdir`` to write artifacts into; moved to ``final_dir`` when the block
        succeeds, removed when it fails, so a failed or cancelled job leaves no partial artifacts."""
        tmp = self.workdir / f".artifacts-tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            os.replace(tmp, self.final_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def finish(self) -> dict[str, float]:
        """Record the job's total wall time and return ``times``."""
        self.times["total"] = time.perf_counter() - self.t_start
        return self.times
