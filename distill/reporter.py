"""The core's only channel to the outside world: progress, metrics, events and the stop flag.

The Celery task implements it on SQL; tests and library users use ``RecordingReporter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

PHASES = ("loading_teacher", "generating_transfer_set", "caching_teacher_outputs", "training", "evaluating", "exporting")


@dataclass(frozen=True)
class MetricRow:
    """One recorded value: ``name`` (e.g. 'loss/kd', 'top1', 'agreement'), ``split`` ('train'|'val'),
    global ``step`` (1-based, optimizer steps so far), ``epoch`` (1-based) and the float ``value``."""

    name: str
    split: str
    step: int
    epoch: int
    value: float


class Reporter(Protocol):
    """What the distillation core tells its caller while a job runs."""

    def phase(self, phase: str) -> None:
        """Enter a phase from ``PHASES``."""

    def progress(self, *, epoch: int, epochs: int, step: int, total_steps: int, fraction: float, eta_s: float | None) -> None:
        """Training progress: ``fraction`` in [0, 1], ``eta_s`` seconds left (None before the first step)."""

    def metrics(self, rows: Sequence[MetricRow]) -> None:
        """Record metric rows (called every ``log_every_steps`` steps and at each epoch end)."""

    def event(self, type: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Record a notable event (resumed, checkpoint_saved, ...)."""

    def discard_metrics_after(self, epoch: int, splits: Sequence[str] | None = None, step: int | None = None) -> None:
        """Drop metric rows with ``epoch > epoch`` (only those of ``splits`` when given), or, with ``step`` (a checkpoint
        taken within an epoch), those with ``step > step``: called when (re)starting a training pass from a checkpoint
        of that epoch (0 = none), so a resumed pass never logs an epoch or a step twice."""

    def should_stop(self) -> bool:
        """True when the job must stop (cancelled, or its worker is shutting down); checked between steps."""

    def checkpoint_on_stop(self) -> bool:
        """Asked once ``should_stop()`` is true: True when the stop is a hand-back (the job will resume elsewhere), so
        the trainer saves a checkpoint of the step it reached; False for a cancel. Optional: a reporter without this
        method is treated as returning False."""


@dataclass
class RecordingReporter:
    """A ``Reporter`` that keeps everything in lists (for tests and library use); ``stop_after_steps`` simulates a cancel
    after that many ``should_stop`` checks, or, with ``hand_back``, a hand-back (``checkpoint_on_stop`` is then true)."""

    phases: list[str] = field(default_factory=list)
    progress_calls: list[dict[str, Any]] = field(default_factory=list)
    rows: list[MetricRow] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    stop_after_steps: int | None = None
    hand_back: bool = False
    _checks: int = 0

    def phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.phases.append(phase)

    def progress(self, **kw: Any) -> None:
        self.progress_calls.append(kw)

    def metrics(self, rows: Sequence[MetricRow]) -> None:
        self.rows.extend(rows)

    def event(self, type: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((type, message, data))

    def discard_metrics_after(self, epoch: int, splits: Sequence[str] | None = None, step: int | None = None) -> None:
        self.rows = [r for r in self.rows if (r.step <= step if step is not None else r.epoch <= epoch)
                     or (splits is not None and r.split not in splits)]

    def should_stop(self) -> bool:
        self._checks += 1
        return self.stop_after_steps is not None and self._checks > self.stop_after_steps

    def checkpoint_on_stop(self) -> bool:
        return self.hand_back
