"""The top-k cache over real rows (it reproduces the online loss, is stored and reloaded by fingerprint), the
transfer set's generation (seeded, and resumed after a worker is killed with SIGKILL), and the evaluation helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.lm.cache import TopKCache, build_cache, cache_fidelity, rows_fingerprint, teacher_logits
from distill.lm.data import collate, make_rows
from distill.lm.evaluate import agreement, compare_generations, perplexity, sequence_stats, speed, token_f1
from distill.lm.generate import generate_transfer_set
from distill.lm.losses import cached_kd_loss, targets, token_kd_loss
from distill.lm.models import derive_student, load_causal_lm, load_tokenizer
from distill.lm.records import Record, read_records
from tests.lm_fixtures import CORPUS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_causal_lm(tiny_llama_dir, "hf")


@pytest.fixture(scope="module")
def rows(lm_tokenizer):
    recs = [Record("text", text=t) for t in CORPUS] + [Record("prompt", prompt="what is the capital of france?", completion=" paris.")]
    return make_rows(recs, lm_tokenizer, 24)


def test_cache_rows_line_up_with_batches_and_reproduce_the_online_loss(llama, rows, lm_tokenizer):
    v = llama.config.vocab_size
    cache = build_cache(llama, rows, k=v, temperature=2.0, pad_id=lm_tokenizer.pad_token_id, batch_size=3)
    assert cache.tokens == rows.target_tokens and cache.logp.dtype == torch.float16
    student, _ = derive_student(llama, num_layers=2)
    index = np.array([4, 0, 5])  # any order: the lookup follows the batch
    ids, att, tgt = collate(rows, index, lm_tokenizer.pad_token_id)
    s_sel, _ = targets(student(input_ids=ids, attention_mask=att).logits, ids, tgt)
    t_sel, _ = targets(teacher_logits(llama, ids, att), ids, tgt)
    online = token_kd_loss(s_sel, t_sel, temperature=2.0)
    cached = cached_kd_loss(s_sel, cache.for_rows(index), temperature=2.0)
    # float16 storage of the log-probabilities (spacing 2**-8 at |log p| < 8) moves the loss by well under 1%
    assert cached.item() == pytest.approx(online.item(), rel=1e-2)
    small = build_cache(llama, rows, k=8, temperature=2.0, pad_id=lm_tokenizer.pad_token_id)
    assert cached_kd_loss(s_sel, small.for_rows(index), temperature=2.0).item() <= online.item() + 1e-4


def test_cache_is_stored_and_reloaded_by_fingerprint(llama, rows, lm_tokenizer, tmp_path):
    fp = rows_fingerprint(rows, {"k": 4, "teacher": "tiny"})
    assert fp != rows_fingerprint(rows, {"k": 5, "teacher": "tiny"})
    cache = build_cache(llama, rows, k=4, temperature=1.0, pad_id=lm_tokenizer.pad_token_id, fingerprint=fp)
    size = cache.save(tmp_path / "c.safetensors")
    assert size > cache.bytes
    back = TopKCache.load(tmp_path / "c.safetensors", fp)
    assert back is not None and torch.equal(back.ids, cache.ids) and torch.equal(back.offsets, cache.offsets) and back.k == 4
    assert TopKCache.load(tmp_path / "c.safetensors", "other") is None
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    assert TopKCache.load(tmp_path / "bad.safetensors") is None


def test_cache_fidelity_improves_with_k(llama, rows, lm_tokenizer):
    a = cache_fidelity(llama, rows, k=4, temperature=1.0, pad_id=lm_tokenizer.pad_token_id)
    b = cache_fidelity(llama, rows, k=64, temperature=1.0, pad_id=lm_tokenizer.pad_token_id)
    assert a["tokens"] == rows.target_tokens
    assert b["kl_mean_nats"] < a["kl_mean_nats"] and b["rest_mass_mean"] < a["rest_mass_mean"]
    assert a["bytes_per_token"] == 4 * 6 + 4 and a["full_logits_bytes_per_token"] == 2 * llama.config.vocab_size


# ------------------------------------------------------------------------------------------------- generation

PROMPTS = [Record("prompt", prompt=p) for p in ("hello", "the quick", "what is", "a small", "knowledge", "the capital")]
PROMPTS.insert(2, Record("prompt", prompt="kept", completion=" as it is"))
PROMPTS.append(Record("chat", messages=[{"role": "user", "content": "hello world"}]))


def _chat_free(records):
    return [r for r in records if r.kind == "prompt"]


def test_generation_is_seeded_and_keeps_given_answers(llama, lm_tokenizer, tmp_path):
    recs = _chat_free(PROMPTS)
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.0, seed=3, batch_size=2)
    a = generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "a.jsonl", **kw)
    generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "b.jsonl", **kw)
    generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "c.jsonl", **{**kw, "seed": 4})
    assert a["finished"] and a["generated"] == 6 and a["batches_total"] == 3
    out = read_records(tmp_path / "a.jsonl")
    assert [r.prompt for r in out] == [r.prompt for r in recs] and not any(r.needs_completion for r in out)
    assert out[2].completion == " as it is"
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    assert not (tmp_path / "a.jsonl.partial").exists() and not (tmp_path / "a.jsonl.progress.json").exists()


def test_chat_prompts_get_an_assistant_turn(llama, lm_tokenizer, tmp_path):
    generate_transfer_set(llama, lm_tokenizer, PROMPTS[-1:], tmp_path / "chat.jsonl", max_new_tokens=4)
    (rec,) = read_records(tmp_path / "chat.jsonl")
    assert [m["role"] for m in rec.messages] == ["user", "assistant"]


def test_should_stop_keeps_progress(llama, lm_tokenizer, tmp_path):
    recs = _chat_free(PROMPTS)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    r = generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "s.jsonl", max_new_tokens=4, batch_size=2, should_stop=stop)
    assert not r["finished"] and r["batches_done"] == 1 and not (tmp_path / "s.jsonl").exists()
    r = generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "s.jsonl", max_new_tokens=4, batch_size=2)
    assert r["finished"] and r["resumed_from_batch"] == 1
    # a later run (a job redelivered after training began) reuses the finished file; other settings generate anew
    before = (tmp_path / "s.jsonl").read_bytes()
    again = generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "s.jsonl", max_new_tokens=4, batch_size=2,
                                  should_stop=lambda: True)
    assert again["finished"] and again["new_tokens"] == 0 and again["resumed_from_batch"] == 3
    assert (tmp_path / "s.jsonl").read_bytes() == before
    other = generate_transfer_set(llama, lm_tokenizer, recs, tmp_path / "s.jsonl", max_new_tokens=3, batch_size=2)
    assert other["finished"] and other["resumed_from_batch"] == 0 and other["new_tokens"] > 0


CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from distill.lm.models import load_causal_lm, load_tokenizer
from distill.lm.generate import generate_transfer_set
from distill.lm.records import read_records
folder, prompts, out = sys.argv[1:4]
model, tok = load_causal_lm(folder, "hf"), load_tokenizer(folder, "hf")
def on_batch(done, total):
    print(f"batch {done}/{total}", flush=True)
    time.sleep(30)
generate_transfer_set(model, tok, read_records(prompts), out, max_new_tokens=6, do_sample=True, seed=7, batch_size=2,
                      on_batch=on_batch)
"""


