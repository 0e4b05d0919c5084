"""Language-model datasets as JSONL records, read without a tokenizer (so uploads are checked without loading one).

One JSON object per non-empty line (UTF-8), all lines of one shape:

- ``{"text": "..."}`` — plain text; every token is a target;
- ``{"prompt": "...", "completion": "..."}`` — only the completion's tokens are targets; a file whose lines have no
  ``completion`` (or ``null``) is a *prompts-only transfer set*: the teacher writes the completions first;
- ``{"messages": [{"role": "system"|"user"|"assistant"|..., "content": "..."}, ...]}`` — a chat, rendered with the
  tokenizer's chat template; the assistant turns are the targets; a chat that does not end with an assistant turn
  is a prompt (the teacher answers it).

Other keys on a line are ignored. A file mixing shapes is refused. Prompts with and without completions may mix: the
teacher answers those that lack one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DistillError
from ..text_data import jsonl_values

KINDS = ("text", "prompt", "chat")
MAX_ERRORS_SHOWN = 1


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


@dataclass
class Record:
    """One example. ``kind``: 'text' | 'prompt' | 'chat'. ``text`` (text), ``prompt`` and ``completion`` (prompt;
    completion None = to be generated), ``messages`` (chat: a list of ``{"role", "content"}``)."""

    kind: str
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    @property
    def needs_completion(self) -> bool:
        """True for a prompt without completion and a chat that does not end with an assistant turn."""
        if self.kind == "prompt":
            return self.completion is None
        if self.kind == "chat":
            return not self.messages or self.messages[-1]["role"] != "assistant"
        return False

    def with_completion(self, completion: str) -> "Record":
        """A copy with ``completion`` as its answer (a chat gets a final assistant turn)."""
        if self.kind == "prompt":
            return Record("prompt", prompt=self.prompt, completion=completion)
        if self.kind == "chat":
            return Record("chat", messages=[*self.messages, {"role": "assistant", "content": completion}])
        raise ValueError("only prompts and chats take a completion")

    def to_json(self) -> dict[str, Any]:
        """The record as the JSONL object it was read from (shape of its kind)."""
        if self.kind == "text":
            return {"text": self.text}
        if self.kind == "prompt":
            return {"prompt": self.prompt, "completion": self.completion}
        return {"messages": self.messages}


def _parse(obj: Any, lineno: int) -> Record:
    where = f"JSONL line {lineno}"
    if not isinstance(obj, dict):
        raise _invalid(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _invalid(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise _invalid(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
            out.append({"role": m["role"], "content": m["content"]})
        return Record("chat", messages=out)
    if "prompt" in obj:
        prompt, completion = obj["prompt"], obj.get("completion")
        if not isinstance(prompt, str) or not prompt:
            raise _invalid(f"{where}: 'prompt' must be a non-empty string")
        if completion is not None and not isinstance(completion, str):
            raise _invalid(f"{where}: 'completion' must be a string (or absent for a prompt the teacher answers)")
        return Record("prompt", prompt=prompt, completion=completion)
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise _invalid(f"{where}: 'text' must be a non-empty string")
        return Record("text", text=obj["text"])
    keys = ", ".join(sorted(map(str, obj))[:6]) or "none"
    raise _invalid(f"{where}: expected 'text', 'prompt' (+ 'completion') or 'messages'; found keys {keys}")


def read_records(path: str | Path, *, max_records: int | None = None) -> list[Record]:
    """All records of a JSONL file (see the module docstring), at most ``max_records``.

    Raises ``DistillError('invalid_file')`` naming the line for: text that is not UTF-8 or not JSON, a line of
    another shape than the first, fields of the wrong type; and for an empty file.
    """
    out: list[Record] = []
    first: tuple[str, int] | None = None
    for lineno, obj in jsonl_values(path):
        rec = _parse(obj, lineno)
        if first is None:
            first = (rec.kind, lineno)
        elif rec.kind != first[0]:
            raise _invalid(f"JSONL line {lineno} is a {rec.kind!r} record but line {first[1]} is {first[0]!r}; one file holds "
                           "one kind of record (text, prompt (+ completion), or chat)")
        out.append(rec)
        if max_records is not None and len(out) >= max_records:
            break
    if not out:
        raise _invalid("the JSONL file holds no records")
    return out


def lm_kind(path: str | Path) -> str | None:
    """'prompt' or 'chat' when the first non-empty line of a JSONL file is a prompt or chat record, else None (plain
    text and labelled text datasets: ``distill.text_data`` reads those). Never raises for a readable file."""
    try:
        with open(path, "rb") as f:
            for _ in range(1000):
                raw = f.readline(16 * 1024 * 1024)
                if not raw:
                    return None
                if raw.strip():
                    obj = json.loads(raw.decode("utf-8-sig"))
                    if isinstance(obj, dict) and "messages" in obj:
                        return "chat"
                    if isinstance(obj, dict) and "prompt" in obj:
                        return "prompt"
                    return None
    except (UnicodeDecodeError, ValueError):
        return None
    return None


def records_details(records: list[Record]) -> dict[str, Any]:
    """Facts for the upload's ``details``: ``{kind: 'lm', records, record_kind ('text'|'prompt'|'chat'),
    with_completions (every record has its answer), transfer_set (records that need the teacher's answer; 0 for
    text), characters}``."""
    kind = records[0].kind
    needs = sum(r.needs_completion for r in records)
    chars = sum(len(r.text or "") + len(r.prompt or "") + len(r.completion or "") + sum(len(m["content"]) for m in r.messages)
                for r in records)
    return {"kind": "lm", "records": len(records), "record_kind": kind, "with_completions": needs == 0,
            "transfer_set": needs, "characters": chars}


__all__ = ["KINDS", "Record", "lm_kind", "read_records", "records_details"]
