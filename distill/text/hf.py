"""Hugging Face models for text tasks: load a teacher folder strictly offline, derive a student from it
(fewer layers copied from the teacher, as DistilBERT does — Sanh et al. 2019 — or narrower and fresh),
pool token states into sentence embeddings, and save the student as a transformers / sentence-transformers
folder."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillError
from ..spec import FromTeacherSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_LAYER_KEY = re.compile(r"((?:^|\.)(?:layer|layers)\.)(\d+)(\.)")


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(folder: Path):
    """The folder's tokenizer (``AutoTokenizer``, ``local_files_only``). Raises DistillError('invalid_file')."""
    from transformers import AutoTokenizer

    _quiet()
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise DistillError("invalid_file", f"the teacher's tokenizer does not load: {e}") from None


def load_model(folder: Path, task: str, *, attention: bool = False) -> nn.Module:
    """The teacher as ``AutoModelForSequenceClassification`` (task sequence_classification) or ``AutoModel``,
    strictly offline, in eval mode with gradients off. ``attention``: eager attention so attention maps can be
    returned (needed for attention matching and ONNX export). Raises DistillError('invalid_file')."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    _quiet()
    cls = AutoModelForSequenceClassification if task == "sequence_classification" else AutoModel
    kwargs: dict[str, Any] = {"local_files_only": True}
    if attention:
        kwargs["attn_implementation"] = "eager"
    try:
        model = cls.from_pretrained(str(folder), **kwargs)
    except Exception as e:  # noqa: BLE001
        raise DistillError("invalid_file", f"the Hugging Face teacher does not load as {cls.__name__}: {e}") from None
    return model.eval().requires_grad_(False)


def pipeline_pooling(folder: Path) -> tuple[str, bool]:
    """The teacher's sentence-transformers pooling ('mean'|'cls'|'max') and whether it L2-normalises;
    ('mean', False) for a plain transformers folder."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return "mean", False
    try:
        mods = json.loads(modules.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in mods)
        pool = next((m for m in mods if m.get("type", "").endswith("Pooling")), None)
        cfg = json.loads((folder / pool["path"] / "config.json").read_text()) if pool else {}
    except (OSError, ValueError, KeyError, TypeError):
        return "mean", False
    mode = "cls" if cfg.get("pooling_mode_cls_token") else "max" if cfg.get("pooling_mode_max_tokens") else "mean"
    return mode, normalize


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence embedding from token states ``[B, T, H]`` and attention mask ``[B, T]`` (1 = real token):
    'mean' over real tokens, 'cls' (first token) or 'max' over real tokens. Returns ``[B, H]``."""
    if mode == "cls":
        return states[:, 0]
    m = mask.unsqueeze(-1).to(states.dtype)
    if mode == "max":
        return states.masked_fill(m == 0, torch.finfo(states.dtype).min).amax(dim=1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def layers_to_keep(n_teacher: int, spec: FromTeacherSpec) -> list[int]:
    """Teacher layer indices the student keeps: ``keep_layers`` as given, or ``num_layers`` evenly spaced
    with the first and last layer included (e.g. 6 -> 3 keeps [0, 2, 5]). Raises DistillError('invalid_spec')."""
    if spec.keep_layers is not None:
        bad = [i for i in spec.keep_layers if i >= n_teacher]
        if bad:
            raise DistillError("invalid_spec", f"keep_layers {bad} do not exist: the teacher has {n_teacher} layers (0..{n_teacher - 1})",
                               "student.from_teacher.keep_layers")
        return list(spec.keep_layers)
    n = int(spec.num_layers or 1)
    if n > n_teacher:
        raise DistillError("invalid_spec", f"num_layers={n} but the teacher has only {n_teacher} layers", "student.from_teacher.num_layers")
    if n == 1:
        return [n_teacher - 1]
    return sorted({int(round(i * (n_teacher - 1) / (n - 1))) for i in range(n)})


def derive_student(teacher: nn.Module, spec: FromTeacherSpec, task: str, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """A student of the teacher's model class with fewer layers.

    Same width: embeddings, the kept layers, pooler and classification head are copied from the teacher
    (DistilBERT recipe). Narrower (``hidden_size``/``intermediate_size``/``num_attention_heads``): fresh
    initialisation (seeded). Returns (student in train mode, facts: kept layers, copied, config). The
    vocabulary is the teacher's. Raises DistillError('invalid_spec') for impossible shapes.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    cfg = copy.deepcopy(teacher.config)
    n_teacher = int(cfg.num_hidden_layers)
    keep = layers_to_keep(n_teacher, spec)
    extra = dict(spec.config)
    if "vocab_size" in extra and int(extra["vocab_size"]) != int(cfg.vocab_size):
        raise DistillError("invalid_spec", f"the student's vocab_size {extra['vocab_size']} differs from the teacher's "
                           f"{cfg.vocab_size}: the student shares the teacher's tokenizer", "student.from_teacher.config.vocab_size")
    for k, v in extra.items():
        setattr(cfg, k, v)
    cfg.num_hidden_layers = len(keep)
    for name in ("hidden_size", "intermediate_size", "num_attention_heads"):
        v = getattr(spec, name)
        if v is not None:
            setattr(cfg, name, int(v))
    if cfg.hidden_size % cfg.num_attention_heads:
        raise DistillError("invalid_spec", f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                           f"{cfg.num_attention_heads}", "student.from_teacher")
    cls = AutoModelForSequenceClassification if task == "sequence_classification" else AutoModel
    torch.manual_seed(seed)
    try:
        student = cls.from_config(cfg, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001
        raise DistillError("invalid_spec", f"cannot build the student config: {e}", "student.from_teacher") from None
    copied = 0
    if not spec.narrower:
        mapping = {t: s for s, t in enumerate(keep)}
        state: dict[str, torch.Tensor] = {}
        for key, value in teacher.state_dict().items():
            m = _LAYER_KEY.search(key)
            if m:
                t = int(m.group(2))
                if t not in mapping:
                    continue
                key = key[: m.start(2)] + str(mapping[t]) + key[m.end(2):]
            state[key] = value.detach().clone()
        result = student.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing or result.unexpected_keys:
            raise DistillError("invalid_spec", f"could not copy the teacher's weights into the student: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}", "student.from_teacher")
        copied = len(state)
    student.train()
    return student, {"keep_layers": keep, "copied_tensors": copied, "initialised": "fresh" if spec.narrower else "copied from teacher",
                     "num_hidden_layers": len(keep), "hidden_size": int(cfg.hidden_size)}


class SentenceEncoder(nn.Module):
    """``model`` (an ``AutoModel``) + pooling (+ optional linear projection to the teacher's width)
    (+ optional L2 normalisation): ``forward(input_ids [B, T], attention_mask [B, T]) -> [B, D]``."""

    def __init__(self, model: nn.Module, mode: str, normalize: bool, projection: nn.Linear | None = None) -> None:
        super().__init__()
        self.model, self.mode, self.normalize, self.projection = model, mode, normalize, projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return from_states(out.last_hidden_state, attention_mask, self.mode, self.normalize, self.projection)


def from_states(states: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool, projection: nn.Module | None) -> torch.Tensor:
    """Pool ``[B, T, H]`` token states into ``[B, D]`` embeddings, project and L2-normalise as the pipeline does
    (``SentenceEncoder`` and the sentence-embedding adapter, which needs the states for feature losses too, share it)."""
    emb = pool(states, mask, mode)
    if projection is not None:
        emb = projection(emb)
    return F.normalize(emb, dim=-1) if normalize else emb


class Classifier(nn.Module):
    """An ``AutoModelForSequenceClassification`` as ``forward(input_ids, attention_mask) -> logits [B, K]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def save_student_folder(student: nn.Module, tokenizer, out: Path, *, task: str, mode: str, normalize: bool,
                        projection: nn.Linear | None, max_seq_length: int) -> Path:
    """Write the student as a Hugging Face folder that ``AutoModel.from_pretrained`` loads; for
    sentence_embedding also as a sentence-transformers model (Transformer + Pooling [+ Dense] [+ Normalize]
    modules, saved by sentence-transformers itself). Returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if task != "sentence_embedding":
        return out
    from sentence_transformers import SentenceTransformer, models as st_models

    _quiet()
    transformer = st_models.Transformer(str(out), max_seq_length=max_seq_length)
    dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    modules: list[nn.Module] = [transformer, st_models.Pooling(dim_of(), pooling_mode=mode)]
    if projection is not None:
        dense = st_models.Dense(projection.in_features, projection.out_features, bias=True, activation_function=nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(projection.weight)
            dense.linear.bias.copy_(projection.bias)
        modules.append(dense)
    if normalize:
        modules.append(st_models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def st_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """Embeddings ``[N, D]`` of ``texts`` from the folder loaded by sentence-transformers (a check of the export)."""
    from sentence_transformers import SentenceTransformer

    _quiet()
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
