"""Writing a finished student: ``student.safetensors`` (with stillhouse's architecture metadata),
``student.json`` (everything needed to rebuild and use it) and ``student.onnx`` checked with onnxruntime."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import DataBundle
from .errors import DistillError, first_line
from .formats import ARCH_METADATA_KEY
from .spec import JobSpec
from .teachers import Teacher

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-3


def export_onnx(student: nn.Module, example: torch.Tensor, path: Path, opset: int = ONNX_OPSET,
                check_batches: tuple[int, ...] = (1, 7)) -> dict[str, Any]:
    """Export ``student`` to ONNX at ``path`` (legacy TorchScript exporter, ``dynamo=False``; input 'input'
    ``[batch, *input_shape]``, output 'logits' ``[batch, K]``, dynamic batch axis; deprecation warnings
    suppressed), then run it in onnxruntime (CPU) at each of ``check_batches`` (rows of ``example``
    ``[B, *input_shape]``, repeated when B is smaller) and compare with PyTorch: the dynamic batch axis is
    exercised at sizes other than the one traced.

    Returns {'max_abs_diff', 'opset', 'checked_batch_sizes', 'max_abs_diff_by_batch'}. Raises
    ``DistillError('internal_error')`` when a difference exceeds 1e-3 or the export fails.
    """
    import onnxruntime as ort

    model = copy.deepcopy(student).to("cpu").eval()
    example = example.to("cpu", torch.float32)
    by_batch: dict[str, float] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example[:1],), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for b in check_batches:
            x = example[torch.arange(b) % example.shape[0]]
            got = sess.run(["logits"], {"input": x.numpy()})[0]
            with torch.inference_mode():
                want = model(x).numpy()
            if got.shape != want.shape:
                raise DistillError("internal_error", f"the ONNX student returns shape {list(got.shape)} at batch {b}, PyTorch {list(want.shape)}")
            by_batch[str(b)] = float(np.abs(got - want).max())
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DistillError("internal_error", f"ONNX export failed: {first_line(e)}") from None
    diff = max(by_batch.values())
    if not diff <= ONNX_TOLERANCE:
        raise DistillError("internal_error", f"the ONNX student differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})")
    return {"max_abs_diff": diff, "opset": opset, "checked_batch_sizes": list(check_batches),
            "max_abs_diff_by_batch": {k: float(f"{v:.3g}") for k, v in by_batch.items()}}


def quantize_dynamic_int8(student: nn.Module) -> nn.Module:
    """PyTorch dynamic quantisation (``torch.ao.quantization.quantize_dynamic``): the weights of every ``nn.Linear``
    become int8, activations are quantised on the fly (Jacob et al. 2018). Returns a CPU copy in eval mode;
    convolutions stay float32. (torch marks this eager API deprecated in favour of torchao; it still works in 2.13.)"""
    model = copy.deepcopy(student).to("cpu").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> int:
    """Trace ``model`` on ``example`` ``[1, *input_shape]`` and save it as a TorchScript archive (how a quantised
    student is shipped: its packed int8 weights are not plain tensors). Returns the file size in bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example.to("cpu", torch.float32)[:1])
    traced.save(str(path))
    return path.stat().st_size


def export_student(spec: JobSpec, student: nn.Module, filled: dict[str, Any], data: DataBundle, teacher: Teacher, outdir: Path,
            summary: dict[str, Any]) -> dict[str, Any] | None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in student.state_dict().items()}
    save_file(tensors, str(outdir / "student.safetensors"), metadata={ARCH_METADATA_KEY: json.dumps(filled)})
    onnx_info = None
    if "onnx" in spec.export.formats:
        onnx_info = export_onnx(student, data.val_x[:64] if data.val_x.shape[0] else data.train_x[:64], outdir / "student.onnx")
    card = {
        "architecture": filled,
        "input_shape": list(data.input_shape),
        "num_classes": filled["kwargs"]["num_classes"],
        "input_name": "input",
        "output_name": "logits",
        "output": "logits [batch, num_classes]; apply softmax for class probabilities",
        "preprocessing": data.preprocessing,
        "dtype": "float32",
        "weights": "student.safetensors",
        "onnx": "student.onnx" if onnx_info else None,
        "torch_version": torch.__version__,
        "method": spec.method.model_dump(),
        "teacher": {"format": teacher.format, "parameters": teacher.parameters, "architecture": teacher.architecture},
        "job_name": spec.name,
        "metrics": summary,
        "load_with": "distill.models.build(architecture['name'], architecture['kwargs']).load_state_dict("
                     "safetensors.torch.load_file('student.safetensors'))",
    }
    (outdir / "student.json").write_text(json.dumps(card, indent=2))
    return onnx_info

