"""The two text adapters of the trainer (``distill.training.Trainer``): sequence classification (logit KD with a
registered method on a classification head) and sentence embedding (cosine / MSE to the teacher's pooled embedding,
optionally TinyBERT-style hidden-state and attention matching; ``embedding_loss_terms``).

Both batch the same way: an epoch's rows are shuffled with its seed, cut into pools of 50 batches, length-sorted
inside each pool and batched, and the batch order shuffled again (``data.length_batches``), so padding stays small
while the order varies per epoch; each batch is padded to its longest text (``data.collate``). The teacher's outputs
come from a per-job cache (``[N, D]`` on the device) when given, else from a no-grad forward pass per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillError
from ..method_params import EmbeddingParams, LayerPair
from ..methods import CombinedMethod, Method, register_method
from ..training import TaskAdapter
from .data import collate, length_batches
from .hf import from_states

EVAL_BATCH = 64  # texts per no-grad inference batch (length-sorted)


@torch.inference_mode()
def encode_all(fn: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, batch: int = EVAL_BATCH) -> torch.Tensor:
    """``fn(input_ids, attention_mask)`` over all texts in length-sorted batches, returned in the original order
    ``[N, D]`` (float32, on the CPU)."""
    out: list[tuple[np.ndarray, torch.Tensor]] = []
    for idx in length_batches(np.array([len(x) for x in ids]), batch, 0, shuffle=False):
        x, m = collate(ids, idx, pad_id, device)
        out.append((idx, fn(x, m).float().cpu()))
    res = torch.empty((len(ids), out[0][1].shape[1]))
    for idx, v in out:
        res[torch.as_tensor(idx)] = v
    return res


def hidden_state_loss(student_hidden: tuple, teacher_hidden: tuple, pairs: list[LayerPair], projections: nn.ModuleList,
                      mask: torch.Tensor) -> torch.Tensor:
    """Sum over ``pairs`` of the masked MSE between the projected student layer output and the teacher's (TinyBERT,
    Jiao et al. 2020). Hidden states are ``[B, T, H]`` tuples with index 0 the embeddings, so layer i's output is
    ``hidden[i + 1]``; ``mask [B, T]`` (1 = real token); the mean is over real tokens and the teacher's width."""
    m = mask.unsqueeze(-1).to(student_hidden[0].dtype)
    denom = m.sum() * teacher_hidden[0].shape[-1]
    total = student_hidden[0].new_zeros(())
    for k, p in enumerate(pairs):
        diff = (projections[k](student_hidden[p.student + 1]) - teacher_hidden[p.teacher + 1]) * m
        total = total + diff.pow(2).sum() / denom
    return total


def attention_loss(student_attn: tuple, teacher_attn: tuple, pairs: list[LayerPair], mask: torch.Tensor) -> torch.Tensor:
    """Sum over ``pairs`` of the MSE between head-averaged attention probabilities ``[B, T, T]`` on real tokens
    (TinyBERT, Jiao et al. 2020); attentions are ``[B, heads, T, T]`` tuples, one per layer."""
    mm = (mask.unsqueeze(1) * mask.unsqueeze(2)).to(student_attn[0].dtype)
    total = student_attn[0].new_zeros(())
    for p in pairs:
        diff = (student_attn[p.student].mean(1) - teacher_attn[p.teacher].mean(1)) * mm
        total = total + diff.pow(2).sum() / mm.sum()
    return total


def embedding_term_names(spec: EmbeddingParams) -> list[str]:
    """The terms ``embedding_loss_terms`` returns for ``spec``, in order (cosine, mse, hidden, attention; those
    weighted or configured). Raises ``DistillError('invalid_spec')`` when none is."""
    names = [n for n, on in (("cosine", spec.cosine_weight), ("mse", spec.mse_weight), ("hidden", spec.hidden_layers),
                             ("attention", spec.attention_layers)) if on]
    if not names:
        raise DistillError("invalid_spec", "every embedding loss weight is 0 and no layer pair is given", "method")
    return names


