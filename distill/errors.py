"""Errors of the distillation core; each carries a stable ``code`` from the job error vocabulary."""

from __future__ import annotations

import re

ERROR_CODES = (
    "invalid_spec",
    "invalid_file",
    "unsafe_checkpoint",
    "shape_mismatch",
    "non_finite_loss",
    "non_finite_teacher",
    "max_runtime_exceeded",
    "worker_lost",
    "training_process_failed",
    "internal_error",
)


class DistillError(Exception):
    """A job-ending failure with a machine-readable ``code`` and a human ``message``.

    Raised by the core for bad checkpoints (``unsafe_checkpoint``, ``invalid_file``), teacher/student/data
    disagreements (``shape_mismatch``), diverging training (``non_finite_loss``), a teacher whose own outputs are NaN/inf
    (``non_finite_teacher``), the wall-clock limit
    (``max_runtime_exceeded``) and, in data-parallel training (``training.devices`` > 1), another training process
    that ended (``training_process_failed``). The worker records ``code`` and ``message`` on the failed job.
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


_HERE = re.compile(r"^\s*~*\s*<--- HERE\s*$")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*")
_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def runtime_message(e: BaseException, limit: int = 500) -> str:
    """The operative part of a backend's runtime error, for a job error (at most ``limit`` characters).

    TorchScript interpreter errors ("The following operation failed in the TorchScript interpreter." + a traceback):
    the final ``XxxError: ...`` line and the scripted source line marked ``<--- HERE`` (the innermost one).
    onnxruntime errors (``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ...``, possibly over several lines): the
    status and message on one line, with the failing node's op type and name. Anything else: ``first_line(e)``.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "TorchScript interpreter" in text or "Traceback of TorchScript" in text:
        errors = [ln.strip() for ln in lines if _ERROR_LINE.match(ln.strip())]
        here = [lines[i - 1].strip() for i, ln in enumerate(lines) if i and _HERE.match(ln)]
        msg = errors[-1] if errors else lines[-1].strip()
        if here:
            msg += f" (at `{here[-1]}` in the scripted code)"
        return msg[:limit]
    if "[ONNXRuntimeError]" in text:
        joined = " ".join(ln.strip() for ln in lines)
        node = _ORT_NODE.search(joined)
        body = joined.split("Status Message:", 1)[-1].strip() if "Status Message:" in joined else joined
        body = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", body)
        body = re.sub(r"^\S+\.(?:h|cc|cpp):\d+ \S+?\(.*?\) ", "", body)  # the C++ source location prefix
        msg = (f"{node.group(1)} node {node.group(2)!r}: " if node else "") + body
        return msg if len(msg) <= limit else msg[: limit - 3] + "..."
    return first_line(e)
