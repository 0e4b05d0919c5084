"""Architecture registry: named model builders for teachers (weights-only formats) and students.

Every architecture takes ``input_shape`` (per-sample shape, e.g. ``[1, 8, 8]`` or ``[64]``) and
``num_classes`` plus its own keyword arguments, and returns an ``nn.Module`` mapping
``Tensor[B, *input_shape]`` (float32) to logits ``Tensor[B, num_classes]``.

    >>> model = build("mlp", {"input_shape": [64], "num_classes": 10, "hidden_sizes": [32]})

Bad names or kwargs raise ``DistillError('invalid_spec', ...)`` naming the offending argument.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import nn

from .errors import DistillError

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``f(input_shape, num_classes, **kwargs) -> nn.Module`` under ``name``.

    Raises ``ValueError`` when ``name`` is already registered (a programming error, not a job error).
    """

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


def _builder(name: str) -> Builder:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DistillError(
            "invalid_spec", f"unknown architecture {name!r}; available: {', '.join(available())}", "architecture.name"
        ) from None


def describe(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The filled architecture spec ``{"name": name, "kwargs": {...}}`` with every default written out.

    ``kwargs`` must include ``input_shape`` and ``num_classes``. Raises ``DistillError('invalid_spec')``
    for an unknown name, an unknown kwarg or a missing required one. Values are not range-checked here
    (``build`` does that); the result is JSON-serialisable when the inputs are.
    """
    fn = _builder(name)
    sig = inspect.signature(fn)
    unknown = sorted(set(kwargs) - set(sig.parameters))
    if unknown:
        allowed = ", ".join(sig.parameters)
        raise DistillError(
            "invalid_spec",
            f"unknown argument {unknown[0]!r} for architecture {name!r}; allowed: {allowed}",
            f"architecture.kwargs.{unknown[0]}",
        )
    filled: dict[str, Any] = {}
    for pname, param in sig.parameters.items():
        if pname in kwargs:
            value = kwargs[pname]
        elif param.default is inspect.Parameter.empty:
            raise DistillError(
                "invalid_spec", f"architecture {name!r} needs {pname!r}", f"architecture.kwargs.{pname}"
            )
        else:
            value = param.default
        filled[pname] = list(value) if isinstance(value, tuple) else value
    return {"name": name, "kwargs": filled}


def build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build architecture ``name`` with ``kwargs`` (which must include ``input_shape`` and ``num_classes``).

    Returns a freshly initialised module in train mode on the CPU, float32; its initialisation uses the
    global torch RNG (seed it with ``torch.manual_seed`` for reproducible weights).
    Raises ``DistillError('invalid_spec', ...)`` naming the bad name/kwarg/value.
    """
    spec = describe(name, kwargs)
    return _builder(name)(**spec["kwargs"])


def parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters (``requires_grad`` or not, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- validation


def _bad(arg: str, msg: str) -> DistillError:
    return DistillError("invalid_spec", f"{arg}: {msg}", f"architecture.kwargs.{arg}")


def _int(arg: str, value: Any, lo: int, hi: int = 1 << 20) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(arg, f"expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _int_list(arg: str, value: Any, lo: int, *, min_len: int = 0, max_len: int = 16) -> list[int]:
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len:
        raise _bad(arg, f"expected a list of {min_len}..{max_len} integers, got {value!r}")
    return [_int(arg, v, lo) for v in value]


def _shape(value: Any) -> list[int]:
    return _int_list("input_shape", value, 1, min_len=1, max_len=4)


def _image_shape(arch: str, value: Any) -> tuple[int, int, int]:
    shape = _shape(value)
    if len(shape) != 3:
        raise _bad("input_shape", f"architecture {arch!r} needs a 3-dim [C, H, W] input shape, got {shape}")
    return shape[0], shape[1], shape[2]


# ------------------------------------------------------------------------------------- architectures


@register("mlp")
def mlp(
    input_shape: list[int],
    num_classes: int,
    hidden_sizes: list[int] = [128],  # noqa: B006 - read-only default, copied by describe()
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """Multi-layer perceptron: Flatten → (Linear → activation → Dropout) per hidden size → Linear.

    Input ``Tensor[B, *input_shape]`` (any rank, flattened to ``prod(input_shape)`` features),
    output logits ``Tensor[B, num_classes]``. ``activation`` ∈ relu|gelu|tanh|silu; ``dropout`` in [0, 1).
    """
    shape = _shape(input_shape)
    k = _int("num_classes", num_classes, 1)
    hidden = _int_list("hidden_sizes", hidden_sizes, 1)
    if activation not in _ACTIVATIONS:
        raise _bad("activation", f"expected one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise _bad("dropout", f"expected a number in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for h in hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(float(dropout)))
        width = h
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers)


@register("cnn")
def cnn(
    input_shape: list[int],
    num_classes: int,
    channels: list[int] = [32, 64],  # noqa: B006
    kernel_size: int = 3,
    hidden: int = 128,
) -> nn.Module:
    """Plain CNN: per width, Conv2d(same padding) → BatchNorm2d → ReLU → MaxPool2d(2), then Flatten →
    Linear(hidden) → ReLU (omitted when ``hidden`` is 0) → Linear(num_classes).

    Input ``Tensor[B, C, H, W]`` (``input_shape`` must be ``[C, H, W]``), output ``Tensor[B, num_classes]``.
    Pooling is skipped where it would shrink a spatial side below 1.
    """
    c, h, w = _image_shape("cnn", input_shape)
    k = _int("num_classes", num_classes, 1)
    widths = _int_list("channels", channels, 1, min_len=1)
    ks = _int("kernel_size", kernel_size, 1, 15)
    hid = _int("hidden", hidden, 0)
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(c, width, ks, padding="same"), nn.BatchNorm2d(width), nn.ReLU()]
        if h // 2 >= 1 and w // 2 >= 1:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = width
    layers.append(nn.Flatten())
    features = c * h * w
    if hid > 0:
        layers += [nn.Linear(features, hid), nn.ReLU()]
        features = hid
    layers.append(nn.Linear(features, k))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition"):
    conv3x3(stride) → BN → ReLU → conv3x3 → BN, plus the identity (or a 1x1 conv + BN projection when the
    channel count or stride changes), then ReLU. ``Tensor[B, c_in, H, W] → Tensor[B, c_out, H/stride, W/stride]``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small residual CNN: stem conv3x3 → BN → ReLU, stages of ``BasicBlock`` (stride 2 at the start of every
    stage after the first), global average pool, Linear. ``Tensor[B, C, H, W] → Tensor[B, num_classes]``."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], blocks_per_stage: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c = channels[0]
        for i, width in enumerate(channels):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(c, width, 2 if (i > 0 and b == 0) else 1))
                c = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


@register("resnet")
def resnet(
    input_shape: list[int],
    num_classes: int,
    channels: list[int] = [16, 32, 64],  # noqa: B006
    blocks_per_stage: int = 1,
) -> nn.Module:
    """Small ResNet (He et al. 2016) for ``[C, H, W]`` inputs: one stage of ``blocks_per_stage`` BasicBlocks per
    entry of ``channels``, stride 2 between stages. ``Tensor[B, C, H, W] → Tensor[B, num_classes]``."""
    c, _, _ = _image_shape("resnet", input_shape)
    k = _int("num_classes", num_classes, 1)
    widths = _int_list("channels", channels, 1, min_len=1, max_len=8)
    blocks = _int("blocks_per_stage", blocks_per_stage, 1, 16)
    return ResNet(c, k, widths, blocks)
