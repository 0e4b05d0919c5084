"""Inference-only teacher wrappers with one interface over PyTorch, TorchScript, torch.export and ONNX checkpoints.

``load_teacher`` returns a ``Teacher``: ``teacher(x)`` maps ``Tensor[B, *input_shape]`` (float32, any device)
to logits ``Tensor[B, K]`` (float32, on the teacher's device). PyTorch teachers are put in ``eval()`` with
``requires_grad_(False)`` and always run under ``torch.inference_mode()``; ONNX teachers run in onnxruntime.

Teachers whose outputs are probabilities or log-probabilities (a final softmax) are converted to logits
(``Teacher.set_outputs``; 'auto' decides on the first batch). Every format gives intermediate features by layer name
(``Teacher.features``, ``Teacher.list_layers``): forward hooks on eager and unflattened ``torch.export`` modules, the
chain of a TorchScript module's children where running them in turn gives the module's output, and any ONNX value
made a graph output (``onnx.utils.Extractor``) run in onnxruntime.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DistillError, first_line, runtime_message
from .features import (PENULTIMATE, FeatureRecorder, layer_names, list_layers, module_type, onnx_layers,
                       unknown_layer)
from .formats import (architecture_from_metadata, exported_io_shapes, load_exported_program, load_tensors, onnx_parameters,
                      onnx_shapes, sniff, tie_weights, unflatten_program)
from .measure import count_flops, latency_ms, module_latency
from .models import build, describe, parameter_count
from .spec import ArchitectureSpec


OUTPUT_KINDS = ("logits", "probabilities", "log_probabilities")
_TINY = torch.finfo(torch.float32).tiny


def detect_outputs(out: torch.Tensor, atol: float = 1e-3) -> str:
    """What a teacher's outputs ``[B, K]`` are: 'probabilities' (every row non-negative, summing to 1 within ``atol``),
    'log_probabilities' (every row's ``logsumexp`` within ``atol`` of 0) or 'logits' (anything else)."""
    out = out.detach().float()
    if out.dim() != 2 or out.shape[1] < 2 or not bool(torch.isfinite(out).all()):
        return "logits"
    if bool((out >= 0).all()) and float((out.sum(1) - 1).abs().max()) <= atol:
        return "probabilities"
    if float(torch.logsumexp(out, 1).abs().max()) <= atol:
        return "log_probabilities"
    return "logits"


class Teacher(ABC):
    """A loaded teacher, inference-only.

    Attributes: ``format`` (checkpoint format), ``device``, ``num_classes`` (K; None until known — it is
    filled by the first call), ``input_shape`` (per-sample shape or None when the checkpoint does not say;
    assignable), ``parameters`` (scalar parameter count, shared tensors once), ``architecture`` (filled architecture
    dict for weights-only formats, else None), ``notes`` (list of str: things done while loading, e.g. a stripped
    'module.' prefix), ``outputs`` (what the raw outputs are, see ``set_outputs``; 'logits' until set),
    ``keep_classes`` (None, or use only the first K outputs: ``set_classes``), ``name`` (for messages, e.g. "the
    teacher (TorchScript)").
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
        self.outputs = "logits"
        self.keep_classes: int | None = None
        self.name = f"the teacher ({_FORMAT_LABELS.get(fmt, fmt)})"
        self._flops: dict[tuple[int, ...], int | None] = {}

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``Tensor[B, K]`` for ``x`` (backend-specific; use ``__call__``)."""

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The checkpoint's own outputs ``Tensor[B, K]`` float32 for ``x``, before any conversion to logits. Backend
        runtime errors are re-raised as ``RuntimeError`` carrying the operative line (``errors.runtime_message``)."""
        try:
            return self.forward(x)
        except DistillError:
            raise
        except Exception as e:  # noqa: BLE001 - TorchScript interpreter / onnxruntime errors: keep their operative line
            raise RuntimeError(runtime_message(e)) from e

    def to_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[B, K]`` → logits ``[B, K']``: ``log(p)`` of probabilities (clamped at float32's smallest
        normal, so a 0 stays finite), log-probabilities as they are (logits up to a per-row constant, which softmax
        ignores), then the first ``keep_classes`` columns when set."""
        if self.outputs == "probabilities":
            out = torch.log(out.clamp_min(_TINY))
        if self.keep_classes is not None:
            out = out[:, : self.keep_classes]
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``Tensor[B, K]`` float32 on ``self.device`` for inputs ``Tensor[B, *input_shape]``.

        Runs without autograd (the result is an inference tensor for PyTorch teachers: ``clone()`` it before
        using it in an autograd graph that saves it). Errors from a wrong input shape propagate as ``RuntimeError``
        (with the backend's operative line) or ``DistillError``.
        """
        out = self.raw(x)
        if self.num_classes is None and out.dim() == 2:
            self.num_classes = int(out.shape[1])
        return self.to_logits(out)

    def set_outputs(self, declared: str, raw: torch.Tensor) -> str:
        """Decide what the raw outputs are from the spec's ``teacher.outputs`` (``declared``: 'auto' | 'logits' |
        'probabilities' | 'log_probabilities') and a first batch of them (``raw [B, K]``), and convert from now on.
        Returns the sentence for the report's teacher notes. Raises ``DistillError('invalid_spec')`` (param
        ``teacher.outputs``) when a declared kind contradicts the batch (probabilities that are negative or do not sum
        to 1; log-probabilities whose exponentials do not sum to 1)."""
        found = detect_outputs(raw)
        if declared == "auto":
            self.outputs = found
            if found == "logits":
                return "outputs taken as logits (teacher.outputs 'auto': the first batch's rows are not probabilities and do not have logsumexp 0)"
            how = "log(p), as logits" if found == "probabilities" else "as they are (log-probabilities are logits up to a constant)"
            test = "non-negative rows summing to 1" if found == "probabilities" else "rows with logsumexp 0"
            return (f"outputs detected as {found.replace('_', '-')} (teacher.outputs 'auto': {test} on the first batch of "
                    f"{raw.shape[0]}); the methods use {how}")
        if declared in ("probabilities", "log_probabilities") and found != declared:
            raise DistillError("invalid_spec", f"teacher.outputs is {declared!r} but the teacher's first batch is not: "
                               + ("rows must be non-negative and sum to 1" if declared == "probabilities"
                                  else "rows must have logsumexp 0") + f" (detected: {found}); set teacher.outputs to 'logits' "
                               "or 'auto'", "teacher.outputs")
        self.outputs = declared
        note = f"outputs declared {declared.replace('_', '-')} (teacher.outputs)"
        if declared == "logits" and found != "logits":
            note += f"; they look like {found.replace('_', '-')}, but are used as logits as the spec says"
        return note

    def set_classes(self, keep: int) -> None:
        """Use only the first ``keep`` of the teacher's outputs (classes 0..keep-1) from now on."""
        self.keep_classes = int(keep)

    # ------------------------------------------------------------------ intermediate features

    def layer_names(self) -> list[str]:
        """Names of the layers ``features`` can give (no forward pass), 'penultimate' included when the model has a
        last Linear. The base class (no layers) returns []."""
        return []

    def check_layers(self, layers: list[str], param: str | None = None) -> None:
        """Raise ``DistillError('invalid_spec')`` (naming this teacher, the layer, the nearest names and the layers it
        can give) for the first of ``layers`` the teacher cannot give."""
        names = self.layer_names()
        for name in layers:
            if name not in names:
                raise unknown_layer(name, names, self.name, param)

    def features(self, x: torch.Tensor, layers: list[str], param: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``[B, K]`` (as ``__call__``) and the outputs ``{layer: Tensor[B, ...]}`` (float32) of ``layers`` for
        ``x``, in one forward pass. Raises ``DistillError('invalid_spec')`` for a layer the teacher cannot give."""
        if not layers:
            return self(x), {}
        self.check_layers(layers, param)
        raw, feats = self._features(x, list(dict.fromkeys(layers)), param)
        if self.num_classes is None and raw.dim() == 2:
            self.num_classes = int(raw.shape[1])
        return self.to_logits(raw), {k: v if v.dtype == torch.float32 else v.float() for k, v in feats.items()}

    def _features(self, x: torch.Tensor, layers: list[str], param: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise unknown_layer(layers[0], [], self.name, param)

    def feature_shapes(self, layers: list[str], sample: torch.Tensor, param: str | None = None) -> dict[str, tuple[int, ...]]:
        """Per-sample output shapes ``{layer: (C, H, W) or (D,) ...}`` of ``layers`` for ``sample [B, ...]``."""
        if not layers:
            return {}
        _, feats = self.features(sample, layers, param)
        return {k: tuple(int(d) for d in v.shape[1:]) for k, v in feats.items()}

    def list_layers(self, input_shape: list[int]) -> list[dict[str, Any]]:
        """Every layer ``features`` can give with its per-sample output shape, from one pass of zeros
        ``[1, *input_shape]``: ``[{"name", "type", "output_shape"}, ...]``. Raises ``DistillError('shape_mismatch')``
        when the teacher cannot take inputs of ``input_shape``."""
        return []

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

    def set_channels_last(self) -> None:
        """Switch to the channels-last layout without checking: what ``use_channels_last`` does when its check passes,
        for a teacher whose check an earlier job of the same teacher and data already passed (its decision is read
        from the shared teacher cache, ``distill.shared_cache.teacher_layout``). The base class does nothing."""

    def _need_shape(self) -> list[int]:
        if self.input_shape is None:
            raise DistillError("invalid_spec", "the teacher's input shape is unknown; set data.input_shape", "data.input_shape")
        return list(self.input_shape)


_FORMAT_LABELS = {"safetensors": "safetensors", "state_dict": "state dict", "torchscript": "TorchScript",
                  "torch_export": "torch.export", "onnx": "ONNX"}


def _shape_error(e: Exception, input_shape: list[int]) -> DistillError:
    return DistillError("shape_mismatch", f"the model cannot take inputs of shape {list(input_shape)}: {runtime_message(e)}",
                        "input_shape")


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
            self.set_channels_last()
            out = self.forward(sample)
            diff = float((out - ref).abs().max()) if out.shape == ref.shape else math.inf
        except Exception:  # noqa: BLE001 - any failure means: keep the contiguous layout
            diff = math.inf
        if diff <= 1e-4 * (1.0 + float(ref.abs().max())):
            return f"run in the channels-last (NHWC) memory layout (same logits within {diff:.1e} on a training batch; faster oneDNN kernels)"
        self.module.to(memory_format=torch.contiguous_format)
        self.memory_format = torch.contiguous_format
        return None

    def set_channels_last(self) -> None:
        """The module's 4-D weights and every 4-D input in ``torch.channels_last`` from now on (no check)."""
        self.module.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last

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

    def layer_names(self) -> list[str]:
        """The module paths of ``named_modules()`` (root excluded), then 'penultimate' when there is a last Linear."""
        return layer_names(self.module)

    def _features(self, x: torch.Tensor, layers: list[str], param: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = FeatureRecorder(self.module, layers, param)
        try:
            rec.active = True
            raw = self.raw(x)
            rec.active = False
            return raw, rec.pop()
        finally:
            rec.close()

    def list_layers(self, input_shape: list[int]) -> list[dict[str, Any]]:
        """``features.list_layers`` of the module (forward hooks on every module)."""
        return list_layers(self.module, list(input_shape), self.device)


class ScriptTeacher(TorchTeacher):
    """A TorchScript teacher. Scripted code runs no forward hooks, so its layers are those of its *chain*: where running
    a module's children one after the other, each on the previous one's output, gives the module's own output (checked
    on a real batch, ``allclose`` rtol 1e-4, atol 1e-5) the children are layers too, recursively; a module whose forward
    is anything else (skip connections, a reshape between children, unused children) is one opaque layer. A model
    built as ``nn.Sequential`` blocks is fully visible; a ResNet shows only its top-level modules that chain."""

    def __init__(self, module: nn.Module, device: torch.device, **kw: Any) -> None:
        super().__init__(module, "torchscript", device, **kw)
        self._steps: list[tuple[str, str, nn.Module | None]] | None = None

    def prepare(self, sample: torch.Tensor) -> None:
        """Work out the chain on ``sample [B, *input_shape]`` (once)."""
        if self._steps is not None:
            return
        steps: list[tuple[str, str, nn.Module | None]] = []
        with torch.inference_mode():
            _expand(self.module, "", sample.to(self.device, torch.float32), steps)
        self._steps = steps

    def layer_names(self) -> list[str]:
        """The chain's layers once ``prepare`` ran; before that, every module path (checked again on the first batch)."""
        if self._steps is None:
            return super().layer_names()
        names = [path for _, path, _ in self._steps if path]
        linear = [path for kind, path, mod in self._steps if kind == "call" and mod is not None and module_type(mod) == "Linear"]
        return names + ([PENULTIMATE] if linear else [])

    def features(self, x: torch.Tensor, layers: list[str], param: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if layers:
            self.prepare(x)
        return super().features(x, layers, param)

    def list_layers(self, input_shape: list[int]) -> list[dict[str, Any]]:
        """The chain's layers (see the class) with their output shapes, from one pass of zeros ``[1, *input_shape]``."""
        x = torch.zeros(1, *[int(d) for d in input_shape], device=self.device)
        try:
            self.prepare(x)
            names = self.layer_names()
            _, feats = self._features(x, names, None)
        except DistillError:
            raise
        except Exception as e:  # noqa: BLE001 - the input shape does not fit
            raise _shape_error(e, input_shape) from None
        types = {path: module_type(mod) if mod is not None else "Sequential" for _, path, mod in self._steps or []}
        mods = dict(self.module.named_modules())
        out = [{"name": n, "type": module_type(mods[n]) if n in mods else types.get(n, "?"),
                "output_shape": [int(d) for d in feats[n].shape[1:]]} for n in names if n != PENULTIMATE]
        if PENULTIMATE in feats:
            out.append({"name": PENULTIMATE, "type": "input of the last Linear", "output_shape": [int(d) for d in feats[PENULTIMATE].shape[1:]]})
        return out

    def _features(self, x: torch.Tensor, layers: list[str], param: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wanted = set(layers)
        steps = self._steps or []
        linear = [i for i, (kind, _, mod) in enumerate(steps) if kind == "call" and mod is not None and module_type(mod) == "Linear"]
        pen_at = linear[-1] if linear else -1
        feats: dict[str, torch.Tensor] = {}
        try:
            with torch.inference_mode():
                y = x.to(self.device, torch.float32)
                if self.memory_format is torch.channels_last and y.dim() == 4:
                    y = y.contiguous(memory_format=torch.channels_last)
                for i, (kind, path, mod) in enumerate(steps):
                    if kind == "call":
                        if i == pen_at and PENULTIMATE in wanted:
                            feats[PENULTIMATE] = y
                        y = mod(y)
                    if path in wanted:
                        feats[path] = y
        except Exception as e:  # noqa: BLE001 - as raw(): keep the interpreter's operative line
            raise RuntimeError(runtime_message(e)) from e
        return y.float(), feats


def _expand(mod: nn.Module, path: str, x: torch.Tensor, steps: list[tuple[str, str, nn.Module | None]]) -> Any:
    """Append ``mod``'s chain to ``steps`` (``('call', path, module)`` runs a module; ``('mark', path, None)`` says the
    current value is ``path``'s output) and return ``mod(x)``. See ``ScriptTeacher``."""
    ref = mod(x)
    kids = list(mod.named_children())
    if kids and isinstance(ref, torch.Tensor):
        trial: list[tuple[str, str, nn.Module | None]] = []
        try:
            y: Any = x
            for n, child in kids:
                y = _expand(child, f"{path}.{n}" if path else n, y, trial)
            ok = isinstance(y, torch.Tensor) and y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-4, atol=1e-5)
        except Exception:  # noqa: BLE001 - the children do not chain
            ok = False
        if ok:
            steps.extend(trial)
            steps.append(("mark", path, None))
            return ref
    steps.append(("call", path, mod))
    return ref


class ExportTeacher(TorchTeacher):
    """A ``torch.export`` program (``formats.load_exported_program``), run as the module ``torch.export.unflatten``
    rebuilds: the original module hierarchy (paths from the graph's ``nn_module_stack``), each submodule a graph of
    its own, so forward hooks give every module's output. Each call pays torch's input checks and pytree handling
    (a fixed cost per call: 0.3-0.7 ms at batch 1 for the mnist CNN of bench/shipped_teachers.py; nothing per
    sample). A program exported with a static batch size B runs inputs in chunks of B (the last one zero-padded, the
    padding's outputs dropped)."""

    def __init__(self, ep: Any, device: torch.device) -> None:
        module = unflatten_program(ep)
        in_shape, out_shape = exported_io_shapes(ep)
        self.fixed_batch = in_shape[0] if in_shape else None
        sample = in_shape[1:] if in_shape and all(d is not None for d in in_shape[1:]) else None
        k = out_shape[1] if out_shape and len(out_shape) == 2 and out_shape[1] is not None else None
        notes = ["torch.export program run as torch.export.unflatten's module hierarchy"
                 + ("" if self.fixed_batch is None else f" (static batch size {self.fixed_batch}: inputs run in chunks of it)")]
        super().__init__(module, "torch_export", device, num_classes=k, input_shape=sample, notes=notes)

    def _chunked(self, x: torch.Tensor, fn: Any) -> Any:
        b = self.fixed_batch
        if b is None or x.shape[0] == b:
            return fn(x)
        parts = []
        for i in range(0, x.shape[0], b):
            xb = x[i : i + b]
            n = xb.shape[0]
            if n < b:
                xb = torch.cat([xb, xb.new_zeros(b - n, *xb.shape[1:])])
            parts.append((fn(xb), n))
        if isinstance(parts[0][0], tuple):  # (raw, feats) of _features
            raw = torch.cat([p[0][:n] for p, n in parts])
            feats = {k: torch.cat([p[1][k][:n] for p, n in parts]) for k in parts[0][0][1]}
            return raw, feats
        return torch.cat([p[:n] for p, n in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._chunked(x, super().forward)

    def _features(self, x: torch.Tensor, layers: list[str], param: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._chunked(x, lambda xb: super(ExportTeacher, self)._features(xb, layers, param))

    def list_layers(self, input_shape: list[int]) -> list[dict[str, Any]]:
        if self.fixed_batch in (None, 1):
            return super().list_layers(input_shape)
        names = self.layer_names()
        x = torch.zeros(1, *[int(d) for d in input_shape], device=self.device)
        try:
            _, feats = self._features(x, names, None)
        except Exception as e:  # noqa: BLE001
            raise _shape_error(e, input_shape) from None
        mods = dict(self.module.named_modules())
        return [{"name": n, "type": module_type(mods[n]) if n in mods else "input of the last Linear",
                 "output_shape": [int(d) for d in feats[n].shape[1:]] if n in feats else None} for n in names]


class OnnxTeacher(Teacher):
    """An ONNX teacher run by onnxruntime (CUDAExecutionProvider when the device is CUDA and it is available,
    else CPU). Inputs are copied to host memory, outputs back to ``device``.

    Layers: every value a node computes, by its ONNX name, and — for graphs from ``torch.onnx.export``, whose node
    names carry the module scope (``/features/features.0/Conv``) — each module path ('features.0'), meaning the value
    its last node computes; 'penultimate' is the input of the last Gemm/MatMul. Asked-for values are made graph
    outputs with ``onnx.utils.Extractor`` (after ``onnx.shape_inference``; ``onnx.helper.make_tensor_value_info``
    when inference leaves a value without type), and that model runs in its own onnxruntime session (one per set of
    layers)."""

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
            self._providers, self._opts = providers, opts
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise DistillError("invalid_file", f"invalid ONNX teacher: {runtime_message(e)}", "teacher") from None
        self.model = model
        in_shape, out_shape = onnx_shapes(model)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.fixed_batch = in_shape[0] if in_shape else None
        sample = in_shape[1:] if in_shape and len(in_shape) > 1 and all(d is not None for d in in_shape[1:]) else None
        k = out_shape[1] if out_shape and len(out_shape) == 2 else None
        params = onnx_parameters(model)
        notes = [f"ONNX via onnxruntime ({', '.join(self.session.get_providers())})"]
        self._layers, self._types = onnx_layers(model)
        self._sessions: dict[tuple[str, ...], Any] = {}
        super().__init__("onnx", device, parameters=params, num_classes=k, input_shape=sample, notes=notes)  # type: ignore[arg-type]

    def _run(self, x: np.ndarray, session: Any = None, names: list[str] | None = None) -> list[np.ndarray]:
        session, names = session or self.session, names or [self.output_name]
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            b = self.fixed_batch
            parts = []
            for i in range(0, x.shape[0], b):
                xb = x[i : i + b]
                n = xb.shape[0]
                if n < b:
                    xb = np.concatenate([xb, np.zeros((b - n, *xb.shape[1:]), dtype=xb.dtype)])
                parts.append([o[:n] for o in session.run(names, {self.input_name: xb})])
            return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        return session.run(names, {self.input_name: x})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = torch.from_numpy(np.asarray(self._run(arr)[0], dtype=np.float32))
        return out.to(self.device)

    def layer_names(self) -> list[str]:
        """Module paths (graphs from torch.onnx.export), then every node's output value, then 'penultimate'."""
        return list(self._layers)

    def _session_for(self, values: tuple[str, ...]) -> Any:
        if values not in self._sessions:
            import onnx
            import onnxruntime as ort

            outputs = [self.output_name, *[v for v in values if v != self.output_name]]
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
                extracted = onnx.utils.Extractor(inferred).extract_model([self.input_name], outputs)
            except Exception:  # noqa: BLE001 - a value shape inference could not type: declare it float, shape unknown
                extracted = onnx.ModelProto()
                extracted.CopyFrom(self.model)
                for v in outputs[1:]:
                    extracted.graph.output.append(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None))
            session = ort.InferenceSession(extracted.SerializeToString(), sess_options=self._opts, providers=self._providers)
            self._sessions[values] = (session, outputs)
        return self._sessions[values]

    def _features(self, x: torch.Tensor, layers: list[str], param: str | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = tuple(dict.fromkeys(self._layers[n] for n in layers))
        session, outputs = self._session_for(values)
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        try:
            got = dict(zip(outputs, self._run(arr, session, outputs)))
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(runtime_message(e)) from e
        raw = torch.from_numpy(np.asarray(got[self.output_name], dtype=np.float32)).to(self.device)
        feats = {n: torch.from_numpy(np.asarray(got[self._layers[n]], dtype=np.float32)).to(self.device) for n in layers}
        return raw, feats

    def list_layers(self, input_shape: list[int]) -> list[dict[str, Any]]:
        """Every layer (see the class) with its op type and per-sample output shape, from one run of zeros."""
        names = self.layer_names()
        x = torch.zeros(1, *[int(d) for d in input_shape])
        try:
            _, feats = self._features(x, names, None)
        except Exception as e:  # noqa: BLE001
            raise _shape_error(e, input_shape) from None
        return [{"name": n, "type": self._types.get(n, "?"), "output_shape": [int(d) for d in feats[n].shape[1:]]} for n in names]

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

    ``fmt``: 'safetensors' | 'state_dict' | 'torchscript' | 'torch_export' | 'onnx' | 'auto' (sniffed). Weights-only formats
    need ``architecture`` (the spec's, else the safetensors ``stillhouse.architecture`` metadata; the spec
    wins). Raises ``DistillError``: ``invalid_spec`` (no architecture for weights-only formats, bad
    architecture), ``shape_mismatch`` (weights not matching the architecture: the first missing/unexpected keys
    listed), ``invalid_file`` (unreadable file, non-tensor entries), ``unsafe_checkpoint`` (pickle with
    disallowed globals). A 'module.' prefix (DataParallel) is stripped, and a state dict taken out of a training
    checkpoint (beside optimizer state, arguments...), noted in ``teacher.notes``. Tied weights (a safetensors file
    from ``save_model``/transformers that stores a shared tensor once, or a state dict whose entries share storage)
    are tied in the model as well (``formats.tie_weights``), noted. torch.export programs are audited before torch's
    loader runs (``formats.check_pt2_archive``).
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
        ties = tie_weights(model, tensors, meta)
        if ties:
            notes.append("tied weights as stored (shared tensors, counted once): " + ", ".join(ties))
        load_weights_strict(model, tensors, "teacher")
        notes.append(f"architecture {filled['name']} from the {source}")
        return TorchTeacher(model, fmt, device, num_classes=int(filled["kwargs"]["num_classes"]),
                            input_shape=list(filled["kwargs"]["input_shape"]), architecture=filled, notes=notes)
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001
            raise DistillError("invalid_file", f"unreadable TorchScript teacher: {first_line(e)}", "teacher") from None
        return ScriptTeacher(module, device, num_classes=None, input_shape=None)
    if fmt == "torch_export":
        return ExportTeacher(load_exported_program(path, device), device)
    if fmt == "onnx":
        return OnnxTeacher(path, device)
    raise DistillError("invalid_file", "expected a model checkpoint (safetensors, TorchScript, a torch.export program, ONNX or a "
                       f"PyTorch state dict), got {fmt}", "teacher")
