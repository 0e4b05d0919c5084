"""``run_text_job``: distil a Hugging Face teacher ('hf' format) on text.

Tasks:
- ``sentence_embedding``: the teacher's token states are pooled (mean/cls/max, L2-normalised when its
  sentence-transformers pipeline normalises) into an embedding; the student learns it with
  ``cosine_weight · (1 − cos(s, t)) + mse_weight · MSE(s, t)`` and, optionally, TinyBERT-style hidden-state
  and attention-map matching for chosen layer pairs (Jiao et al. 2020), through a learned linear projection
  when the widths differ.
- ``sequence_classification``: logit KD (``kd`` / ``hard_label``, Hinton et al. 2015) on the teacher's
  classification head.

Teacher outputs are computed once per job (phase ``caching_teacher_outputs``) when nothing random touches
the input (tokenisation is deterministic; only hidden-state/attention matching needs per-step teacher
passes). Batches are length-sorted with dynamic padding. Checkpoints each epoch; resumable; cancellable
between steps.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import rnd as _r
from ..errors import DistillError, StopRequested, first_line
from ..loop import load_checkpoint, make_optimizer, make_scheduler, save_checkpoint, spec_fingerprint
from ..measure import resolve_device
from ..methods import build_method
from ..models import parameter_count
from ..reporter import MetricRow, Reporter
from ..results import DistillResult
from ..spec import JobSpec
from .data import TextBundle, collate, length_batches, load_text_data, tokenize
from .hf import Classifier, SentenceEncoder, from_states, derive_student, load_model, load_tokenizer, pipeline_pooling, save_student_folder, st_embeddings

EVAL_BATCH = 64
ONNX_TOLERANCE = 1e-3


def resolve_task(spec: JobSpec, folder: Path) -> str:
    """The job's text task: the spec's, or with 'auto' 'sequence_classification' when the teacher's config names a
    *ForSequenceClassification architecture, else 'sentence_embedding'. Raises DistillError('invalid_spec')."""
    if spec.task in ("sequence_classification", "sentence_embedding"):
        return spec.task
    if spec.task == "classification":
        raise DistillError("invalid_spec", "a Hugging Face teacher needs task 'sequence_classification' or 'sentence_embedding'", "task")
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        archs = []
    return "sequence_classification" if any(a.endswith("ForSequenceClassification") for a in archs) else "sentence_embedding"


@torch.inference_mode()
def encode_all(fn: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, batch: int = EVAL_BATCH) -> torch.Tensor:
    """``fn(input_ids, attention_mask)`` over all texts in length-sorted batches, returned in the original order ``[N, D]``."""
    out: list[tuple[np.ndarray, torch.Tensor]] = []
    for idx in length_batches(np.array([len(x) for x in ids]), batch, 0, shuffle=False):
        x, m = collate(ids, idx, pad_id, device)
        out.append((idx, fn(x, m).float().cpu()))
    res = torch.empty((len(ids), out[0][1].shape[1]))
    for idx, v in out:
        res[torch.as_tensor(idx)] = v
    return res


def _latency(fn: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, iterations: int, tput_batch: int) -> dict[str, Any]:
    """Per-sentence latency at batch 1 (p50/p95 ms over up to ``iterations`` held-out sentences, each at its own
    length) and throughput (sentences/s) at batch ``tput_batch`` over held-out sentences in their natural order."""
    n1 = min(iterations, len(ids))
    times = []
    with torch.inference_mode():
        for i in range(min(3, len(ids))):
            fn(*collate(ids, np.array([i]), pad_id, device))
        for i in range(n1):
            x, m = collate(ids, np.array([i]), pad_id, device)
            t = time.perf_counter()
            fn(x, m)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
        order = np.arange(len(ids))
        batches = [order[i:i + tput_batch] for i in range(0, min(len(ids), tput_batch * 20), tput_batch)]
        fn(*collate(ids, batches[0], pad_id, device))
        t = time.perf_counter()
        done = 0
        for b in batches:
            fn(*collate(ids, b, pad_id, device))
            done += len(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
    return {"batch_1_ms": {"p50": _r(float(np.percentile(times, 50))), "p95": _r(float(np.percentile(times, 95)))},
            f"throughput_batch_{tput_batch}_per_s": _r(done / elapsed, 1)}


def _probe(train_emb: torch.Tensor, train_y: np.ndarray, val_emb: torch.Tensor, val_y: np.ndarray, max_samples: int, seed: int) -> float | None:
    """Validation accuracy of a logistic-regression probe (scikit-learn) fitted on labelled training embeddings."""
    from sklearn.linear_model import LogisticRegression

    tr = np.flatnonzero(train_y >= 0)
    va = np.flatnonzero(val_y >= 0)
    if tr.size < 2 or va.size == 0 or np.unique(train_y[tr]).size < 2:
        return None
    if tr.size > max_samples:
        tr = np.random.default_rng(seed).choice(tr, max_samples, replace=False)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(train_emb[tr].numpy(), train_y[tr])
    return float((clf.predict(val_emb[va].numpy()) == val_y[va]).mean())


def _hidden_loss(s_h: tuple, t_h: tuple, pairs: list, proj: nn.ModuleList, mask: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of the masked MSE between projected student and teacher layer outputs (TinyBERT, Jiao et al. 2020).
    Layer i's output is ``hidden_states[i + 1]`` (index 0 is the embeddings)."""
    m = mask.unsqueeze(-1).to(s_h[0].dtype)
    denom = m.sum() * t_h[0].shape[-1]
    total = s_h[0].new_zeros(())
    for k, p in enumerate(pairs):
        diff = (proj[k](s_h[p.student + 1]) - t_h[p.teacher + 1]) * m
        total = total + diff.pow(2).sum() / denom
    return total


