"""The report the core stores, from one real small job per task family (digits tensor classification, a tiny BERT
classifier, a tiny BERT sentence encoder): it is the validated ``distill.report`` variant's full JSON, it survives a
JSON round trip unchanged, and its derived figures (ratios, speedups, drop, cache savings, summary) agree with its
own measurements, as the per-phase builders (``distill.report_builders``) compute them."""

from __future__ import annotations

import json
import math

import pytest

from distill.formats import FileInput
from distill.report import ClassificationReport, SentenceEmbeddingReport, SequenceClassificationReport, parse_report, unmodelled_keys
from distill.reporter import RecordingReporter
from distill.spec import JobSpec
from tests.specs import override

from .helpers import make_spec, run, run_text_job


def _stored(report: dict, variant: type) -> object:
    """Validate ``report`` as the API reads ``jobs.report`` back and check it is exactly the typed report's full dump."""
    restored = json.loads(json.dumps(report))  # what a JSON column gives back
    typed = parse_report(restored)
    assert isinstance(typed, variant) and report["task"] == typed.task
    assert unmodelled_keys(typed) == []
    assert typed.model_dump(mode="json") == report == restored
    return typed


def test_classification_job_stores_its_validated_report(teacher_file, tmp_path):
    spec = make_spec(training={"epochs": 2, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 5e-3}, "seed": 0},
                     evaluation={"latency_iterations": 5, "latency_batch_sizes": [1, 16], "compare_baseline": True},
                     export={"formats": ["safetensors"], "quantize": "dynamic_int8"})
    result, _ = run(spec, teacher_file, tmp_path / "w")
    r = _stored(result.report, ClassificationReport)
    assert r.compression_ratio == round(r.teacher.bytes / r.student.bytes, 2)
    assert r.parameter_ratio == round(r.teacher.parameters / r.student.parameters, 2)
    assert set(r.speedup) == {"1", "16"} and r.speedup["1"] == round(r.teacher.latency_ms["1"].p50 / r.student.latency_ms["1"].p50, 2)
    # the drop and gain are the paired comparisons' exact differences, within a rounding step of the 4-decimal top-1s'
    assert r.top1_drop_points == r.comparisons["teacher_vs_student"].difference_points
    assert r.distillation_gain_points == r.comparisons["distilled_vs_alone"].difference_points
    assert abs(r.top1_drop_points - (r.teacher.val_top1 - r.student.val_top1) * 100) <= 0.011
    assert abs(r.distillation_gain_points - (r.student.val_top1 - r.baseline.val_top1) * 100) <= 0.011
    assert r.baseline.epochs == 2 and r.baseline.parameters == r.student.parameters
    assert r.quantized.artifact == "student_int8.pt" and r.quantized.device == "cpu" and r.pruned is None
    assert r.cache.teacher_outputs and r.cache.teacher_passes_saved == r.data.train  # 2 epochs, computed once
    assert r.training.method_detail.terms == ["kd", "ce"] and r.training.precision == "fp32"
    assert f"{r.student.parameters:,} parameters" in r.summary and ("Distillation helped" in r.summary) == (r.distillation_gain_points > 0)
    assert list(r.wall_time_s)[-1] == "total" and "baseline_training" in r.wall_time_s
    assert result.baseline_student is not None


def _text_spec(task: str, **over) -> JobSpec:
    s = {"task": task, "teacher": {"file_id": "file_t"}, "data": {"train": {"file_id": "file_d"}, "validation": {"fraction": 0.25},
                                                                   "max_seq_length": 24},
         "training": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-3}},
         "evaluation": {"latency_iterations": 5, "throughput_batch_size": 8, "probe_max_samples": 100},
         "export": {"formats": ["safetensors"]}}
    return JobSpec.model_validate(override(s, **over))


