"""The typed report (``distill.report``): stored reports of every shape validate into their variant unchanged, the
discriminator and the legacy (task-less) shape, what is refused, and the check that keeps model and core in step."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from distill.report import (
    CausalLMReport,
    ClassificationReport,
    SentenceEmbeddingReport,
    SequenceClassificationReport,
    parse_report,
    unmodelled_keys,
)
from tests.fixtures import stored_reports

STORED = stored_reports()
VARIANT = {"classification": ClassificationReport, "sequence_classification": SequenceClassificationReport,
           "sentence_embedding": SentenceEmbeddingReport, "causal_lm": CausalLMReport}


def test_the_fixtures_cover_every_task_and_the_legacy_shape():
    tasks = {r.get("task", "classification") for r in STORED.values()}
    assert tasks == set(VARIANT)
    assert sum("task" not in r for r in STORED.values()) >= 5  # tensor reports never had the key
    assert "cache" not in STORED["classification_early"] and "top5" not in STORED["classification_early"]


@pytest.mark.parametrize("name", sorted(STORED))
def test_stored_report_validates_unchanged(name):
    raw = STORED[name]
    typed = parse_report(copy.deepcopy(raw))
    assert isinstance(typed, VARIANT[raw.get("task", "classification")])
    assert unmodelled_keys(typed) == []
    assert typed.model_dump(mode="json", exclude_unset=True) == {"task": "classification", **raw}
    full = typed.model_dump(mode="json")
    assert full["object"] == "report" and full["job_id"] is None
    assert parse_report(full) == typed  # a full dump (every field, None where absent) validates to the same report


def test_typed_fields_and_quality():
    full = parse_report(STORED["classification_full"])
    assert full.teacher.latency_ms["1"].p50 > 0 and full.quantized.artifact == "student_int8.pt"
    assert full.pruned.sparsity == pytest.approx(0.5, abs=0.01) and full.baseline.val_top1 is not None
    assert full.training.method_detail.terms == ["kd", "ce"] and full.cache.teacher_outputs is True
    q = full.quality()
    assert (q.label, q.teacher, q.student) == ("validation top-1", full.teacher.val_top1, full.student.val_top1)
    assert full.gain_points() == full.distillation_gain_points
    comb = parse_report(STORED["classification_combined"])
    assert comb.training.precision == "bf16" and comb.training.method_detail.extra[0].weight == 0.5
    unlab = parse_report(STORED["classification_unlabelled"])
    assert unlab.baseline.val_top1 is None and "no labelled" in unlab.baseline.note and unlab.gain_points() is None
    emb = parse_report(STORED["sentence_embedding"])
    assert emb.quality().label == "linear-probe accuracy" and emb.quality().student == emb.probe_student
    assert emb.pooling.mode == "mean" and emb.gain_points() is None
    cls = parse_report(STORED["sequence_classification"])
    assert cls.quality().teacher == cls.teacher_top1 and cls.student.kept_teacher_layers == [1]


def test_unknown_task_and_mistyped_fields_are_refused():
    with pytest.raises(ValidationError, match="causal_lm"):
        parse_report({**STORED["sentence_embedding"], "task": "causal_lm"})
    bad = copy.deepcopy(STORED["classification_full"])
    bad["student"]["bytes"] = "a lot"
    with pytest.raises(ValidationError, match=r"student\.bytes"):
        parse_report(bad)
    missing = copy.deepcopy(STORED["sequence_classification"])
    del missing["student_top1"]
    with pytest.raises(ValidationError, match="student_top1"):
        parse_report(missing)
    with pytest.raises(ValidationError):
        parse_report("not a report")


def test_unknown_keys_are_kept_and_reported_by_unmodelled_keys():
    raw = copy.deepcopy(STORED["classification_full"])
    raw["new_block"] = {"x": 1}
    raw["training"]["new_figure"] = 2.5
    raw["teacher"]["latency_ms"]["1"]["p99"] = 0.3
    typed = parse_report(raw)
    assert sorted(unmodelled_keys(typed)) == ["new_block", "teacher.latency_ms.1.p99", "training.new_figure"]
    dumped = typed.model_dump(mode="json")
    assert dumped["new_block"] == {"x": 1} and dumped["training"]["new_figure"] == 2.5


def test_a_variant_validates_a_legacy_dict_on_its_own():
    assert ClassificationReport.model_validate(STORED["classification_early"]).task == "classification"
