"""Token-level distillation losses for causal language models, as plain functions, and the top-k teacher cache's
arithmetic.

Positions: ``logits[:, t]`` predicts token ``t + 1``. A *target mask* ``[B, T]`` marks the tokens that are trained
on (1 = a target: completion tokens when the data has prompts, every real token for plain text; 0 = prompt or
padding); ``targets`` selects, in row-major order, the ``M`` predicting positions ``(b, t)`` with
``mask[b, t + 1] == 1``. Every loss is the mean over those ``M`` tokens (nats per token).

Divergences between the teacher's next-token distribution ``p`` and the student's ``q``, both at temperature ``T``
(``softmax(logits / T)``), multiplied by ``T²`` so gradients keep their scale across temperatures (Hinton et al. 2015):

- forward KL ``KL(p ‖ q)`` — token-level KD (Hinton et al. 2015; on sequences, Kim & Rush 2016's word-level KD);
- reverse KL ``KL(q ‖ p)`` — mode-seeking, the objective of MiniLLM (Gu et al. 2024);
- generalized Jensen-Shannon divergence ``JSD(β) = β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)`` with ``m = β·p + (1 − β)·q``
  (GKD, Agarwal et al. 2024). Its value vanishes at β = 0 and 1; as in GKD, those ends are taken as its limits
  ``JSD(β)/β → KL(p ‖ q)`` (β → 0) and ``JSD(β)/(1 − β) → KL(q ‖ p)`` (β → 1), so β = 0 is forward KL and β = 1
  reverse KL.

Sequence-level KD (Kim & Rush 2016) trains with next-token cross-entropy on the teacher's own generations: the
transfer set made by ``distill.lm.generate``, trained with ``next_token_ce``.

Top-k cache (``TopK``): the teacher's ``k`` largest log-probabilities per target token, their token ids, and the log
of the mass of the other ``V − k`` tokens. The cached loss compares the teacher and the student over the same
``k + 1`` buckets (the ``k`` tokens, the rest pooled): exact divergences between those coarsened distributions,
which never exceed the full-vocabulary ones (data-processing inequality) and equal them when the rest's mass is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def targets(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicting positions' logits ``[M, V]`` and their target token ids ``[M]`` (int64) from ``logits``
    ``[B, T, V]`` (or any per-position tensor ``[B, T, H]``, e.g. hidden states), ``input_ids`` ``[B, T]`` and the
    target mask ``[B, T]`` (see the module docstring), row-major."""
    sel = mask[:, 1:].bool()
    return logits[:, :-1][sel], input_ids[:, 1:][sel]


# Model types whose causal-LM forward is exactly ``lm_head(base_model(...).last_hidden_state)`` (no logit scaling or
# soft-capping after the head), so the head may run on the target positions' hidden states alone
HEAD_ONLY_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


