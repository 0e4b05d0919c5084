"""Report metrics of the evaluation step, on hand-checked cases."""

from __future__ import annotations

import torch

from worker.distill.evaluation import classification_metrics, expected_calibration_error, top_k_accuracy


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
    from worker.distill import models
    from worker.distill.export import export_onnx

    torch.manual_seed(0)
    m = models.build("cnn", {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [4], "hidden": 8}).eval()
    info = export_onnx(m, torch.randn(3, 1, 8, 8), tmp_path / "s.onnx")
    assert info["checked_batch_sizes"] == [1, 7] and set(info["max_abs_diff_by_batch"]) == {"1", "7"}
    assert info["max_abs_diff"] < 1e-4


def test_dynamic_int8_quantisation_is_smaller_and_close(tmp_path):
    from worker.distill import models
    from worker.distill.export import quantize_dynamic_int8, save_torchscript

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
