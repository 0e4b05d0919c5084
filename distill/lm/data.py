"""Language-model data for a job: records (``records``) → token ids with a target mask → rows of at most
``max_seq_length`` tokens (optionally packed) → padded batches.

Targets: plain text trains on every token; a prompt/completion record on the completion only (and the EOS token
after it, so the student learns to stop); a chat on its assistant turns, rendered by the tokenizer's chat template
turn by turn so that the boundary between prompt and answer is exact. The first token of a row is never a target
(nothing predicts it).

Packing (``pack=True``) concatenates whole examples into rows of up to ``max_seq_length`` tokens in file order
(a plain text longer than a row is cut into row-sized pieces first; a longer prompt/chat example is truncated), as
language-model training usually does: fewer padded positions, at the price of examples in one row attending to the
ones before them (separated by their EOS token). Validation rows are never packed: one row per example, so that
perplexity intervals resample examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import DistillError
from ..text.data import length_batches
from .records import Record


@dataclass
class Rows:
    """Token rows: ``ids[i]`` (int64 token ids) and ``mask[i]`` (uint8, 1 = target token) of equal length, plus
    ``stats`` (examples, dropped (no target left after truncation), truncated, rows, tokens, target_tokens)."""

    ids: list[np.ndarray]
    mask: list[np.ndarray]
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row ``[N]`` (int64)."""
        return np.array([len(r) for r in self.ids], dtype=np.int64)

    @property
    def target_tokens(self) -> int:
        """Target tokens that are predicted (the first token of a row excluded)."""
        return int(sum(int(m[1:].sum()) for m in self.mask))


def _template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja errors, a tokenizer without a template
        raise DistillError("invalid_spec", f"the tokenizer's chat template cannot render these messages: {str(e)[:300]}",
                           "data") from None


