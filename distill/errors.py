"""Errors of the distillation core; each carries a stable ``code`` from the job error vocabulary."""

from __future__ import annotations

import re

ERROR_CODES = (
    "invalid_spec",
    "invalid_file",
    "unsafe_checkpoint",
    "shape_mismatch",
    "non_finite_loss",
    "max_runtime_exceeded",
    "worker_lost",
    "internal_error",
)


class DistillError(Exception):
    """A job-ending failure with a machine-readable ``code`` and a human ``message``.

    Raised by the core for bad checkpoints (``unsafe_checkpoint``, ``invalid_file``), teacher/student/data
    disagreements (``shape_mismatch``), diverging training (``non_finite_loss``) and the wall-clock limit
    (``max_runtime_exceeded``). The worker records ``code`` and ``message`` on the failed job.
    """

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class StopRequested(Exception):
    """Raised between steps when the reporter's ``should_stop()`` is true (the job was cancelled)."""


def first_line(e: BaseException) -> str:
    """An exception's message for a job error: its first line (ANSI colour codes removed), at most 300
    characters, or the exception's type name when the message is empty."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
