"""The transfer set: the teacher answers the prompts that have no completion, and the answered records are written
as JSONL (the dataset artifact a user downloads and reuses; sequence-level KD, Kim & Rush 2016, trains on it).

Generation runs in fixed batches of prompts (batch ``b`` = records ``b·B .. b·B + B − 1`` of those needing an
answer, left-padded), sampled batches seeded with ``seed`` and ``b`` alone, so the output does not depend on where a
run stopped. After each batch its lines are appended to ``<out>.partial`` and flushed to disk (``fsync``), then a
progress file (``<out>.progress.json``: batches done, the byte length of the partial file, a fingerprint of the
prompts and settings) is replaced atomically. A worker killed at any point resumes from the last recorded batch:
the partial file is cut back to the recorded length (a batch written but not recorded is generated again,
identically) and generation goes on. When all batches are done the partial file is renamed to ``out`` and the
fingerprint recorded beside it (``<out>.done.json``), so a later run on the same prompts and settings (a job
redelivered after training began) reuses the file without generating again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data import prompt_ids
from .records import Record


def _fingerprint(records: list[Record], settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps(r.to_json(), sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def generate_batch(model: nn.Module, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int, do_sample: bool,
                   temperature: float = 1.0, top_p: float = 1.0, device: torch.device | str = "cpu") -> list[list[int]]:
    """New token ids for each prompt (``prompts``: token ids), generated together left-padded with the model's
    ``generate`` (greedy, or sampled at ``temperature`` with nucleus ``top_p``); each answer stops after the EOS token
    (kept out of the result) or ``max_new_tokens``. Uses the global torch RNG when sampling."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        att[i, width - len(p):] = 1
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": int(pad)}
    if tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = int(tokenizer.eos_token_id)
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), **kwargs)
    answers = []
    eos = tokenizer.eos_token_id
    for row in out[:, width:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        answers.append(row)
    return answers


def generate_transfer_set(model: nn.Module, tokenizer: Any, records: list[Record], out: str | Path, *,
                          max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                          seed: int = 0, batch_size: int = 8, device: torch.device | str = "cpu",
                          should_stop: Callable[[], bool] | None = None,
                          on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Answer every record that needs a completion with the teacher and write all records, answered, to ``out``
    (JSONL, input order; records that had their answer are copied), resuming a previous run's progress on the same
    records and settings (see the module docstring).

    ``should_stop()`` is checked between batches: when true, returns with ``finished: False`` and the progress kept.
    ``on_batch(done, total)`` is called after each recorded batch. Returns ``{finished, path (str or None until
    finished), records, generated, batches_done, batches_total, resumed_from_batch, new_tokens, settings}``.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    progress_path = out.with_name(out.name + ".progress.json")
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature if do_sample else None,
                "top_p": top_p if do_sample else None, "seed": seed, "batch_size": batch_size}
    fp = _fingerprint(records, settings)
    todo = [i for i, r in enumerate(records) if r.needs_completion]
    n_batches = -(-len(todo) // batch_size)
    done, size = 0, 0
    try:
        state = json.loads(progress_path.read_text())
        if state.get("fingerprint") == fp and partial.is_file() and partial.stat().st_size >= int(state["bytes"]):
            done, size = int(state["batches"]), int(state["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    done_path = out.with_name(out.name + ".done.json")
    try:
        if out.is_file() and json.loads(done_path.read_text()).get("fingerprint") == fp:
            return {"finished": True, "path": str(out), "records": len(records), "generated": len(todo), "batches_done": n_batches,
                    "batches_total": n_batches, "resumed_from_batch": n_batches, "new_tokens": 0, "settings": settings}
    except (OSError, ValueError, AttributeError):
        pass
    resumed_from = done
    out.parent.mkdir(parents=True, exist_ok=True)
    new_tokens = 0
    with open(partial, "r+b" if done else "wb") as f:
        f.truncate(size)
        f.seek(size)
        if done == 0:
            _write_json_atomic(progress_path, {"fingerprint": fp, "batches": 0, "bytes": 0, "total": n_batches})
        for b in range(done, n_batches):
            if should_stop is not None and should_stop():
                return {"finished": False, "path": None, "records": len(records), "generated": len(todo),
                        "batches_done": b, "batches_total": n_batches, "resumed_from_batch": resumed_from,
                        "new_tokens": new_tokens, "settings": settings}
            lo = b * batch_size
            # the records before this batch that already had answers are written ahead of it, in input order
            last = todo[min(lo + batch_size, len(todo)) - 1]
            prev_end = todo[lo - 1] + 1 if lo else 0
            idx = todo[lo:lo + batch_size]
            if do_sample:
                torch.manual_seed(seed * 1_000_003 + b)
            answers = generate_batch(model, tokenizer, [prompt_ids(records[i], tokenizer) for i in idx],
                                     max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                     top_p=top_p, device=device)
            new_tokens += sum(len(a) for a in answers)
            by_index = {i: tokenizer.decode(a, skip_special_tokens=True) for i, a in zip(idx, answers)}
            lines = []
            for i in range(prev_end, last + 1):
                rec = records[i].with_completion(by_index[i]) if i in by_index else records[i]
                lines.append(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
            _write_json_atomic(progress_path, {"fingerprint": fp, "batches": b + 1, "bytes": size, "total": n_batches})
            if on_batch is not None:
                on_batch(b + 1, n_batches)
        tail_start = todo[-1] + 1 if todo else 0
        if tail_start < len(records):
            f.write("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records[tail_start:]).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    os.replace(partial, out)
    _write_json_atomic(done_path, {"fingerprint": fp, "records": len(records)})
    progress_path.unlink(missing_ok=True)
    return {"finished": True, "path": str(out), "records": len(records), "generated": len(todo), "batches_done": n_batches,
            "batches_total": n_batches, "resumed_from_batch": resumed_from, "new_tokens": new_tokens, "settings": settings}


__all__ = ["generate_batch", "generate_transfer_set"]