def target_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``targets(model(...).logits, input_ids, mask)``: the target positions' logits ``[M, V]`` and their token ids
    ``[M]`` for a batch ``[B, T]``. For the model types of ``HEAD_ONLY_MODEL_TYPES`` the output layer runs on the
    ``M`` selected hidden states only, not on all ``B·T`` positions (the vocabulary projection is most of a small
    student's step: 49,152 × 576 for SmolLM2), which gives the same logits up to float rounding; other models run
    their full forward. ``model`` must be the model itself (a ``DistributedDataParallel`` wrapper's forward has to run
    through the wrapper: call ``targets`` on its logits instead)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", model)
    if getattr(getattr(model, "config", None), "model_type", None) not in HEAD_ONLY_MODEL_TYPES or head is None or base is model:
        return targets(model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits, input_ids, mask)
    hidden, ids = targets(base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state,
                          input_ids, mask)  # the same selection, on the hidden states [M, H]
    return head(hidden), ids


def _kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q)`` per row from log-probabilities ``[M, K]`` (``-inf`` allowed: a zero-probability bucket of ``p``
    contributes 0, with a zero gradient, never NaN). Returns ``[M]``."""
    finite = torch.isfinite(lp)
    lp0 = torch.where(finite, lp, torch.zeros_like(lp))
    diff = torch.where(finite, lp0 - lq, torch.zeros_like(lp))
    return (torch.where(finite, lp0.exp(), torch.zeros_like(lp)) * diff).sum(-1)


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence ``[M]`` between the teacher's and the student's log-probabilities over the same buckets
    ``[M, K]`` (the vocabulary, or the top-k + rest buckets of the cache).

    ``kind``: 'forward_kl' ``KL(p ‖ q)``, 'reverse_kl' ``KL(q ‖ p)``, 'jsd' generalized JSD with weight ``beta`` ∈ [0, 1]
    on the teacher (0 → forward KL, 1 → reverse KL, see the module docstring). Raises ``ValueError`` for an unknown
    kind or a β outside [0, 1].
    """
    if kind == "forward_kl":
        return _kl(teacher_logp, student_logp)
    if kind == "reverse_kl":
        return _kl(student_logp, teacher_logp)
    if kind != "jsd":
        raise ValueError(f"unknown divergence {kind!r}; expected one of {DIVERGENCES}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl(teacher_logp, student_logp)
    if beta == 1.0:
        return _kl(student_logp, teacher_logp)
    mix = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0)
    return beta * _kl(teacher_logp, mix) + (1.0 - beta) * _kl(student_logp, mix)


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward_kl", *,
                  beta: float = 0.5, temperature: float = 1.0, student_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of ``T² · divergence(softmax(s/T), softmax(t/T))`` for the selected positions' logits
    ``[M, V]`` of student and teacher (float32 arithmetic whatever their dtype). ``student_logp``: the student's
    ``log_softmax(s / T)`` ``[M, V]`` when the caller has it already (it is not computed again). Returns a scalar; 0
    when ``M == 0``."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    t = float(temperature)
    s = student_logp if student_logp is not None else F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return divergence(s, p, kind, beta).mean() * (t * t)


