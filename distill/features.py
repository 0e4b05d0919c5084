"""Intermediate features of PyTorch models, captured with forward hooks, for feature-based distillation.

Layers are named by the module path a user sees in ``model.named_modules()`` (e.g. ``'features.3'`` of an
``nn.Sequential``, ``'stages.1.conv2'`` of the ResNet). The special name ``'penultimate'`` means the *input* of
the model's last ``nn.Linear`` (the features the classifier reads), captured with a forward pre-hook.

Hooks need modules that run in Python: eager PyTorch models and ``torch.export`` programs rebuilt with
``torch.export.unflatten`` (each submodule a graph of its own, named by its original path; the original class is
kept in ``module_type`` from the graph's ``nn_module_stack``). TorchScript modules run no hooks inside scripted code,
and ONNX graphs have no modules at all: those teachers give features their own way (``teachers.ScriptTeacher``,
``teachers.OnnxTeacher``).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
from torch import nn

from .errors import DistillError, first_line

PENULTIMATE = "penultimate"


TYPE_ATTR = "stillhouse_module_type"  # set on torch.export.unflatten's submodules: the original class name


def module_type(mod: nn.Module) -> str:
    """The class name a user knows a module by: ``type(mod).__name__`` for eager modules, the scripted class
    (``original_name``) of a TorchScript module, the original class of an unflattened ``torch.export`` submodule."""
    return getattr(mod, TYPE_ATTR, None) or getattr(mod, "original_name", None) or type(mod).__name__


def last_linear(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of the last ``nn.Linear`` (by ``module_type``) in ``model.named_modules()`` order, or None
    when there is none."""
    found = None
    for name, mod in model.named_modules():
        if name and (isinstance(mod, nn.Linear) or module_type(mod) == "Linear"):
            found = (name, mod)
    return found


def unknown_layer(name: str, names: list[str], model: str, param: str | None) -> DistillError:
    """``DistillError('invalid_spec')`` for a layer ``name`` that ``model`` (e.g. "the teacher (file_x, TorchScript)")
    does not have: the nearest existing names (``difflib.get_close_matches``) and up to 30 of ``names``."""
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
    hint = f"; nearest: {', '.join(near)}" if near else ""
    return DistillError("invalid_spec", f"{model} has no layer {name!r}{hint}; its layers are: {shown or '(none)'}", param)