def _attention_loss(s_a: tuple, t_a: tuple, pairs: list, mask: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of the MSE between head-averaged attention probabilities ``[B, T, T]`` on real tokens."""
    mm = (mask.unsqueeze(1) * mask.unsqueeze(2)).to(s_a[0].dtype)
    total = s_a[0].new_zeros(())
    for p in pairs:
        diff = (s_a[p.student].mean(1) - t_a[p.teacher].mean(1)) * mm
        total = total + diff.pow(2).sum() / mm.sum()
    return total


def run_text_job(spec: JobSpec, folder: Path, teacher_bytes: int, files: dict, workdir: Path, reporter: Reporter,
                 *, runtime_used_s: float = 0.0):
    """Run a text distillation job from the extracted teacher ``folder`` (a Hugging Face model folder).

    Returns ``DistillResult`` with the report and artifacts (``student_hf.zip``: the student as a transformers
    — and for embeddings sentence-transformers — folder; ``student.onnx`` verified by onnxruntime;
    ``student.json``). Raises DistillError (invalid_spec, invalid_file, non_finite_loss, max_runtime_exceeded,
    internal_error) or StopRequested.
    """
    t_start = time.perf_counter()
    deadline = t_start + spec.training.max_runtime_s - runtime_used_s
    device = resolve_device(spec.training.device)
    workdir.mkdir(parents=True, exist_ok=True)
    final_dir = workdir / "artifacts"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    times: dict[str, float] = {}
    if spec.student.from_teacher is None:
        raise DistillError("invalid_spec", "a Hugging Face teacher needs student.from_teacher (num_layers or keep_layers)", "student")
    task = resolve_task(spec, folder)
    emb = spec.embedding
    feature_losses = task == "sentence_embedding" and bool(emb.hidden_layers or emb.attention_layers)

    def check(where: str) -> None:
        if reporter.should_stop():
            raise StopRequested(f"stop requested {where}")
        if time.perf_counter() > deadline:
            raise DistillError("max_runtime_exceeded", f"training.max_runtime_s={spec.training.max_runtime_s:g} s reached {where}",
                               "training.max_runtime_s")

    # ------------------------------------------------------------------ loading_teacher
    reporter.phase("loading_teacher")
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(folder)
    teacher = load_model(folder, task, attention=bool(emb.attention_layers)).to(device)
    data: TextBundle = load_text_data(spec.data, files)
    mode, normalize = pipeline_pooling(folder)
    if spec.pooling.mode != "auto":
        mode = spec.pooling.mode
    if spec.pooling.normalize is not None:
        normalize = spec.pooling.normalize
    student_model, facts = derive_student(teacher, spec.student.from_teacher, task, spec.training.seed)
    student_model.to(device)
    t_width, s_width = int(teacher.config.hidden_size), int(student_model.config.hidden_size)
    for p in emb.hidden_layers + emb.attention_layers:
        if p.student >= facts["num_hidden_layers"] or p.teacher >= int(teacher.config.num_hidden_layers):
            raise DistillError("invalid_spec", f"layer pair {p.student}->{p.teacher} is out of range: the student has "
                               f"{facts['num_hidden_layers']} layers, the teacher {teacher.config.num_hidden_layers}", "embedding")
    projection = nn.Linear(s_width, t_width).to(device) if task == "sentence_embedding" and s_width != t_width else None
    hidden_proj = nn.ModuleList([nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity() for _ in emb.hidden_layers]).to(device)
    if task == "sentence_embedding":
        t_fn: nn.Module = SentenceEncoder(teacher, mode, normalize)
        s_fn: nn.Module = SentenceEncoder(student_model, mode, normalize, projection)
    else:
        t_fn, s_fn = Classifier(teacher), Classifier(student_model)
        if data.num_classes is not None and data.num_classes > int(teacher.config.num_labels):
            raise DistillError("shape_mismatch", f"the data has labels up to {data.num_classes - 1} but the teacher classifies "
                               f"{teacher.config.num_labels} classes", "data")
    max_len = min(spec.data.max_seq_length, int(getattr(tokenizer, "model_max_length", 10**9) or 10**9),
                  int(getattr(teacher.config, "max_position_embeddings", 10**9)))
    train_ids = tokenize(tokenizer, data.train_texts, max_len)
    val_ids = tokenize(tokenizer, data.val_texts, max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    times["loading_teacher"] = time.perf_counter() - t0
    check("while loading")

    # ------------------------------------------------------------------ caching_teacher_outputs
    use_cache = spec.cache.teacher_outputs != "off" and not feature_losses
    if spec.cache.teacher_outputs == "on" and feature_losses:
        raise DistillError("invalid_spec", "cache.teacher_outputs='on' cannot hold per-token states for hidden/attention matching; "
                           "use 'auto' or 'off'", "cache.teacher_outputs")
    reporter.phase("caching_teacher_outputs")
    t0 = time.perf_counter()
    t_val = encode_all(t_fn, val_ids, pad_id, device)
    t_train = encode_all(t_fn, train_ids, pad_id, device) if use_cache else None
    times["caching_teacher_outputs"] = time.perf_counter() - t0
    check("after caching teacher outputs")

    # ------------------------------------------------------------------ training
    reporter.phase("training")
    t0 = time.perf_counter()
    tr = spec.training
    lengths = np.array([len(x) for x in train_ids])
    spe = math.ceil(len(train_ids) / tr.batch_size)
    total_steps = tr.epochs * spe
    params = list(student_model.parameters()) + (list(projection.parameters()) if projection is not None else []) + list(hidden_proj.parameters())
    opt = make_optimizer(tr.optimizer, params)
    sched = make_scheduler(opt, tr.schedule, total_steps)
    labels_t = torch.as_tensor(data.train_labels)
    method = build_method(spec.method, has_labels=data.counts["labelled"] > 0, all_labelled=data.counts["unlabelled"] == 0) \
        if task == "sequence_classification" else None
    fingerprint = spec_fingerprint(spec)
    ckpt_path = workdir / "checkpoint.pt"
    start_epoch, step, resumed = 1, 0, None
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None and ckpt.get("fingerprint") == fingerprint and ckpt.get("kind") == "text":
        student_model.load_state_dict(ckpt["student"])
        if projection is not None:
            projection.load_state_dict(ckpt["projection"])
        hidden_proj.load_state_dict(ckpt["hidden_proj"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        resumed = int(ckpt["epoch"])
        start_epoch, step = resumed + 1, int(ckpt["step"])
        reporter.discard_metrics_after(resumed)
        reporter.event("resumed", f"resumed from the checkpoint of epoch {resumed} (step {step})", {"epoch": resumed, "step": step})
    else:
        reporter.discard_metrics_after(0)
    run_start, start_step = time.perf_counter(), step
    final_terms: dict[str, float] = {}
    val_cos = None
    for epoch in range(start_epoch, tr.epochs + 1):
        torch.manual_seed(tr.seed * 1_000_003 + epoch)
        student_model.train()
        acc: dict[str, float] = {}
        logged: dict[str, float] = {}
        n_logged = 0
        for i, idx in enumerate(length_batches(lengths, tr.batch_size, tr.seed * 1_000_003 + epoch)):
            check(f"before step {step + 1}")
            x, m = collate(train_ids, idx, pad_id, device)
            terms: dict[str, torch.Tensor] = {}
            if task == "sentence_embedding":
                out = student_model(input_ids=x, attention_mask=m, output_hidden_states=bool(emb.hidden_layers),
                                    output_attentions=bool(emb.attention_layers))
                s_emb = from_states(out.last_hidden_state, m, mode, normalize, projection)
                if t_train is not None:
                    t_emb, t_out = t_train[torch.as_tensor(idx)].to(device), None
                else:
                    with torch.inference_mode():
                        t_out = teacher(input_ids=x, attention_mask=m, output_hidden_states=bool(emb.hidden_layers),
                                        output_attentions=bool(emb.attention_layers))
                        t_emb = from_states(t_out.last_hidden_state, m, mode, normalize, None)
                    t_emb = t_emb.clone()
                if emb.cosine_weight:
                    terms["cosine"] = emb.cosine_weight * (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
                if emb.mse_weight:
                    terms["mse"] = emb.mse_weight * F.mse_loss(s_emb, t_emb)
                if emb.hidden_layers and t_out is not None:
                    terms["hidden"] = emb.hidden_weight * _hidden_loss(out.hidden_states, tuple(h.clone() for h in t_out.hidden_states),
                                                                     emb.hidden_layers, hidden_proj, m)
                if emb.attention_layers and t_out is not None:
                    terms["attention"] = emb.attention_weight * _attention_loss(out.attentions, tuple(a.clone() for a in t_out.attentions),
                                                                              emb.attention_layers, m)
                if not terms:
                    raise DistillError("invalid_spec", "every embedding loss weight is 0", "embedding")
            else:
                s_logits = s_fn(x, m)
                if t_train is not None:
                    t_logits = t_train[torch.as_tensor(idx)].to(device)
                else:
                    with torch.inference_mode():
                        t_logits = t_fn(x, m)
                    t_logits = t_logits.clone()
                terms = method(s_logits, t_logits, labels_t[torch.as_tensor(idx)].to(device), epoch=epoch)
            total = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            step += 1
            vals = {k: float(v.detach()) for k, v in terms.items()}
            vals["total"] = float(total.detach())
            if not all(math.isfinite(v) for v in vals.values()):
                raise DistillError("non_finite_loss", f"the loss became non-finite at step {step} (epoch {epoch}): {vals}; try a lower "
                                   f"learning rate (now {tr.optimizer.lr:g})", "training.optimizer.lr")
            for k, v in vals.items():
                acc[k] = acc.get(k, 0.0) + v
                logged[k] = logged.get(k, 0.0) + v
            n_logged += 1
            if step % tr.log_every_steps == 0 or i == spe - 1:
                reporter.metrics([MetricRow(f"loss/{k}", "train", step, epoch, v / n_logged) for k, v in logged.items()])
                logged, n_logged = {}, 0
            done = step - start_step
            eta = (time.perf_counter() - run_start) / done * (total_steps - step) if done else None
            reporter.progress(epoch=epoch, epochs=tr.epochs, step=step, total_steps=total_steps, fraction=step / total_steps, eta_s=eta)
        final_terms = {k: v / spe for k, v in acc.items()}
        student_model.eval()
        s_val = encode_all(s_fn, val_ids, pad_id, device)
        rows = [MetricRow(f"loss/{k}", "train_epoch", step, epoch, v) for k, v in final_terms.items()]
        rows.append(MetricRow("lr", "train", step, epoch, float(sched.get_last_lr()[0])))
        if task == "sentence_embedding":
            val_cos = float(F.cosine_similarity(s_val, t_val, dim=-1).mean())
            rows.append(MetricRow("cosine", "val", step, epoch, val_cos))
        else:
            agree = float((s_val.argmax(1) == t_val.argmax(1)).float().mean())
            rows.append(MetricRow("agreement", "val", step, epoch, agree))
            vy = torch.as_tensor(data.val_labels)
            if (vy >= 0).any():
                rows.append(MetricRow("top1", "val", step, epoch, float((s_val.argmax(1)[vy >= 0] == vy[vy >= 0]).float().mean())))
        reporter.metrics(rows)
        save_checkpoint(ckpt_path, {"kind": "text", "fingerprint": fingerprint, "epoch": epoch, "step": step,
                                    "student": student_model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                    "projection": projection.state_dict() if projection is not None else {},
                                    "hidden_proj": hidden_proj.state_dict()})
        reporter.event("checkpoint", f"epoch {epoch} checkpoint saved", {"epoch": epoch, "step": step})
    times["training"] = time.perf_counter() - t0
    check("after training")

    # ------------------------------------------------------------------ evaluating
    reporter.phase("evaluating")
    t0 = time.perf_counter()
    student_model.eval()
    s_val = encode_all(s_fn, val_ids, pad_id, device)
    ev: dict[str, Any] = {}
    if task == "sentence_embedding":
        ev["mean_cosine"] = _r(float(F.cosine_similarity(s_val, t_val, dim=-1).mean()))
        n_probe = min(len(train_ids), spec.evaluation.probe_max_samples)
        pick = np.random.default_rng(spec.training.seed).choice(len(train_ids), n_probe, replace=False) if n_probe < len(train_ids) else np.arange(len(train_ids))
        sub = [train_ids[i] for i in pick]
        t_tr = t_train[torch.as_tensor(pick)] if t_train is not None else encode_all(t_fn, sub, pad_id, device)
        s_tr = encode_all(s_fn, sub, pad_id, device)
        ev["probe_teacher"] = _r(_probe(t_tr, data.train_labels[pick], t_val, data.val_labels, n_probe, tr.seed))
        ev["probe_student"] = _r(_probe(s_tr, data.train_labels[pick], s_val, data.val_labels, n_probe, tr.seed))
        ev["probe_ratio"] = _r(ev["probe_student"] / ev["probe_teacher"]) if ev["probe_teacher"] and ev["probe_student"] is not None else None
    else:
        vy = torch.as_tensor(data.val_labels)
        lab = vy >= 0
        ev["agreement"] = _r(float((s_val.argmax(1) == t_val.argmax(1)).float().mean()))
        ev["mean_kl"] = _r(float(F.kl_div(F.log_softmax(s_val, 1), F.log_softmax(t_val, 1), log_target=True, reduction="batchmean")), 6)
        ev["teacher_top1"] = _r(float((t_val.argmax(1)[lab] == vy[lab]).float().mean())) if lab.any() else None
        ev["student_top1"] = _r(float((s_val.argmax(1)[lab] == vy[lab]).float().mean())) if lab.any() else None
    it, tb = spec.evaluation.latency_iterations, spec.evaluation.throughput_batch_size
    t_lat = _latency(t_fn, val_ids, pad_id, device, it, tb)
    s_lat = _latency(s_fn, val_ids, pad_id, device, it, tb)
    times["evaluating"] = time.perf_counter() - t0
    check("after evaluation")

    # ------------------------------------------------------------------ exporting
    reporter.phase("exporting")
    t0 = time.perf_counter()
    tmp = workdir / f".artifacts-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        folder_out = save_student_folder(student_model.cpu(), tokenizer, tmp / "student_hf", task=task, mode=mode, normalize=normalize,
                                         projection=projection.cpu() if projection is not None else None, max_seq_length=max_len)
        student_model.to(device)
        checks: dict[str, Any] = {}
        sample = data.val_texts[:16]
        ours = encode_all(s_fn.cpu(), tokenize(tokenizer, sample, max_len), pad_id, torch.device("cpu"))
        from transformers import AutoModel

        AutoModel.from_pretrained(str(folder_out), local_files_only=True)  # loads in plain transformers
        checks["transformers_loads"] = True
        if task == "sentence_embedding":
            st = torch.as_tensor(st_embeddings(folder_out, sample))
            checks["sentence_transformers_max_abs_diff"] = float(f"{float((st - ours).abs().max()):.3g}")
            if checks["sentence_transformers_max_abs_diff"] > ONNX_TOLERANCE:
                raise DistillError("internal_error", f"sentence-transformers embeddings differ from the job's by "
                                   f"{checks['sentence_transformers_max_abs_diff']}")
        onnx_info = None
        if "onnx" in spec.export.formats:
            onnx_info = _export_onnx(s_fn, tokenizer, sample, max_len, tmp / "student.onnx")
        student_bytes = (folder_out / "model.safetensors").stat().st_size
        with zipfile.ZipFile(tmp / "student_hf.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
            for p in sorted(folder_out.rglob("*")):
                if p.is_file():
                    z.write(p, Path("student_hf") / p.relative_to(folder_out))
        shutil.rmtree(folder_out)
        card = {"task": task, "from_teacher": spec.student.from_teacher.model_dump(), **facts, "pooling": mode, "normalize": normalize,
                "projection": [s_width, t_width] if projection is not None else None, "max_seq_length": max_len,
                "files": {"student_hf.zip": "unzip, then AutoModel.from_pretrained('student_hf')" + (
                    " or SentenceTransformer('student_hf')" if task == "sentence_embedding" else ""),
                          "student.onnx": "inputs input_ids, attention_mask [batch, tokens] int64; output " + (
                              "embedding [batch, dim]" if task == "sentence_embedding" else "logits [batch, classes]")},
                "torch_version": torch.__version__}
        (tmp / "student.json").write_text(json.dumps(card, indent=2))
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    times["exporting"] = time.perf_counter() - t0
    artifacts = [final_dir / n for n in ("student_hf.zip", "student.json") + (("student.onnx",) if onnx_info else ())]
    times["total"] = time.perf_counter() - t_start

    t_params = parameter_count(teacher)
    s_params = parameter_count(student_model) + (parameter_count(projection) if projection else 0)
    tk = f"throughput_batch_{tb}_per_s"
    report: dict[str, Any] = {
        "task": task,
        "teacher": {"format": "hf", "model_type": teacher.config.model_type, "layers": int(teacher.config.num_hidden_layers),
                    "hidden_size": t_width, "parameters": t_params, "bytes": teacher_bytes, "latency_ms": {"1": t_lat["batch_1_ms"]},
                    "throughput_per_s": {str(tb): t_lat[tk]}},
        "student": {"format": "hf", "layers": facts["num_hidden_layers"], "kept_teacher_layers": facts["keep_layers"],
                    "initialised": facts["initialised"], "hidden_size": s_width, "parameters": s_params, "bytes": student_bytes,
                    "latency_ms": {"1": s_lat["batch_1_ms"]}, "throughput_per_s": {str(tb): s_lat[tk]}},
        "parameter_ratio": _r(t_params / s_params, 2),
        "compression_ratio": _r(teacher_bytes / student_bytes, 2),
        "speedup": {"1": _r(t_lat["batch_1_ms"]["p50"] / s_lat["batch_1_ms"]["p50"], 2) if s_lat["batch_1_ms"]["p50"] else None,
                    f"throughput_{tb}": _r(s_lat[tk] / t_lat[tk], 2) if t_lat[tk] else None},
        **ev,
        "data": {**data.counts, "label_names": data.label_names, "validation": data.validation, "max_seq_length": max_len,
                 "mean_tokens": _r(float(lengths.mean()), 1)},
        "pooling": {"mode": mode, "normalize": normalize} if task == "sentence_embedding" else None,
        "cache": {"teacher_outputs": use_cache, "reason": "deterministic tokenisation; teacher run once per text" if use_cache else (
            "hidden/attention matching needs per-step teacher states" if feature_losses else "turned off in the spec"),
                  "teacher_passes_saved": (tr.epochs - 1) * len(train_ids) if use_cache else 0},
        "training": {"epochs": tr.epochs, "steps": step, "steps_per_epoch": spe, "resumed_from_epoch": resumed,
                     "final_loss_terms": {k: _r(v, 6) for k, v in final_terms.items()}, "method": spec.method.name if task != "sentence_embedding" else "embedding",
                     "device": str(device), "threads": torch.get_num_threads(), "seed": tr.seed},
        "export_checks": checks,
        "onnx": onnx_info,
        "wall_time_s": {k: _r(v, 3) for k, v in times.items()},
    }
    report["summary"] = _summary(report)
    return DistillResult(report=report, artifacts=artifacts)


def _export_onnx(fn: nn.Module, tokenizer, texts: list[str], max_len: int, path: Path) -> dict[str, Any]:
    """Export ``fn(input_ids, attention_mask)`` to ONNX (dynamic batch and token axes) and compare onnxruntime with PyTorch."""
    import onnxruntime as ort

    fn = fn.cpu().eval()
    enc = tokenizer(texts[:4], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(fn, args, str(path), dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["output"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                            "output": {0: "batch"}}, opset_version=17)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        other = tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        got = sess.run(None, {"input_ids": other["input_ids"].numpy(), "attention_mask": other["attention_mask"].numpy()})[0]
        with torch.inference_mode():
            want = fn(other["input_ids"], other["attention_mask"]).numpy()
    except Exception as e:  # noqa: BLE001
        raise DistillError("internal_error", f"ONNX export of the student failed: {first_line(e)}") from None
    diff = float(np.abs(got - want).max())
    if diff > ONNX_TOLERANCE:
        raise DistillError("internal_error", f"the ONNX student differs from PyTorch by {diff:.3g}")
    return {"max_abs_diff": float(f"{diff:.3g}"), "opset": 17, "inputs": ["input_ids", "attention_mask"]}


def _summary(r: dict[str, Any]) -> str:
    s, t = r["student"], r["teacher"]
    text = (f"The {s['layers']}-layer student has {s['parameters']:,} parameters vs the teacher's {t['parameters']:,} "
            f"({r['parameter_ratio']}x fewer), {r['speedup'].get('1')}x faster per sentence at batch 1")
    tp = next((v for k, v in r["speedup"].items() if k.startswith("throughput")), None)
    if tp:
        text += f" and {tp}x the teacher's throughput"
    if r["task"] == "sentence_embedding":
        text += f"; mean cosine to the teacher's embeddings on held-out text is {r['mean_cosine']}"
        if r.get("probe_ratio") is not None:
            text += (f", and a linear probe on its embeddings reaches {r['probe_student']:.1%} vs the teacher's {r['probe_teacher']:.1%} "
                     f"({r['probe_ratio']:.1%} of it)")
    else:
        text += f"; it agrees with the teacher on {r['agreement']:.1%} of validation texts"
        if r.get("student_top1") is not None:
            text += f", top-1 {r['student_top1']:.1%} vs the teacher's {r['teacher_top1']:.1%}"
    return text + "."
