"""``run_lm_job``: distil a causal language model (task ``causal_lm``), as a thin driver of small phases.

Phases: loading_teacher (the teacher from an extracted Hugging Face folder or a GGUF file, its tokenizer, the
records, the held-out split, the derived student) → generating_transfer_set (only when prompts lack answers, or
for ``seqkd`` where the teacher answers every training prompt; resumable batch by batch, ``distill.lm.generate``)
→ caching_teacher_outputs (the teacher's top-k next-token distributions of every training target token, computed
once and stored in the work folder so a redelivered job reuses them; the teacher's validation top-1) → training
(the one trainer with the ``CausalLM`` adapter; the student trained alone next, with
``evaluation.compare_baseline``) → evaluating (perplexities with intervals, agreement and per-token KL,
generations side by side on held-out prompts, prefill/decode speed, the cache's fidelity) → exporting
(``student_hf.zip``, ``student.safetensors``, ``student.json``, ``transfer_set.jsonl`` when generated, optionally
``student.onnx`` and ``student.gguf``). As every task: epoch and hand-back checkpoints, cancellable between steps
and between generation batches, ``training.max_runtime_s`` across attempts.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DistillError, StopRequested
from .. import report_builders as rb
from ..jobrun import JobRun
from ..report import CausalLMReport
from ..reporter import Reporter
from ..results import DistillResult
from ..spec import DatasetRef, JobSpec
from ..text_data import load_rotten_tomatoes
from ..training import Trainer, TrainOutcome, spec_fingerprint
from ..training.parallel import Parallel, RankGroup
from . import parallel as lm_parallel
from .adapter import CausalLM
from .cache import FidelityMeter, TopKCache, build_cache, rows_fingerprint
from .data import Rows, make_rows, prompt_ids, split_records
from .evaluate import agreement, compare_generations, many_sequence_stats, perplexity, speed
from .export import check_folder_generates, export_gguf, export_onnx, save_student_folder, zip_folder
from .generate import generate_batch, generate_transfer_set
from .methods import LMMethod, NextTokenOnly, build_lm_method, lm_temperature
from .models import derive_student, load_causal_lm, load_tokenizer, parameter_count
from .records import Record, read_records

CACHE_FILE = "lm_teacher_topk.safetensors"
TRANSFER_FILE = "transfer_set.jsonl"
VALIDATION_FILE = "validation_set.jsonl"
BASELINE_STEM = "baseline"
EVAL_BATCH = 8


@dataclass
class _LMSetup:
    """What the loading phase gives the rest of a causal-LM job."""

    fmt: str
    teacher: nn.Module
    tokenizer: Any
    method: LMMethod
    train_records: list[Record]
    val_records: list[Record]
    validation: dict[str, Any]
    student: nn.Module
    facts: dict[str, Any]
    max_len: int
    pad_id: int


def _records(ref: DatasetRef, files: dict, role: str) -> list[Record]:
    """The records of a dataset reference: builtin rotten_tomatoes as plain text, or an uploaded JSONL file."""
    if ref.builtin is not None:
        if ref.builtin != "rotten_tomatoes":
            raise DistillError("invalid_spec", f"task causal_lm needs text: builtin {ref.builtin!r} is tensor data", role)
        return [Record("text", text=t) for t in load_rotten_tomatoes().texts]
    fi = files.get(ref.file_id)
    if fi is None:
        raise DistillError("invalid_spec", f"{role}: file {ref.file_id} was not given to the job", role)
    return read_records(fi.path)


def _strip_answers(records: list[Record]) -> list[Record]:
    """The records as prompts for the teacher (seqkd): prompt/completion without the completion, a chat without its
    final assistant turn. Raises ``DistillError('invalid_spec')`` for plain text (nothing to answer)."""
    out = []
    for r in records:
        if r.kind == "text":
            raise DistillError("invalid_spec", "method seqkd trains on the teacher's answers to prompts; plain-text records have "
                               "no prompt (use prompt/completion or chat records, or method kd)", "method.name")
        if r.kind == "prompt":
            out.append(Record("prompt", prompt=r.prompt))
        else:
            msgs = r.messages[:-1] if r.messages and r.messages[-1]["role"] == "assistant" else r.messages
            out.append(Record("chat", messages=list(msgs)))
    return out


def _load(run: JobRun, teacher_path: Path, fmt: str, files: dict) -> _LMSetup:
    """Teacher, tokenizer, method, records (split), the derived student."""
    spec, device = run.spec, run.device
    method = build_lm_method(spec.method)
    tokenizer = load_tokenizer(teacher_path, fmt)
    teacher = load_causal_lm(teacher_path, fmt).to(device)
    records = _records(spec.data.train, files, "data.train")
    vs = spec.data.validation
    if vs.file_id:
        train, val = records, _records(DatasetRef(file_id=vs.file_id), files, "data.validation")
        validation = {"rows": len(val), "file_id": vs.file_id}
    else:
        train, val = split_records(records, vs.fraction, vs.seed)
        validation = {"rows": len(val), "fraction": vs.fraction, "seed": vs.seed}
    if method.name == "seqkd":
        train = _strip_answers(train)
    ft = spec.student.from_teacher
    student, facts = derive_student(teacher, num_layers=ft.num_layers, keep_layers=ft.keep_layers, hidden_size=ft.hidden_size,
                                    intermediate_size=ft.intermediate_size, num_attention_heads=ft.num_attention_heads,
                                    config=ft.config, seed=spec.training.seed)
    student.to(device)
    max_len = min(spec.data.max_seq_length, int(getattr(teacher.config, "max_position_embeddings", None) or 10**9))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _LMSetup(fmt, teacher, tokenizer, method, train, val, validation, student, facts, max_len, pad_id)


def _generate(run: JobRun, s: _LMSetup) -> dict[str, Any] | None:
    """Phase generating_transfer_set: the teacher answers the training (and held-out) records that lack an answer,
    written to the work folder (resumed after a killed or handed-back worker). Returns the transfer-set facts, or
    None when nothing needed an answer. Raises ``StopRequested`` when a stop is asked between batches,
    ``DistillError('max_runtime_exceeded')`` when the deadline passes."""
    g = run.spec.data.generation
    todo_train = sum(r.needs_completion for r in s.train_records)
    todo_val = sum(r.needs_completion for r in s.val_records)
    if not todo_train and not todo_val:
        return None
    kw = dict(max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p, seed=g.seed,
              batch_size=g.batch_size, device=run.device,
              should_stop=lambda: run.reporter.should_stop() or time.perf_counter() > run.deadline)
    info: dict[str, Any] | None = None
    with run.phase("generating_transfer_set"):
        for records, name, is_train in ((s.train_records, TRANSFER_FILE, True), (s.val_records, VALIDATION_FILE, False)):
            if not any(r.needs_completion for r in records):
                continue

            def on_batch(done: int, total: int, name: str = name, is_train: bool = is_train) -> None:
                if done != total and done % max(1, total // 20):
                    return  # about every 5%
                run.reporter.event("transfer_set_progress", f"{'training' if is_train else 'held-out'} prompts: batch {done} of {total} answered",
                                   {"batches_done": done, "batches_total": total, "file": name})

            out = generate_transfer_set(s.teacher, s.tokenizer, records, run.workdir / name, on_batch=on_batch, **kw)
            if not out["finished"]:
                run.check("while generating the transfer set")  # a stop, or the deadline passed (max_runtime_exceeded)
                raise StopRequested(f"stop requested while generating the transfer set (batch {out['batches_done']} of "
                                    f"{out['batches_total']} done; the rest resumes)")
            answered = read_records(out["path"])
            if is_train:
                s.train_records = answered
                info = {"artifact": TRANSFER_FILE, "records": len(answered), "generated": out["generated"], "new_tokens": out["new_tokens"],
                        "resumed_from_batch": out["resumed_from_batch"], "settings": out["settings"]}
            else:
                s.val_records = answered
    return info


def _rows(s: _LMSetup, spec: JobSpec) -> tuple[Rows, Rows]:
    train = make_rows(s.train_records, s.tokenizer, s.max_len, pack=spec.data.packing)
    val = make_rows(s.val_records, s.tokenizer, s.max_len)
    if len(train) == 0:
        raise DistillError("invalid_spec", "no training record has a target token left after tokenisation and truncation", "data.train")
    if len(val) == 0:
        raise DistillError("invalid_spec", "no held-out record has a target token left after tokenisation and truncation",
                           "data.validation")
    return train, val


def _cache(run: JobRun, s: _LMSetup, rows: Rows, val: Rows) -> tuple[TopKCache | None, torch.Tensor, float]:
    """Phase caching_teacher_outputs: the top-k cache of the training rows (built, or read back from the work folder
    when a previous attempt made it for the same rows and settings) and the teacher's validation top-1 per target
    token. Returns (cache or None, top-1 ``[Nv]`` int64, seconds spent building)."""
    spec = run.spec
    use = s.method.needs_teacher and spec.cache.teacher_outputs != "off"
    t0 = time.perf_counter()
    with run.phase("caching_teacher_outputs"):
        cache = None
        if use:
            k = min(spec.cache.top_k, int(s.teacher.config.vocab_size))
            fp = rows_fingerprint(rows, {"k": k, "temperature": lm_temperature(spec.method), "spec": spec_fingerprint(spec)})
            path = run.workdir / CACHE_FILE
            cache = TopKCache.load(path, fp)
            if cache is None:
                cache = build_cache(s.teacher, rows, k=k, temperature=lm_temperature(spec.method), pad_id=s.pad_id,
                                    batch_size=EVAL_BATCH, device=run.device, fingerprint=fp)
                cache.save(path)
            else:
                run.reporter.event("teacher_cache_reused", f"the top-k teacher cache of a previous attempt was reused ({cache.tokens} tokens)",
                                   {"tokens": cache.tokens})
        top1 = build_cache(s.teacher, val, k=1, temperature=1.0, pad_id=s.pad_id, batch_size=EVAL_BATCH, device=run.device)
    return cache, top1.ids[:, 0].long(), time.perf_counter() - t0


def _train(run: JobRun, s: _LMSetup, student: nn.Module, method: LMMethod, rows: Rows, val: Rows, cache: TopKCache | None,
           top1: torch.Tensor, fingerprint: str, **kw: Any) -> TrainOutcome:
    adapter = CausalLM(student, s.teacher if method.needs_teacher else None, method, rows, s.pad_id, val, run.device, cache, top1)
    return Trainer(adapter, run.spec.training, device=run.device, workdir=run.workdir, reporter=run.reporter, deadline=run.deadline,
                   fingerprint=fingerprint, **kw).fit()


def _baseline(run: JobRun, s: _LMSetup, rows: Rows, val: Rows, top1: torch.Tensor, fingerprint: str,
              **kw: Any) -> tuple[nn.Module, TrainOutcome, float] | None:
    """With ``evaluation.compare_baseline``: the same student trained alone (next-token CE only, same rows, budget and
    seed) as (model, outcome, seconds)."""
    if not run.spec.evaluation.compare_baseline:
        return None
    run.check("before the baseline", deadline=False)
    run.reporter.event("baseline_started", "training the same student alone (next-token cross-entropy only) for comparison",
                       {"epochs": run.spec.training.epochs})
    ft = run.spec.student.from_teacher
    t0 = time.perf_counter()
    with run.phase("baseline_training", announce=False):
        student, _ = derive_student(s.teacher, num_layers=ft.num_layers, keep_layers=ft.keep_layers, hidden_size=ft.hidden_size,
                                    intermediate_size=ft.intermediate_size, num_attention_heads=ft.num_attention_heads,
                                    config=ft.config, seed=run.spec.training.seed)
        student.to(run.device)
        outcome = _train(run, s, student, NextTokenOnly(), rows, val, None, top1, fingerprint + ":baseline", split_prefix="baseline_",
                         checkpoint_stem=BASELINE_STEM, owns_metrics=False, **kw)
    return student.eval(), outcome, time.perf_counter() - t0


def _train_parallel(run: JobRun, s: _LMSetup, rows: Rows, val: Rows, cache: TopKCache | None, top1: torch.Tensor, fingerprint: str,
                    teacher_path: Path, fmt: str) -> tuple[TrainOutcome, tuple[nn.Module, TrainOutcome, float] | None]:
    """``training.devices`` = N > 1: the training passes (distilled, then the baseline) data-parallel over N processes, this
    one rank 0 (``distill.lm.parallel`` starts the others); each process gets ``threads // N`` PyTorch threads (at least
    1). Raises what the passes raise, and ``DistillError('training_process_failed')`` when another rank ends."""
    n = run.spec.training.devices
    group = RankGroup(world=n, device=run.device, module=lm_parallel.MODULE, workdir=run.workdir,
                      threads=max(1, torch.get_num_threads() // n), should_stop=run.reporter.should_stop)
    with group:
        with run.phase("training"):
            par: Parallel = lm_parallel.start_ranks(group, spec=run.spec, student=s.student, rows=rows, cache=cache,
                                                    cache_path=run.workdir / CACHE_FILE, teacher_path=teacher_path, fmt=fmt,
                                                    pad_id=s.pad_id, fingerprint=fingerprint, baseline_stem=BASELINE_STEM)
            outcome = _train(run, s, s.student, s.method, rows, val, cache, top1, fingerprint, parallel=par)
        baseline = _baseline(run, s, rows, val, top1, fingerprint, parallel=par)
    return outcome, baseline


def _held_out_prompts(s: _LMSetup, n: int) -> tuple[list[list[int]], list[str]]:
    """Token ids and display text of the first ``n`` held-out prompt/chat records (none for plain text)."""
    ids, shown = [], []
    for r in s.val_records:
        if len(ids) >= n or r.kind == "text":
            break
        prompt = r if r.needs_completion else (Record("prompt", prompt=r.prompt) if r.kind == "prompt" else
                                               Record("chat", messages=r.messages[:-1] if r.messages[-1]["role"] == "assistant" else r.messages))
        p = prompt_ids(prompt, s.tokenizer)[-max(1, s.max_len // 2):]
        ids.append(p)
        shown.append(r.prompt if r.kind == "prompt" else s.tokenizer.decode(p, skip_special_tokens=False))
    return ids, shown


def _generations(run: JobRun, s: _LMSetup) -> dict[str, Any] | None:
    n = run.spec.evaluation.generation_prompts
    prompts, shown = _held_out_prompts(s, n)
    if not prompts:
        return None
    g = run.spec.data.generation
    t_ans, s_ans = [], []
    for i in range(0, len(prompts), g.batch_size):
        part = prompts[i:i + g.batch_size]
        t_ans += generate_batch(s.teacher, s.tokenizer, part, max_new_tokens=g.max_new_tokens, do_sample=False, device=run.device)
        s_ans += generate_batch(s.student, s.tokenizer, part, max_new_tokens=g.max_new_tokens, do_sample=False, device=run.device)
    out = compare_generations(s_ans, t_ans, s.tokenizer, shown)
    out["max_new_tokens"] = g.max_new_tokens
    return out


def _evaluate(run: JobRun, s: _LMSetup, val: Rows, baseline: tuple | None, cache: TopKCache | None) -> dict[str, Any]:
    """Perplexities, agreement, generations, speed and the cache's fidelity on the held-out rows (the teacher runs
    once over them for all of it)."""
    spec, dev, seed = run.spec, run.device, run.spec.training.seed
    models = {"student": s.student, **({"alone": baseline[0]} if baseline is not None else {})}
    meter = FidelityMeter(cache.k, cache.temperature) if cache is not None else None
    st = many_sequence_stats(models, val, s.pad_id, teacher=s.teacher, batch_size=EVAL_BATCH, device=dev,
                             on_teacher_batch=meter.add if meter is not None else None)
    ev: dict[str, Any] = {"ppl_teacher": perplexity(st["teacher"], seed), "ppl_student": perplexity(st["student"], seed),
                          "agreement": agreement(st["student"], seed)}
    if baseline is not None:
        ev["ppl_alone"], ev["agreement_alone"] = perplexity(st["alone"], seed), agreement(st["alone"], seed)
    ev["generations"] = _generations(run, s)
    reps = spec.evaluation.speed_repeats
    ev["speed_teacher"] = speed(s.teacher, repeats=reps, device=dev, seed=seed)
    ev["speed_student"] = speed(s.student, repeats=reps, device=dev, seed=seed)
    ev["fidelity"] = meter.summary() if meter is not None else None
    return ev


def _export(run: JobRun, s: _LMSetup, val: Rows, tmp: Path, transfer: dict[str, Any] | None) -> dict[str, Any]:
    """Write the artifacts into ``tmp``; returns {'names', 'student_bytes', 'checks', 'onnx'}."""
    formats = run.spec.export.formats
    student = s.student.to("cpu").eval()
    folder = save_student_folder(student, s.tokenizer, tmp / "student_hf")
    example = [int(t) for t in val.ids[0][: max(2, min(len(val.ids[0]), 8))]]
    gen = check_folder_generates(folder, example)
    names = ["student_hf.zip", "student.safetensors", "student.json"]
    shutil.copyfile(folder / "model.safetensors", tmp / "student.safetensors")
    student_bytes = (tmp / "student.safetensors").stat().st_size
    onnx = None
    if "onnx" in formats:
        onnx = export_onnx(student, torch.as_tensor(val.ids[0][: min(len(val.ids[0]), 16)]).unsqueeze(0), tmp / "student.onnx")
        onnx["inputs"] = ["input_ids", "attention_mask"]
        names.append("student.onnx")
    gguf = None
    if "gguf" in formats:
        gguf = export_gguf(student, s.tokenizer, tmp / "student.gguf")
        names.append("student.gguf")
    zip_folder(folder, tmp / "student_hf.zip", "student_hf")
    shutil.rmtree(folder)
    if transfer is not None:
        shutil.copyfile(run.workdir / TRANSFER_FILE, tmp / TRANSFER_FILE)
        names.append(TRANSFER_FILE)
    card = {"task": "causal_lm", "from_teacher": run.spec.student.from_teacher.model_dump(), **s.facts, "max_seq_length": s.max_len,
            "files": {"student_hf.zip": "unzip, then AutoModelForCausalLM.from_pretrained('student_hf') and AutoTokenizer likewise",
                      "student.safetensors": "the same weights (transformers names)",
                      **({"student.onnx": "inputs input_ids, attention_mask [batch, sequence] int64; output logits [batch, sequence, vocab]"}
                         if onnx else {}),
                      **({"student.gguf": "llama.cpp / transformers (gguf_file=...)"} if gguf else {}),
                      **({TRANSFER_FILE: "the teacher-answered training records (JSONL), reusable as a dataset"} if transfer else {})},
            "torch_version": torch.__version__}
    (tmp / "student.json").write_text(json.dumps(card, indent=2))
    s.student.to(run.device)
    checks = {"transformers_loads": bool(gen["loads"]), "generates": len(gen["generated_ids"]) > 0, "gguf": gguf}
    return {"names": names, "student_bytes": student_bytes, "checks": checks, "onnx": onnx}


def _report(run: JobRun, s: _LMSetup, teacher_bytes: int, rows: Rows, val: Rows, outcome: TrainOutcome, baseline: tuple | None,
            cache: TopKCache | None, cache_s: float, transfer: dict[str, Any] | None, ev: dict[str, Any], exported: dict[str, Any]) -> CausalLMReport:
    """The causal-LM compression report, from the per-phase builders (``distill.report_builders``)."""
    spec, tr = run.spec, run.spec.training
    times = run.finish()
    if cache is not None:
        reason = "the teacher's top-k next-token distributions were computed once and read every epoch"
    elif not s.method.needs_teacher:
        reason = f"method {s.method.name} trains on the teacher's text alone"
    else:
        reason = "turned off in the spec: the teacher ran at every step over the full vocabulary"
    return rb.causal_lm_report(
        teacher=rb.lm_model(format=s.fmt, config=s.teacher.config, parameters=parameter_count(s.teacher), bytes=teacher_bytes,
                            speed=ev["speed_teacher"]),
        student=rb.lm_student(config=s.student.config, parameters=parameter_count(s.student), bytes=exported["student_bytes"],
                              speed=ev["speed_student"], facts=s.facts),
        perplexity={"teacher": ev["ppl_teacher"], "student": ev["ppl_student"], "alone": ev.get("ppl_alone")},
        agreement=ev["agreement"], generations=ev["generations"],
        data={"record_kind": s.train_records[0].kind, "train_examples": len(s.train_records), "train_rows": len(rows),
              "train_tokens": int(rows.stats.get("tokens", 0)), "train_target_tokens": rows.target_tokens,
              "dropped": int(rows.stats.get("dropped", 0)), "truncated": int(rows.stats.get("truncated", 0)), "packing": spec.data.packing,
              "max_seq_length": s.max_len, "validation": {**s.validation, "rows": len(val)}, "validation_tokens": val.target_tokens,
              "transfer_set": transfer},
        cache=rb.lm_cache(used=cache is not None, reason=reason, rows_seen=tr.epochs * len(rows), rows_cached=len(rows), seconds=cache_s,
                          bytes=cache.bytes if cache is not None else None, top_k=cache.k if cache is not None else None,
                          temperature=cache.temperature if cache is not None else None,
                          tokens=cache.tokens if cache is not None else None, fidelity=ev["fidelity"]),
        baseline=(rb.lm_baseline(epochs=baseline[1].epochs, steps=baseline[1].steps, training_time_s=baseline[2],
                                 agreement=ev.get("agreement_alone")) if baseline else None),
        training=rb.training_summary(epochs=tr.epochs, steps=outcome.steps, steps_per_epoch=outcome.steps_per_epoch,
                                     resumed_from_epoch=outcome.resumed_from_epoch, final_loss_terms=outcome.final_loss_terms,
                                     method=spec.method.name, device=str(run.device), threads=torch.get_num_threads(), seed=tr.seed,
                                     training_time_s=outcome.elapsed_s, precision=tr.precision,
                                     method_detail={"name": s.method.name, "terms": s.method.term_names},
                                     devices=tr.devices),
        method_detail=s.method.describe(),
        export_checks=exported["checks"], wall_time_s=times, onnx=rb.onnx_check(exported["onnx"]))


def run_lm_job(spec: JobSpec, teacher_path: Path, fmt: str, teacher_bytes: int, files: dict, workdir: Path, reporter: Reporter,
               *, runtime_used_s: float = 0.0) -> DistillResult:
    """Run a causal-LM distillation job (see the module docstring) from ``teacher_path`` (an extracted Hugging Face
    folder, ``fmt`` 'hf', or a GGUF file, 'gguf'); ``files``: the job's datasets by file id; ``runtime_used_s``: seconds
    earlier attempts used of ``training.max_runtime_s``.

    Returns ``DistillResult`` (the report as JSON, the artifacts). Raises ``DistillError`` (invalid_spec, invalid_file,
    non_finite_loss, max_runtime_exceeded, internal_error) or ``StopRequested``.
    """
    if spec.student.from_teacher is None:
        raise DistillError("invalid_spec", "a causal-LM teacher needs student.from_teacher (num_layers or keep_layers)", "student")
    run = JobRun.start(spec, workdir, reporter, runtime_used_s, parallel=True)
    with run.phase("loading_teacher"):
        s = _load(run, Path(teacher_path), fmt, files)
    run.check("while loading")
    transfer = _generate(run, s)
    run.check("after generating the transfer set")
    rows, val = _rows(s, spec)
    cache, top1, cache_s = _cache(run, s, rows, val)
    run.check("after caching teacher outputs")
    fingerprint = spec_fingerprint(spec)
    if spec.training.devices == 1:
        with run.phase("training"):
            outcome = _train(run, s, s.student, s.method, rows, val, cache, top1, fingerprint)
        baseline = _baseline(run, s, rows, val, top1, fingerprint)
    else:
        outcome, baseline = _train_parallel(run, s, rows, val, cache, top1, fingerprint, Path(teacher_path), fmt)
    run.check("after training")
    with run.phase("evaluating"):
        ev = _evaluate(run, s, val, baseline, cache)
    run.check("after evaluation", deadline=False)
    with run.phase("exporting"), run.artifacts() as tmp:
        exported = _export(run, s, val, tmp, transfer)
    report = _report(run, s, teacher_bytes, rows, val, outcome, baseline, cache, cache_s, transfer, ev, exported)
    return DistillResult(report=report.model_dump(mode="json"), artifacts=[run.final_dir / n for n in exported["names"]],
                         baseline_student=baseline[0] if baseline else None)


__all__ = ["run_lm_job"]