def chat_segments(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """A chat as rendered text segments ``(text, is_target)``: each assistant turn a target, everything between
    (system and user turns, the template's markup) not. Rendered with ``apply_chat_template`` for growing prefixes of
    the chat. ``add_generation_prompt``: end with the template's assistant header (a prompt for generation).

    Raises ``DistillError('invalid_spec')`` when the tokenizer has no chat template or its renderings of successive
    turns do not extend each other (the turns could not be told apart).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DistillError("invalid_spec", "chat records need a tokenizer with a chat template; the teacher's has none", "data")
    segs: list[tuple[str, bool]] = []
    prev = ""

    def extend(text: str, target: bool) -> None:
        nonlocal prev
        if not text.startswith(prev):
            raise DistillError("invalid_spec", "the chat template does not render a chat as growing prefixes, so the assistant "
                               "turns cannot be located; use prompt/completion records instead", "data")
        if len(text) > len(prev):
            segs.append((text[len(prev):], target))
        prev = text

    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            if i:
                extend(_template(tokenizer, messages[:i], True), False)
            extend(_template(tokenizer, messages[: i + 1], False), True)
    extend(_template(tokenizer, messages, add_generation_prompt), False)
    return segs


def segments(record: Record, tokenizer: Any) -> list[tuple[str, bool]]:
    """The record as ``(text, is_target)`` segments (see the module docstring). Raises ``ValueError`` for a record
    that still needs its completion."""
    if record.needs_completion:
        raise ValueError("this record has no completion yet: generate the transfer set first")
    if record.kind == "text":
        return [(record.text or "", True)]
    if record.kind == "prompt":
        return [(record.prompt or "", False), (record.completion or "", True)]
    return chat_segments(tokenizer, record.messages)


def encode(record: Record, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids and target mask (1 = target) of a complete record, untruncated. Plain text and prompt/completion
    records get the tokenizer's special tokens (e.g. BOS) at the start and EOS as a final target; chats carry what
    their template writes."""
    ids: list[int] = []
    mask: list[int] = []
    chat = record.kind == "chat"
    for i, (text, target) in enumerate(segments(record, tokenizer)):
        if not text:
            continue
        part = tokenizer(text, add_special_tokens=(i == 0 and not chat))["input_ids"]
        ids += part
        mask += [int(target)] * len(part)
    eos = tokenizer.eos_token_id
    if not chat and eos is not None and (not ids or ids[-1] != eos):
        ids.append(int(eos))
        mask.append(1)
    return ids, mask


def prompt_ids(record: Record, tokenizer: Any) -> list[int]:
    """Token ids the teacher continues to answer a record that needs its completion: the prompt with the tokenizer's
    special tokens, or the chat rendered with the template's assistant header."""
    if record.kind == "prompt":
        return list(tokenizer(record.prompt or "", add_special_tokens=True)["input_ids"])
    if record.kind == "chat":
        text = _template(tokenizer, record.messages, True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise ValueError("plain text records have no prompt")


def make_rows(records: Iterable[Record], tokenizer: Any, max_seq_length: int, *, pack: bool = False) -> Rows:
    """Encode complete records into rows of at most ``max_seq_length`` tokens (see the module docstring).

    ``pack``: concatenate whole examples into rows (plain text longer than a row is first cut into row-sized
    pieces). Without packing, a plain text longer than a row is cut into pieces too (no text is thrown away) and a
    longer prompt/chat example is truncated at its end. Examples left with no target token are dropped (counted
    in ``stats['dropped']``). Raises ``ValueError`` for ``max_seq_length < 2``.
    """
    if max_seq_length < 2:
        raise ValueError("max_seq_length must be at least 2")
    pieces: list[tuple[list[int], list[int]]] = []
    stats = {"examples": 0, "dropped": 0, "truncated": 0}
    for rec in records:
        stats["examples"] += 1
        ids, mask = encode(rec, tokenizer)
        if len(ids) > max_seq_length:
            if rec.kind == "text":
                chunks = [(ids[i:i + max_seq_length], mask[i:i + max_seq_length]) for i in range(0, len(ids), max_seq_length)]
                chunks = [c for c in chunks if len(c[0]) >= 2]
            else:
                stats["truncated"] += 1
                chunks = [(ids[:max_seq_length], mask[:max_seq_length])]
        else:
            chunks = [(ids, mask)]
        kept = [c for c in chunks if sum(c[1][1:]) > 0]
        if not kept:
            stats["dropped"] += 1
        pieces += kept
    rows: list[tuple[list[int], list[int]]] = []
    if pack:
        cur_ids: list[int] = []
        cur_mask: list[int] = []
        for ids, mask in pieces:
            if cur_ids and len(cur_ids) + len(ids) > max_seq_length:
                rows.append((cur_ids, cur_mask))
                cur_ids, cur_mask = [], []
            cur_ids = cur_ids + ids
            cur_mask = cur_mask + mask
        if cur_ids:
            rows.append((cur_ids, cur_mask))
    else:
        rows = pieces
    out = Rows([np.asarray(r[0], dtype=np.int64) for r in rows], [np.asarray(r[1], dtype=np.uint8) for r in rows], stats)
    out.stats.update({"rows": len(out), "tokens": int(out.lengths.sum()) if len(out) else 0, "target_tokens": out.target_tokens})
    return out


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of the records (at least one, at most all but one), chosen by a permutation seeded with
    ``seed``; both parts keep file order. Raises ``DistillError('invalid_spec')`` with fewer than 2 records."""
    n = len(records)
    if n < 2:
        raise DistillError("invalid_spec", f"a validation split needs at least 2 records, the data has {n}", "data.validation")
    k = min(n - 1, max(1, int(round(fraction * n))))
    held = np.sort(np.random.default_rng(seed).permutation(n)[:k])
    is_val = np.zeros(n, dtype=bool)
    is_val[held] = True
    return [r for r, v in zip(records, is_val) if not v], [r for r, v in zip(records, is_val) if v]


def collate(rows: Rows, index: np.ndarray | list[int], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and target mask, each ``[B, T]`` int64 on ``device``, for the rows at
    ``index`` right-padded with ``pad_id`` to the longest (padding is never attended to nor a target)."""
    sel = [int(i) for i in index]
    t = max(len(rows.ids[i]) for i in sel)
    ids = torch.full((len(sel), t), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(sel), t), dtype=torch.long)
    tgt = torch.zeros((len(sel), t), dtype=torch.long)
    for k, i in enumerate(sel):
        n = len(rows.ids[i])
        ids[k, :n] = torch.from_numpy(rows.ids[i])
        att[k, :n] = 1
        tgt[k, :n] = torch.from_numpy(rows.mask[i].astype(np.int64))
    return ids.to(device), att.to(device), tgt.to(device)


def batches(rows: Rows, batch_size: int, seed: int, *, shuffle: bool = True) -> list[np.ndarray]:
    """Row-index batches of similar length (``distill.text.data.length_batches``: shuffled with ``seed`` in pools,
    sorted by length inside a pool; without ``shuffle`` globally length-sorted), so little is padded."""
    return length_batches(rows.lengths, batch_size, seed, shuffle=shuffle)


__all__ = ["Rows", "batches", "chat_segments", "collate", "encode", "make_rows", "prompt_ids", "segments", "split_records"]