@pytest.mark.parametrize("task", ["sequence_classification", "sentence_embedding"])
def test_text_job_stores_its_validated_report(task, tiny_bert_classifier_dir, tiny_encoder_dir, review_jsonl, tmp_path):
    if task == "sentence_embedding":
        spec, folder, variant = _text_spec(task, **{"student.from_teacher": {"num_layers": 2}, "method": {"name": "embedding"}}), \
            tiny_encoder_dir, SentenceEmbeddingReport
    else:
        spec, folder, variant = _text_spec(task, **{"student.from_teacher": {"num_layers": 1},
                                                  "method": {"name": "kd", "temperature": 2.0, "alpha": 0.5}}), \
            tiny_bert_classifier_dir, SequenceClassificationReport
    files = {"file_d": FileInput(path=review_jsonl, format="jsonl", bytes=review_jsonl.stat().st_size)}
    result = run_text_job(spec, folder, 12345, files, tmp_path / "w", RecordingReporter())
    r = _stored(result.report, variant)
    assert r.teacher.bytes == 12345 and r.compression_ratio == round(12345 / r.student.bytes, 2)
    assert r.parameter_ratio == round(r.teacher.parameters / r.student.parameters, 2)
    assert r.speedup["1"] == round(r.teacher.latency_ms["1"].p50 / r.student.latency_ms["1"].p50, 2)
    assert r.speedup["throughput_8"] == round(r.student.throughput_per_s["8"] / r.teacher.throughput_per_s["8"], 2)
    assert r.cache.teacher_outputs and r.cache.teacher_passes_saved == 0 and r.cache.bytes is None  # one epoch: nothing saved
    assert r.training.epochs == 1 and r.training.steps == r.training.steps_per_epoch and r.onnx is None
    assert r.export_checks.transformers_loads and f"{r.student.parameters:,} parameters" in r.summary
    if task == "sentence_embedding":
        assert r.training.method == "embedding" and r.pooling.mode == "mean" and r.pooling.normalize is True
        assert r.probe_ratio == round(r.probe_student / r.probe_teacher, 4)
        assert r.export_checks.sentence_transformers_max_abs_diff < 1e-3
    else:
        assert r.training.method == "kd" and r.pooling is None and r.data.label_names == ["fresh", "rotten"]
        assert 0 <= r.agreement <= 1 and r.student_top1 is not None and r.export_checks.sentence_transformers_max_abs_diff is None
        _check_text_error_bars(r)
        assert r.baseline is None and r.distillation_gain_points is None  # not asked for: text jobs do not run it by default


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson 1927 score interval, by its closed form (not scipy's), rounded as the report rounds."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(centre - half, 4), round(centre + half, 4)]


def _check_text_error_bars(r: SequenceClassificationReport) -> None:
    """A text classification report's Wilson intervals match its own counts, and its teacher-vs-student comparison is
    consistent with the two top-1s (rows, discordant counts, difference inside its interval)."""
    n = r.data.validation.rows  # every validation review is labelled
    t_ok, s_ok = round(r.teacher_top1 * n), round(r.student_top1 * n)
    assert abs(t_ok / n - r.teacher_top1) < 1e-4 and abs(s_ok / n - r.student_top1) < 1e-4
    assert r.teacher_top1_interval == _wilson(t_ok, n) and r.student_top1_interval == _wilson(s_ok, n)
    c = r.comparisons["teacher_vs_student"]
    assert set(r.comparisons) == {"teacher_vs_student"} | ({"distilled_vs_alone"} if r.baseline else set())
    assert (c.a, c.b, c.rows) == ("teacher", "distilled student", n)
    assert c.a_only - c.b_only == t_ok - s_ok and c.difference_points == round(100 * (t_ok - s_ok) / n, 2)
    assert c.interval_points[0] <= c.difference_points <= c.interval_points[1]
    assert c.verdict == ("no measurable difference" if c.interval_points[0] <= 0 <= c.interval_points[1] else
                         "a better" if c.interval_points[0] > 0 else "b better")
    assert f"[95% {r.student_top1_interval[0]:.1%}, {r.student_top1_interval[1]:.1%}]" in r.summary


def test_text_classification_baseline_has_error_bars(tiny_bert_classifier_dir, review_jsonl, tmp_path):
    """With evaluation.compare_baseline: true a text classification job also trains the derived student alone; the
    report carries its top-1 with the Wilson interval of its counts, the gain, and the paired distilled-vs-alone
    comparison, whose verdict the summary states."""
    spec = _text_spec("sequence_classification", **{"student.from_teacher": {"num_layers": 1}, "training.epochs": 2,
                                                    "method": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
                                                    "evaluation.compare_baseline": True})
    files = {"file_d": FileInput(path=review_jsonl, format="jsonl", bytes=review_jsonl.stat().st_size)}
    rep = RecordingReporter()
    r = _stored(run_text_job(spec, tiny_bert_classifier_dir, 12345, files, tmp_path / "w", rep).report, SequenceClassificationReport)
    n, b = r.data.validation.rows, r.baseline
    a_ok, s_ok = round(b.val_top1 * n), round(r.student_top1 * n)
    assert b.method and b.epochs == 2 and b.steps == r.training.steps and b.parameters == r.student.parameters
    vs = r.comparisons["distilled_vs_alone"]
    assert b.val_top1_interval == _wilson(a_ok, n) and r.distillation_gain_points == vs.difference_points
    assert abs(r.distillation_gain_points - 100 * (r.student_top1 - b.val_top1)) <= 0.011  # within a 4-decimal rounding step
    assert (vs.a, vs.b, vs.rows) == ("distilled student", "student alone", n) and vs.a_only - vs.b_only == s_ok - a_ok
    assert ("No measurable difference" in r.summary) == (vs.verdict == "no measurable difference")
    assert "baseline_training" in r.wall_time_s and [e for e in rep.events if e[0] == "baseline_started"]
    _check_text_error_bars(r)


def test_text_classification_baseline_asked_for_without_labelled_training_texts_says_why(tiny_bert_classifier_dir,
                                                                                         review_jsonl, tmp_path):
    """compare_baseline: true on unlabelled training texts (a labelled validation file) cannot train a student alone: the
    report says so in its baseline's note, as a tensor job's does, instead of leaving the asked-for baseline out."""
    rows = [json.loads(line) for line in review_jsonl.read_text().splitlines()]
    unlabelled, validation = tmp_path / "unlabelled.jsonl", tmp_path / "validation.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[:200]))
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows[200:280]))
    spec = _text_spec("sequence_classification", **{"student.from_teacher": {"num_layers": 1}, "data.validation": {"file_id": "file_v"},
                                                    "method": {"name": "kd", "temperature": 2.0, "alpha": 1.0},
                                                    "evaluation.compare_baseline": True})
    files = {name: FileInput(path=p, format="jsonl", bytes=p.stat().st_size) for name, p in (("file_d", unlabelled), ("file_v", validation))}
    rep = RecordingReporter()
    r = _stored(run_text_job(spec, tiny_bert_classifier_dir, 12345, files, tmp_path / "w", rep).report, SequenceClassificationReport)
    assert r.data.labelled == 0 and r.student_top1 is not None
    assert r.baseline is not None and r.baseline.val_top1 is None and r.baseline.note == "no labelled training texts: a student cannot be trained alone"
    assert r.distillation_gain_points is None and "distilled_vs_alone" not in (r.comparisons or {})
    assert not [e for e in rep.events if e[0] == "baseline_started"]
