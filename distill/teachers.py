"""Inference-only teacher wrappers with one interface over PyTorch, TorchScript and ONNX checkpoints.

``load_teacher`` returns a ``Teacher``: ``teacher(x)`` maps ``Tensor[B, *input_shape]`` (float32, any device)
to logits ``Tensor[B, K]`` (float32, on the teacher's device). PyTorch teachers are put in ``eval()`` with
``requires_grad_(False)`` and always run under ``torch.inference_mode()``; ONNX teachers run in onnxruntime.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DistillError, first_line
from .formats import architecture_from_metadata, load_tensors, onnx_shapes, sniff
from .measure import count_flops, latency_ms, module_latency
from .models import build, describe, parameter_count
from .spec import ArchitectureSpec


class Teacher(ABC):
    """A loaded teacher, inference-only.

    Attributes: ``format`` (checkpoint format), ``device``, ``num_classes`` (K; None until known — it is
    filled by the first call), ``input_shape`` (per-sample shape or None when the checkpoint does not say;
    assignable), ``parameters`` (scalar parameter count), ``architecture`` (filled architecture dict for
    weights-only formats, else None), ``notes`` (list of str: things done while loading, e.g. a stripped
    'module.' prefix).
    """

    format: str
    device: torch.device

    def __init__(self, fmt: str, device: torch.device, parameters: int, num_classes: int | None,
                 input_shape: list[int] | None, architecture: dict[str, Any] | None = None,
                 notes: list[str] | None = None) -> None:
        self.format = fmt
        self.device = device
        self.parameters = parameters
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.architecture = architecture
        self.notes = notes or []
        self._flops: dict[tuple[int, ...], int | None] = {}

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``Tensor[B, K]`` for ``x`` (backend-specific; use ``__call__``)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``Tensor[B, K]`` float32 on ``self.device`` for inputs ``Tensor[B, *input_shape]``.

        Runs without autograd (the result is an inference tensor for PyTorch teachers: ``clone()`` it before
        using it in an autograd graph that saves it). Errors from a wrong input shape propagate as raised by
        the backend (``RuntimeError`` / onnxruntime errors).
        """
        out = self.forward(x)
        if self.num_classes is None and out.dim() == 2:
            self.num_classes = int(out.shape[1])
        return out

    @property
    def flops_per_sample(self) -> int | None:
        """Forward FLOPs for one sample (FlopCounterMode, multiply-add = 2), None when unknown/uncountable."""
        return None

    @abstractmethod
    def latency(self, batch_size: int, iterations: int) -> dict[str, float]:
        """p50/p95 forward latency in ms at ``batch_size`` on the teacher's device (5 warm-up calls, then
        ``iterations`` timed ones). Raises ``DistillError('invalid_spec')`` when ``input_shape`` is unknown."""

    def use_channels_last(self, sample: torch.Tensor) -> str | None:
        """Run the teacher in the channels-last (NHWC) memory layout from now on when it can, checked on ``sample``
        (``Tensor[B, C, H, W]``). Returns a note for the report when the layout changed, else None. The base class
        (e.g. ONNX teachers) never changes anything."""
        return None

    def _need_shape(self) -> list[int]:
        if self.input_shape is None:
            raise DistillError("invalid_spec", "the teacher's input shape is unknown; set data.input_shape", "data.input_shape")
        return list(self.input_shape)


class TorchTeacher(Teacher):
    """A PyTorch ``nn.Module`` or TorchScript teacher (eval mode, no grad, inference mode)."""

    def __init__(self, module: nn.Module, fmt: str, device: torch.device, **kw: Any) -> None:
        module = module.to(device).eval()
        for p in module.parameters():  # not module.requires_grad_(): ScriptModules do not support it
            p.requires_grad_(False)
        self.module = module
        self.memory_format = torch.contiguous_format
        super().__init__(fmt, device, parameters=parameter_count(module), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, torch.float32, non_blocking=True)
            if self.memory_format is torch.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.module(x)
        if not isinstance(out, torch.Tensor):
            raise DistillError("invalid_file", f"the teacher returned {type(out).__name__}, expected a logits tensor", "teacher")
        return out if out.dtype == torch.float32 else out.float()

    def use_channels_last(self, sample: torch.Tensor) -> str | None:
        """Convert the module's 4-D weights and inputs to ``torch.channels_last`` when ``sample`` is a 4-D image batch,
        the teacher's device is the CPU, and the converted teacher gives the same logits on ``sample`` (max abs
        difference ≤ 1e-4 · (1 + max |logit|)); otherwise (or when the converted module raises, e.g. a TorchScript
        ``view`` on an activation) put everything back and return None. oneDNN's convolution and pooling kernels are
        faster on NHWC: the mnist5k CNN teacher of ``bench/vs_torchdistill.py`` ran about 1.9x faster on one thread. The
        decision depends on the model and data only (never on a timing), so equal specs stay bit-identical."""
        if sample.dim() != 4 or self.device.type != "cpu":
            return None
        try:
            ref = self.forward(sample)
        except Exception:  # noqa: BLE001 - not this method's error to report: training will meet it with its own message
            return None
        try:
            self.module.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
            out = self.forward(sample)
            diff = float((out - ref).abs().max()) if out.shape == ref.shape else math.inf
        except Exception:  # noqa: BLE001 - any failure means: keep the contiguous layout
            diff = math.inf
        if diff <= 1e-4 * (1.0 + float(ref.abs().max())):
            return f"run in the channels-last (NHWC) memory layout (same logits within {diff:.1e} on a training batch; faster oneDNN kernels)"
        self.module.to(memory_format=torch.contiguous_format)
        self.memory_format = torch.contiguous_format
        return None

    @property
    def flops_per_sample(self) -> int | None:
        if self.input_shape is None:
            return None
        key = tuple(self.input_shape)
        if key not in self._flops:
            self._flops[key] = count_flops(self.module, list(key), self.device)
        return self._flops[key]

    def latency(self, batch_size: int, iterations: int) -> dict[str, float]:
        return module_latency(self.module, self._need_shape(), batch_size, iterations, self.device)


