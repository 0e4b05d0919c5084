"""Safe detection, validation and loading of uploaded checkpoints and datasets.

Used by the API when a file is uploaded (``sniff`` + ``inspect_file``) and by the worker when a job
runs (``load_tensors``, ``read_dataset``). Pickle data is never unpickled beyond
``torch.load(weights_only=True)``; NPZ files are read with ``allow_pickle=False``.

Model formats: ``safetensors``, ``torchscript``, ``torch_export`` (a ``torch.export.save`` .pt2 archive, see
``load_exported_program`` for how it is checked before torch's loader runs), ``state_dict`` (``torch.save`` of a
mapping of tensors, zip or legacy pickle), ``onnx``, ``hf`` (a Hugging Face model folder as .zip or .tar.gz, see ``hf_archive``).
Dataset formats: ``npz`` (``X`` of shape ``(N, ...)``, optional integer ``y`` of shape ``(N,)`` with -1 =
unlabelled), ``csv`` (header row; either numeric columns with label column ``label`` unless told otherwise,
or a text CSV with a ``text`` column, see ``text_data``) and ``jsonl`` (text: one ``{"text", "label"}``
object per line).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DistillError, first_line
from .checkpoints import extract_state_dict, file_bytes_text, state_dict_from_object, torch_load_weights_only
from .features import TYPE_ATTR, layer_names, onnx_layers
from .hf_archive import inspect_hf_folder, is_hf_archive, safe_extract
from .lm.gguf import GGUF_MAGIC
from .lm.uploads import inspect_gguf
from .lm.records import lm_kind, read_records, records_details
from .models import build, describe, parameter_count
from .text_data import classify_csv, looks_like_jsonl, read_text_dataset, text_details

MODEL_FORMATS = ("safetensors", "torchscript", "torch_export", "state_dict", "onnx", "hf", "gguf")
DATASET_FORMATS = ("npz", "csv", "jsonl")
DEFAULT_MAX_UNPACKED_BYTES = 4 * 1024**3
PURPOSES = ("teacher", "student_init", "dataset")
ARCH_METADATA_KEY = "stillhouse.architecture"

_FORMAT_NAMES = {
    "safetensors": "safetensors",
    "torchscript": "TorchScript",
    "torch_export": "a torch.export program (.pt2)",
    "state_dict": "a PyTorch state dict",
    "onnx": "ONNX",
    "hf": "a Hugging Face model archive",
    "gguf": "a GGUF model",
    "npz": "NPZ",
    "csv": "CSV",
    "jsonl": "JSONL",
}
def _sniffed_as(path: Path, fmt: str) -> str:
    """What ``sniff`` took the file at ``path`` for, in words for an error message: the format's name, and for text
    formats what the text was read as (a plain text file sniffs as a one-column CSV, so 'CSV' alone would mislead).
    Example: ``"plain text (sniffed as CSV: no comma, semicolon or tab in its first line 'hello world', read as a
    one-column header)"``. Raises nothing (an unreadable first line is left out)."""
    name = _FORMAT_NAMES.get(fmt, fmt)
    if fmt not in ("csv", "jsonl"):
        return name
    try:
        with open(path, "rb") as f:
            first = f.readline(200).removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").strip()
    except OSError:
        return f"text ({name})"
    shown = first if len(first) <= 60 else first[:57] + "..."
    if fmt == "csv" and not any(d in first for d in ",;\t"):
        return f"plain text (sniffed as CSV: no comma, semicolon or tab in its first line {shown!r}, read as a one-column header)"
    if fmt == "csv":
        return f"CSV text (header row {shown!r})"
    return f"JSONL text (first line {shown!r})"


_EXPECTED_MODEL = (
    "a model checkpoint (safetensors, TorchScript, a torch.export .pt2 program, ONNX, a PyTorch state dict, "
    "a Hugging Face model folder as .zip/.tar.gz, or a GGUF language model)"
)
_EXPECTED_DATASET = "a dataset (NPZ with 'X' and optional 'y', CSV with a header row, or JSONL with a 'text' field)"
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class FileInput:
    """An uploaded file handed to the core: its ``path``, sniffed ``format`` (see ``sniff``; 'auto' = sniff
    again), size in ``bytes`` and, when the caller knows it, the ``sha256`` hex of its bytes."""

    path: Path
    format: str
    bytes: int
    sha256: str | None = None


