"""Report metrics of the evaluation step, on hand-checked cases."""

from __future__ import annotations

import torch

from distill.evaluation import classification_metrics, expected_calibration_error, top_k_accuracy


def test_top_k_counts_labelled_rows_only():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])
    labels = torch.tensor([1, 0, -1])
    assert top_k_accuracy(logits, labels, 1) == 0.0
    assert top_k_accuracy(logits, labels, 2) == 0.5  # row 0: label 1 is 2nd; row 1: label 0 is 3rd
    assert top_k_accuracy(logits, torch.tensor([-1, -1, -1]), 1) is None


def test_ece_by_hand():
    # two rows, confidences 0.9 (correct) and 0.6 (wrong) in different bins: ECE = 0.5*|1-0.9| + 0.5*|0-0.6| = 0.35
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    logits = p.log()
    labels = torch.tensor([0, 1])
    assert abs(expected_calibration_error(logits, labels) - 0.35) < 1e-6
    # perfectly calibrated and certain: 0
    assert expected_calibration_error(torch.tensor([[100.0, 0.0]]), torch.tensor([0])) < 1e-6


def test_classification_block():
    t = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    s = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0]])
    labels = torch.tensor([0, 1, 2, 0])
    m = classification_metrics(t, s, labels)
    assert m["top5"] is None  # fewer than 10 classes
    assert m["per_class_top1"] == {"teacher": [1.0, 1.0, 1.0], "student": [0.5, 0.0, 1.0]}
    assert m["teacher_student_confusion"] == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert {(d["teacher_class"], d["student_class"]) for d in m["disagreements_top"]} == {(0, 1), (1, 0)}
    ten = classification_metrics(torch.randn(20, 10), torch.randn(20, 10), torch.arange(20) % 10)
    assert set(ten["top5"]) == {"teacher", "student"}


def test_onnx_export_checks_batch_1_and_7(tmp_path):
    from distill import models
    from distill.export import export_onnx

    torch.manual_seed(0)
    m = models.build("cnn", {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [4], "hidden": 8}).eval()
    info = export_onnx(m, torch.randn(3, 1, 8, 8), tmp_path / "s.onnx")
    assert info["checked_batch_sizes"] == [1, 7] and set(info["max_abs_diff_by_batch"]) == {"1", "7"}
    assert info["max_abs_diff"] < 1e-4


def test_dynamic_int8_quantisation_is_smaller_and_close(tmp_path):
    from distill import models
    from distill.export import quantize_dynamic_int8, save_torchscript

    torch.manual_seed(0)
    m = models.build("mlp", {"input_shape": [64], "num_classes": 10, "hidden_sizes": [512, 512]}).eval()
    q = quantize_dynamic_int8(m)
    x = torch.randn(16, 64)
    assert (q(x) - m(x)).abs().max() < 0.05
    assert type(q[1]).__module__.startswith("torch.ao.nn.quantized") or any("quantized" in type(mod).__module__ for mod in q.modules())
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "f.safetensors"))
    size = save_torchscript(q, x, tmp_path / "q.pt")
    assert size < (tmp_path / "f.safetensors").stat().st_size / 2.5  # int8 weights: about 4x fewer bytes
    assert torch.allclose(torch.jit.load(str(tmp_path / "q.pt"))(x), q(x))


def test_job_ships_and_evaluates_quantised_and_pruned_students(teacher_file, tmp_path):
    """export.quantize + export.prune: extra artifacts, each evaluated in the report (real digits run)."""
    from .helpers import run_job  # distill.job.run_job with the report checked
    from distill.reporter import RecordingReporter
    from distill.results import JobInputs
    from distill.spec import JobSpec

    fi = teacher_file
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "file_t"}, "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [512, 512]}}},
        "data": {"train": {"builtin": "digits"}}, "training": {"epochs": 4, "optimizer": {"lr": 0.002}},
        "evaluation": {"latency_iterations": 5}, "export": {"formats": ["safetensors"], "quantize": "dynamic_int8",
                                                             "prune": {"amount": 0.5, "fine_tune_epochs": 1}}})
    rep = RecordingReporter()
    res = run_job(spec, JobInputs(teacher=fi, files={"file_t": fi}), tmp_path / "w", rep)
    r = res.report
    names = {p.name for p in res.artifacts}
    assert {"student_int8.pt", "student_pruned.safetensors"} <= names and all(p.exists() for p in res.artifacts)
    q, pr = r["quantized"], r["pruned"]
    # 300k float32 weights -> int8: well under half the bytes (on a tiny model TorchScript's own overhead dominates)
    assert q["bytes"] < r["student"]["bytes"] / 2 and abs(q["val_top1"] - r["student"]["val_top1"]) < 0.05
    assert set(q["latency_ms"]) == {"1", "64"}
    assert 0.49 <= pr["sparsity"] <= 0.51 and pr["val_top1"] > 0.5
    assert any(row.split == "prune_train_epoch" for row in rep.rows)
    assert torch.jit.load(str(tmp_path / "w" / "artifacts" / "student_int8.pt"))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
