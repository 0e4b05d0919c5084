"""Causal-LM jobs through the one trainer (``distill.lm.job.run_lm_job``) on the tiny Llama/GPT-2 the tests make:
the distilled student learns (perplexity falls, agreement rises), the top-k cache replaces the teacher's forward in
training, a prompts-only file becomes a transfer set first, each method's terms, resume after a hand-back, cancel,
and the typed report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from distill.errors import StopRequested
from distill.formats import FileInput
from distill.lm.job import run_lm_job
from distill.report import CausalLMReport, parse_report, unmodelled_keys
from distill.reporter import RecordingReporter
from distill.spec import JobSpec
from tests.lm_fixtures import CORPUS

TEXTS = [f"{a} {b}" for a in CORPUS for b in CORPUS]  # 25 texts


def _jsonl(path: Path, objs: list[dict]) -> FileInput:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return FileInput(path, "jsonl", path.stat().st_size)


def lm_spec(**over) -> JobSpec:
    s = {"task": "causal_lm", "teacher": {"file_id": "file_t"}, "student": {"from_teacher": {"num_layers": 2}},
         "data": {"train": {"file_id": "file_d"}, "validation": {"fraction": 0.2, "seed": 0}, "max_seq_length": 48},
         "method": {"name": "kd", "alpha": 0.5},
         "cache": {"top_k": 16},
         "training": {"epochs": 2, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 3e-3}, "seed": 0, "log_every_steps": 2},
         "evaluation": {"speed_repeats": 1, "generation_prompts": 4},
         "export": {"formats": ["safetensors"]}}
    for k, v in over.items():
        # a method object replaces the base one (each method has its own fields); other sections merge
        s[k] = {**s[k], **v} if isinstance(v, dict) and isinstance(s.get(k), dict) and k != "method" else v
    return JobSpec.model_validate(s)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> FileInput:
    return _jsonl(tmp_path_factory.mktemp("lmdata") / "text.jsonl", [{"text": t} for t in TEXTS])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> FileInput:
    objs = [{"prompt": f"{a} ?"} for a in CORPUS * 3]  # 15 prompts, no answers: a transfer set
    return _jsonl(tmp_path_factory.mktemp("lmprompts") / "prompts.jsonl", objs)


@pytest.fixture(scope="module")
def kd_run(tiny_llama_dir, text_file, tmp_path_factory):
    rep = RecordingReporter()
    wd = tmp_path_factory.mktemp("kd")
    res = run_lm_job(lm_spec(evaluation={"compare_baseline": True}), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, wd, rep)
    return res, rep, wd


def test_kd_job_trains_through_the_trainer_with_the_cache_and_reports(kd_run):
    res, rep, wd = kd_run
    stored = json.loads(json.dumps(res.report))  # what the JSON column gives back: the validated report's full dump
    r = parse_report(stored)
    assert isinstance(r, CausalLMReport) and unmodelled_keys(r) == [] and r.model_dump(mode="json") == res.report == stored
    assert rep.phases == ["loading_teacher", "caching_teacher_outputs", "training", "evaluating", "exporting"]
    assert r.cache.teacher_outputs and r.cache.top_k == 16 and r.cache.bytes_per_token == 16 * 6 + 4
    assert r.cache.full_logits_bytes_per_token == 2 * r.teacher.vocab_size and r.cache.kl_mean_nats >= 0
    assert r.training.final_loss_terms.keys() == {"kd", "ce", "total"}
    assert r.student.layers == 2 and r.student.kept_teacher_layers == [0, 3] and r.student.tied_embeddings
    assert r.teacher.layers == 4 and r.parameter_ratio > 1
    # per-epoch validation rows from the adapter; the baseline's under its own split
    ppl = [m.value for m in rep.rows if m.name == "perplexity" and m.split == "val"]
    assert len(ppl) == 2 and ppl[1] < ppl[0]
    assert [m.epoch for m in rep.rows if m.name == "perplexity" and m.split == "baseline_val"] == [1, 2]
    # the student learnt: better than at the start (its first epoch) and it agrees with the teacher more than chance
    assert r.perplexity.student.low <= r.perplexity.student.perplexity <= r.perplexity.student.high
    assert r.perplexity.alone is not None and r.baseline.steps == r.training.steps
    assert r.perplexity_gain == pytest.approx(r.perplexity.alone.perplexity - r.perplexity.student.perplexity, abs=1e-3)
    assert 0 <= r.agreement.top1_agreement <= 1 and r.agreement.mean_kl_nats >= 0
    assert r.generations is None  # plain text: no prompts to answer
    assert r.speedup["decode"] == round(r.student.speed.decode_tokens_per_s / r.teacher.speed.decode_tokens_per_s, 2) > 0
    assert r.parameter_ratio == round(r.teacher.parameters / r.student.parameters, 2) and r.teacher.bytes == 1000
    assert r.cache.teacher_passes_saved == r.data.train_rows and r.training.method_detail.terms == ["kd", "ce"]
    assert r.method_detail["divergence"] == "forward_kl" and r.method_detail["temperature"] == 1.0
    names = sorted(p.name for p in res.artifacts)
    assert names == ["student.json", "student.safetensors", "student_hf.zip"]
    assert r.export_checks.transformers_loads and r.export_checks.generates


def test_the_exported_student_loads_and_matches_the_job(kd_run, tmp_path):
    from transformers import AutoModelForCausalLM

    res, _, _ = kd_run
    zp = next(p for p in res.artifacts if p.name == "student_hf.zip")
    with zipfile.ZipFile(zp) as z:
        z.extractall(tmp_path)
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "student_hf", local_files_only=True)
    assert m.config.num_hidden_layers == 2
    from safetensors.torch import load_file

    flat = load_file(next(p for p in res.artifacts if p.name == "student.safetensors"))
    sd = m.state_dict()
    assert all(torch.equal(flat[k], sd[k]) for k in flat)


def test_cache_off_runs_the_teacher_every_step_and_ends_close_to_the_cached_run(tiny_llama_dir, text_file, tmp_path, kd_run):
    s = lm_spec(cache={"teacher_outputs": "off"}, training={"epochs": 1})
    rep = RecordingReporter()
    res = run_lm_job(s, tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path, rep)
    r = parse_report(res.report)
    assert not r.cache.teacher_outputs and r.cache.top_k is None
    first = [m.value for m in kd_run[1].rows if m.name == "loss/ce" and m.split == "train_epoch"][0]
    # same data, order and seed; the cached term only coarsens the teacher (top-16 of 320 tokens): CE barely moves
    assert r.training.final_loss_terms["ce"] == pytest.approx(first, rel=0.05)


@pytest.mark.parametrize("method,terms", [({"name": "reverse_kl"}, {"reverse_kl", "ce"}), ({"name": "gkd", "beta": 0.3}, {"gkd", "ce"}),
                                          ({"name": "kd", "alpha": 1.0}, {"kd"})])
def test_each_method_trains_with_its_terms(tiny_llama_dir, text_file, tmp_path, method, terms):
    s = lm_spec(method=method, training={"epochs": 1}, evaluation={"speed_repeats": 1})
    res = run_lm_job(s, tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path, RecordingReporter())
    r = parse_report(res.report)
    assert set(r.training.final_loss_terms) == terms | {"total"}
    assert r.method_detail["name"] == method["name"]


def test_prompts_only_file_becomes_a_transfer_set_then_seqkd_trains_on_it(tiny_gpt2_dir, prompts_file, tmp_path):
    s = lm_spec(method={"name": "seqkd"}, data={"generation": {"max_new_tokens": 6, "batch_size": 4}})
    rep = RecordingReporter()
    res = run_lm_job(s, tiny_gpt2_dir, "hf", 1000, {"file_d": prompts_file}, tmp_path, rep)
    r = parse_report(res.report)
    assert rep.phases[:2] == ["loading_teacher", "generating_transfer_set"]
    assert "caching_teacher_outputs" in rep.phases  # the validation top-1 for agreement
    assert not r.cache.teacher_outputs and "seqkd" in r.cache.reason
    assert r.training.final_loss_terms.keys() == {"seqkd", "total"}
    ts = r.data.transfer_set
    assert ts is not None and ts.records == 12 and ts.generated == 12 and ts.artifact == "transfer_set.jsonl"
    art = next(p for p in res.artifacts if p.name == "transfer_set.jsonl")
    lines = [json.loads(x) for x in art.read_text().splitlines()]
    assert len(lines) == 12 and all(set(o) == {"prompt", "completion"} and isinstance(o["completion"], str) for o in lines)
    g = r.generations
    assert g is not None and g.prompts == 3 and 0 <= g.token_f1_mean <= 1 and len(g.examples) == 3
    assert r.teacher.model_type == "gpt2"


def test_handed_back_job_resumes_and_ends_like_a_straight_run(tiny_llama_dir, text_file, tmp_path, kd_run):
    s = lm_spec(evaluation={"compare_baseline": True})
    wd = tmp_path / "w"
    with pytest.raises(StopRequested):
        run_lm_job(s, tiny_llama_dir, "hf", 1000, {"file_d": text_file}, wd, RecordingReporter(stop_after_steps=7, hand_back=True))
    rep = RecordingReporter()
    res = run_lm_job(s, tiny_llama_dir, "hf", 1000, {"file_d": text_file}, wd, rep)
    assert any(e[0] == "teacher_cache_reused" for e in rep.events) and any(e[0] == "resumed" for e in rep.events)
    straight = parse_report(kd_run[0].report)
    r = parse_report(res.report)
    assert r.training.final_loss_terms == straight.training.final_loss_terms
    assert r.perplexity.student.perplexity == pytest.approx(straight.perplexity.student.perplexity, rel=1e-6)


def test_cancel_stops_between_steps(tiny_llama_dir, text_file, tmp_path):
    with pytest.raises(StopRequested):
        run_lm_job(lm_spec(), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path, RecordingReporter(stop_after_steps=4))
    assert not (tmp_path / "artifacts").exists()


def test_run_job_dispatches_gguf_and_auto_hf_teachers_to_the_lm_driver(tiny_llama_gguf, tiny_llama_zip, tmp_path):
    """A GGUF teacher and (task 'auto') a zipped HF causal LM run the causal-LM driver, here on chat records: the
    assistant turns are the targets, and the held-out chats are answered by both models."""
    from distill.job import run_job
    from distill.results import JobInputs

    chats = [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]} for a, b in zip(CORPUS, CORPUS[1:] + CORPUS[:1])]
    data = _jsonl(tmp_path / "chat.jsonl", chats * 3)
    for name, fi, task in (("gguf", FileInput(tiny_llama_gguf, "gguf", tiny_llama_gguf.stat().st_size), "causal_lm"),
                           ("hf", FileInput(tiny_llama_zip, "hf", tiny_llama_zip.stat().st_size), "auto")):
        s = lm_spec(task=task, training={"epochs": 1}, data={"generation": {"max_new_tokens": 4}})
        res = run_job(s, JobInputs(teacher=fi, files={"file_d": data}), tmp_path / name, RecordingReporter())
        r = parse_report(res.report)
        assert r.task == "causal_lm" and r.teacher.format == name and r.data.record_kind == "chat"
        assert r.data.train_target_tokens < r.data.train_tokens  # the user turns and the template are masked out
        assert r.generations is not None and r.generations.prompts == 3 and "<|im_start|>assistant" in r.generations.examples[0].prompt


def test_run_job_keeps_non_causal_hf_teachers_on_the_text_driver(tiny_classifier_zip, review_jsonl, tmp_path):
    """Task 'auto' with a zipped BERT classifier still runs sequence classification (the causal-LM check reads its config)."""
    from distill.job import run_job
    from distill.results import JobInputs

    s = JobSpec.model_validate({"teacher": {"file_id": "file_t"}, "student": {"from_teacher": {"num_layers": 1}},
                                "data": {"train": {"file_id": "file_d"}, "max_seq_length": 16},
                                "method": {"name": "kd", "temperature": 2.0}, "training": {"epochs": 1, "batch_size": 64},
                                "evaluation": {"latency_iterations": 5, "throughput_batch_size": 8}, "export": {"formats": ["safetensors"]}})
    fi = FileInput(tiny_classifier_zip, "hf", tiny_classifier_zip.stat().st_size)
    res = run_job(s, JobInputs(teacher=fi, files={"file_d": FileInput(review_jsonl, "jsonl", review_jsonl.stat().st_size)}), tmp_path,
                  RecordingReporter())
    assert res.report["task"] == "sequence_classification"