@pytest.mark.slow
def test_generation_resumes_after_the_worker_is_killed(tiny_llama_dir, tmp_path):
    torch.set_num_threads(1)
    recs = _chat_free(PROMPTS)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r.to_json()) + "\n" for r in recs))
    model, tok = load_causal_lm(tiny_llama_dir, "hf"), load_tokenizer(tiny_llama_dir, "hf")
    kw = dict(max_new_tokens=6, do_sample=True, seed=7, batch_size=2)
    generate_transfer_set(model, tok, read_records(prompts), tmp_path / "straight.jsonl", **kw)

    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_llama_dir), str(prompts), str(out)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while not line.startswith("batch 1/") and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line or child.poll() is None, "the generating process ended before its first batch"
        assert line.startswith("batch 1/3")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    state = json.loads((tmp_path / "killed.jsonl.progress.json").read_text())
    assert state["batches"] == 1 and not out.exists()
    with open(tmp_path / "killed.jsonl.partial", "ab") as f:  # a batch written but not recorded when the worker died
        f.write(b'{"prompt": "half a line')
    r = generate_transfer_set(model, tok, read_records(prompts), out, **kw)
    assert r["finished"] and r["resumed_from_batch"] == 1 and r["batches_done"] == 3
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()


# ------------------------------------------------------------------------------------------------- evaluation


def test_perplexity_agreement_and_intervals(llama, rows, lm_tokenizer):
    pad = lm_tokenizer.pad_token_id
    self_stats = sequence_stats(llama, rows, pad, teacher=llama)
    a = agreement(self_stats)
    assert a["top1_agreement"] == 1.0 and abs(a["mean_kl_nats"]) < 1e-6 and a["tokens"] == rows.target_tokens
    ppl = perplexity(self_stats)
    # by hand: exp of the mean next-token NLL over all target tokens
    nll, n = 0.0, 0
    for i in range(len(rows)):
        ids, att, tgt = collate(rows, [i], pad)
        s_sel, y = targets(llama(input_ids=ids, attention_mask=att).logits, ids, tgt)
        nll += torch.nn.functional.cross_entropy(s_sel, y, reduction="sum").item()
        n += y.numel()
    assert ppl["perplexity"] == pytest.approx(float(np.exp(nll / n)), rel=1e-4)
    assert ppl["low"] <= ppl["perplexity"] <= ppl["high"] and ppl["sequences"] == len(rows)
    student, _ = derive_student(llama, num_layers=1)
    s = agreement(sequence_stats(student, rows, pad, teacher=llama))
    assert s["top1_agreement"] < 1.0 and s["mean_kl_nats"] > 0 and s["low"] <= s["top1_agreement"] <= s["high"]


