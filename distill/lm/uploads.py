"""Upload checks of causal-LM teachers that ``distill.formats.inspect_file`` calls: a GGUF file is validated by
reading its header, refusing it when its dequantised float32 size passes the unpacking limit, then loading its
tokenizer and its weights exactly as a job will (transformers, offline), and describing what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints import file_bytes_text
from ..errors import DistillError
from .gguf import read_header
from .models import is_causal_lm, load_causal_lm, load_tokenizer, parameter_count, tied_embeddings


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


def lm_config_details(model: Any, tokenizer: Any) -> dict[str, Any]:
    """JSON-serialisable facts of a loaded causal LM and its tokenizer: ``{model_type, architectures, parameters,
    vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
    max_position_embeddings, tie_word_embeddings, task: 'causal_lm', tokenizer: {class, vocab_size,
    model_max_length, chat_template (bool), eos_token}}``."""
    cfg = model.config

    def attr(name: str) -> Any:
        v = getattr(cfg, name, None)
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    max_len = getattr(tokenizer, "model_max_length", None)
    return {
        "model_type": attr("model_type"),
        "architectures": [type(model).__name__],
        "parameters": parameter_count(model),
        "vocab_size": attr("vocab_size"),
        "hidden_size": attr("hidden_size"),
        "num_hidden_layers": attr("num_hidden_layers"),
        "num_attention_heads": attr("num_attention_heads"),
        "num_key_value_heads": attr("num_key_value_heads"),
        "intermediate_size": attr("intermediate_size") if hasattr(cfg, "intermediate_size") else attr("n_inner"),
        "max_position_embeddings": attr("max_position_embeddings"),
        "tie_word_embeddings": tied_embeddings(model),
        "task": "causal_lm",
        "tokenizer": {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
                      "model_max_length": int(max_len) if isinstance(max_len, int) and max_len < 10**9 else None,
                      "chat_template": bool(getattr(tokenizer, "chat_template", None)),
                      "eos_token": getattr(tokenizer, "eos_token", None)},
    }


def inspect_gguf(path: str | Path, *, max_unpacked_bytes: int) -> dict[str, Any]:
    """Validate a GGUF upload as a causal-LM teacher; return its ``details``: ``lm_config_details`` plus ``gguf:
    {architecture, name, quantisations, file_type, tensors}`` and ``dequantised_bytes``.

    Raises ``DistillError('invalid_file')`` for: an unreadable header; a dequantised size (parameters × 4 bytes) over
    ``max_unpacked_bytes``; no tokenizer in the metadata or one transformers cannot build; an architecture
    transformers cannot load from GGUF, or one that is not a causal LM; weights that do not load; a tokenizer with
    more tokens than the model's vocabulary.
    """
    header = read_header(path)
    if header["dequantised_bytes"] > max_unpacked_bytes:
        raise _invalid(f"the GGUF model dequantises to {file_bytes_text(header['dequantised_bytes'])} of float32 weights, over "
                       f"the limit of {file_bytes_text(max_unpacked_bytes)} (STILLHOUSE_MAX_UNPACKED_BYTES)")
    if not header["vocab_size"]:
        raise _invalid("the GGUF file has no tokenizer (tokenizer.ggml.tokens is missing); the student needs the teacher's tokenizer")
    tokenizer = load_tokenizer(path, "gguf")
    model = load_causal_lm(path, "gguf")
    if not is_causal_lm([type(model).__name__]):
        raise _invalid(f"the GGUF model ({header['architecture']}) loads as {type(model).__name__}, not a causal language model")
    details = lm_config_details(model, tokenizer)
    vocab = details["vocab_size"]
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise _invalid(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is only {vocab}")
    details["gguf"] = {k: header[k] for k in ("architecture", "name", "quantisations", "file_type", "tensors")}
    details["dequantised_bytes"] = header["dequantised_bytes"]
    return details


__all__ = ["inspect_gguf", "lm_config_details"]
