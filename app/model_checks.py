"""What the API asks of the torch side of the distillation core: upload inspection, layer listing and the
creation-time checks of architectures and methods.

Everything here loads torch and the core's model code on first use, never at import: the API starts, and serves
status polls, listings and reports, without torch in the process (``bench/api_startup.py`` measures start-up time
and resident memory). The first upload or job creation pays the import once (about 1-2 s on 2 cores). When torch is
loaded here it gets one intra-op thread: the API only inspects; the cores belong to the workers.

These are the only function-level imports of the core in ``app`` (``tests/test_imports.py`` holds that line).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def _torch() -> Any:
    import torch

    torch.set_num_threads(1)
    return torch


def inspect_upload(path: Path, purpose: str, *, max_unpacked_bytes: int) -> Any:
    """``distill.formats.inspect_file`` of an uploaded file: its ``FileInfo`` (format, shapes, details). Raises
    ``DistillError`` (invalid_file, unsafe_checkpoint) as that function does."""
    _torch()
    from distill.formats import inspect_file

    return inspect_file(path, purpose, max_unpacked_bytes=max_unpacked_bytes)


def model_layers(path: Path, fmt: str, architecture: dict | None, input_shape: list[int]) -> list[dict]:
    """The layers of the model stored at ``path`` that feature methods may read, with their per-sample output shapes,
    from one pass of zeros ``[1, *input_shape]`` on the CPU (``distill.teachers.Teacher.list_layers``: module paths
    of PyTorch and torch.export models, a TorchScript model's chain, an ONNX graph's module paths and values). Raises
    ``DistillError``."""
    _torch()
    from distill.teachers import load_teacher

    teacher = load_teacher(path, fmt, architecture, "cpu")
    return teacher.list_layers(list(input_shape))


def architecture_layer_names(name: str, kwargs: dict[str, Any]) -> list[str]:
    """Layer names (``distill.features.layer_names``) of architecture ``name`` built with ``kwargs`` on the ``meta``
    device. Raises ``DistillError('invalid_spec')`` for bad arguments."""
    torch = _torch()
    from distill.features import layer_names
    from distill.models import build

    with torch.device("meta"):
        return layer_names(build(name, kwargs))


def check_layer(name: str, names: list[str], model: str, param: str) -> None:
    """Raise ``DistillError('invalid_spec')`` (``distill.features.unknown_layer``: the model, the layer, the nearest
    names) when ``name`` is not among ``names``."""
    _torch()
    from distill.features import unknown_layer

    if name not in names:
        raise unknown_layer(name, names, model, param)


def architecture_names() -> list[str]:
    """The registered architecture names (``distill.models.available``)."""
    _torch()
    from distill.models import available

    return available()


def architecture_parameters(name: str, kwargs: dict[str, Any]) -> int:
    """Parameters of architecture ``name`` built with ``kwargs`` on PyTorch's ``meta`` device (no memory is
    allocated). Raises ``DistillError('invalid_spec')`` for unknown arguments or out-of-range values."""
    torch = _torch()
    from distill.models import build, parameter_count

    with torch.device("meta"):
        return parameter_count(build(name, kwargs))


def check_architecture_arguments(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``distill.models.describe``: the architecture's arguments with defaults filled in. Raises
    ``DistillError('invalid_spec')`` naming an unknown or invalid argument."""
    _torch()
    from distill.models import describe

    return describe(name, kwargs)


def check_method_supported(method: Any, teacher_format: str) -> None:
    """``distill.methods.check_method_supported``: refuse a method the teacher's format cannot serve. Raises
    ``DistillError('invalid_spec')`` with the parameter path."""
    _torch()
    from distill.methods import check_method_supported as check

    check(method, teacher_format)
