"""Evaluation of language-model students: perplexity with intervals, agreement and per-token KL with the teacher,
generations side by side, and prefill/decode speed at batch 1.

Intervals: perplexity is ``exp(Σ NLL / Σ tokens)`` over the held-out target tokens; its 95% interval is a percentile
bootstrap over *sequences* (rows resampled with replacement, 1,000 times, seeded), which respects that tokens of one
text are not independent. Agreement (the fraction of target tokens where the student's most likely next token is the
teacher's) gets the same bootstrap over sequences.

Speed at batch 1 on the worker's device: *prefill* tokens/s = prompt tokens / time of one forward pass over the
prompt (median of repeats); *decode* tokens/s = generated tokens / time of generating them one at a time with the
key/value cache after that prefill (greedy, never stopping early, median of repeats).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..measure import synchronize
from .data import Rows, collate
from .losses import divergence, targets

BOOTSTRAP_RESAMPLES = 1000


def _bootstrap(num: np.ndarray, den: np.ndarray, transform, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``transform(Σ num[idx] / Σ den[idx])`` over sequence resamples ``idx``."""
    n = len(num)
    if n < 2:
        v = transform(num.sum() / max(den.sum(), 1))
        return float(v), float(v)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    stats = transform(num[idx].sum(1) / np.maximum(den[idx].sum(1), 1))
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def sequence_stats(model: nn.Module, rows: Rows, pad_id: int, *, teacher: nn.Module | None = None, batch_size: int = 8,
                   device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per row of ``rows``: summed next-token NLL of the targets (nats), target count, and with a ``teacher`` the
    count of top-1 agreements and the summed ``KL(teacher ‖ model)`` (nats). Arrays of length ``len(rows)``."""
    return many_sequence_stats({"model": model}, rows, pad_id, teacher=teacher, batch_size=batch_size, device=device)["model"]


def many_sequence_stats(models: dict[str, nn.Module], rows: Rows, pad_id: int, *, teacher: nn.Module | None = None,
                        batch_size: int = 8, device: torch.device | str = "cpu",
                        on_teacher_batch: Callable[[torch.Tensor], None] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``sequence_stats`` of several models at once, the teacher run once per batch (not once per model): ``{name:
    stats}``, plus ``'teacher'`` (its own NLL and counts) when a teacher is given. ``on_teacher_batch(t_sel)`` gets
    the teacher's selected logits ``[M, V]`` of each batch (e.g. to measure the top-k cache's fidelity)."""
    n = len(rows)
    names = list(models) + (["teacher"] if teacher is not None else [])
    acc = {k: {"nll": np.zeros(n), "tokens": np.zeros(n), "agree": np.zeros(n), "kl": np.zeros(n)} for k in names}
    was = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        for start in range(0, n, batch_size):
            index = list(range(start, min(start + batch_size, n)))
            ids, att, tgt = collate(rows, index, pad_id, device)
            sel = tgt[:, 1:].bool()
            at = np.asarray(index)[torch.arange(len(index), device=sel.device).unsqueeze(1).expand_as(sel)[sel].cpu().numpy()]
            with torch.inference_mode():
                t_sel = None
                if teacher is not None:
                    t_sel, _ = targets(teacher(input_ids=ids, attention_mask=att, use_cache=False).logits.float(), ids, tgt)
                    if on_teacher_batch is not None:
                        on_teacher_batch(t_sel)
                for name in names:
                    if name == "teacher":
                        s_sel, target_ids = t_sel, ids[:, 1:][sel]
                    else:
                        s_sel, target_ids = targets(models[name](input_ids=ids, attention_mask=att, use_cache=False).logits.float(), ids, tgt)
                    a = acc[name]
                    np.add.at(a["nll"], at, F.cross_entropy(s_sel, target_ids, reduction="none").cpu().numpy())
                    np.add.at(a["tokens"], at, 1)
                    if t_sel is not None and name != "teacher":
                        np.add.at(a["agree"], at, (s_sel.argmax(-1) == t_sel.argmax(-1)).float().cpu().numpy())
                        np.add.at(a["kl"], at, divergence(F.log_softmax(s_sel, -1), F.log_softmax(t_sel, -1), "forward_kl").cpu().numpy())
    finally:
        for k, m in models.items():
            m.train(was[k])
    return {k: ({"nll": v["nll"], "tokens": v["tokens"]} if teacher is None or k == "teacher" else v) for k, v in acc.items()}


def perplexity(stats: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """``{perplexity, low, high (95% bootstrap over sequences), nll_per_token (nats), tokens, sequences, interval}``
    from ``sequence_stats``."""
    nll, tok = stats["nll"], stats["tokens"]
    keep = tok > 0
    nll, tok = nll[keep], tok[keep]
    mean = float(nll.sum() / max(tok.sum(), 1))
    lo, hi = _bootstrap(nll, tok, np.exp, seed)
    return {"perplexity": float(np.exp(mean)), "low": lo, "high": hi, "nll_per_token": mean, "tokens": int(tok.sum()),
            "sequences": int(keep.sum()), "interval": f"95% percentile bootstrap over sequences, {BOOTSTRAP_RESAMPLES} resamples"}


def agreement(stats: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """``{top1_agreement, low, high (95% bootstrap over sequences), mean_kl_nats (per token, KL(teacher ‖ student)),
    tokens}`` from ``sequence_stats`` run with a teacher."""
    tok = stats["tokens"]
    keep = tok > 0
    a, k, tok = stats["agree"][keep], stats["kl"][keep], tok[keep]
    lo, hi = _bootstrap(a, tok, lambda x: x, seed)
    return {"top1_agreement": float(a.sum() / max(tok.sum(), 1)), "low": lo, "high": hi,
            "mean_kl_nats": float(k.sum() / max(tok.sum(), 1)), "tokens": int(tok.sum())}


def token_f1(a: list[int], b: list[int]) -> float:
    """Bag-of-tokens F1 between two token-id sequences (precision and recall of shared tokens, counted with
    multiplicity, as SQuAD's answer F1 does on words; Rajpurkar et al. 2016). 1.0 for two empty sequences."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    from collections import Counter

    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def compare_generations(student_answers: list[list[int]], teacher_answers: list[list[int]], tokenizer: Any,
                        prompts: list[str], shown: int = 5) -> dict[str, Any]:
    """The student's generations beside the teacher's for the same held-out prompts (token ids, EOS removed):
    ``{prompts, exact_match (fraction of identical decoded texts, stripped), token_f1_mean, examples (the first
    ``shown``: prompt, teacher, student, token_f1)}``."""
    f1s, exact, examples = [], 0, []
    for i, (s, t) in enumerate(zip(student_answers, teacher_answers)):
        st, tt = tokenizer.decode(s, skip_special_tokens=True).strip(), tokenizer.decode(t, skip_special_tokens=True).strip()
        f1 = token_f1(s, t)
        f1s.append(f1)
        exact += int(st == tt)
        if i < shown:
            examples.append({"prompt": prompts[i], "teacher": tt, "student": st, "token_f1": round(f1, 4)})
    n = len(f1s)
    return {"prompts": n, "exact_match": exact / n if n else None, "token_f1_mean": float(np.mean(f1s)) if n else None,
            "examples": examples}


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def speed(model: nn.Module, *, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 5, vocab_size: int | None = None,
          device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Prefill and decode speed at batch 1 (see the module docstring) on a fixed random prompt of ``prompt_tokens``
    ids (seeded), after one untimed warm-up of each. Returns ``{prefill_tokens_per_s, decode_tokens_per_s,
    prefill_ms, decode_ms_per_token, prompt_tokens, new_tokens, repeats}``."""
    device = torch.device(device)
    v = int(vocab_size or model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (1, prompt_tokens), generator=g).to(device)
    was = model.training
    model.eval()

    def prefill():
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=True)

    # transformers 5 names the key/value cache 'cache' (argument and output), earlier versions 'past_key_values'
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decode():
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            past, nxt = out[cache_arg], out.logits[:, -1:].argmax(-1)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                out = model(input_ids=nxt, use_cache=True, **{cache_arg: past})
                past, nxt = out[cache_arg], out.logits[:, -1:].argmax(-1)
            synchronize(device)
            return time.perf_counter() - t0

    try:
        prefill()
        decode()
        pre = _median_seconds(prefill, repeats, device)
        dec = float(np.median([decode() for _ in range(repeats)]))
    finally:
        model.train(was)
    return {"prefill_tokens_per_s": prompt_tokens / pre, "decode_tokens_per_s": new_tokens / dec, "prefill_ms": pre * 1e3,
            "decode_ms_per_token": dec / new_tokens * 1e3, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "repeats": repeats}


__all__ = ["BOOTSTRAP_RESAMPLES", "agreement", "compare_generations", "many_sequence_stats", "perplexity", "sequence_stats", "speed", "token_f1"]
