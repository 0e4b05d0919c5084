"""KD loss math against hand-computed values (no torch in the expected numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from worker.distill import DistillError, build_method
from worker.distill.methods import HardLabelKD, SoftTargetKD, available_methods, masked_cross_entropy
from worker.distill.spec import MethodSpec


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_registry_has_every_method():
    assert available_methods() == ["attention_transfer", "dkd", "fitnet", "hard_label", "kd", "prototype", "rkd"]
    assert isinstance(build_method(MethodSpec(name="kd"), True), SoftTargetKD)
    assert isinstance(build_method(MethodSpec(name="hard_label"), True), HardLabelKD)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_term_is_t_squared_batchmean_kl(temperature):
    # row 0: teacher prefers class 0 (softmax [0.75, 0.25] at T=1), student uniform; row 1: identical logits (KL 0)
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [1.0, -1.0]])
    alpha = 0.5
    terms = SoftTargetKD(temperature=temperature, alpha=alpha)(s, t, torch.tensor([-1, -1]))
    p = softmax([math.log(3.0) / temperature, 0.0])
    row0 = kl(p, [0.5, 0.5])
    expected = alpha * temperature**2 * (row0 + 0.0) / 2  # batchmean: sum over classes, mean over the 2 rows
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-5)
    if temperature == 1.0:
        assert row0 == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # no labelled row: the ce term is present and exactly 0
    assert terms["ce"].item() == 0.0


def test_kd_zero_when_student_equals_teacher():
    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    terms = SoftTargetKD(temperature=3.0, alpha=1.0)(z.clone(), z, torch.full((8,), -1))
    assert abs(terms["kd"].item()) < 1e-6


def test_ce_masks_unlabelled_rows():
    s = torch.tensor([[0.0, 0.0], [5.0, -5.0], [0.0, math.log(3.0)]])
    labels = torch.tensor([0, -1, 1])
    alpha = 0.25
    terms = SoftTargetKD(temperature=2.0, alpha=alpha)(s, s.clone(), labels)
    # labelled rows 0 and 2: -log 0.5 and -log 0.75, mean over the 2 labelled rows only
    expected = (1 - alpha) * (math.log(2.0) - math.log(0.75)) / 2
    assert terms["ce"].item() == pytest.approx(expected, rel=1e-6)
    assert masked_cross_entropy(s, torch.tensor([-1, -1, -1])).item() == 0.0


def test_ce_gradient_zero_without_labels():
    s = torch.randn(4, 3, requires_grad=True)
    masked_cross_entropy(s, torch.full((4,), -1)).backward()
    assert torch.count_nonzero(s.grad) == 0


def test_unlabelled_dataset_uses_teacher_term_alone():
    m = build_method(MethodSpec(name="kd", alpha=0.3, temperature=1.0), has_labels=False)
    assert m.alpha == 1.0 and m.term_names == ["kd"]
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    terms = m(s, t, torch.tensor([-1]))
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]), rel=1e-5)


def test_hard_label_is_ce_to_teacher_argmax():
    s = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    t = torch.tensor([[2.0, 1.0], [5.0, 0.0]])  # argmax 0 for both rows
    terms = HardLabelKD(alpha=0.8)(s, t, torch.tensor([1, -1]))
    expected_hard = 0.8 * (math.log(2.0) + -math.log(0.25)) / 2
    assert terms["hard_label"].item() == pytest.approx(expected_hard, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(0.2 * math.log(2.0), rel=1e-6)  # only row 0 labelled (class 1)


def test_kd_gradient_flows_to_student_only():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5)
    total = sum(SoftTargetKD()(s, t, torch.tensor([0, 1, -1, 2])).values())
    total.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_bad_hyperparameters_rejected():
    with pytest.raises(DistillError) as e:
        SoftTargetKD(temperature=0.0)
    assert e.value.code == "invalid_spec"
    with pytest.raises(DistillError):
        SoftTargetKD(alpha=1.5)


def test_fully_labelled_fast_path_equals_masked_ce():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(16, 7, generator=g), torch.randn(16, 7, generator=g)
    labels = torch.randint(0, 7, (16,), generator=g)
    fast = SoftTargetKD(alpha=0.6, all_labelled=True)(s, t, labels)
    slow = SoftTargetKD(alpha=0.6, all_labelled=False)(s, t, labels)
    torch.testing.assert_close(fast["ce"], slow["ce"])
    torch.testing.assert_close(fast["kd"], slow["kd"])