def resolve_layer(model: nn.Module, name: str, param: str | None = None) -> nn.Module:
    """The module called ``name`` in ``model.named_modules()`` (``'penultimate'``: the last ``nn.Linear``, whose
    input is captured).

    Raises ``DistillError('invalid_spec')`` naming ``param`` when there is no such module (the message lists up to
    30 available names) or, for 'penultimate', when the model has no ``nn.Linear``.
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    if name == PENULTIMATE:
        ll = last_linear(model)
        if ll is None:
            raise DistillError("invalid_spec", "the model has no nn.Linear, so it has no 'penultimate' features; name a layer", param)
        return ll[1]
    names = [n for n in modules if n] + ([PENULTIMATE] if last_linear(model) else [])
    raise unknown_layer(name, names, "the model", param)


class FeatureRecorder:
    """Forward hooks on ``model`` that keep the latest output of each layer in ``layers`` while ``active``.

    ``features`` maps each layer name to its last captured tensor ``[B, ...]`` (for 'penultimate': the input of
    the last ``nn.Linear``). Use ``pop()`` after a forward pass to take and clear them; ``close()`` removes the
    hooks. ``param`` names the spec field in errors. Raises ``DistillError('invalid_spec')`` for an unknown layer
    (at construction), and from ``pop()`` when a layer produced nothing (a module never called, or a TorchScript
    module whose hooks do not run) or a non-tensor output.
    """

    def __init__(self, model: nn.Module, layers: list[str], param: str | None = None) -> None:
        self.layers = list(dict.fromkeys(layers))
        self.param = param
        self.features: dict[str, Any] = {}
        self.active = False
        self._handles = []
        for name in self.layers:
            mod = resolve_layer(model, name, param)
            if name == PENULTIMATE and name not in dict(model.named_modules()):
                self._handles.append(mod.register_forward_pre_hook(self._pre_hook(name)))
            else:
                self._handles.append(mod.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if self.active:
                self.features[name] = out

        return hook

    def _pre_hook(self, name: str):
        def hook(_mod: nn.Module, inp: Any) -> None:
            if self.active:
                self.features[name] = inp[0] if isinstance(inp, tuple) and inp else inp

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The captured features ``{layer: Tensor[B, ...]}`` of the last forward pass, then cleared."""
        out, self.features = self.features, {}
        for name in self.layers:
            if name not in out:
                raise DistillError("invalid_spec", f"layer {name!r} produced no output during the forward pass (is it used by the "
                                   "model's forward? TorchScript modules do not run hooks)", self.param)
            if not isinstance(out[name], torch.Tensor):
                raise DistillError("invalid_spec", f"layer {name!r} outputs {type(out[name]).__name__}, not a tensor; choose "
                                   "another layer", self.param)
        return out

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def feature_shapes(model: nn.Module, layers: list[str], sample: torch.Tensor, param: str | None = None) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes ``{layer: (C, H, W) or (D,) ...}`` of ``layers`` for one eval-mode forward pass of
    ``sample [B, *input_shape]`` (the model's train/eval mode is restored). Raises as ``FeatureRecorder``."""
    if not layers:
        return {}
    rec = FeatureRecorder(model, layers, param)
    was_training = model.training
    try:
        model.eval()
        rec.active = True
        with torch.inference_mode():
            model(sample)
        feats = rec.pop()
    finally:
        rec.close()
        model.train(was_training)
    return {k: tuple(int(d) for d in v.shape[1:]) for k, v in feats.items()}


@torch.no_grad()
def list_layers(model: nn.Module, input_shape: list[int] | tuple[int, ...], device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Every named sub-module of ``model`` with its output shape, for choosing feature-distillation layers.

    Runs one eval-mode forward pass of zeros ``[1, *input_shape]`` (float32, on ``device``) with a forward hook on
    every module. Returns ``[{"name": "features.3", "type": "ReLU", "output_shape": [32, 14, 14]}, ...]`` in
    ``named_modules()`` order (the root module excluded), ``output_shape`` being the per-sample shape (batch
    dimension dropped), or None for a module not called in the forward pass, returning a non-tensor, or part of
    a TorchScript model (scripted code runs no hooks; ``type`` is then the scripted module's original class name). When the
    model has an ``nn.Linear``, a last entry ``{"name": "penultimate", "type": "input of <last Linear>",
    "output_shape": [...]}`` describes the classifier's input features. The model's train/eval mode is restored.

    Raises ``DistillError('shape_mismatch')`` when the model cannot take inputs of ``input_shape``.
    """
    mods = [(n, m) for n, m in model.named_modules() if n]
    shapes: dict[str, list[int] | None] = {}
    handles = []

    def make(name: str):
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            shapes[name] = [int(d) for d in out.shape[1:]] if isinstance(out, torch.Tensor) else None

        return hook

    ll = last_linear(model)
    pen: dict[str, list[int]] = {}
    for n, m in mods:
        try:
            handles.append(m.register_forward_hook(make(n)))
        except RuntimeError:  # ScriptModules refuse hooks: listed without an output shape
            pass
    def pre_hook(_m: nn.Module, inp: Any) -> None:  # must return None: a value would replace the Linear's input
        pen["s"] = [int(d) for d in inp[0].shape[1:]]

    if ll is not None:
        try:
            handles.append(ll[1].register_forward_pre_hook(pre_hook))
        except RuntimeError:
            pass
    was_training = model.training
    try:
        model.eval()
        x = torch.zeros(1, *[int(d) for d in input_shape], device=device)
        try:
            model(x)
        except Exception as e:  # noqa: BLE001 - any error here means the input shape does not fit
            raise DistillError("shape_mismatch", f"the model cannot take inputs of shape {list(input_shape)}: "
                               f"{first_line(e)}", "input_shape") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = [{"name": n, "type": module_type(m), "output_shape": shapes.get(n)} for n, m in mods]
    if ll is not None and "s" in pen:
        out.append({"name": PENULTIMATE, "type": f"input of {ll[0]} (Linear)", "output_shape": pen["s"]})
    return out


def layer_names(model: nn.Module) -> list[str]:
    """The layer names of ``model`` a feature method may read: its ``named_modules()`` paths (root excluded), then
    'penultimate' when it has a last Linear."""
    return [n for n, _ in model.named_modules() if n] + ([PENULTIMATE] if last_linear(model) is not None else [])


def _scope_path(node_name: str) -> str:
    """The module path in a ``torch.onnx.export`` node name: '/layer1/layer1.0/conv1/Conv' → 'layer1.0.conv1'."""
    parts = [p for p in node_name.split("/")[:-1] if p]
    path = ""
    for seg in parts:
        path = seg if not path or seg.startswith(path + ".") else f"{path}.{seg}"
    return path


def onnx_layers(model: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The layers of an ONNX graph (``onnx.ModelProto``): ``({layer name: ONNX value name}, {layer name: op type})``.

    Every value a node computes is a layer by its ONNX name; for graphs from ``torch.onnx.export``, whose node names
    carry the module scope (``/features/features.0/Conv``), each module path ('features.0') is one too, meaning the
    value its last node computes; 'penultimate' is the input of the last Gemm/MatMul. Module paths come first."""
    graph_inputs = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    modules: dict[str, str] = {}
    mod_types: dict[str, str] = {}
    values: dict[str, str] = {}
    penultimate = None
    for node in model.graph.node:
        if not node.output or node.op_type == "Constant":
            continue
        out = node.output[0]
        path = _scope_path(node.name) if node.name.startswith("/") else ""
        while path:
            modules[path] = out  # the last node inside the scope gives the module's output
            mod_types[path] = node.op_type
            path = path.rpartition(".")[0] if "." in path else ""
        for o in node.output:
            values.setdefault(o, node.op_type)
        if node.op_type in ("Gemm", "MatMul") and node.input and node.input[0] not in graph_inputs:
            penultimate = node.input[0]
    layers, types = dict(modules), dict(mod_types)
    for v, op in values.items():
        layers.setdefault(v, v)
        types.setdefault(v, op)
    if penultimate is not None:
        layers[PENULTIMATE] = penultimate
        types[PENULTIMATE] = "input of the last Gemm/MatMul"
    return layers, types


def numel(shape: tuple[int, ...] | list[int]) -> int:
    """Number of elements of a per-sample shape (1 for ``()``)."""
    return int(math.prod(shape)) if shape else 1