def test_token_f1_and_side_by_side(lm_tokenizer):
    assert token_f1([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_f1([1, 2], [3]) == 0.0
    assert token_f1([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 3)  # common: one 1, one 2
    assert token_f1([], []) == 1.0
    a, b = lm_tokenizer("paris.")["input_ids"], lm_tokenizer("the dog")["input_ids"]
    r = compare_generations([a, b], [a, a], lm_tokenizer, ["p1", "p2"], shown=1)
    assert r["exact_match"] == 0.5 and r["prompts"] == 2 and len(r["examples"]) == 1
    assert r["examples"][0] == {"prompt": "p1", "teacher": "paris.", "student": "paris.", "token_f1": 1.0}


def test_speed_measures_prefill_and_decode(llama):
    s = speed(llama, prompt_tokens=16, new_tokens=8, repeats=2)
    assert s["prefill_tokens_per_s"] > 0 and s["decode_tokens_per_s"] > 0
    assert s["decode_ms_per_token"] == pytest.approx(1e3 / s["decode_tokens_per_s"])


def test_many_sequence_stats_match_one_model_at_a_time_with_one_teacher_pass(llama, rows, lm_tokenizer):
    from distill.lm.cache import FidelityMeter
    from distill.lm.evaluate import many_sequence_stats

    pad = lm_tokenizer.pad_token_id
    a, _ = derive_student(llama, num_layers=2)
    b, _ = derive_student(llama, num_layers=1)
    calls = []
    meter = FidelityMeter(8, 1.0)
    many = many_sequence_stats({"a": a, "b": b}, rows, pad, teacher=llama, batch_size=3,
                               on_teacher_batch=lambda t: (calls.append(t.shape[0]), meter.add(t)))
    assert sum(calls) == rows.target_tokens and len(calls) == -(-len(rows) // 3)  # the teacher ran once per batch
    for name, m in (("a", a), ("b", b)):
        one = sequence_stats(m, rows, pad, teacher=llama, batch_size=3)
        assert all(np.allclose(many[name][k], one[k], rtol=1e-5, atol=1e-6) for k in one)
    own = sequence_stats(llama, rows, pad, batch_size=3)
    assert np.allclose(many["teacher"]["nll"], own["nll"], rtol=1e-5) and set(many["teacher"]) == {"nll", "tokens"}
    whole = cache_fidelity(llama, rows, k=8, temperature=1.0, pad_id=pad, batch_size=3)
    assert meter.summary()["kl_mean_nats"] == pytest.approx(whole["kl_mean_nats"], rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "other"])
def test_target_logits_run_the_output_layer_on_the_target_positions_only(family, lm_tokenizer, rows, monkeypatch):
    """``losses.target_logits`` gives ``targets(model(...).logits)`` (to float rounding) and, for the head-only model
    types, feeds the output layer the ``M`` target positions' hidden states instead of all ``B·T``; any other model
    type runs its full forward."""
    from distill.lm import losses
    from tests.lm_fixtures import tiny_gpt2, tiny_llama

    model = (tiny_gpt2 if family == "gpt2" else tiny_llama)(len(lm_tokenizer), layers=2)
    if family == "other":  # a model type not known to end at its output layer (logit scaling, soft-capping)
        monkeypatch.setattr(losses, "HEAD_ONLY_MODEL_TYPES", frozenset())
    shapes = []
    model.get_output_embeddings().register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    index = np.array([0, 3, 5])
    ids, att, tgt = collate(rows, index, lm_tokenizer.pad_token_id)
    got, got_y = losses.target_logits(model, ids, att, tgt)
    want, want_y = targets(model(input_ids=ids, attention_mask=att, use_cache=False).logits, ids, tgt)
    m = int(tgt[:, 1:].sum())
    assert got.shape == want.shape == (m, len(lm_tokenizer)) and torch.equal(got_y, want_y)
    assert torch.allclose(got, want, atol=1e-5)
    assert shapes[0] == ((m, model.config.hidden_size if family != "gpt2" else model.config.n_embd) if family != "other"
                         else tuple(ids.shape) + (model.config.hidden_size,))
    assert m < ids.numel()  # the batch has padding or non-target positions, so the saving is real here
