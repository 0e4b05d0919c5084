"""Decoder-only (causal) language models: load a teacher strictly offline from a Hugging Face folder or a GGUF file,
derive a student from it, and count its size.

Students (``derive_student``): the teacher's model class with fewer decoder layers — token embeddings, the kept
layers, the final norm and the LM head copied from the teacher (the layer-dropping recipe of DistilBERT, Sanh et al.
2019, applied to decoders), tied input/output embeddings kept tied — or a narrower one (hidden size, feed-forward
size, attention heads) initialised fresh with a seed. The vocabulary, and so the tokenizer, is always the teacher's.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DistillError, first_line
from .gguf import GGUF_FILE_NAME, linked_gguf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LM_FORMATS = ("hf", "gguf")
# config fields that describe how the teacher was stored, not what the student is
_STORAGE_FIELDS = ("quantization_config", "_name_or_path")


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def causal_lm_class_names() -> frozenset[str]:
    """Class names transformers registers for causal language modelling (``LlamaForCausalLM``, ``GPT2LMHeadModel``,
    ...: the values of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(v if isinstance(v, (list, tuple)) else [v])
    return frozenset(names)


def is_causal_lm(architectures: list[str] | None) -> bool:
    """True when one of a config's ``architectures`` is a causal-LM class (see ``causal_lm_class_names``)."""
    names = causal_lm_class_names()
    return any(a in names for a in architectures or [])


def load_tokenizer(path: str | Path, fmt: str) -> Any:
    """The teacher's tokenizer: ``AutoTokenizer`` of an 'hf' folder, or the one transformers builds from a GGUF file's
    metadata; strictly offline, no remote code. A tokenizer without a pad token gets its EOS token as pad (batches
    are padded; padded positions are masked everywhere). Raises ``DistillError('invalid_file')`` if it does not load."""
    from transformers import AutoTokenizer

    _quiet()
    try:
        if fmt == "gguf":
            with linked_gguf(path) as folder:
                tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE_NAME, local_files_only=True,
                                                    trust_remote_code=False)
        else:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise DistillError("invalid_file", f"the teacher's tokenizer does not load: {first_line(e)}", "file") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, fmt: str, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A causal LM teacher (``AutoModelForCausalLM``) from an extracted 'hf' folder or a 'gguf' file, strictly offline
    (``local_files_only``, no remote code; '.bin' weights only with ``weights_only=True``), GGUF tensors dequantised
    to ``dtype``; returned in eval mode with gradients off, on the CPU.

    Raises ``DistillError('invalid_file')`` when the folder's config is not a causal LM (e.g. a BERT encoder: the
    message names its architectures) or the weights do not load; ``DistillError('invalid_spec')`` for a format other
    than 'hf' or 'gguf'.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet()
    if fmt not in LM_FORMATS:
        raise DistillError("invalid_spec", f"a causal-LM teacher must be a Hugging Face folder ('hf') or a GGUF file, got {fmt!r}",
                           "teacher.format")
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "dtype": dtype}
    try:
        if fmt == "gguf":
            with linked_gguf(path) as folder:
                model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE_NAME, **kwargs)
        else:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
            archs = list(getattr(config, "architectures", None) or [])
            if not is_causal_lm(archs):
                raise DistillError("invalid_file", f"the teacher is not a causal language model: config.json names "
                                   f"{', '.join(archs) or 'no architectures'} (model_type {config.model_type!r}); a causal-LM "
                                   "teacher's config names a *ForCausalLM or *LMHeadModel class", "teacher")
            model = AutoModelForCausalLM.from_pretrained(str(path), weights_only=True, **kwargs)
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DistillError("invalid_file", f"the causal-LM teacher does not load: {first_line(e)}", "teacher") from None
    for name in _STORAGE_FIELDS[:1]:
        if hasattr(model.config, name):
            delattr(model.config, name)
    return model.eval().requires_grad_(False)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module path and the ``nn.ModuleList`` of a decoder's blocks (``model.layers`` for Llama/Mistral/Qwen,
    ``transformer.h`` for GPT-2): the longest ModuleList whose length is ``config.num_hidden_layers``. Raises
    ``DistillError('invalid_spec')`` when there is none."""
    n = int(model.config.num_hidden_layers)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise DistillError("invalid_spec", f"cannot find the {n} decoder layers of {type(model).__name__}", "student.from_teacher")
    return min(found, key=lambda nm: nm[0].count("."))


def layers_to_keep(n_teacher: int, num_layers: int | None = None, keep_layers: list[int] | None = None) -> list[int]:
    """Teacher layer indices the student keeps: ``keep_layers`` as given (strictly increasing, each below
    ``n_teacher``), or ``num_layers`` evenly spaced with the first and the last layer included (30 -> 10 keeps 0, 3,
    6, ..., 26, 29; 1 keeps the last), the rule of the text students. Raises ``DistillError('invalid_spec')`` for
    layers that do not exist or more layers than the teacher has."""
    if keep_layers is not None:
        if sorted(set(keep_layers)) != list(keep_layers) or not all(0 <= i < n_teacher for i in keep_layers):
            raise DistillError("invalid_spec", f"keep_layers {list(keep_layers)} must be strictly increasing teacher layers; the "
                               f"teacher has {n_teacher} layers (0..{n_teacher - 1})", "student.from_teacher.keep_layers")
        return list(keep_layers)
    n = int(num_layers or 0)
    if not 1 <= n <= n_teacher:
        raise DistillError("invalid_spec", f"num_layers={n} but the teacher has {n_teacher} layers", "student.from_teacher.num_layers")
    return [n_teacher - 1] if n == 1 else sorted({round(i * (n_teacher - 1) / (n - 1)) for i in range(n)})


def _set_width(cfg: Any, hidden_size: int | None, intermediate_size: int | None, heads: int | None, kv_heads: int | None) -> None:
    """Apply a narrower width to a config in place (GPT-2's ``n_inner`` for the feed-forward size), keeping
    ``head_dim`` and the key/value heads consistent. Raises ``DistillError('invalid_spec')`` for impossible shapes."""
    if hidden_size is not None:
        cfg.hidden_size = int(hidden_size)
    if heads is not None:
        cfg.num_attention_heads = int(heads)
    if intermediate_size is not None:
        setattr(cfg, "n_inner" if hasattr(cfg, "n_inner") else "intermediate_size", int(intermediate_size))
    h, a = int(cfg.hidden_size), int(cfg.num_attention_heads)
    if h % a:
        raise DistillError("invalid_spec", f"hidden_size {h} is not a multiple of num_attention_heads {a}", "student.from_teacher")
    if hasattr(cfg, "num_key_value_heads") and cfg.num_key_value_heads is not None:
        kv = int(kv_heads) if kv_heads is not None else int(cfg.num_key_value_heads)
        if kv_heads is None and (a % kv or kv > a):
            kv = math.gcd(a, kv)
        if a % kv:
            raise DistillError("invalid_spec", f"num_attention_heads {a} is not a multiple of num_key_value_heads {kv}",
                               "student.from_teacher.num_key_value_heads")
        cfg.num_key_value_heads = kv
    elif kv_heads is not None:
        raise DistillError("invalid_spec", f"{cfg.model_type} models have no separate key/value heads", "student.from_teacher.num_key_value_heads")
    if getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = h // a


def derive_student(teacher: nn.Module, *, num_layers: int | None = None, keep_layers: list[int] | None = None,
                   hidden_size: int | None = None, intermediate_size: int | None = None,
                   num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
                   config: dict[str, Any] | None = None, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A student of the teacher's causal-LM class with ``num_layers`` (evenly spaced) or ``keep_layers`` decoder layers.

    Same width: every tensor outside the decoder layers (token and position embeddings, final norm, LM head) and the
    kept layers are copied from the teacher; with tied input/output embeddings (``tie_word_embeddings``) the LM head
    stays the same tensor as the embedding. Narrower (any of ``hidden_size``, ``intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads``): initialised fresh by transformers under ``seed``. ``config``:
    further config fields (e.g. ``attention_dropout``); ``vocab_size`` cannot change (the tokenizer is the teacher's).
    Config lists with one entry per layer (``layer_types``) are cut to the kept layers.

    Returns ``(student in train mode, float32 on the CPU, facts)``, facts = ``{keep_layers, num_hidden_layers,
    hidden_size, initialised ('copied from teacher' | 'fresh'), copied_tensors, tied_embeddings, parameters}``.
    Raises ``DistillError('invalid_spec')`` for impossible shapes or a config transformers refuses.
    """
    from transformers import AutoModelForCausalLM

    _quiet()
    cfg = copy.deepcopy(teacher.config)
    for name in _STORAGE_FIELDS:
        if hasattr(cfg, name):
            delattr(cfg, name)
    n_teacher = int(cfg.num_hidden_layers)
    keep = layers_to_keep(n_teacher, num_layers, keep_layers)
    extra = dict(config or {})
    if "vocab_size" in extra and int(extra["vocab_size"]) != int(cfg.vocab_size):
        raise DistillError("invalid_spec", f"the student's vocab_size {extra['vocab_size']} differs from the teacher's {cfg.vocab_size}: "
                           "the student shares the teacher's tokenizer", "student.from_teacher.config.vocab_size")
    for k, v in extra.items():
        setattr(cfg, k, v)
    narrower = any(v is not None for v in (hidden_size, intermediate_size, num_attention_heads, num_key_value_heads))
    _set_width(cfg, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads)
    if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == n_teacher:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    torch.manual_seed(seed)
    try:
        student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise DistillError("invalid_spec", f"cannot build the student: {first_line(e)}", "student.from_teacher") from None
    copied = 0
    if not narrower:
        prefix, _ = decoder_layers(teacher)
        layer_key = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
        mapping = {t: s for s, t in enumerate(keep)}
        state: dict[str, torch.Tensor] = {}
        for key, value in teacher.state_dict().items():
            m = layer_key.match(key)
            if m:
                t = int(m.group(1))
                if t not in mapping:
                    continue
                key = f"{prefix}.{mapping[t]}.{key[m.end():]}"
            state[key] = value.detach().to(torch.float32).clone()
        result = student.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith(("position_ids", "rotary_emb.inv_freq"))]
        if missing or result.unexpected_keys:
            raise DistillError("invalid_spec", f"could not copy the teacher's weights into the student: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}", "student.from_teacher")
        copied = len(state)
    tied = tied_embeddings(student)
    student.train()
    return student, {"keep_layers": keep, "num_hidden_layers": len(keep), "hidden_size": int(cfg.hidden_size),
                     "initialised": "fresh" if narrower else "copied from teacher", "copied_tensors": copied,
                     "tied_embeddings": tied, "parameters": parameter_count(student)}


def tied_embeddings(model: nn.Module) -> bool:
    """True when the LM head's weight is the input embedding's weight (one tensor)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def parameter_count(model: nn.Module) -> int:
    """Scalar parameters of ``model``, a tied tensor counted once."""
    return int(sum(p.numel() for p in model.parameters()))


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in their current dtypes, tied tensors counted once (what a
    safetensors file of it holds, without its header)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return int(total)


__all__ = ["LM_FORMATS", "causal_lm_class_names", "decoder_layers", "derive_student", "is_causal_lm", "layers_to_keep",
           "load_causal_lm", "load_tokenizer", "parameter_bytes", "parameter_count", "tied_embeddings"]