class OnnxTeacher(Teacher):
    """An ONNX teacher run by onnxruntime (CUDAExecutionProvider when the device is CUDA and it is available,
    else CPU). Inputs are copied to host memory, outputs back to ``device``."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnx
        import onnxruntime as ort

        try:
            model = onnx.load(str(path))
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise DistillError("invalid_file", f"invalid ONNX teacher: {first_line(e)}", "teacher") from None
        in_shape, out_shape = onnx_shapes(model)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.fixed_batch = in_shape[0] if in_shape else None
        sample = in_shape[1:] if in_shape and len(in_shape) > 1 and all(d is not None for d in in_shape[1:]) else None
        k = out_shape[1] if out_shape and len(out_shape) == 2 else None
        params = int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))
        notes = [f"ONNX via onnxruntime ({', '.join(self.session.get_providers())})"]
        super().__init__("onnx", device, parameters=params, num_classes=k, input_shape=sample, notes=notes)  # type: ignore[arg-type]

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            if x.shape[0] % self.fixed_batch:
                raise DistillError("shape_mismatch", f"the ONNX teacher has a fixed batch size of {self.fixed_batch}", "teacher")
            parts = [self._run(x[i : i + self.fixed_batch]) for i in range(0, x.shape[0], self.fixed_batch)]
            return np.concatenate(parts)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = torch.from_numpy(np.asarray(self._run(arr), dtype=np.float32))
        return out.to(self.device)

    def latency(self, batch_size: int, iterations: int) -> dict[str, float]:
        x = np.zeros((batch_size, *self._need_shape()), dtype=np.float32)
        return latency_ms(lambda: self._run(x), iterations, torch.device("cpu"))


def _strip_module_prefix(tensors: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith("module.") for k in tensors):
        notes.append("stripped the 'module.' prefix of a DataParallel/DistributedDataParallel state dict")
        return {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_weights_strict(model: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(tensors, strict=True)``; raises ``DistillError('shape_mismatch')`` (param
    ``<what>.architecture``) listing the first five missing and unexpected keys (and shape mismatches, file vs
    architecture) when the weights do not fit the architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in own)
    wrong = [f"{k} {list(tensors[k].shape)} vs {list(v.shape)}" for k, v in own.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}")
        if wrong:
            parts.append(f"wrong shapes (file vs architecture): {'; '.join(wrong[:5])}")
        raise DistillError("shape_mismatch", f"the {what} weights do not match the architecture: {'; '.join(parts)}",
                           f"{what}.architecture")
    model.load_state_dict(tensors, strict=True)


def load_teacher(path: str | Path, fmt: str, architecture: ArchitectureSpec | dict[str, Any] | None,
                 device: torch.device | str = "cpu") -> Teacher:
    """Load a teacher checkpoint for inference.

    ``fmt``: 'safetensors' | 'state_dict' | 'torchscript' | 'onnx' | 'auto' (sniffed). Weights-only formats
    need ``architecture`` (the spec's, else the safetensors ``stillhouse.architecture`` metadata; the spec
    wins). Raises ``DistillError``: ``invalid_spec`` (no architecture for weights-only formats, bad
    architecture), ``shape_mismatch`` (weights not matching the architecture: the first missing/unexpected keys
    listed), ``invalid_file`` (unreadable file, non-tensor entries), ``unsafe_checkpoint`` (pickle with
    disallowed globals). A 'module.' prefix (DataParallel) is stripped, and a state dict taken out of a training
    checkpoint (beside optimizer state, arguments...), noted in ``teacher.notes``.
    """
    path = Path(path)
    device = torch.device(device)
    if fmt == "auto":
        fmt = sniff(path)
    if fmt in ("safetensors", "state_dict"):
        notes: list[str] = []
        tensors, meta = load_tensors(path, fmt, notes)
        if architecture is not None:
            arch = architecture.model_dump() if isinstance(architecture, ArchitectureSpec) else dict(architecture)
            source = "job spec"
        else:
            arch = architecture_from_metadata(meta)
            source = "file metadata"
            if arch is None:
                raise DistillError(
                    "invalid_spec",
                    f"a {fmt} teacher needs teacher.architecture (the file carries no stillhouse architecture metadata)",
                    "teacher.architecture",
                )
        kwargs = dict(arch.get("kwargs", {}))
        for key in ("input_shape", "num_classes"):
            if key not in kwargs:
                raise DistillError("invalid_spec", f"teacher.architecture.kwargs needs {key!r} for a {fmt} teacher", f"teacher.architecture.kwargs.{key}")
        filled = describe(arch["name"], kwargs)
        model = build(arch["name"], kwargs)
        tensors = _strip_module_prefix(tensors, notes)
        load_weights_strict(model, tensors, "teacher")
        notes.append(f"architecture {filled['name']} from the {source}")
        return TorchTeacher(model, fmt, device, num_classes=int(filled["kwargs"]["num_classes"]),
                            input_shape=list(filled["kwargs"]["input_shape"]), architecture=filled, notes=notes)
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001
            raise DistillError("invalid_file", f"unreadable TorchScript teacher: {first_line(e)}", "teacher") from None
        return TorchTeacher(module, fmt, device, num_classes=None, input_shape=None)
    if fmt == "onnx":
        return OnnxTeacher(path, device)
    raise DistillError("invalid_file", f"expected a model checkpoint (safetensors, TorchScript, ONNX or a PyTorch state dict), got {fmt}", "teacher")
