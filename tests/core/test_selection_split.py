"""data.selection: a job scored on a selection split carved from the training rows, the validation split held out and
evaluated once in the report's 'holdout' block with Wilson intervals."""

from __future__ import annotations

import numpy as np
import pytest

from distill.data import load_data, split_validation
from distill.holdout import wilson_interval
from distill.spec import DataSpec

from .helpers import make_spec, run


def test_selection_is_carved_from_training_rows_and_validation_untouched():
    plain = load_data(DataSpec.model_validate({"train": {"builtin": "digits"}}), {})
    sel = load_data(DataSpec.model_validate({"train": {"builtin": "digits"}, "selection": {"fraction": 0.2, "seed": 3}}), {})
    assert sel.holdout_x is not None and plain.holdout_x is None
    assert np.array_equal(sel.holdout_x.numpy(), plain.val_x.numpy())  # the validation split is the same rows
    keep, carve = split_validation(plain.train_y.numpy(), 0.2, 3)
    assert np.array_equal(sel.val_x.numpy(), plain.train_x.numpy()[carve])
    assert np.array_equal(sel.train_x.numpy(), plain.train_x.numpy()[keep])
    assert sel.counts["train"] + sel.counts["validation"] == plain.counts["train"]
    assert sel.validation["selection"] is True and sel.validation["holdout"]["rows"] == plain.counts["validation"]


def test_job_with_selection_reports_holdout_with_intervals(teacher_file, tmp_path):
    result, _ = run(make_spec(data={"train": {"builtin": "digits"}, "selection": {"fraction": 0.2}}), teacher_file, tmp_path / "j")
    r = result.report
    h = r["holdout"]
    assert h["rows"] == 360 and r["data"]["validation"]["rows"] == 288  # selection rows (20% of 1,437, rounded up)
    lo, hi = h["student_interval95"]
    assert lo < h["student_val_top1"] < hi and 0 < hi - lo < 0.15
    assert h["teacher_val_top1"] > 0.9 and h["student_val_top1"] > 0.5


def test_wilson_interval_matches_known_values():
    assert wilson_interval(90, 100) == pytest.approx([0.8256, 0.9448], abs=1e-4)
    assert wilson_interval(0, 0) is None
