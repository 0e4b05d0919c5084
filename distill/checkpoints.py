"""Weights-only loading of PyTorch checkpoints (``torch.load(weights_only=True)`` and nothing more), finding the state
dict inside a training checkpoint, and the error messages that name what a refused pickle wanted to build.

Shared by ``formats`` (uploads and tensor teachers) and ``hf_archive`` (``.bin`` weights of Hugging Face folders).
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import DistillError, first_line


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


# Classes that a checkpoint may hold beside its tensors and that torch's weights-only unpickler is allowed to
# rebuild here. Each one is provably inert to rebuild: the unpickler creates it with ``cls.__new__`` (object's),
# fills its instance ``__dict__`` (BUILD; the class defines no ``__setstate__``) and, for REDUCE, could only call
# ``cls(*args)``, whose ``__init__`` takes keyword arguments only, so positional arguments fail with TypeError.
# No code of the file's choosing runs, and the object is dropped after its tensors are taken.
INERT_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
torch.serialization.add_safe_globals(list(INERT_GLOBALS))

# keys under which training scripts store the model's weights beside other things, most specific first
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _unsafe_globals(path: Path | None) -> list[str]:
    """Names of the globals a ``torch.save`` zip archive refers to that weights-only loading refuses, read from the
    pickle's opcodes without executing any of them; [] when they cannot be listed (legacy format, corrupt file)."""
    if path is None:
        return []
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - only used to improve a message
        return []


def _unsafe(err: Exception, path: Path | None = None) -> DistillError:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    names = _unsafe_globals(path)
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[s]? ['`\"]?([\w.]+)", text)
    if names:
        what = f"the disallowed global{'s' if len(names) > 1 else ''} {', '.join(names[:10])}" + (" ..." if len(names) > 10 else "")
    elif m:
        what = f"the disallowed global {m.group(1)}"
    else:  # quote torch's specific reason line, not its advice to disable weights_only
        reason = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln or "not allowed" in ln), "")
        what = f"objects that weights-only loading does not allow ({reason[:200]})" if reason else "objects that weights-only loading does not allow"
    return DistillError(
        "unsafe_checkpoint",
        f"refused to load: the checkpoint wants to construct {what}; only tensors, plain containers "
        "(dict, list, numbers, strings) and argparse.Namespace are accepted. Save weights with safetensors or "
        "torch.save(model.state_dict())",
        "file",
    )


def torch_load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU. Raises ``DistillError('unsafe_checkpoint')`` naming the
    disallowed globals when the pickle wants to build anything else, ``DistillError('invalid_file')`` when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unsafe(e, path) from None
    except RuntimeError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise _unsafe(e, path) from None
        raise _invalid(f"unreadable PyTorch checkpoint: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - EOFError, ValueError, zip errors on corrupt files
        raise _invalid(f"unreadable PyTorch checkpoint ({type(e).__name__}: {str(e)[:300]})") from None


def _is_tensor_map(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_tensor_map(obj: Any) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise _invalid(f"expected a state dict (a mapping of parameter names to tensors), got {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise _invalid(f"state dict key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise _invalid(f"state dict entry {k!r} is a {_type_name(v)}, expected a tensor")
    return dict(obj)


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A flat ``{name: Tensor}`` state dict from a weights-only-loaded object, and notes on what was left aside.

    Accepts the mapping itself, or a training checkpoint holding it beside other things (epoch, optimizer state,
    an ``argparse.Namespace`` of arguments...): under the first of ``STATE_DICT_KEYS`` present
    ('state_dict', 'model_state_dict', 'model', 'net', 'network'), else under the only key whose value is a
    mapping of names to tensors. The notes name the key used and the entries ignored (with their types).
    Raises ``DistillError('invalid_file')`` naming the first entry that is not a tensor, when several candidate
    state dicts exist under unknown keys, or when there is no mapping of str -> Tensor at all.
    """
    if _is_tensor_map(obj):
        return dict(obj), []
    if isinstance(obj, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            maps = [k for k, v in obj.items() if isinstance(k, str) and _is_tensor_map(v)]
            if len(maps) > 1:
                raise _invalid(f"the checkpoint holds several state dicts ({', '.join(repr(k) for k in maps[:5])}); "
                               f"save the one to distil from alone, or under the key 'state_dict'")
            key = maps[0] if maps else None
        if key is not None:
            tensors = _check_tensor_map(obj[key])
            rest = [f"{k} ({_type_name(v)})" for k, v in obj.items() if k != key]
            note = f"took the {len(tensors)} tensors under {key!r}"
            if rest:
                note += f"; ignored {', '.join(rest[:8])}" + (f" and {len(rest) - 8} more" if len(rest) > 8 else "")
            return tensors, [note]
    return _check_tensor_map(obj), []


def state_dict_from_object(obj: Any) -> dict[str, torch.Tensor]:
    """``extract_state_dict(obj)`` without the notes: a flat ``{name: Tensor}`` state dict. Raises
    ``DistillError('invalid_file')`` as ``extract_state_dict`` does."""
    return extract_state_dict(obj)[0]


def file_bytes_text(n: int) -> str:
    """Human-readable size of ``n`` bytes (e.g. '1.2 MB'), for messages and summaries."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
