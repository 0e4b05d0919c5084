"""A reviewer's additions to a classification report (``distill.review``): each warning on data built to trigger it
(and not on data that should not), and a real job's report carrying the intervals, the comparisons, the verdict and
the warnings, with the baseline on by default."""

from __future__ import annotations

import numpy as np
import pytest

from distill import review
from distill.data import load_builtin
from distill.formats import FileInput
from distill.stats import mcnemar_exact, wilson_interval

from .helpers import make_spec, run


def _data(n_train: int = 600, n_val: int = 600, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    tx = rng.random((n_train, 1, 4, 4), dtype=np.float32)
    vx = rng.random((n_val, 1, 4, 4), dtype=np.float32)
    return tx, np.arange(n_train) % classes, vx, np.arange(n_val) % classes


def _codes(ws):
    return [w["code"] for w in ws]


def _warn(tx, ty, vx, vy, transfer_rows=0, validation_file=False, student_correct=None):
    return review.data_warnings(train_x=tx, train_y=ty, transfer_rows=transfer_rows, val_x=vx, val_y=vy,
                                validation_file=validation_file, student_correct=student_correct)


def test_clean_data_gets_no_warning():
    assert _warn(*_data()) == []


def test_small_validation_split_warns_with_the_interval_it_implies():
    tx, ty, vx, vy = _data(n_val=40)
    correct = np.arange(40) < 38  # 95% top-1 on 40 rows (the issue's case): Wilson [83.5%, 98.6%]
    (w,) = _warn(tx, ty, vx, vy, student_correct=correct)
    low, high = wilson_interval(38, 40)
    assert w["code"] == "small_validation" and w["param"] == "data.validation"
    assert "40 labelled rows" in w["message"] and f"[{low:.1%}, {high:.1%}]" in w["message"] and "95.0%" in w["message"]
    assert _warn(*_data(n_val=500)) == []  # 500 rows: not under the threshold
    # unlabelled validation rows do not count
    vy_half = vy.copy()
    vy_half[300:] = -1
    assert _codes(_warn(tx, ty, vx, vy_half)) == ["small_validation"]


def test_a_class_with_fewer_than_10_validation_rows_is_named():
    tx, ty, vx, vy = _data()
    vy = vy.copy()
    vy[vy == 2] = 0
    vy[:9] = 2  # class 2: 9 rows
    (w,) = _warn(tx, ty, vx, vy)
    assert w["code"] == "few_validation_rows_per_class" and "class 2: 9" in w["message"] and "class 0" not in w["message"]
    vy[:10] = 2  # 10 rows: enough
    assert _warn(tx, ty, vx, vy) == []
    vy[vy == 1] = 0  # a class with no validation row at all (it has training rows)
    assert "class 1: 0" in _warn(tx, ty, vx, vy)[0]["message"]


def test_validation_rows_that_occur_in_the_training_rows_are_counted_by_hash():
    tx, ty, vx, vy = _data()
    vx = vx.copy()
    vx[:7] = tx[100:107]
    (w,) = _warn(tx, ty, vx, vy, validation_file=True)
    assert w["code"] == "validation_overlaps_training" and w["message"].startswith("7 of the 600 rows of the validation file")
    near = vx.copy()
    near[:7] = np.nextafter(tx[100:107], 2)  # one ulp away: a different row
    assert _warn(tx, ty, near, vy) == []


def test_transfer_rows_that_occur_in_the_training_or_validation_rows():
    tx, ty, vx, vy = _data()
    transfer = np.random.default_rng(5).random((50, 1, 4, 4), dtype=np.float32)
    transfer[:3] = tx[:3]
    transfer[3:8] = vx[10:15]
    x = np.concatenate([tx, transfer])
    y = np.concatenate([ty, np.full(50, -1)])
    ws = {w["code"]: w for w in _warn(x, y, vx, vy, transfer_rows=50)}
    assert set(ws) == {"transfer_overlaps_training", "transfer_overlaps_validation"}
    assert ws["transfer_overlaps_training"]["message"].startswith("3 of the 50 transfer-set rows")
    assert ws["transfer_overlaps_validation"]["message"].startswith("5 of the 50 transfer-set rows")
    # the transfer rows are not "training rows" that the validation rows could overlap
    assert "validation_overlaps_training" not in ws
    assert review.overlap_count(transfer, tx) == 3 and review.overlap_count(tx[:0], tx) == 0


def test_teacher_near_perfect_on_its_training_rows():
    w = review.teacher_warning(0.995, 1437, 0.97)
    assert w["code"] == "teacher_memorised_training" and "99.50% top-1 on 1,437 labelled rows" in w["message"] and "97.0%" in w["message"]
    assert review.teacher_warning(0.985, 1437, 0.97) is None
    assert review.teacher_warning(None, 0, None) is None


def test_compare_gives_the_verdict_only_when_the_interval_excludes_zero():
    a = np.arange(1000) < 850
    b = np.arange(1000) < 800
    c = review.compare(a, b, "distilled student", "student alone", seed=0)
    assert (c["difference_points"], c["a_only"], c["b_only"], c["verdict"]) == (5.0, 50, 0, "a better")
    assert c["interval_points"][0] > 0 and c["mcnemar_p"] == float(f"{mcnemar_exact(a, b).p_value:.3g}")
    assert review.compare(b, a, "x", "y", seed=0)["verdict"] == "b better"
    assert review.compare(a, a, "x", "y", seed=0)["verdict"] == "no measurable difference"
    assert review.top1_interval(a) == [round(v, 4) for v in wilson_interval(850, 1000)]
    assert review.top1_interval(None) is None and review.compare(a[:0], a[:0], "x", "y", 0) is None


def test_a_default_job_reports_the_baseline_intervals_comparisons_and_warnings(teacher_file, tmp_path):
    spec = make_spec()  # no evaluation.compare_baseline: on by default with labelled rows
    assert spec.evaluation.compare_baseline is None
    result, rep = run(spec, teacher_file, tmp_path / "job")
    r = result.report
    t, s, b = r["teacher"], r["student"], r["baseline"]
    assert b["val_top1"] is not None and "baseline_started" in [e[0] for e in rep.events]
    n = r["data"]["validation"]["rows"]
    for block in (t, s, b):
        low, high = block["val_top1_interval"]
        assert low < block["val_top1"] < high
        assert [low, high] == [round(v, 4) for v in wilson_interval(round(block["val_top1"] * n), n)]
    vs, ts = r["comparisons"]["distilled_vs_alone"], r["comparisons"]["teacher_vs_student"]
    assert vs["difference_points"] == r["distillation_gain_points"] and vs["rows"] == n  # the same number, not within 0.01
    assert ts["difference_points"] == r["top1_drop_points"]
    assert vs["a_only"] - vs["b_only"] == round((s["val_top1"] - b["val_top1"]) * n)
    low, high = vs["interval_points"]
    verdict = {"a better": "Distillation helped", "b better": "Distillation did not help",
               "no measurable difference": "No measurable difference"}[vs["verdict"]]
    assert (vs["verdict"] == "no measurable difference") == (low <= 0 <= high) and verdict in r["summary"]
    assert f"McNemar p = {vs['mcnemar_p']:.2g}" in r["summary"]
    # digits' default split holds 360 rows; the teacher fits its 1,437 training rows almost perfectly
    assert [w["code"] for w in r["warnings"]] == ["small_validation", "teacher_memorised_training"]
    # turned off explicitly: no baseline, no distilled-vs-alone comparison, no verdict
    off, _ = run(make_spec(evaluation={"compare_baseline": False, "latency_iterations": 5}), teacher_file, tmp_path / "off")
    assert off.report["baseline"] is None and list(off.report["comparisons"]) == ["teacher_vs_student"]
    assert "Distillation" not in off.report["summary"] and "measurable" not in off.report["summary"]


def test_a_job_warns_about_a_validation_file_and_a_transfer_set_that_repeat_training_rows(teacher_file, tmp_path):
    x, y, _ = load_builtin("digits")
    val, transfer = tmp_path / "val.npz", tmp_path / "transfer.npz"
    np.savez(val, X=np.concatenate([x[:20], x[-600:]]), y=np.concatenate([y[:20], y[-600:]]))  # all in the training rows
    np.savez(transfer, X=x[100:130])
    files = {"file_val": FileInput(val, "npz", val.stat().st_size), "file_tr": FileInput(transfer, "npz", transfer.stat().st_size)}
    spec = make_spec(data={"train": {"builtin": "digits"}, "validation": {"file_id": "file_val"}, "transfer": {"file_id": "file_tr"}},
                     training={"epochs": 1}, evaluation={"compare_baseline": False, "latency_iterations": 5})
    result, _ = run(spec, teacher_file, tmp_path / "job", files=files)
    ws = {w["code"]: w["message"] for w in result.report["warnings"]}
    assert ws["validation_overlaps_training"].startswith("620 of the 620 rows of the validation file")
    assert ws["transfer_overlaps_training"].startswith("30 of the 30 transfer-set rows")
    assert "transfer_overlaps_validation" not in ws and "small_validation" not in ws


def test_the_teacher_warning_without_a_cache_runs_the_teacher_on_the_training_rows(teacher_file, tmp_path):
    spec = make_spec(cache={"teacher_outputs": "off"}, training={"epochs": 1},
                     evaluation={"compare_baseline": False, "latency_iterations": 5})
    result, _ = run(spec, teacher_file, tmp_path / "job")
    assert result.report["cache"]["teacher_outputs"] is False
    (w,) = [w for w in result.report["warnings"] if w["code"] == "teacher_memorised_training"]
    assert "on 1,437 labelled rows" in w["message"]
