"""The student's artifacts: a Hugging Face folder (safetensors weights, config, tokenizer, generation config) that
``AutoModelForCausalLM.from_pretrained`` loads and generates with, its zip, an ONNX graph of the logits, and a GGUF
file for llama.cpp (Llama-family students with a byte-level BPE tokenizer), each checked after writing.

ONNX: ``torch.onnx.export`` (the TorchScript-based exporter) of ``logits = f(input_ids, attention_mask)`` without a
key/value cache, dynamic batch and sequence axes, checked against PyTorch with onnxruntime. GGUF: written with the
``gguf`` package's ``GGUFWriter`` in float32 or float16, tensor names from ``gguf``'s own name map, the query/key
rows reordered to GGML's interleaved rotary layout (the inverse of what transformers undoes on load), the tokenizer's
vocabulary, merges, special tokens and chat template in the ``tokenizer.*`` keys; checked by loading it back with
transformers and comparing logits.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DistillError, first_line
from .gguf import linked_gguf
from .models import load_causal_lm, tied_embeddings

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-3
GGUF_TOLERANCE = {"f32": 1e-3, "f16": 5e-2}
_STORED = zipfile.ZIP_STORED


def save_student_folder(student: nn.Module, tokenizer: Any, out: str | Path) -> Path:
    """Write ``student`` (float32 weights as ``model.safetensors``, ``config.json``, ``generation_config.json``) and
    the teacher's ``tokenizer`` (with its chat template) into ``out`` (created). Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    return out


def zip_folder(folder: str | Path, out: str | Path, top: str) -> Path:
    """Zip every file of ``folder`` under one top-level folder ``top/`` into ``out`` (stored, not compressed:
    safetensors weights do not compress). Returns ``out``."""
    folder, out = Path(folder), Path(out)
    with zipfile.ZipFile(out, "w", _STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, f"{top}/{p.relative_to(folder).as_posix()}")
    return out