@dataclass
class FileInfo:
    """What ``inspect_file`` found.

    ``format``: one of ``sniff``'s results. ``parameters``: scalar parameter count of a model (buffers such as
    BatchNorm running statistics excluded when they can be told apart), None for datasets.
    ``input_shape``/``output_shape``: full tensor shapes *including* the batch dimension, ``None`` entries for
    dynamic dimensions (e.g. ``[None, 1, 8, 8]`` and ``[None, 10]``), or None when unknown.
    ``details``: format-specific facts (datasets: samples, feature_shape, has_labels, num_classes,
    unlabelled; models: tensors, architecture, opset, tied (weights stored once and tied), dynamic_batch (torch.export),
    layers (the layer names feature methods may read, when the file says: TorchScript module paths, torch.export
    module paths, ONNX module paths and values, a stored architecture's modules), ...). JSON-serialisable.
    """

    format: str
    parameters: int | None = None
    input_shape: list[int | None] | None = None
    output_shape: list[int | None] | None = None
    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- sniff


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


def _safetensors_header(path: Path, size: int) -> dict[str, Any] | None:
    """Parse a safetensors header; None when the file does not look like safetensors at all.

    Raises ``invalid_file`` for a file that starts like safetensors but is truncated or inconsistent.
    """
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9:
            return None
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{":
            return None
        if n > size - 8 or n > 100 * 1024 * 1024:
            raise _invalid(
                f"truncated or corrupt safetensors file: the header declares {n} bytes but the file has {size - 8} after the length"
            )
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid(f"corrupt safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise _invalid("corrupt safetensors header (expected a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or "data_offsets" not in entry:
            raise _invalid(f"corrupt safetensors header: entry {name!r} has no data_offsets")
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + n + end != size:
        raise _invalid(
            f"truncated or corrupt safetensors file: tensors need {8 + n + end} bytes, the file has {size}"
        )
    return header


def _looks_like_text(sample: bytes) -> bool:
    if not sample or b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 4:  # a multi-byte character cut at the end of the sample is fine
            return False
        text = sample[: e.start].decode("utf-8")
    # binary data shows control characters; text may hold any other character (no-break spaces, zero-width
    # joiners in emoji, soft hyphens: not "printable" to Python, but ordinary in review texts)
    return not any(unicodedata.category(ch) == "Cc" and ch not in "\t\r\n\f\v" for ch in text)


def sniff(path: str | Path) -> str:
    """Detect a file's format from its content (never its name).

    Returns one of 'safetensors', 'torchscript', 'torch_export', 'state_dict', 'onnx', 'hf', 'gguf', 'npz', 'csv', 'jsonl'.
    'gguf': starts with the GGUF magic (a llama.cpp model file).
    'hf': a .zip or .tar.gz with ``config.json`` at its root or in its single top-level folder (checked
    first; a .tar.gz is decompressed once to list it). 'jsonl': text whose first non-empty line is a JSON
    object; other text with a non-empty first line is 'csv'.
    Raises ``DistillError('invalid_file', ...)`` saying what was expected when none fits (random bytes,
    a truncated safetensors file, an empty file, an unknown zip archive, text without a header row).
    Cost: reads the safetensors header, the zip directory, the tar headers, or (for ONNX) parses the protobuf.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise _invalid(f"empty file; expected {_EXPECTED_MODEL} or {_EXPECTED_DATASET}")
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    head = head.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Excel's CSV export)
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    if (head.startswith(b"PK\x03\x04") or head.startswith(b"\x1f\x8b")) and is_hf_archive(path):
        return "hf"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise _invalid(f"corrupt zip archive ({e}); expected a TorchScript/torch.save archive or NPZ") from None
        if _pt2_prefix(names) is not None:
            return "torch_export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "state_dict"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise _invalid(
            "zip archive that is neither a TorchScript/torch.save archive, an NPZ of .npy arrays, nor a Hugging Face "
            "model folder (config.json at the root or inside one top-level folder)"
        )
    if _safetensors_header(path, size) is not None:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "state_dict"  # legacy (non-zip) torch.save / pickle: only ever loaded with weights_only=True
    if _looks_like_text(head):
        first = head.splitlines()[0] if head.splitlines() else b""
        if head.lstrip().startswith(b"{") and looks_like_jsonl(path):
            return "jsonl"
        if first.strip():
            return "csv"
        raise _invalid("text file without a header row; expected CSV with a header")
    try:
        import onnx

        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        if len(model.graph.output) == 0:
            raise ValueError("graph has no outputs")
        return "onnx"
    except Exception:  # noqa: BLE001 - anything unparsable is simply not ONNX
        pass
    raise _invalid(f"unrecognised file format; expected {_EXPECTED_MODEL} or {_EXPECTED_DATASET}")


# ------------------------------------------------------------------------------------- model loading


def _pt2_prefix(names: list[str]) -> str | None:
    """The top folder of a ``torch.export.save`` archive ('m/' for ``m/archive_format``; '' at the root), or None when
    the zip's names are not a PT2 archive's (``archive_format`` beside ``models/*.json``)."""
    for n in names:
        if n.endswith("archive_format"):
            prefix = n[: -len("archive_format")]
            if "/" not in prefix.rstrip("/") and any(m.startswith(prefix + "models/") and m.endswith(".json") for m in names):
                return prefix
    return None


_PT2_UNSAFE_MEMBER = re.compile(r"^data/aotinductor/|^data/(weights|constants)/[^/]+\.pt$|\.(so|cpp|wrapper)$")


def _weights_only_bytes(raw: bytes, what: str) -> None:
    """``torch.load(weights_only=True)`` of ``raw``; raises ``unsafe_checkpoint`` naming ``what`` when the pickle wants
    anything beyond tensors and plain containers, ``invalid_file`` when unreadable."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e) or "Unsupported global" in str(e):
            raise DistillError("unsafe_checkpoint", f"the torch.export archive's {what} needs more than weights-only unpickling "
                               f"({first_line(e)}); it was not loaded", "file") from None
        raise _invalid(f"unreadable torch.export archive: {what}: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - zip/EOF errors of a corrupt member
        raise _invalid(f"unreadable torch.export archive: {what} ({type(e).__name__}: {str(e)[:200]})") from None


def check_pt2_archive(path: str | Path) -> None:
    """Check a ``torch.export.save`` archive so that ``torch.export.load`` unpickles nothing unsafe.

    Read in torch 2.13's loader (``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``):
    the program itself is JSON (``models/<name>.json``, targets resolved as ``torch.ops`` names), and plain weights and
    constants are raw bytes viewed with ``torch.as_strided``; pickle enters at (1) weight/constant entries with
    ``use_pickle`` (tensor subclasses), loaded with ``torch.load(weights_only=False)``, (2) ``custom_obj_*`` /
    ``opaque_obj_*`` constants (``torch._C._pickle_load_obj`` / ``pickle.loads``), (3) ``sample_inputs/<name>.pt``,
    ``torch.load(weights_only=True)`` with a fallback to ``weights_only=False``, (4) the legacy ``data/weights/<name>.pt``
    and ``data/constants/<name>.pt`` files, and torch's loader also reads (5) AOTInductor packages (compiled code) and
    (6) the pre-2.8 archive layout through its own path. So: (2), (4), (5) and archives that are not the current layout
    are refused; every pickle of (1) and (3) must load with ``torch.load(weights_only=True)`` first, so the unpickler
    torch then runs only meets the globals that allow-list admits (tensor rebuilds, plain containers).

    Raises ``DistillError('unsafe_checkpoint')`` (naming the member) or ``DistillError('invalid_file')`` (not a PT2
    archive, corrupt member or config).
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            prefix = _pt2_prefix(names)
            if prefix is None:
                raise _invalid("not a torch.export archive (no archive_format beside models/*.json)")
            if z.read(prefix + "archive_format").decode("utf-8", "replace").strip() != "pt2":
                raise _invalid("not a torch.export archive: archive_format is not 'pt2'")
            for n in names:
                rel = n[len(prefix):]
                if _PT2_UNSAFE_MEMBER.search(rel):
                    raise DistillError("unsafe_checkpoint", f"the torch.export archive holds {rel!r} (compiled code or a "
                                       "legacy pickled payload), which is never loaded; re-save the program with "
                                       "torch.export.save", "file")
            for n in names:
                rel = n[len(prefix):]
                if rel.startswith("data/sample_inputs/"):
                    _weights_only_bytes(z.read(n), rel)
            for kind in ("weights", "constants"):
                for n in names:
                    rel = n[len(prefix):]
                    if not (rel.startswith(f"data/{kind}/") and rel.endswith("_config.json")):
                        continue
                    entries = json.loads(z.read(n)).get("config", {})
                    for fqn, meta in entries.items():
                        file = str(meta.get("path_name", ""))
                        if file.startswith(("custom_obj", "opaque_obj")):
                            raise DistillError("unsafe_checkpoint", f"the torch.export archive's constant {fqn!r} is a "
                                               "script/opaque object (loaded with full pickle); it was not loaded", "file")
                        if meta.get("use_pickle"):
                            _weights_only_bytes(z.read(f"{prefix}data/{kind}/{file}"), f"{kind[:-1]} {fqn!r}")
    except DistillError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, AttributeError) as e:
        raise _invalid(f"unreadable torch.export archive ({type(e).__name__}: {str(e)[:200]})") from None


def load_exported_program(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """``torch.export.load`` of a .pt2 archive after ``check_pt2_archive`` (which see for the pickle audit), moved to
    ``device`` with ``torch.export.passes.move_to_device_pass`` when that is not the CPU. Returns the
    ``ExportedProgram``. Raises ``DistillError`` (unsafe_checkpoint, invalid_file)."""
    import warnings

    check_pt2_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(str(path))
            if torch.device(device).type != "cpu":
                from torch.export.passes import move_to_device_pass

                ep = move_to_device_pass(ep, str(device))
    except Exception as e:  # noqa: BLE001
        raise _invalid(f"unreadable torch.export program: {first_line(e)}") from None
    return ep


def unflatten_program(ep: Any) -> torch.nn.Module:
    """``torch.export.unflatten(ep)``: the program as its original module hierarchy (submodules named by their paths,
    each a graph run as generated Python code rather than by ``torch.fx.Interpreter``: 2.6 against 9.2 ms a call at
    batch 1 for the bench's mnist CNN; forward hooks run either way), each submodule tagged with its original class name (``features.TYPE_ATTR``, from the
    graph's ``nn_module_stack``) so that e.g. the last Linear is still found."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.unflatten(ep)
    types: dict[str, str] = {}
    for node in ep.graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            types.setdefault(str(path), str(cls).rsplit(".", 1)[-1])
    for name, sub in module.named_modules():
        if name and name in types:
            setattr(sub, TYPE_ATTR, types[name])
        if hasattr(sub, "_run_with_interpreter"):  # run each graph's generated code, not torch.fx.Interpreter node by node
            sub._run_with_interpreter = False
    return module


def exported_io_shapes(ep: Any) -> tuple[list[int | None] | None, list[int | None] | None]:
    """Shapes ``(input, output)`` of an ``ExportedProgram``'s first user input and first output, batch included,
    ``None`` for a dynamic (symbolic) dimension; None overall when not a tensor."""
    def dims(node: Any) -> list[int | None] | None:
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor):
            return None
        return [int(d) if isinstance(d, int) else None for d in val.shape]

    user = set(ep.graph_signature.user_inputs)
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    out = [n for n in ep.graph.nodes if n.op == "output"]
    first_out = None
    if out and out[0].args and out[0].args[0]:
        first_out = out[0].args[0][0]
    return (dims(inputs[0]) if inputs else None), dims(first_out)


def load_tensors(path: str | Path, fmt: str, notes: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a weights-only checkpoint (``fmt`` 'safetensors' or 'state_dict') onto the CPU.

    Returns ``(state_dict, metadata)``; metadata is the safetensors ``__metadata__`` (``{}`` for state dicts).
    A state dict saved inside a training checkpoint is taken out (``extract_state_dict``); what was left aside
    is appended to ``notes`` when given. Raises ``DistillError('unsafe_checkpoint')`` when a pickle wants
    disallowed globals (naming them all) and ``DistillError('invalid_file')`` for corrupt files or non-tensor
    entries.
    """
    path = Path(path)
    if fmt == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends
            raise _invalid(f"unreadable safetensors file: {e}") from None
        return tensors, meta
    if fmt == "state_dict":
        tensors, found = extract_state_dict(torch_load_weights_only(path))
        if notes is not None:
            notes.extend(found)
        return tensors, {}
    raise DistillError("invalid_spec", f"format {fmt!r} is not a weights-only checkpoint format", "teacher.format")


def architecture_from_metadata(meta: dict[str, str]) -> dict[str, Any] | None:
    """The stillhouse architecture ``{"name", "kwargs"}`` stored in safetensors metadata, or None.

    Raises ``DistillError('invalid_file')`` when the key is present but is not a JSON object with a name.
    """
    raw = meta.get(ARCH_METADATA_KEY)
    if raw is None:
        return None
    try:
        arch = json.loads(raw)
    except json.JSONDecodeError:
        raise _invalid(f"metadata {ARCH_METADATA_KEY!r} is not valid JSON") from None
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs", {}), dict):
        raise _invalid(f"metadata {ARCH_METADATA_KEY!r} must be {{'name': str, 'kwargs': {{...}}}}")
    return {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}


def tensor_aliases(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Entries of a state dict that share memory with an earlier one (tied weights: same storage, offset, shape and
    strides, as ``torch.save`` keeps them): ``{alias: first name}``."""
    seen: dict[tuple[Any, ...], str] = {}
    out: dict[str, str] = {}
    for k, t in tensors.items():
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in seen:
            out[k] = seen[key]
        else:
            seen[key] = k
    return out


def tie_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> list[str]:
    """Tie the parameters of ``model`` that the checkpoint stores once (in place, on ``model`` and ``tensors``).

    Two layouts: a safetensors file written by ``safetensors.torch.save_model`` (or transformers) drops all but one
    name of a shared tensor and records ``{dropped: kept}`` in its metadata; a ``torch.save`` state dict keeps every
    name, the aliases sharing storage (``tensor_aliases``). For each such pair that the model has, with equal shapes,
    the dropped/alias parameter becomes the kept one (``setattr`` on its parent module), so the model shares it as the
    checkpoint did and ``parameters()`` counts it once; ``tensors`` gains the dropped name. Returns notes ("3.weight
    tied to 1.weight"), empty when nothing was tied.
    """
    own = dict(model.named_parameters(remove_duplicate=False))
    pairs = dict(tensor_aliases(tensors))
    for dropped, kept in meta.items():
        if dropped in own and dropped not in tensors and kept in tensors:
            pairs[dropped] = kept
    notes = []
    for alias, kept in pairs.items():
        if alias not in own or kept not in own or own[alias].shape != own[kept].shape or own[alias] is own[kept]:
            continue
        parent_name, _, attr = alias.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, model.get_parameter(kept))
        tensors.setdefault(alias, tensors[kept])
        notes.append(f"{alias} tied to {kept}")
    return notes


def _count_weights(tensors: dict[str, torch.Tensor]) -> int:
    """Scalar parameters of a state dict, buffers excluded and tied (aliased) tensors counted once."""
    aliases = tensor_aliases(tensors)
    return sum(t.numel() for k, t in tensors.items() if not k.endswith(_BUFFER_SUFFIXES) and k not in aliases)


def onnx_shapes(model: Any) -> tuple[list[int | None] | None, list[int | None] | None]:
    """Shapes ``(input, output)`` of an ``onnx.ModelProto``'s first real graph input and first output;
    ``None`` for dynamic dimensions, None overall when the shape is not declared."""
    inits = {i.name for i in model.graph.initializer}

    def dims(vi: Any) -> list[int | None] | None:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]

    inputs = [i for i in model.graph.input if i.name not in inits]
    return (dims(inputs[0]) if inputs else None), (dims(model.graph.output[0]) if model.graph.output else None)


def onnx_parameters(model: Any) -> int:
    """Scalar parameters of an ``onnx.ModelProto``: its initializers, one per distinct content (an exporter may store a
    tied weight twice)."""
    seen: set[Any] = set()
    total = 0
    for init in model.graph.initializer:
        key = (tuple(init.dims), init.data_type, init.raw_data) if init.raw_data else (init.name,)
        if key not in seen:
            seen.add(key)
            total += math.prod(init.dims)
    return int(total)


MAX_LISTED_LAYERS = 2000  # layer names kept in a model file's details (for the job-creation check of layer names)


def _with_layers(info: FileInfo, names: list[str]) -> FileInfo:
    """``info`` with ``details['layers']``: the first ``MAX_LISTED_LAYERS`` layer names a feature method may read."""
    info.details["layers"] = names[:MAX_LISTED_LAYERS]
    return info


def _inspect_model(path: Path, fmt: str) -> FileInfo:
    if fmt in ("safetensors", "state_dict"):
        notes: list[str] = []
        tensors, meta = load_tensors(path, fmt, notes)
        info = FileInfo(fmt, parameters=_count_weights(tensors), details={"tensors": len(tensors)})
        if notes:
            info.details["notes"] = notes
        arch = architecture_from_metadata(meta)
        if arch is not None:

            try:
                filled = describe(arch["name"], arch["kwargs"])
                model = build(arch["name"], arch["kwargs"])
                ties = tie_weights(model, tensors, meta)
                model.load_state_dict(tensors, strict=True)
            except (DistillError, RuntimeError) as e:
                raise _invalid(f"the stored architecture metadata does not match the weights: {e}") from None
            info.parameters = parameter_count(model)
            info.input_shape = [None, *filled["kwargs"]["input_shape"]]
            info.output_shape = [None, filled["kwargs"]["num_classes"]]
            info.details["architecture"] = filled
            if ties:
                info.details["tied"] = ties
            _with_layers(info, layer_names(model))
        if any(k.startswith("module.") for k in tensors):
            info.details["module_prefix"] = True
        return info
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise _invalid(f"unreadable TorchScript archive: {first_line(e)}") from None
        return _with_layers(FileInfo(fmt, parameters=parameter_count(module), details={}), layer_names(module))
    if fmt == "torch_export":
        ep = load_exported_program(path)
        in_shape, out_shape = exported_io_shapes(ep)
        module = unflatten_program(ep)
        info = FileInfo(fmt, parameters=parameter_count(module), input_shape=in_shape, output_shape=out_shape,
                        details={"dynamic_batch": bool(in_shape) and in_shape[0] is None,
                                 "inputs": len(ep.graph_signature.user_inputs)})
        return _with_layers(info, layer_names(module))
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise _invalid(f"invalid ONNX model: {first_line(e)}") from None
        in_shape, out_shape = onnx_shapes(model)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
        info = FileInfo(fmt, parameters=onnx_parameters(model), input_shape=in_shape, output_shape=out_shape, details={"opset": opset})
        return _with_layers(info, list(onnx_layers(model)[0]))
    raise _invalid(f"expected {_EXPECTED_MODEL}, got {_sniffed_as(path, fmt)}")


# ----------------------------------------------------------------------------------------- datasets


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.dtype.kind not in "iuf" or y.dtype == np.float16:
        raise _invalid(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise _invalid(f"{where}: labels must be integer-valued")
    if y.size and y.min() < -1:
        raise _invalid(f"{where}: labels must be >= -1 (-1 = unlabelled), found {int(y.min())}")
    return y.astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "X" not in keys:
                raise _invalid(f"NPZ has no 'X' array (found: {', '.join(keys) or 'nothing'}); expected X of shape (N, ...) and optional y")
            x = z["X"]
            y = z["y"] if "y" in keys else None
    except DistillError:
        raise
    except ValueError as e:  # object arrays need pickle
        raise _invalid(f"NPZ arrays must be numeric, not Python objects ({e})") from None
    except Exception as e:  # noqa: BLE001
        raise _invalid(f"unreadable NPZ file ({type(e).__name__}: {e})") from None
    if x.dtype.kind not in "iufb":
        raise _invalid(f"NPZ 'X' must be numeric, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise _invalid(f"NPZ 'X' must have shape (N, ...) with N >= 1 and at least 2 dimensions, got {list(x.shape)}")
    if y is not None:
        if y.shape != (x.shape[0],):
            raise _invalid(f"NPZ 'y' must have shape ({x.shape[0]},) to match X, got {list(y.shape)}")
        y = _labels(y, "NPZ 'y'")
    return x, y


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise _invalid("CSV has no header row")
            header = [h.strip() for h in header]
            rows: list[list[float]] = []
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise _invalid(f"CSV line {lineno} has {len(row)} columns, the header has {len(header)}")
                values = []
                for col, cell in zip(header, row):
                    try:
                        values.append(float(cell))
                    except ValueError:
                        raise _invalid(
                            f"CSV column {col!r} is not numeric (line {lineno}: {cell[:40]!r}); every column must be a number"
                        ) from None
                rows.append(values)
    except UnicodeDecodeError:
        raise _invalid("CSV is not UTF-8 text") from None
    if not rows:
        raise _invalid("CSV has a header but no data rows")
    table = np.asarray(rows, dtype=np.float64)
    if label_column in header:
        j = header.index(label_column)
        y = _labels(table[:, j], f"CSV column {label_column!r}")
        x = np.delete(table, j, axis=1)
    else:
        y = None
        x = table
    if x.shape[1] == 0:
        raise _invalid("CSV has no feature columns besides the label column")
    return x, y


def csv_columns(path: str | Path) -> list[str]:
    """The header row of a CSV file (stripped names). Raises ``DistillError('invalid_file')`` if unreadable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError) as e:
        raise _invalid(f"cannot read the CSV header: {e}") from None


def read_dataset(path: str | Path, fmt: str, label_column: str = "label") -> tuple[np.ndarray, np.ndarray | None]:
    """Read an NPZ or CSV dataset as ``(X float32 [N, ...], y int64 [N] or None)``; ``y == -1`` = unlabelled.

    Raises ``DistillError('invalid_file')`` for a missing/non-numeric X, labels that are not integers ≥ -1,
    a non-numeric CSV column (named), a model file, or a text dataset (JSONL; text CSVs fail as non-numeric —
    read those with ``text_data.read_text_dataset``).
    """
    path = Path(path)
    if fmt == "npz":
        x, y = _read_npz(path)
    elif fmt == "csv":
        x, y = _read_csv(path, label_column)
    elif fmt == "jsonl":
        raise _invalid("this is a text dataset (JSONL); numeric features were expected here")
    else:
        raise _invalid(f"expected {_EXPECTED_DATASET}, got {_FORMAT_NAMES.get(fmt, fmt)}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise _invalid("dataset features contain NaN or infinity")
    return x, y


def dataset_details(x: np.ndarray, y: np.ndarray | None) -> dict[str, Any]:
    """Facts about a dataset: samples, feature_shape, has_labels, num_classes (max label + 1 or None),
    unlabelled (row count with label -1 or no label)."""
    labelled = y[y >= 0] if y is not None else np.zeros(0, dtype=np.int64)
    return {
        "samples": int(x.shape[0]),
        "feature_shape": [int(d) for d in x.shape[1:]],
        "has_labels": bool(labelled.size),
        "num_classes": int(labelled.max()) + 1 if labelled.size else None,
        "unlabelled": int(x.shape[0] - labelled.size),
    }


NPZ_CHUNK_BYTES = 8 * 1024 * 1024  # bytes of one array read at a time when an NPZ upload is inspected


def _npz_member(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[Any, tuple[int, ...], np.dtype]:
    """Open an .npy member of an NPZ and read its header: ``(open member positioned at the data, shape, dtype)``."""
    f = z.open(info)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} (structured arrays) is not supported")
    except BaseException:
        f.close()
        raise
    return f, tuple(int(d) for d in shape), dtype


def _npz_chunks(f: Any, dtype: np.dtype, count: int, chunk_bytes: int) -> Any:
    """Yield the ``count`` elements of an open .npy member in storage order as 1-D arrays of at most
    ``chunk_bytes`` bytes. Raises ``invalid_file`` when the member ends early."""
    step = max(1, chunk_bytes // max(1, dtype.itemsize)) * dtype.itemsize
    left = count * dtype.itemsize
    while left:
        buf = f.read(min(step, left))
        if not buf or len(buf) % dtype.itemsize:
            raise _invalid("truncated NPZ member: the array holds fewer bytes than its header declares")
        left -= len(buf)
        yield np.frombuffer(buf, dtype=dtype)


def inspect_npz(path: str | Path, *, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
                chunk_bytes: int = NPZ_CHUNK_BYTES) -> dict[str, Any]:
    """Validate an NPZ dataset without loading it: ``dataset_details`` of ``X`` and optional ``y``.

    Reads each member's .npy header from the zip directory, then streams the data ``chunk_bytes`` at a time
    (so memory stays flat for a file of any size): X must be numeric with shape (N, ...), N >= 1, and finite
    once cast to float32 (as ``read_dataset`` casts it); y, when present, integer-valued labels >= -1 of shape
    (N,). Object arrays are refused without unpickling anything. Raises ``DistillError('invalid_file')`` with
    the same messages as ``read_dataset`` for the same faults, and when the members would unpack to more than
    ``max_unpacked_bytes`` bytes (a zip bomb guard) or the archive is corrupt (bad CRC, truncated member).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename[: -len(".npy")]: i for i in z.infolist() if i.filename.endswith(".npy")}
            unpacked = sum(i.file_size for i in z.infolist())
            if unpacked > max_unpacked_bytes:
                raise _invalid(f"NPZ unpacks to {unpacked} bytes, over the limit of {max_unpacked_bytes} bytes")
            if "X" not in members:
                raise _invalid(f"NPZ has no 'X' array (found: {', '.join(members) or 'nothing'}); expected X of shape (N, ...) and optional y")
            f, shape, dtype = _npz_member(z, members["X"])
            with f:
                if dtype.hasobject:
                    raise _invalid("NPZ arrays must be numeric, not Python objects (object arrays need pickle, which is never loaded)")
                if dtype.kind not in "iufb":
                    raise _invalid(f"NPZ 'X' must be numeric, got dtype {dtype}")
                if len(shape) < 2 or shape[0] == 0:
                    raise _invalid(f"NPZ 'X' must have shape (N, ...) with N >= 1 and at least 2 dimensions, got {list(shape)}")
                count = math.prod(shape)
                if count * dtype.itemsize > members["X"].file_size:
                    raise _invalid(f"truncated NPZ member 'X': its header declares {count * dtype.itemsize} bytes of data")
                for chunk in _npz_chunks(f, dtype, count, chunk_bytes):
                    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in read_dataset
                        finite = dtype.kind != "f" or np.isfinite(chunk.astype(np.float32)).all()
                    if not finite:
                        raise _invalid("dataset features contain NaN or infinity")
            n = shape[0]
            y_seen = y_labelled = 0
            y_max = -1
            if "y" in members:
                f, y_shape, y_dtype = _npz_member(z, members["y"])
                with f:
                    if y_dtype.hasobject:
                        raise _invalid("NPZ arrays must be numeric, not Python objects (object arrays need pickle, which is never loaded)")
                    if y_shape != (n,):
                        raise _invalid(f"NPZ 'y' must have shape ({n},) to match X, got {list(y_shape)}")
                    if n * y_dtype.itemsize > members["y"].file_size:
                        raise _invalid(f"truncated NPZ member 'y': its header declares {n * y_dtype.itemsize} bytes of data")
                    for chunk in _npz_chunks(f, y_dtype, n, chunk_bytes):
                        labels = _labels(chunk, "NPZ 'y'")
                        y_seen += labels.size
                        good = labels[labels >= 0]
                        y_labelled += int(good.size)
                        if good.size:
                            y_max = max(y_max, int(good.max()))
    except DistillError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:  # bad CRC, corrupt header, truncated archive
        raise _invalid(f"unreadable NPZ file ({type(e).__name__}: {e})") from None
    return {"samples": n, "feature_shape": list(shape[1:]), "has_labels": bool(y_labelled),
            "num_classes": y_max + 1 if y_labelled else None, "unlabelled": n - y_labelled}


def _inspect_hf(path: Path, max_unpacked_bytes: int) -> FileInfo:
    """Extract an 'hf' archive into a temporary folder (next to the file, else the system's), inspect it."""
    try:
        tmp = tempfile.TemporaryDirectory(prefix=".hf-inspect-", dir=path.parent)
    except OSError:
        tmp = tempfile.TemporaryDirectory(prefix="stillhouse-hf-inspect-")
    with tmp as root:
        folder = safe_extract(path, Path(root) / "model", max_unpacked_bytes=max_unpacked_bytes)
        details = inspect_hf_folder(folder)
    width = details.get("num_labels") if details["task"] == "sequence_classification" else details.get("hidden_size")
    return FileInfo(
        "hf",
        parameters=details["parameters"],
        input_shape=None,
        output_shape=[None, width if isinstance(width, int) else None],
        details=details,
    )


def _inspect_csv_dataset(path: Path, label_column: str) -> FileInfo:
    text_column = classify_csv(path, label_column)
    if text_column is None:  # numeric, exactly as before
        try:
            x, y = read_dataset(path, "csv", label_column)
        except DistillError as e:
            if "is not numeric" in e.message:
                raise _invalid(f"{e.message}; a text CSV needs a column named 'text'") from None
            raise
        details = dataset_details(x, y)
        details["columns"] = csv_columns(path)
        return FileInfo("csv", details=details)
    td = read_text_dataset(path, "csv", text_column=text_column, label_column=label_column)
    return FileInfo("csv", details={**text_details(td), "columns": csv_columns(path), "text_column": text_column})


def inspect_file(
    path: str | Path,
    purpose: str,
    label_column: str = "label",
    *,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> FileInfo:
    """Sniff and fully validate an upload for ``purpose`` ∈ {'teacher', 'student_init', 'dataset'}.

    Models are loaded (safetensors via ``safetensors.torch.load_file``, state dicts via
    ``torch.load(weights_only=True)`` only, TorchScript via ``torch.jit.load``, torch.export programs via
    ``load_exported_program`` (audited first), ONNX via onnxruntime on CPU,
    'hf' archives extracted with ``hf_archive.safe_extract`` — at most ``max_unpacked_bytes`` bytes unpacked —
    into a temporary folder that is removed afterwards, then loaded with transformers offline; 'gguf' files checked
    and loaded, dequantised, by ``distill.lm.uploads.inspect_gguf``); NPZ datasets are
    streamed from their .npy headers and data in chunks (``inspect_npz``: flat memory, at most
    ``max_unpacked_bytes`` unpacked), CSV and JSONL are read completely.

    Datasets: NPZ and numeric CSV give ``dataset_details`` (CSV adds ``columns``). A CSV with a ``text``
    column — or whose only column besides ``label_column`` is non-numeric — is a text dataset:
    ``details = text_details(...) + columns + text_column`` (labels may be integers or class names). JSONL
    gives ``text_details``. Text datasets have ``details['kind'] == 'text'``. JSONL of prompt/completion or chat
    records (language models, ``distill.lm.records``) gives ``records_details`` with ``details['kind'] == 'lm'``.

    Raises ``DistillError`` with code ``invalid_file`` (unreadable, wrong kind for the purpose, non-tensor
    entries, bad dataset, unsafe or oversized archive, HF weights not matching their config) or
    ``unsafe_checkpoint`` (a pickle wanting disallowed globals, which are named; nothing of it is executed).
    ``ValueError`` for an unknown purpose.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {PURPOSES}")
    path = Path(path)
    fmt = sniff(path)
    if purpose == "dataset":
        if fmt not in DATASET_FORMATS:
            raise _invalid(f"expected {_EXPECTED_DATASET}, got {_FORMAT_NAMES[fmt]}")
        if fmt == "csv":
            return _inspect_csv_dataset(path, label_column)
        if fmt == "jsonl" and lm_kind(path) is not None:  # prompt/completion or chat records (language models)
            return FileInfo(fmt, details=records_details(read_records(path)))
        if fmt == "jsonl":
            return FileInfo(fmt, details=text_details(read_text_dataset(path, "jsonl", label_column=label_column)))
        return FileInfo(fmt, details=inspect_npz(path, max_unpacked_bytes=max_unpacked_bytes))
    if fmt not in MODEL_FORMATS:
        raise _invalid(f"expected {_EXPECTED_MODEL}, got {_sniffed_as(path, fmt)}")
    if fmt == "hf":
        return _inspect_hf(path, max_unpacked_bytes)
    if fmt == "gguf":
        details = inspect_gguf(path, max_unpacked_bytes=max_unpacked_bytes)
        return FileInfo(fmt, parameters=details["parameters"], output_shape=[None, None, details["vocab_size"]], details=details)
    return _inspect_model(path, fmt)


__all__ = [
    "ARCH_METADATA_KEY",
    "DATASET_FORMATS",
    "DEFAULT_MAX_UNPACKED_BYTES",
    "MODEL_FORMATS",
    "FileInfo",
    "FileInput",
    "architecture_from_metadata",
    "check_pt2_archive",
    "dataset_details",
    "exported_io_shapes",
    "extract_state_dict",
    "file_bytes_text",
    "inspect_file",
    "inspect_npz",
    "load_exported_program",
    "load_tensors",
    "onnx_parameters",
    "onnx_shapes",
    "read_dataset",
    "sniff",
    "state_dict_from_object",
    "tensor_aliases",
    "tie_weights",
    "unflatten_program",
]
