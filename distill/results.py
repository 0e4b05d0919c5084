"""What a job takes (``JobInputs``: the files it reads) and what it gives back (``DistillResult``: report and artifacts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .formats import FileInput


@dataclass(frozen=True)
class JobInputs:
    """The files a job uses: the ``teacher`` checkpoint and the datasets ``files`` keyed by file id."""

    teacher: FileInput
    files: dict[str, FileInput]


@dataclass
class DistillResult:
    """A finished job: the compression ``report``, the validated ``distill.report`` variant's JSON
    (``model_dump(mode="json")``: every field, None where absent; what ``jobs.report`` stores), and the ``artifacts``
    written (paths inside ``workdir/artifacts``: student.safetensors, student.json, optionally student.onnx);
    ``baseline_student``: with ``evaluation.compare_baseline``, the same student architecture trained alone
    (eval mode, on the job's device), else None."""

    report: dict[str, Any]
    artifacts: list[Path]
    baseline_student: nn.Module | None = None
