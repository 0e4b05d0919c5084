"""The per-phase report builders (``distill.report_builders``, torch-free): fed the measurements behind a stored report,
they rebuild it exactly (ratios, speedups, drops, gain, cache savings and the summary sentence included); and each
builder on its own (rounding, None handling, the baseline verdicts)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from distill import report_builders as rb
from distill import review
from tests.fixtures import only_nulls_added, stored_reports

STORED = stored_reports()
EXEMPT = {"object", "job_id", "task"}


def _tensor_model(m: dict):
    return rb.tensor_model(format=m["format"], parameters=m["parameters"], bytes=m["bytes"], flops_per_sample=m["flops_per_sample"],
                           val_top1=m["val_top1"], latency_ms=m["latency_ms"], architecture=m["architecture"], notes=m["notes"],
                           val_top1_interval=m.get("val_top1_interval"))


def _rebuild_classification(r: dict, batch_size: int):
    tr, d = r["training"], r["data"]
    rows_per_epoch = min(d["train"], tr["steps_per_epoch"] * batch_size)
    c = r["cache"]
    cache = rb.cache_summary(used=c["teacher_outputs"], reason=c["reason"], rows_seen=tr["epochs"] * rows_per_epoch,
                             rows_cached=d["train"], seconds=c["cache_seconds"], bytes=c.get("bytes"))
    extras = {k: r[k] for k in ("top5", "per_class_top1", "ece", "teacher_student_confusion", "disagreements_top")}
    q, p, b = r.get("quantized"), r.get("pruned"), r.get("baseline")
    return rb.classification_report(
        teacher=_tensor_model(r["teacher"]), student=_tensor_model(r["student"]), agreement=r["agreement"], mean_kl=r["mean_kl"],
        data=rb.tensor_data(counts=d, num_classes=d["num_classes"], input_shape=d["input_shape"], validation=d["validation"],
                            preprocessing=d["preprocessing"]),
        training=rb.training_summary(**tr), cache=cache, wall_time_s=r["wall_time_s"], evaluation_extras=extras, onnx=rb.onnx_check(r["onnx"]),
        quantized=rb.quantized_student(artifact=q["artifact"], bytes=q["bytes"], parameters=q["parameters"], val_top1=q["val_top1"],
                                       latency_ms=q["latency_ms"], load_with=q["load_with"]) if q else None,
        pruned=rb.pruned_student(amount=p["amount"], sparsity=p["sparsity"], fine_tune_epochs=p["fine_tune_epochs"],
                                 artifact=p["artifact"], bytes=p["bytes"], parameters=p["parameters"], val_top1=p["val_top1"],
                                 latency_ms=p["latency_ms"]) if p else None,
        baseline=(rb.baseline(val_top1=b["val_top1"], training_time_s=b["training_time_s"], parameters=b["parameters"],
                              epochs=b["epochs"], steps=b["steps"], val_top1_interval=b.get("val_top1_interval"))
                  if b.get("note") is None else rb.no_baseline(b["note"])) if b else None,
        comparisons=r.get("comparisons"), warnings=r.get("warnings"))


@pytest.mark.parametrize("name,batch_size", [("classification_full", 64), ("classification_unlabelled", 64),
                                             ("classification_combined", 64), ("classification_tabular", 16),
                                             ("classification_error_bars", 64)])
def test_classification_builders_rebuild_a_stored_report(name, batch_size):
    stored = STORED[name]
    built = _rebuild_classification(stored, batch_size)
    # reports stored before the error bars ended with a verdict on any non-zero gain; without the comparison the
    # builders no longer give one (distill.review.gain_sentence), and the rest of the sentence is unchanged
    expected = stored["summary"] if "comparisons" in stored else re.sub(r" Distillation (helped|did not help|made no difference).*$",
                                                                        "", stored["summary"])
    assert built.summary == expected
    assert only_nulls_added({**stored, "summary": expected}, built.model_dump(mode="json"), EXEMPT)


def _text_parts(r: dict):
    (tb, _), = r["teacher"]["throughput_per_s"].items()
    t, s, d, tr, c = r["teacher"], r["student"], r["data"], r["training"], r["cache"]
    teacher = rb.text_teacher(model_type=t["model_type"], layers=t["layers"], hidden_size=t["hidden_size"], parameters=t["parameters"],
                              bytes=t["bytes"], latency_batch_1=t["latency_ms"]["1"], throughput_batch=int(tb),
                              throughput_per_s=t["throughput_per_s"][tb])
    student = rb.text_student(layers=s["layers"], kept_teacher_layers=s["kept_teacher_layers"], initialised=s["initialised"],
                              hidden_size=s["hidden_size"], parameters=s["parameters"], bytes=s["bytes"],
                              latency_batch_1=s["latency_ms"]["1"], throughput_batch=int(tb), throughput_per_s=s["throughput_per_s"][tb])
    return {"teacher": teacher, "student": student,
            "data": rb.text_data(counts=d, label_names=d["label_names"], validation=d["validation"], max_seq_length=d["max_seq_length"],
                                 mean_tokens=d["mean_tokens"]),
            "cache": rb.cache_summary(used=c["teacher_outputs"], reason=c["reason"], rows_seen=tr["epochs"] * d["train"],
                                      rows_cached=d["train"]),
            "training": rb.training_summary(**tr), "export_checks": r["export_checks"], "wall_time_s": r["wall_time_s"],
            "onnx": rb.onnx_check(r["onnx"])}


def test_sequence_classification_builders_rebuild_a_stored_report():
    stored = STORED["sequence_classification"]
    built = rb.sequence_classification_report(**_text_parts(stored), agreement=stored["agreement"], mean_kl=stored["mean_kl"],
                                              teacher_top1=stored["teacher_top1"], student_top1=stored["student_top1"])
    assert built.summary == stored["summary"]
    assert only_nulls_added(stored, built.model_dump(mode="json"), EXEMPT)


@pytest.mark.parametrize("name", ["sentence_embedding", "sentence_embedding_tinybert"])
def test_sentence_embedding_builders_rebuild_a_stored_report(name):
    stored = STORED[name]
    built = rb.sentence_embedding_report(**_text_parts(stored), mean_cosine=stored["mean_cosine"], probe_teacher=stored["probe_teacher"],
                                         probe_student=stored["probe_student"], pooling_mode=stored["pooling"]["mode"],
                                         normalize=stored["pooling"]["normalize"])
    assert built.summary == stored["summary"]
    assert only_nulls_added(stored, built.model_dump(mode="json"), EXEMPT)


def test_rounding_and_ratios():
    assert rb.rnd(0.123456) == 0.1235 and rb.rnd(float("nan")) is None and rb.rnd(None) is None and rb.rnd(2.5e-7, 6) == 0.0
    assert rb.ratio(10, 4) == 2.5 and rb.ratio(1, 0) is None and rb.ratio(None, 3) is None
    assert rb.latencies({1: {"p50": 0.123456, "p95": None}})["1"].model_dump() == {"p50": 0.1235, "p95": None}
    assert rb.wall_times({"training": 1.23456, "total": 2}) == {"training": 1.235, "total": 2.0}
    t = rb.training_summary(epochs=2, steps=10, steps_per_epoch=5, resumed_from_epoch=None, final_loss_terms={"kd": 0.12345678},
                            method="kd", device="cpu", threads=1, seed=0, training_time_s=1.23456)
    assert t.final_loss_terms == {"kd": 0.123457} and t.training_time_s == 1.235 and t.method_detail is None
    assert rb.onnx_check(None) is None and rb.onnx_check({"max_abs_diff": 1.23456e-7, "opset": 17}).max_abs_diff == 1.23e-7


def test_cache_savings():
    used = rb.cache_summary(used=True, reason="r", rows_seen=3 * 100, rows_cached=100, seconds=0.01234, bytes=4000)
    assert (used.teacher_passes_saved, used.cache_seconds, used.bytes) == (200, 0.012, 4000)
    off = rb.cache_summary(used=False, reason="off", rows_seen=300, rows_cached=100, seconds=0.5, bytes=4000)
    assert (off.teacher_passes_saved, off.cache_seconds, off.bytes) == (0, 0.0, None)
    resumed = rb.cache_summary(used=True, reason="r", rows_seen=100, rows_cached=100)  # one epoch run after a resume
    assert resumed.teacher_passes_saved == 0 and resumed.cache_seconds is None


def _correct(top1: float, n: int = 1000) -> np.ndarray:
    """A per-row correctness vector of ``n`` rows with ``top1 * n`` right (the first ones)."""
    return np.arange(n) < round(top1 * n)


def _tiny(top1_student: float | None, baseline_top1: float | None, alone_correct: np.ndarray | None = None,
          student_correct: np.ndarray | None = None, compared: bool = True):
    lat = {"1": {"p50": 2.0, "p95": 3.0}}
    teacher = rb.tensor_model(format="safetensors", parameters=1000, bytes=4000, flops_per_sample=200, val_top1=0.9, latency_ms=lat,
                              architecture={"name": "cnn", "kwargs": {}})
    student = rb.tensor_model(format="safetensors", parameters=100, bytes=500, flops_per_sample=None, val_top1=top1_student,
                              latency_ms={"1": {"p50": 0.5, "p95": 0.6}}, architecture={"name": "mlp", "kwargs": {}})
    base = rb.baseline(val_top1=baseline_top1, training_time_s=1.0, parameters=100, epochs=1, steps=3) if baseline_top1 is not None else None
    comparisons = None
    if compared and top1_student is not None and baseline_top1 is not None:
        s_ok = _correct(top1_student) if student_correct is None else student_correct
        b_ok = _correct(baseline_top1) if alone_correct is None else alone_correct
        comparisons = {"distilled_vs_alone": review.compare(s_ok, b_ok, "distilled student", "student alone", seed=0)}
    return rb.classification_report(
        teacher=teacher, student=student, agreement=0.8, mean_kl=0.1, cache=None, wall_time_s={"total": 1.0}, baseline=base,
        comparisons=comparisons,
        data=rb.tensor_data(counts={"train": 10, "labelled": 10, "unlabelled": 0, "transfer": 0}, num_classes=2, input_shape=[4],
                            validation={"rows": 5}, preprocessing={}),
        training=rb.training_summary(epochs=1, steps=3, steps_per_epoch=3, resumed_from_epoch=None, final_loss_terms={},
                                     method="kd", device="cpu", threads=1, seed=0))


def test_classification_assembly_derives_ratios_and_verdicts():
    r = _tiny(0.85, 0.8)
    assert (r.compression_ratio, r.parameter_ratio, r.flops_ratio, r.speedup) == (8.0, 10.0, None, {"1": 4.0})
    assert r.top1_drop_points == 5.0 and r.distillation_gain_points == 5.0 and r.gain_points() == 5.0
    assert r.summary.startswith("The mlp student has 100 parameters vs the teacher's 1,000 (8.0x smaller on disk, 4.0x faster")
    # 850 vs 800 of the same 1,000 rows, the first 800 right for both: 50 discordant rows, all for the distilled one
    assert "Distillation helped" in r.summary and "5.00 points above" in r.summary and "McNemar p = " in r.summary
    assert r.comparisons["distilled_vs_alone"].verdict == "a better"
    assert "Distillation did not help" in _tiny(0.75, 0.8).summary
    assert "No measurable difference" in _tiny(0.8, 0.8).summary
    # +0.5 points made of 30 rows one way and 25 the other: the interval covers 0, so no verdict either way
    rng = np.random.default_rng(0)
    both = rng.permutation(np.r_[np.ones(770, bool), np.zeros(230, bool)])
    s_ok, b_ok = both.copy(), both.copy()
    wrong, right = np.flatnonzero(~both), np.flatnonzero(both)
    s_ok[wrong[:30]] = True
    b_ok[wrong[30:55]] = True
    noisy = _tiny(s_ok.mean(), b_ok.mean(), alone_correct=b_ok, student_correct=s_ok)
    vs = noisy.comparisons["distilled_vs_alone"]
    assert vs.difference_points == 0.5 and vs.interval_points[0] < 0 < vs.interval_points[1] and vs.mcnemar_p > 0.5
    assert "No measurable difference" in noisy.summary and "helped" not in noisy.summary and "did not help" not in noisy.summary
    uncompared = _tiny(0.85, 0.8, compared=False)  # a baseline without its comparison: the gain, but no verdict
    assert uncompared.distillation_gain_points == 5.0 and "Distillation" not in uncompared.summary
    no_labels = _tiny(None, None)
    assert no_labels.top1_drop_points is None and no_labels.baseline is None and "top-1" not in no_labels.summary
    assert rb.no_baseline("why").model_dump(exclude_unset=True) == {"val_top1": None, "training_time_s": None, "note": "why"}


def test_drop_and_gain_agree_with_the_paired_comparisons_to_the_last_digit():
    """The demo's numbers: teacher 358, distilled 352 and alone 349 right of 360 rows. The top-1s are stored rounded
    (99.44%, 97.78%, 96.94%), whose differences are 1.66 and 0.84 points; the exact ones, which the comparisons printed
    beside them say, are 6/360 = 1.67 and 3/360 = 0.83 points. The report used to print both."""
    n = 360
    t_ok, s_ok, b_ok = np.arange(n) < 358, np.arange(n) < 352, np.arange(n) < 349
    bars = review.error_bars(teacher=t_ok, student=s_ok, alone=b_ok, seed=0)
    lat = {"1": {"p50": 2.0, "p95": 3.0}}
    r = rb.classification_report(
        teacher=rb.tensor_model(format="safetensors", parameters=1000, bytes=4000, flops_per_sample=None, val_top1=t_ok.mean(),
                                latency_ms=lat, val_top1_interval=bars["teacher"]),
        student=rb.tensor_model(format="safetensors", parameters=100, bytes=500, flops_per_sample=None, val_top1=s_ok.mean(),
                                latency_ms=lat, architecture={"name": "mlp", "kwargs": {}}, val_top1_interval=bars["student"]),
        agreement=0.97, mean_kl=0.05, cache=None, wall_time_s={"total": 1.0},
        baseline=rb.baseline(val_top1=b_ok.mean(), training_time_s=1.0, parameters=100, epochs=1, steps=3,
                             val_top1_interval=bars["alone"]),
        comparisons=bars["comparisons"],
        data=rb.tensor_data(counts={"train": 10, "labelled": 10, "unlabelled": 0, "transfer": 0}, num_classes=2, input_shape=[4],
                            validation={"rows": n}, preprocessing={}),
        training=rb.training_summary(epochs=1, steps=3, steps_per_epoch=3, resumed_from_epoch=None, final_loss_terms={},
                                     method="kd", device="cpu", threads=1, seed=0))
    assert (r.teacher.val_top1, r.student.val_top1, r.baseline.val_top1) == (0.9944, 0.9778, 0.9694)
    assert r.top1_drop_points == r.comparisons["teacher_vs_student"].difference_points == 1.67
    assert r.distillation_gain_points == r.comparisons["distilled_vs_alone"].difference_points == 0.83
    no_pairs = r.model_copy(update={"comparisons": None})  # without the comparisons, the rounded top-1s are all there is
    assert rb._paired_points(no_pairs.comparisons, "teacher_vs_student", 0.9944, 0.9778) == 1.66
