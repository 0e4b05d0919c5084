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
from .errors import DistillError
from .formats import ARCH_METADATA_KEY
from .spec import JobSpec
from .teachers import Teacher

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-3


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def export_onnx(student: nn.Module, example: torch.Tensor, path: Path, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Export ``student`` to ONNX at ``path`` (legacy TorchScript exporter, ``dynamo=False``; input 'input'
    ``[batch, *input_shape]``, output 'logits' ``[batch, K]``, dynamic batch axis; deprecation warnings
    suppressed), then run it in onnxruntime (CPU) on ``example`` ``[B, *input_shape]`` and compare with PyTorch.

    Returns {'max_abs_diff', 'opset'}. Raises ``DistillError('internal_error')`` when the difference exceeds
    1e-3 or the export fails.
    """
    import onnxruntime as ort

    model = copy.deepcopy(student).to("cpu").eval()
    example = example.to("cpu", torch.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {"input": example.numpy()})[0]
    except Exception as e:  # noqa: BLE001
        raise DistillError("internal_error", f"ONNX export failed: {_first_line(e)}") from None
    with torch.inference_mode():
        want = model(example).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= ONNX_TOLERANCE:
        raise DistillError("internal_error", f"the ONNX student differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})")
    return {"max_abs_diff": diff, "opset": opset}


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
        "load_with": "worker.distill.models.build(architecture['name'], architecture['kwargs']).load_state_dict("
                     "safetensors.torch.load_file('student.safetensors'))",
    }
    (outdir / "student.json").write_text(json.dumps(card, indent=2))
    return onnx_info