def check_folder_generates(folder: str | Path, prompt_ids: list[int], max_new_tokens: int = 4) -> dict[str, Any]:
    """Load ``folder`` with ``AutoModelForCausalLM.from_pretrained`` (offline) and greedily generate
    ``max_new_tokens`` tokens after ``prompt_ids``. Returns ``{"loads": True, "generated_ids": [...]}``. Raises
    ``DistillError('internal_error')`` when it does not load or generate."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
    except Exception as e:  # noqa: BLE001
        raise DistillError("internal_error", f"the exported student folder does not load and generate: {first_line(e)}") from None
    return {"loads": True, "generated_ids": out[0, ids.shape[1]:].tolist()}


class _LogitsOnly(nn.Module):
    """``(input_ids [B, T] int64, attention_mask [B, T] int64) -> logits [B, T, V]`` without a key/value cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_onnx(student: nn.Module, example_ids: torch.Tensor, path: str | Path, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Export the student's logits to ONNX at ``path``: inputs ``input_ids`` and ``attention_mask`` ``[batch, sequence]``
    (int64), output ``logits`` ``[batch, sequence, vocab]``, both axes dynamic; then compare onnxruntime (CPU) with
    PyTorch on ``example_ids`` ``[B, T]`` and on its first row cut to half its length (the dynamic axes at other sizes).

    Returns ``{"max_abs_diff", "opset", "checked_shapes"}``. Raises ``DistillError('internal_error')`` when the export
    fails or a logit differs by more than 1e-3.
    """
    import copy

    import onnxruntime as ort

    model = _LogitsOnly(copy.deepcopy(student).to("cpu", torch.float32)).eval()
    path = Path(path)
    ids = example_ids.to("cpu", torch.long)
    checks = [ids, ids[:1, : max(2, ids.shape[1] // 2)]]
    diffs = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=opset,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                                            "logits": {0: "batch", 1: "sequence"}})
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for x in checks:
            mask = torch.ones_like(x)
            got = sess.run(["logits"], {"input_ids": x.numpy(), "attention_mask": mask.numpy()})[0]
            with torch.inference_mode():
                want = model(x, mask).numpy()
            if got.shape != want.shape:
                raise DistillError("internal_error", f"the ONNX student returns shape {list(got.shape)}, PyTorch {list(want.shape)}")
            diffs.append(float(np.abs(got - want).max()))
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DistillError("internal_error", f"ONNX export of the language model failed: {first_line(e)}") from None
    diff = max(diffs)
    if not diff <= ONNX_TOLERANCE:
        raise DistillError("internal_error", f"the ONNX student differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})")
    return {"max_abs_diff": diff, "opset": opset, "checked_shapes": [list(x.shape) for x in checks]}


# ------------------------------------------------------------------------------------------------------ GGUF

GGUF_ARCHITECTURES = ("llama", "mistral")  # decoders with Llama's tensor layout that gguf and transformers both map


def _ggml_rotary_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of a query/key projection ``[heads * head_dim, hidden]`` from transformers' rotary layout
    (per head: the first half of the dimensions rotates with the second half) to GGML's (adjacent pairs rotate)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(tokenizer: Any) -> dict[str, Any]:
    """``tokens`` (by id), ``types`` (GGML token types), ``merges`` ("a b") of a byte-level BPE tokenizer. Raises
    ``DistillError('invalid_spec')`` for other tokenizer models (sentencepiece, WordPiece...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else {}
    model = data.get("model") or {}
    pre = json.dumps(data.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise DistillError("invalid_spec", "GGUF export needs a byte-level BPE tokenizer (GPT-2/Llama-3/SmolLM style); "
                           f"this one is {model.get('type', 'unknown')}", "export.formats")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    specials = {t["content"] for t in data.get("added_tokens") or [] if t.get("special")}
    vocab.update(added)
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # UNUSED until filled
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = 3 if tok in specials else (4 if tok in added else 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "types": types, "merges": merges}


def export_gguf(student: nn.Module, tokenizer: Any, path: str | Path, *, dtype: str = "f32", name: str = "stillhouse student") -> dict[str, Any]:
    """Write a Llama-family ``student`` and its byte-level BPE ``tokenizer`` as one GGUF file at ``path`` (``dtype``
    'f32' or 'f16' for the matrices; norms stay float32), then load it back with transformers and compare its logits
    with the student's on a few tokens.

    Returns ``{"bytes", "dtype", "tensors", "max_abs_diff"}``. Raises ``DistillError('invalid_spec')`` for an
    architecture other than Llama/Mistral or a tokenizer that is not byte-level BPE; ``DistillError('internal_error')``
    when the written file does not load or its logits differ by more than 1e-3 (f32) / 5e-2 (f16).
    """
    import gguf

    cfg = student.config
    arch = str(cfg.model_type)
    if arch not in GGUF_ARCHITECTURES:
        raise DistillError("invalid_spec", f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} students, not {arch!r}; "
                           "use the Hugging Face folder or ONNX", "export.formats")
    if dtype not in GGUF_TOLERANCE:
        raise ValueError(f"dtype must be one of {sorted(GGUF_TOLERANCE)}")
    tok = _tokenizer_fields(tokenizer)
    n_layers, heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(n_layers)
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id), ("pad_token_id", w.add_pad_token_id)):
        v = getattr(tokenizer, key, None)
        if isinstance(v, int):
            add(v)
    w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        w.add_chat_template(tokenizer.chat_template)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = tied_embeddings(student)
    count = 0
    for hf_name, t in student.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        base, _, suffix = hf_name.rpartition(".")
        gname = name_map.get_name(base)
        if gname is None:
            if base.endswith("rotary_emb"):
                continue
            raise DistillError("internal_error", f"GGUF export: no GGUF name for tensor {hf_name!r}")
        arr = t.detach().to("cpu", torch.float32).numpy()
        if base.endswith("self_attn.q_proj"):
            arr = _ggml_rotary_rows(arr, heads)
        elif base.endswith("self_attn.k_proj"):
            arr = _ggml_rotary_rows(arr, kv_heads)
        if dtype == "f16" and arr.ndim == 2:
            arr = arr.astype(np.float16)
        w.add_tensor(f"{gname}.{suffix}", np.ascontiguousarray(arr))
        count += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    diff = _gguf_logit_diff(student, path, tokenizer)
    if not diff <= GGUF_TOLERANCE[dtype]:
        raise DistillError("internal_error", f"the GGUF student differs from PyTorch by {diff:.3g} (> {GGUF_TOLERANCE[dtype]:g})")
    return {"bytes": path.stat().st_size, "dtype": dtype, "tensors": count, "max_abs_diff": diff}


def _gguf_logit_diff(student: nn.Module, path: Path, tokenizer: Any) -> float:
    """Largest absolute logit difference between ``student`` and the GGUF at ``path`` loaded by transformers, on the
    tokens of a short text (its tokenizer also loaded from the file, and checked to encode it identically)."""
    from transformers import AutoTokenizer

    text = "Distillation keeps what the teacher knows."
    try:
        model = load_causal_lm(path, "gguf")
        with linked_gguf(path) as folder:
            back = AutoTokenizer.from_pretrained(str(folder), gguf_file="model.gguf", local_files_only=True)
    except DistillError as e:
        raise DistillError("internal_error", f"the written GGUF does not load: {e.message}") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if back(text, add_special_tokens=False)["input_ids"] != ids:
        raise DistillError("internal_error", "the tokenizer read back from the GGUF file encodes text differently")
    x = torch.tensor([ids])
    was_training = student.training
    student.eval()
    try:
        with torch.inference_mode():
            want = student(input_ids=x).logits.float()
            got = model(input_ids=x).logits.float()
    finally:
        student.train(was_training)
    return float((got - want).abs().max())


__all__ = ["GGUF_ARCHITECTURES", "check_folder_generates", "export_gguf", "export_onnx", "save_student_folder", "zip_folder"]