def embedding_loss_terms(student: dict[str, Any], teacher: dict[str, Any], mask: torch.Tensor, spec: EmbeddingParams,
                         hidden_projections: nn.ModuleList) -> dict[str, torch.Tensor]:
    """The sentence-embedding distillation terms (scalars, weighted):

    - ``cosine = cosine_weight · mean(1 − cos(s, t))`` and ``mse = mse_weight · MSE(s, t)`` over the embeddings
      ``student['embedding']`` / ``teacher['embedding']`` ``[B, D]``;
    - ``hidden = hidden_weight · hidden_state_loss`` over ``spec.hidden_layers`` (``'hidden_states'`` tuples) and
      ``attention = attention_weight · attention_loss`` over ``spec.attention_layers`` (``'attentions'`` tuples),
      the TinyBERT terms (Jiao et al. 2020), which need per-step teacher states.

    ``mask [B, T]``: the batch's attention mask. Only the terms of ``embedding_term_names(spec)`` are returned."""
    s_emb, t_emb = student["embedding"], teacher["embedding"]
    terms: dict[str, torch.Tensor] = {}
    if spec.cosine_weight:
        terms["cosine"] = spec.cosine_weight * (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
    if spec.mse_weight:
        terms["mse"] = spec.mse_weight * F.mse_loss(s_emb, t_emb)
    if spec.hidden_layers:
        terms["hidden"] = spec.hidden_weight * hidden_state_loss(student["hidden_states"], teacher["hidden_states"],
                                                                 spec.hidden_layers, hidden_projections, mask)
    if spec.attention_layers:
        terms["attention"] = spec.attention_weight * attention_loss(student["attentions"], teacher["attentions"],
                                                                    spec.attention_layers, mask)
    return terms


@register_method(EmbeddingParams)
class EmbeddingKD(nn.Module):
    """The ``embedding`` method (task sentence_embedding): cosine and/or MSE between the student's and the teacher's
    sentence embeddings ``[B, D]``, plus optional TinyBERT-style (Jiao et al. 2020) hidden-state and attention-map
    matching of layer pairs; the terms of ``embedding_loss_terms``. Built as ``EmbeddingKD(**params)`` from
    ``EmbeddingParams``; ``has_labels``/``all_labelled``/``extra_weight`` are accepted for the registry's uniform call
    and not used (the method reads no labels and takes no extras). ``setup(s_width, t_width)`` builds the learned
    hidden-state projections (one per hidden pair, ``Linear(s_width, t_width)`` or identity). Raises
    ``DistillError('invalid_spec')`` when every weight is 0 and no layer pair is given."""

    name = "embedding"

    def __init__(self, cosine_weight: float = 1.0, mse_weight: float = 0.0, hidden_layers: list[LayerPair] | None = None,
                 hidden_weight: float = 1.0, attention_layers: list[LayerPair] | None = None, attention_weight: float = 1.0, *,
                 has_labels: bool = True, all_labelled: bool = False, extra_weight: float | None = None, param: str = "method") -> None:
        super().__init__()
        self.spec = EmbeddingParams(cosine_weight=cosine_weight, mse_weight=mse_weight, hidden_layers=list(hidden_layers or []),
                                    hidden_weight=hidden_weight, attention_layers=list(attention_layers or []),
                                    attention_weight=attention_weight)
        self.param = param
        self.term_names = embedding_term_names(self.spec)
        self.hidden_projections = nn.ModuleList()

    @property
    def hidden_layers(self) -> list[LayerPair]:
        """Hidden-state matching pairs."""
        return self.spec.hidden_layers

    @property
    def attention_layers(self) -> list[LayerPair]:
        """Attention-map matching pairs."""
        return self.spec.attention_layers

    def setup(self, s_width: int, t_width: int) -> None:
        """One learned projection per hidden pair: ``Linear(s_width, t_width)``, or identity when the widths agree."""
        self.hidden_projections = nn.ModuleList([nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity()
                                                 for _ in self.spec.hidden_layers])

    def forward(self, student: dict[str, Any], teacher: dict[str, Any], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding_loss_terms`` of a batch (``mask [B, T]``: its attention mask)."""
        return embedding_loss_terms(student, teacher, mask, self.spec, self.hidden_projections)


class _TextAdapter(TaskAdapter):
    """Length-bucketed batches over tokenised texts ``ids`` (lists of token ids), padded with ``pad_id``; validation
    texts ``val_ids`` and the teacher's validation outputs ``teacher_val [Nv, D]``; ``cache [N, D]`` or None."""

    def __init__(self, student: nn.Module, ids: list[list[int]], pad_id: int, val_ids: list[list[int]], teacher_val: torch.Tensor,
                 device: torch.device, cache: torch.Tensor | None) -> None:
        self.student, self.ids, self.pad_id, self.val_ids, self.device = student, ids, pad_id, val_ids, device
        self.lengths = np.array([len(x) for x in ids])
        self.teacher_val = teacher_val
        self.cache = cache.to(device) if cache is not None else None

    def steps_per_epoch(self, batch_size: int) -> int:
        """``ceil(N / batch_size)`` (transformers normalise per token, so a one-text final batch is kept)."""
        return -(-len(self.ids) // batch_size)

    def epoch_plan(self, seed: int, batch_size: int) -> list[torch.Tensor]:
        """``length_batches`` of the epoch, as CPU index tensors."""
        return [torch.as_tensor(b, dtype=torch.int64) for b in length_batches(self.lengths, batch_size, seed)]

    def make_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, input_ids [B, T], attention_mask [B, T])`` padded to the batch's longest text."""
        x, m = collate(self.ids, index.numpy(), self.pad_id, self.device)
        return index, x, m

    def _cached(self, index: torch.Tensor) -> torch.Tensor:
        return self.cache[index.to(self.device)]


class SequenceClassification(_TextAdapter):
    """A transformer classifier ``student`` (``forward(input_ids, attention_mask) -> logits [B, K]``, e.g.
    ``hf.Classifier``) learns from ``teacher`` (the same interface) through a logit ``method`` (kd, hard_label, dkd)
    on training ``labels [N]`` (int64, -1 = unlabelled). Validation rows: 'agreement' with the teacher and 'top1'
    (with validation labels ``val_labels``), split 'val'; train top-1 from the training predictions."""

    def __init__(self, student: nn.Module, teacher: nn.Module, method: Method | CombinedMethod, ids: list[list[int]],
                 labels: np.ndarray, pad_id: int, val_ids: list[list[int]], val_labels: np.ndarray, teacher_val: torch.Tensor,
                 device: torch.device, cache: torch.Tensor | None = None) -> None:
        super().__init__(student, ids, pad_id, val_ids, teacher_val, device, cache)
        self.teacher, self.method = teacher, method
        self.term_names = list(method.term_names)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.val_labels = torch.as_tensor(val_labels, dtype=torch.int64)

    def modules(self) -> dict[str, nn.Module]:
        """``{'student': classifier, 'method': method}``."""
        return {"student": self.student, "method": self.method}

    def teacher_forward(self, batch: Any) -> torch.Tensor:
        """Teacher logits ``[B, K]`` from the cache or a no-grad pass."""
        if self.cache is not None:
            return self._cached(batch[0])
        with torch.inference_mode():
            logits = self.teacher(batch[1], batch[2])
        return logits.clone()

    def student_forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """``{'logits': [B, K]}``."""
        return {"logits": self.student(batch[1], batch[2])}

    def loss_terms(self, student_out: Any, teacher_out: Any, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        """The method's terms (see ``methods.Method.forward``)."""
        return self.method(student_out["logits"], teacher_out, self.labels[batch[0].to(self.device)], epoch=epoch)

    def train_labels(self, index: torch.Tensor) -> torch.Tensor:
        """The training labels of rows ``index``."""
        return self.labels[index.to(self.device)]

    def predict_into(self, student_out: Any, out: torch.Tensor) -> None:
        """The student's argmax class per text. (argmax), into ``out``."""
        torch.argmax(student_out["logits"], dim=1, out=out)

    def evaluate(self, epoch: int) -> list[tuple[str, str, float]]:
        """Agreement with the teacher's argmax and (with labels) top-1 on the validation texts."""
        self.student.eval()
        s_val = encode_all(self.student, self.val_ids, self.pad_id, self.device)
        self.student.train()
        rows = [("agreement", "val", float((s_val.argmax(1) == self.teacher_val.argmax(1)).float().mean()))]
        vy = self.val_labels
        if (vy >= 0).any():
            rows.append(("top1", "val", float((s_val.argmax(1)[vy >= 0] == vy[vy >= 0]).float().mean())))
        return rows


class SentenceEmbedding(_TextAdapter):
    """A sentence encoder learns the teacher's embeddings: ``student`` is the encoder pipeline
    (``hf.SentenceEncoder``: model, pooling ``mode``, optional ``projection`` to the teacher's width, ``normalize``),
    ``teacher_model`` the teacher's ``AutoModel`` (for per-step states), ``method`` the ``EmbeddingKD`` (loss weights,
    layer pairs and, after its ``setup``, one learned projection per hidden pair). Validation row: 'cosine' (mean
    cosine to the teacher's validation embeddings), split 'val'."""

    def __init__(self, student: nn.Module, teacher_model: nn.Module, method: EmbeddingKD, ids: list[list[int]], pad_id: int,
                 val_ids: list[list[int]], teacher_val: torch.Tensor, device: torch.device, cache: torch.Tensor | None = None) -> None:
        super().__init__(student, ids, pad_id, val_ids, teacher_val, device, cache)
        self.teacher, self.method = teacher_model, method
        self.term_names = method.term_names
        self.hidden, self.attention = bool(method.hidden_layers), bool(method.attention_layers)

    def modules(self) -> dict[str, nn.Module]:
        """``{'student': model, 'projection': …, 'hidden_proj': …}`` (projection only when the widths differ)."""
        mods: dict[str, nn.Module] = {"student": self.student.model}
        if self.student.projection is not None:
            mods["projection"] = self.student.projection
        mods["hidden_proj"] = self.method.hidden_projections
        return mods

    def _states(self, model: nn.Module, batch: Any, projection: nn.Module | None) -> dict[str, Any]:
        out = model(input_ids=batch[1], attention_mask=batch[2], output_hidden_states=self.hidden, output_attentions=self.attention)
        emb = from_states(out.last_hidden_state, batch[2], self.student.mode, self.student.normalize, projection)
        return {"embedding": emb, "hidden_states": out.hidden_states if self.hidden else None,
                "attentions": out.attentions if self.attention else None}

    def teacher_forward(self, batch: Any) -> dict[str, Any]:
        """``{'embedding': [B, D]}`` from the cache, or with the per-step states the TinyBERT terms need."""
        if self.cache is not None:
            return {"embedding": self._cached(batch[0])}
        with torch.inference_mode():
            out = self._states(self.teacher, batch, None)
        return {k: (v.clone() if isinstance(v, torch.Tensor) else tuple(t.clone() for t in v) if v is not None else None)
                for k, v in out.items()}

    def student_forward(self, batch: Any) -> dict[str, Any]:
        """``{'embedding': [B, D], 'hidden_states': tuple | None, 'attentions': tuple | None}``."""
        return self._states(self.student.model, batch, self.student.projection)

    def loss_terms(self, student_out: Any, teacher_out: Any, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        """The ``embedding`` method's terms of the batch."""
        return self.method(student_out, teacher_out, batch[2])

    def evaluate(self, epoch: int) -> list[tuple[str, str, float]]:
        """Mean cosine similarity to the teacher's validation embeddings."""
        self.student.eval()
        s_val = encode_all(self.student, self.val_ids, self.pad_id, self.device)
        self.student.train()
        return [("cosine", "val", float(F.cosine_similarity(s_val, self.teacher_val, dim=-1).mean()))]
