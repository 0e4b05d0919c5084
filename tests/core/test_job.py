"""run_job end to end on digits: real accuracy, report, determinism, resume, cancel, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.errors import DistillError, StopRequested
from distill.formats import FileInput
from distill.reporter import RecordingReporter
from distill.teachers import load_teacher
from distill.formats import ARCH_METADATA_KEY
from distill.training import steps_per_epoch

from .helpers import make_spec, run

SPE = steps_per_epoch(1437, 64)  # digits: 1,437 training rows after the 20% split


def _weights(result):
    return load_file(str(result.artifacts[0]))


def test_distils_digits_teacher_into_mlp(teacher_file, tmp_path):
    spec = make_spec(training={"epochs": 12}, export={"formats": ["safetensors", "onnx"]})
    result, rep = run(spec, teacher_file, tmp_path / "job")
    r = result.report
    assert r["teacher"]["val_top1"] > 0.95
    assert r["student"]["val_top1"] > 0.85
    assert r["agreement"] > 0.85
    assert r["top1_drop_points"] == pytest.approx((r["teacher"]["val_top1"] - r["student"]["val_top1"]) * 100, abs=0.02)
    # sizes and ratios
    assert r["student"]["parameters"] == 64 * 64 + 64 + 64 * 10 + 10
    assert r["student"]["bytes"] == (tmp_path / "job/artifacts/student.safetensors").stat().st_size
    assert r["teacher"]["bytes"] == teacher_file.bytes
    assert r["compression_ratio"] == pytest.approx(teacher_file.bytes / r["student"]["bytes"], rel=0.01)
    assert r["parameter_ratio"] > 1 and r["flops_ratio"] > 1
    assert set(r["speedup"]) == {"1", "16"} and set(r["teacher"]["latency_ms"]["16"]) == {"p50", "p95"}
    assert r["onnx"]["max_abs_diff"] < 1e-3 and r["onnx"]["opset"] == 17
    assert any("channels-last" in note for note in r["teacher"]["notes"])  # a CPU conv teacher runs NHWC
    assert r["training"]["steps"] == 12 * SPE and r["training"]["resumed_from_epoch"] is None
    assert set(r["training"]["final_loss_terms"]) == {"kd", "ce", "total"}
    assert r["data"]["validation"]["rows"] == 360 and r["data"]["num_classes"] == 10
    assert set(r["wall_time_s"]) == {"loading_teacher", "caching_teacher_outputs", "training", "baseline_training", "evaluating",
                                     "exporting", "total"}  # the baseline: on by default with labels
    assert isinstance(r["summary"], str) and "agrees" in r["summary"]
    json.dumps(r)  # JSON-serialisable
    assert rep.phases == ["loading_teacher", "caching_teacher_outputs", "training", "evaluating", "exporting"]
    assert r["cache"]["teacher_outputs"] is True and r["cache"]["teacher_passes_saved"] == 11 * 1437
    assert "deterministic" in r["cache"]["reason"] and r["cache"]["cache_seconds"] >= 0
    # metric rows: per epoch val top-1/agreement/lr, loss terms every 10 steps
    val_top1 = [row for row in rep.rows if row.name == "top1" and row.split == "val"]
    assert [row.epoch for row in val_top1] == list(range(1, 13))
    assert val_top1[-1].value == pytest.approx(r["student"]["val_top1"], abs=1e-3)
    assert val_top1[-1].value > val_top1[0].value
    step_rows = [row.step for row in rep.rows if row.name == "loss/kd" and row.split == "train"]
    assert 10 in step_rows and 20 in step_rows and SPE in step_rows
    lrs = [row.value for row in rep.rows if row.name == "lr" and row.split == "train"]  # not the baseline's
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-6  # cosine decays to 0
    assert rep.progress_calls[-1]["fraction"] == 1.0
    # artifacts: the student loads back as a teacher (metadata) and the card says how to use it
    assert [p.name for p in result.artifacts] == ["student.safetensors", "student.json", "student.onnx"]
    card = json.loads((tmp_path / "job/artifacts/student.json").read_text())
    assert card["architecture"]["kwargs"]["input_shape"] == [1, 8, 8] and card["num_classes"] == 10
    assert card["preprocessing"]["builtin"] == "digits" and card["torch_version"] == torch.__version__
    student = load_teacher(result.artifacts[0], "auto", None, "cpu")
    x, _ = torch.zeros(2, 1, 8, 8), None
    assert student(x).shape == (2, 10)


def test_same_spec_and_seed_is_bit_identical(teacher_file, tmp_path):
    spec = make_spec(training={"epochs": 2})
    a, ra = run(spec, teacher_file, tmp_path / "a")
    b, rb = run(spec, teacher_file, tmp_path / "b")
    assert ra.rows == rb.rows
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c, rc = run(make_spec(training={"epochs": 2, "seed": 1}), teacher_file, tmp_path / "c")
    assert rc.rows != ra.rows


def test_resume_after_crash_matches_a_straight_run(teacher_file, tmp_path):
    spec = make_spec(training={"epochs": 4, "optimizer": {"name": "sgd", "lr": 0.05}},
                     student={"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [32], "dropout": 0.1}}})
    straight, rs = run(spec, teacher_file, tmp_path / "straight")
    # crash in the middle of epoch 3 (after its first log point): the checkpoint is of epoch 2
    crashed = RecordingReporter(stop_after_steps=2 * SPE + 12)
    with pytest.raises(StopRequested):
        run(spec, teacher_file, tmp_path / "resumed", reporter=crashed)
    assert list((tmp_path / "resumed").glob("checkpoint-epoch2-step*.pt")) and not (tmp_path / "resumed/artifacts").exists()
    assert max(r.epoch for r in crashed.rows) == 3  # rows of the interrupted epoch 3 were recorded...
    again = RecordingReporter(rows=list(crashed.rows))
    resumed, rr = run(spec, teacher_file, tmp_path / "resumed", reporter=again)
    assert ("resumed" in [e[0] for e in rr.events]) and resumed.report["training"]["resumed_from_epoch"] == 2
    assert rr.rows == rs.rows  # ...and discarded on resume, so the metric history equals the straight run's
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    assert resumed.report["student"]["val_top1"] == straight.report["student"]["val_top1"]
    assert resumed.report["training"]["final_loss_terms"] == straight.report["training"]["final_loss_terms"]


def test_checkpoint_of_another_spec_is_not_resumed(teacher_file, tmp_path):
    run(make_spec(training={"epochs": 1}), teacher_file, tmp_path / "w")
    result, rep = run(make_spec(training={"epochs": 1, "seed": 5}), teacher_file, tmp_path / "w")
    assert result.report["training"]["resumed_from_epoch"] is None
    assert "checkpoint_ignored" in [e[0] for e in rep.events]


def test_cancel_leaves_no_artifacts(teacher_file, tmp_path):
    rep = RecordingReporter(stop_after_steps=5)
    with pytest.raises(StopRequested):
        run(make_spec(export={"formats": ["safetensors", "onnx"]}), teacher_file, tmp_path / "job", reporter=rep)
    assert not (tmp_path / "job/artifacts").exists()
    assert not list((tmp_path / "job").glob(".artifacts-tmp-*"))
    assert "exporting" not in rep.phases


def test_cancel_during_evaluation_leaves_no_artifacts(teacher_file, tmp_path):
    # the checks: one after caching the teacher's outputs, one per step (1 epoch), one after training, one after
    # evaluation -> stop at the last
    rep = RecordingReporter(stop_after_steps=SPE + 2)
    with pytest.raises(StopRequested):
        run(make_spec(training={"epochs": 1}, evaluation={"compare_baseline": False, "latency_iterations": 5}), teacher_file,
            tmp_path / "job", reporter=rep)
    assert "evaluating" in rep.phases and not (tmp_path / "job/artifacts").exists()


def test_student_with_wrong_number_of_classes(teacher_file, tmp_path):
    spec = make_spec(student={"architecture": {"name": "mlp", "kwargs": {"num_classes": 5}}})
    with pytest.raises(DistillError) as e:
        run(spec, teacher_file, tmp_path / "job")
    assert e.value.code == "shape_mismatch"
    assert "teacher outputs 10 classes but the student outputs 5" in e.value.message


def test_student_with_wrong_input_shape(teacher_file, tmp_path):
    spec = make_spec(student={"architecture": {"name": "cnn", "kwargs": {"input_shape": [1, 28, 28]}}})
    with pytest.raises(DistillError) as e:
        run(spec, teacher_file, tmp_path / "job")
    assert e.value.code == "shape_mismatch" and "[1, 28, 28]" in e.value.message and "[1, 8, 8]" in e.value.message


def test_data_that_fits_no_model(teacher_file, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.random.rand(40, 50).astype(np.float32), y=np.arange(40) % 10)
    spec = make_spec(data={"train": {"file_id": "file_d"}})
    with pytest.raises(DistillError) as e:
        run(spec, teacher_file, tmp_path / "job", files={"file_d": FileInput(path, "npz", path.stat().st_size)})
    assert e.value.code == "shape_mismatch" and "[50]" in e.value.message and "[1, 8, 8]" in e.value.message


def test_teacher_producing_nan_is_non_finite_teacher(teacher_model, tmp_path):
    sd = {k: v.clone().contiguous() for k, v in teacher_model.state_dict().items()}
    last_bias = [k for k in sd if k.endswith("bias")][-1]
    sd[last_bias][0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path), metadata={ARCH_METADATA_KEY: json.dumps(teacher_model.stillhouse_architecture)})
    with pytest.raises(DistillError) as e:
        run(make_spec(), FileInput(path, "safetensors", path.stat().st_size), tmp_path / "job")
    assert e.value.code == "non_finite_teacher" and "NaN" in e.value.message and "lower learning rate would not help" in e.value.message
    assert not (tmp_path / "job/artifacts").exists()


def test_max_runtime(teacher_file, tmp_path):
    with pytest.raises(DistillError) as e:
        run(make_spec(training={"max_runtime_s": 100}), teacher_file, tmp_path / "a", runtime_used_s=100.0)
    assert e.value.code == "max_runtime_exceeded"
    with pytest.raises(DistillError) as e:
        run(make_spec(training={"epochs": 500, "max_runtime_s": 0.5}), teacher_file, tmp_path / "b")
    assert e.value.code == "max_runtime_exceeded" and not (tmp_path / "b/artifacts").exists()


def test_unlabelled_transfer_set(teacher_file, tmp_path, digits):
    path = tmp_path / "transfer.npz"
    rng = np.random.default_rng(0)
    x = digits["x"].reshape(-1, 64)[digits["train_idx"][:500]]
    np.savez(path, X=np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32))
    spec = make_spec(data={"train": {"builtin": "digits"}, "transfer": {"file_id": "file_x"}}, training={"epochs": 4})
    result, _ = run(spec, teacher_file, tmp_path / "job", files={"file_x": FileInput(path, "npz", path.stat().st_size)})
    d = result.report["data"]
    assert d["transfer"] == 500 and d["unlabelled"] == 500 and d["train"] == 1937
    assert result.report["student"]["val_top1"] > 0.8


def test_fully_unlabelled_training_set(teacher_file, tmp_path, digits):
    path = tmp_path / "x.npz"
    np.savez(path, X=digits["x"][digits["train_idx"]])
    spec = make_spec(data={"train": {"file_id": "file_x"}}, method={"name": "hard_label"}, training={"epochs": 4})
    result, rep = run(spec, teacher_file, tmp_path / "job", files={"file_x": FileInput(path, "npz", path.stat().st_size)})
    r = result.report
    assert r["teacher"]["val_top1"] is None and r["student"]["val_top1"] is None and r["top1_drop_points"] is None
    assert set(r["training"]["final_loss_terms"]) == {"hard_label", "total"}
    assert r["agreement"] > 0.8  # learnt from the teacher alone
    assert not [row for row in rep.rows if row.name == "top1"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_torchscript_and_onnx_teachers(teacher_model, tmp_path, fmt):
    import warnings

    example = torch.zeros(1, 1, 8, 8)
    path = tmp_path / f"teacher.{fmt}"
    if fmt == "torchscript":
        torch.jit.trace(teacher_model, example).save(str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(teacher_model, (example,), str(path), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    result, _ = run(make_spec(training={"epochs": 2}), FileInput(path, "auto", path.stat().st_size), tmp_path / "job")
    r = result.report
    assert r["teacher"]["format"] == fmt and r["teacher"]["val_top1"] > 0.95
    assert r["student"]["architecture"]["kwargs"]["input_shape"] == [1, 8, 8]
    if fmt == "onnx":
        assert r["teacher"]["flops_per_sample"] is None and r["flops_ratio"] is None
    else:
        assert r["flops_ratio"] > 1
    assert r["agreement"] > 0.7


class _CrashInBaselineEpoch2(RecordingReporter):
    """Stops the job once the baseline pass has logged a step of its epoch 2 (a crash mid-epoch)."""

    def metrics(self, rows):
        super().metrics(rows)
        if any(r.split == "baseline_train" and r.epoch == 2 for r in rows):
            self.stop_after_steps = 0


def test_resumed_baseline_pass_never_logs_an_epoch_twice(teacher_file, tmp_path):
    spec = make_spec(training={"epochs": 3, "log_every_steps": 5}, evaluation={"compare_baseline": True, "latency_iterations": 5})
    crashed = _CrashInBaselineEpoch2()
    with pytest.raises(StopRequested):
        run(spec, teacher_file, tmp_path / "w", reporter=crashed)
    assert any(r.split == "baseline_train" and r.epoch == 2 for r in crashed.rows)
    again = RecordingReporter(rows=list(crashed.rows))
    result, rep = run(spec, teacher_file, tmp_path / "w", reporter=again)
    keys = [(r.name, r.split, r.step) for r in rep.rows]
    assert len(keys) == len(set(keys)), "a metric row was logged twice"
    assert [r.epoch for r in rep.rows if r.split == "baseline_val" and r.name == "top1"] == [1, 2, 3]
    assert [r.epoch for r in rep.rows if r.split == "val" and r.name == "top1"] == [1, 2, 3]
    assert result.report["baseline"]["val_top1"] is not None
