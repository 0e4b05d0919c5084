"""Hand-back within an epoch (a worker shutting down): the loop saves a checkpoint of the step it reached and a
resumed run skips exactly the finished steps, ending bit-identical to a straight run (metrics and weights)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import StopRequested
from distill.reporter import RecordingReporter
from distill.training import CHECKPOINT_VERSION, PARTIAL_CHECKPOINT_VERSION, steps_per_epoch

from .helpers import latest_checkpoint, make_spec, run

SPE = steps_per_epoch(1437, 64)  # 23 steps per epoch on digits' default split


def _spec(**over):
    # dropout consumes the global RNG within the epoch; SGD with momentum and a cosine schedule carry optimizer and
    # scheduler state; log_every_steps 10 leaves a partial log window at the stop
    return make_spec(training={"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.05}, "log_every_steps": 10},
                     student={"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [32], "dropout": 0.1}}}, **over)


def _same_weights(a, b) -> bool:
    wa, wb = load_file(str(a.artifacts[0])), load_file(str(b.artifacts[0]))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_hand_back_within_an_epoch_resumes_bit_identical(teacher_file, tmp_path):
    spec = _spec()
    straight, rs = run(spec, teacher_file, tmp_path / "straight")
    # checks: one after caching the teacher's outputs, then one before every step -> stop before step SPE + 7,
    # i.e. 6 steps into epoch 2, between two log points (last at step SPE, next at 30)
    handed = RecordingReporter(stop_after_steps=1 + SPE + 6, hand_back=True)
    with pytest.raises(StopRequested):
        run(spec, teacher_file, tmp_path / "w", reporter=handed)
    ckpt = latest_checkpoint(tmp_path / "w")
    assert ckpt["version"] == PARTIAL_CHECKPOINT_VERSION and ckpt["epoch"] == 1 and ckpt["step"] == SPE + 6
    assert ckpt["partial"]["epoch"] == 2 and ckpt["partial"]["steps_done"] == 6 and ckpt["partial"]["log_count"] == 6
    saved = [e for e in handed.events if e[0] == "checkpoint_saved" and "steps_done_in_epoch" in (e[2] or {})]
    assert saved and saved[-1][2] == {"epoch": 1, "step": SPE + 6, "steps_done_in_epoch": 6}
    assert max(r.step for r in handed.rows) == SPE  # nothing logged past the last log point

    again = RecordingReporter(rows=list(handed.rows))
    resumed, rr = run(spec, teacher_file, tmp_path / "w", reporter=again)
    ev = [e for e in rr.events if e[0] == "resumed"]
    assert ev and ev[-1][2] == {"epoch": 1, "step": SPE + 6, "steps_done_in_epoch": 6}
    assert rr.rows == rs.rows  # every metric value, step and epoch equal to the straight run's
    assert _same_weights(straight, resumed)
    assert resumed.report["training"]["steps"] == straight.report["training"]["steps"] == 3 * SPE
    assert resumed.report["training"]["final_loss_terms"] == straight.report["training"]["final_loss_terms"]


def test_handed_back_twice_in_a_row_still_resumes_exactly(teacher_file, tmp_path):
    spec = _spec()
    straight, rs = run(spec, teacher_file, tmp_path / "straight")
    rep = RecordingReporter(stop_after_steps=1 + 5, hand_back=True)  # 5 steps into epoch 1
    with pytest.raises(StopRequested):
        run(spec, teacher_file, tmp_path / "w", reporter=rep)
    rep2 = RecordingReporter(rows=list(rep.rows), stop_after_steps=1, hand_back=True)  # stopped again before any step
    with pytest.raises(StopRequested):
        run(spec, teacher_file, tmp_path / "w", reporter=rep2)
    assert latest_checkpoint(tmp_path / "w")["partial"]["steps_done"] == 5
    resumed, rr = run(spec, teacher_file, tmp_path / "w", reporter=RecordingReporter(rows=list(rep2.rows)))
    assert rr.rows == rs.rows and _same_weights(straight, resumed)


def test_a_cancel_writes_no_step_checkpoint(teacher_file, tmp_path):
    rep = RecordingReporter(stop_after_steps=1 + SPE + 6)  # a cancel, not a hand-back
    with pytest.raises(StopRequested):
        run(_spec(), teacher_file, tmp_path / "w", reporter=rep)
    ckpt = latest_checkpoint(tmp_path / "w")
    assert ckpt["version"] == CHECKPOINT_VERSION and ckpt["epoch"] == 1 and "partial" not in ckpt


def test_hand_back_during_the_baseline_pass_resumes_both_passes_exactly(teacher_file, tmp_path):
    spec = _spec(evaluation={"latency_iterations": 5, "latency_batch_sizes": [1], "compare_baseline": True})
    straight, rs = run(spec, teacher_file, tmp_path / "straight")
    # checks: after caching (1), the distilled pass (3 * SPE), before the baseline (1), then 9 baseline steps
    rep = RecordingReporter(stop_after_steps=1 + 3 * SPE + 1 + 9, hand_back=True)
    with pytest.raises(StopRequested):
        run(spec, teacher_file, tmp_path / "w", reporter=rep)
    assert latest_checkpoint(tmp_path / "w", "baseline_checkpoint")["partial"]["steps_done"] == 9
    assert latest_checkpoint(tmp_path / "w")["epoch"] == 3  # the distilled pass had finished
    resumed, rr = run(spec, teacher_file, tmp_path / "w", reporter=RecordingReporter(rows=list(rep.rows)))
    assert rr.rows == rs.rows and _same_weights(straight, resumed)
    assert resumed.report["baseline"]["val_top1"] == straight.report["baseline"]["val_top1"]
