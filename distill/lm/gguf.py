"""Single-file GGUF models (the format llama.cpp writes and reads; format name ``gguf``).

A GGUF file is a header of typed key/value metadata (architecture, sizes, the tokenizer's vocabulary and merges, a
chat template) followed by tensors, often quantised (Q4_0, Q4_1, Q8_0, K-quants...). Nothing in it is executable:
it is read with the ``gguf`` package (memory-mapped) and loaded by transformers, which dequantises the tensors to
float32 into its own model class of the architecture (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``).
transformers finds the file by its ``.gguf`` suffix, so an upload (stored under a server id without a suffix) is
given one through a symbolic link in a folder of its own (``linked_gguf``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import DistillError, first_line

GGUF_MAGIC = b"GGUF"
GGUF_FILE_NAME = "model.gguf"


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


def is_gguf(path: str | Path) -> bool:
    """True when the file starts with the GGUF magic ``b"GGUF"`` (its first 4 bytes; nothing else is read)."""
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _field(reader: Any, key: str) -> Any:
    """One metadata value of a ``gguf.GGUFReader`` as a Python value (str, int, float, bool or list), None if absent."""
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # noqa: BLE001 - a malformed field reads as absent; transformers refuses it later
        return None


def read_header(path: str | Path) -> dict[str, Any]:
    """The GGUF header of ``path`` without dequantising anything (memory-mapped read of the metadata and the tensor
    directory).

    Returns ``{architecture, name, tensors (count), parameters (scalar count over all tensors), quantisations
    ({type name: tensor count}), dequantised_bytes (parameters × 4: the float32 size transformers loads), file_type,
    context_length, block_count, embedding_length, vocab_size (tokens in the tokenizer), tokenizer_model,
    chat_template (bool)}``. Raises ``DistillError('invalid_file')`` for a file the ``gguf`` reader refuses
    (truncated, wrong version, inconsistent offsets).
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # noqa: BLE001 - ValueError/struct errors/IndexError for corrupt files
        raise _invalid(f"unreadable GGUF file: {first_line(e)}") from None
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _invalid("the GGUF file has no general.architecture")
    quant: dict[str, int] = {}
    params = 0
    for t in reader.tensors:
        quant[t.tensor_type.name] = quant.get(t.tensor_type.name, 0) + 1
        params += int(t.n_elements)
    tokens = _field(reader, "tokenizer.ggml.tokens")

    def num(key: str) -> int | None:
        v = _field(reader, f"{arch}.{key}")
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return {
        "architecture": arch,
        "name": _field(reader, "general.name"),
        "tensors": len(reader.tensors),
        "parameters": params,
        "quantisations": dict(sorted(quant.items())),
        "dequantised_bytes": params * 4,
        "file_type": _field(reader, "general.file_type"),
        "context_length": num("context_length"),
        "block_count": num("block_count"),
        "embedding_length": num("embedding_length"),
        "vocab_size": len(tokens) if isinstance(tokens, list) else None,
        "tokenizer_model": _field(reader, "tokenizer.ggml.model"),
        "chat_template": isinstance(_field(reader, "tokenizer.chat_template"), str),
    }


@contextlib.contextmanager
def linked_gguf(path: str | Path, workdir: str | Path | None = None) -> Iterator[Path]:
    """A folder holding ``model.gguf``, a symbolic link to ``path`` (transformers wants the suffix), for the
    duration of the ``with``; created under ``workdir`` (else next to ``path``, else the system's temporary folder)
    and removed afterwards. Yields the folder."""
    path = Path(path).resolve()
    for parent in ([Path(workdir)] if workdir is not None else []) + [path.parent, None]:
        try:
            tmp = tempfile.TemporaryDirectory(prefix=".gguf-", dir=parent)
            break
        except OSError:
            continue
    with tmp as root:
        os.symlink(path, Path(root) / GGUF_FILE_NAME)
        yield Path(root)


def link_gguf(path: str | Path, folder: str | Path) -> Path:
    """Make ``folder/model.gguf`` a symbolic link to ``path`` (a job's lasting copy of ``linked_gguf``; an existing
    link is replaced). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / GGUF_FILE_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(Path(path).resolve(), link)
    return folder


__all__ = ["GGUF_FILE_NAME", "GGUF_MAGIC", "is_gguf", "link_gguf", "linked_gguf", "read_header"]