def next_token_ce(student_logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of the selected positions' logits ``[M, V]`` against their
    target ids ``[M]``: the hard-label term, and sequence-level KD's loss on teacher generations (Kim & Rush 2016).
    Returns a scalar; 0 when ``M == 0``."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float(), target_ids)


# ------------------------------------------------------------------------------------------- top-k cache


@dataclass
class TopK:
    """The teacher's top-k next-token distribution for ``M`` target tokens.

    ``logp`` ``[M, k]``: log-probabilities (at the job's temperature) of the ``k`` most likely tokens, descending;
    ``ids`` ``[M, k]``: their token ids; ``rest`` ``[M]``: log of the probability mass of all other tokens
    (``-inf`` when ``k`` covers the vocabulary or the mass underflows)."""

    logp: torch.Tensor
    ids: torch.Tensor
    rest: torch.Tensor

    def buckets(self) -> torch.Tensor:
        """Teacher log-probabilities over the ``k + 1`` buckets ``[M, k + 1]`` (float32; the rest last), normalised
        again (``log_softmax``) so that values stored in float16 still sum to one."""
        return torch.log_softmax(torch.cat([self.logp.float(), self.rest.float().unsqueeze(-1)], dim=-1), dim=-1)


def _rest_logmass(top_logp: torch.Tensor) -> torch.Tensor:
    """``log(1 − Σ exp(top_logp))`` per row ``[M]``, stable near 1 (``log(-expm1(logsumexp))``); ``-inf`` for no mass."""
    lse = torch.logsumexp(top_logp.float(), dim=-1).clamp(max=0.0)
    return torch.log(torch.clamp(-torch.expm1(lse), min=0.0))


def topk_from_logits(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The top-``k`` summary of the teacher's selected logits ``[M, V]`` at ``temperature`` (float32 arithmetic).
    Raises ``ValueError`` for ``k`` outside [1, V]."""
    v = teacher_logits.shape[-1]
    if not 1 <= k <= v:
        raise ValueError(f"k must lie in [1, {v}], got {k}")
    logp = F.log_softmax(teacher_logits.float() / float(temperature), dim=-1)
    top, ids = logp.topk(k, dim=-1)
    rest = _rest_logmass(top) if k < v else torch.full(top.shape[:-1], float("-inf"))  # not float rounding's 1e-7
    return TopK(top, ids, rest)


REST_BY_SUBTRACTION_BELOW = 0.5
"""Below this mass on the cached ids, the student's rest bucket is ``log1p(−mass)`` (relative error at most about
2 float32 epsilons there); at or above it, where that subtraction would cancel, an exact logsumexp over the other
tokens, for those rows only."""


def student_buckets(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                    student_logp: torch.Tensor | None = None) -> torch.Tensor:
    """The student's log-probabilities over the teacher's ``k + 1`` buckets ``[M, k + 1]``: its log-probabilities at
    the cached token ids ``[M, k]``, then the log of its mass on every other token. That rest is ``log1p(−mass on the
    ids)`` for rows whose mass on the ids is below ``REST_BY_SUBTRACTION_BELOW``, and for the others a logsumexp over
    the vocabulary with the cached ids left out (exact, no subtraction; it copies those rows' ``[V]`` log-probabilities,
    which is why it is not done for every row). ``student_logp``: ``log_softmax(student_logits / T)`` when the caller
    has it already."""
    logp = student_logp if student_logp is not None else F.log_softmax(student_logits.float() / float(temperature), dim=-1)
    ids = ids.long()
    at = logp.gather(-1, ids)
    mass = at.exp().sum(-1)
    high = mass >= REST_BY_SUBTRACTION_BELOW
    rest = torch.log1p(-torch.where(high, torch.zeros_like(mass), mass))  # the high rows' value is replaced below
    if bool(high.any()):
        rows = high.nonzero().squeeze(1)
        exact = torch.logsumexp(logp[rows].scatter(-1, ids[rows], float("-inf")), dim=-1)
        rest = rest.index_put((rows,), exact)
    return torch.cat([at, rest.unsqueeze(-1)], dim=-1)


def cached_kd_loss(student_logits: torch.Tensor, cache: TopK, kind: str = "forward_kl", *, beta: float = 0.5,
                   temperature: float = 1.0, student_logp: torch.Tensor | None = None) -> torch.Tensor:
    """``token_kd_loss`` with the teacher read from its top-k cache for the same ``M`` tokens: the divergence over
    the ``k + 1`` buckets, times ``T²``, mean over tokens. ``temperature`` must be the one the cache was made at;
    ``student_logp`` as in ``student_buckets``. Returns a scalar; 0 when ``M == 0``."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    t = float(temperature)
    return divergence(student_buckets(student_logits, cache.ids, t, student_logp), cache.buckets(), kind, beta).mean() * (t * t)


def reconstruct(cache: TopK, vocab_size: int) -> torch.Tensor:
    """The full distribution the cache stands for, as log-probabilities ``[M, V]``: the cached tokens keep their
    probabilities, the rest's mass is spread evenly over the ``V − k`` other tokens (``-inf`` when it is 0)."""
    m, k = cache.ids.shape
    if k == vocab_size:
        fill = torch.full((m, 1), float("-inf"))
    else:
        fill = (cache.rest.float() - math.log(vocab_size - k)).unsqueeze(-1)
    out = fill.expand(m, vocab_size).clone()
    return out.scatter(-1, cache.ids.long(), cache.logp.float())


def cache_fidelity_kl(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> torch.Tensor:
    """Per token ``[M]``: ``KL(p ‖ p̂)`` in nats between the teacher's full distribution ``p`` (selected logits
    ``[M, V]`` at ``temperature``) and ``p̂ = reconstruct(topk_from_logits(...))``, what its top-``k`` cache keeps."""
    full = F.log_softmax(teacher_logits.float() / float(temperature), dim=-1)
    return _kl(full, reconstruct(topk_from_logits(teacher_logits, k, temperature), teacher_logits.shape[-1]))


def cache_bytes_per_token(k: int, value_bytes: int = 2, id_bytes: int = 4, rest_bytes: int = 4) -> int:
    """Bytes one target token takes in the cache: ``k`` log-probabilities (float16: 2) + ``k`` ids (int32: 4) + the
    rest's log-mass (float32: 4)."""
    return k * (value_bytes + id_bytes) + rest_bytes


def full_logits_bytes_per_token(vocab_size: int, value_bytes: int = 2) -> int:
    """Bytes one token's full-vocabulary logits take (float16 by default: the fair comparison with the cache)."""
    return vocab_size * value_bytes


__all__ = ["DIVERGENCES", "TopK", "cache_bytes_per_token", "cache_fidelity_kl", "cached_kd_loss", "divergence",
           "full_logits_bytes_per_token", "next_token_ce", "reconstruct", "student_buckets", "targets",
           "token_kd_loss", "topk_from_logits"]
