"""Language-model data: JSONL records of three shapes, target masks (completion and assistant tokens only),
truncation, packing, the validation split and padded batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.errors import DistillError
from distill.lm.data import chat_segments, collate, encode, make_rows, prompt_ids, split_records
from distill.lm.records import Record, lm_kind, read_records, records_details


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_reads_each_shape_and_refuses_mixtures(tmp_path):
    text = read_records(write(tmp_path, [{"text": "a b"}, {"text": "c", "source": "ignored"}]))
    assert [r.kind for r in text] == ["text", "text"] and records_details(text)["transfer_set"] == 0
    pc = read_records(write(tmp_path, [{"prompt": "q?", "completion": "a."}, {"prompt": "r?"}]))
    assert [r.needs_completion for r in pc] == [False, True]
    assert records_details(pc) == {"kind": "lm", "records": 2, "record_kind": "prompt", "with_completions": False,
                                   "transfer_set": 1, "characters": 6}
    chat = read_records(write(tmp_path, [{"messages": [{"role": "user", "content": "hi"}]}]))
    assert chat[0].needs_completion and lm_kind(tmp_path / "d.jsonl") == "chat"
    with pytest.raises(DistillError, match="line 2 is a 'prompt' record but line 1 is 'text'"):
        read_records(write(tmp_path, [{"text": "a"}, {"prompt": "b"}]))
    with pytest.raises(DistillError, match="line 1: expected 'text', 'prompt'"):
        read_records(write(tmp_path, [{"question": "a"}]))
    with pytest.raises(DistillError, match=r"messages\[0\] must be an object"):
        read_records(write(tmp_path, [{"messages": [{"role": "user"}]}]))
    with pytest.raises(DistillError, match="no records"):
        read_records(write(tmp_path, []))
    assert lm_kind(write(tmp_path, [{"text": "a", "label": 1}])) is None


def test_prompt_completion_targets_only_the_completion_and_eos(lm_tokenizer):
    ids, mask = encode(Record("prompt", prompt="what is the capital of france?", completion=" paris."), lm_tokenizer)
    p = lm_tokenizer("what is the capital of france?")["input_ids"]
    c = lm_tokenizer(" paris.", add_special_tokens=False)["input_ids"]
    assert ids == p + c + [lm_tokenizer.eos_token_id]
    assert mask == [0] * len(p) + [1] * (len(c) + 1)


def test_chat_targets_the_assistant_turns(lm_tokenizer):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello world"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "the end"}]
    segs = chat_segments(lm_tokenizer, msgs)
    assert [t for t, target in segs if target] == ["hello world<|im_end|>\n", "the end<|im_end|>\n"]
    assert "".join(t for t, _ in segs) == lm_tokenizer.apply_chat_template(msgs, tokenize=False)
    ids, mask = encode(Record("chat", messages=msgs), lm_tokenizer)
    decoded = lm_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert decoded == "hello world<|im_end|>\nthe end<|im_end|>\n"
    # a chat that ends with the user's turn is a prompt: rendered with the assistant header
    prompt = prompt_ids(Record("chat", messages=msgs[:2]), lm_tokenizer)
    assert lm_tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")


def test_chat_without_template_is_refused(lm_tokenizer):
    import copy

    tok = copy.deepcopy(lm_tokenizer)
    tok.chat_template = None
    with pytest.raises(DistillError, match="chat template"):
        encode(Record("chat", messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), tok)


def test_rows_truncate_split_and_pack(lm_tokenizer):
    long_text = Record("text", text="the quick brown fox jumps over the lazy dog " * 6)
    n = len(encode(long_text, lm_tokenizer)[0])
    rows = make_rows([long_text], lm_tokenizer, 16)
    assert len(rows) == -(-n // 16) and rows.lengths.max() == 16 and rows.stats["dropped"] == 0
    assert int(rows.lengths.sum()) == n  # nothing of a plain text is thrown away
    # a prompt longer than the row leaves no completion: dropped, and counted
    pc = Record("prompt", prompt="hello world " * 20, completion="paris")
    rows = make_rows([pc], lm_tokenizer, 16)
    assert len(rows) == 0 and rows.stats == {"examples": 1, "dropped": 1, "truncated": 1, "rows": 0, "tokens": 0, "target_tokens": 0}
    short = [Record("text", text=w) for w in ("hello", "world", "the dog", "a fox")]
    unpacked = make_rows(short, lm_tokenizer, 12)
    packed = make_rows(short, lm_tokenizer, 12, pack=True)
    assert len(packed) < len(unpacked)
    assert int(packed.lengths.sum()) == int(unpacked.lengths.sum()) and packed.lengths.max() <= 12
    assert np.concatenate(packed.ids).tolist() == np.concatenate(unpacked.ids).tolist()  # whole examples, file order


def test_split_is_seeded_and_disjoint():
    recs = [Record("text", text=str(i)) for i in range(20)]
    tr, va = split_records(recs, 0.25, seed=3)
    assert len(va) == 5 and len(tr) == 15 and not {r.text for r in tr} & {r.text for r in va}
    assert [r.text for r in split_records(recs, 0.25, seed=3)[1]] == [r.text for r in va]
    assert [r.text for r in split_records(recs, 0.25, seed=4)[1]] != [r.text for r in va]
    with pytest.raises(DistillError, match="at least 2 records"):
        split_records(recs[:1], 0.5, 0)


def test_collate_pads_and_masks(lm_tokenizer):
    rows = make_rows([Record("prompt", prompt="hello", completion=" world"), Record("text", text="the quick brown fox")],
                     lm_tokenizer, 32)
    ids, att, tgt = collate(rows, [0, 1], pad_id=lm_tokenizer.pad_token_id)
    n0, n1 = (len(r) for r in rows.ids)
    assert ids.shape == (2, max(n0, n1))
    assert att.sum(1).tolist() == [n0, n1]
    assert (tgt <= att).all() and tgt[0, :len(lm_tokenizer("hello")["input_ids"])].sum() == 0
