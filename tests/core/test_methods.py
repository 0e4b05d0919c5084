"""KD loss math against hand-computed values (no torch in the expected numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.methods import build_method
from distill.methods import HardLabelKD, SoftTargetKD, available_methods, masked_cross_entropy
import distill.text.adapters  # noqa: F401  (registers 'embedding', whose loss lives with the text task)
from distill.lm.methods import available_lm_methods
from distill.method_params import METHOD_PARAMS
from distill.spec import parse_method


def method_of(**fields):
    """A validated method object from keyword fields, e.g. ``method_of(name="kd", temperature=2.0)``."""
    return parse_method(fields)


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_registry_has_every_method():
    assert available_methods() == ["attention_transfer", "dkd", "embedding", "fitnet", "hard_label", "kd", "prototype", "rkd"]
    # every parameter model has its loss class: the causal-LM ones in distill.lm.methods (kd serves both); auto is a
    # selection among them (distill.auto), not a loss
    assert sorted(set(METHOD_PARAMS) - {"auto"}) == sorted(set(available_methods()) | set(available_lm_methods()))
    assert available_lm_methods() == sorted(n for n, p in METHOD_PARAMS.items() if "causal_lm" in p.tasks)
    assert isinstance(build_method(method_of(name="kd"), True), SoftTargetKD)
    assert isinstance(build_method(method_of(name="hard_label"), True), HardLabelKD)


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
    m = build_method(method_of(name="kd", alpha=0.3, temperature=1.0), has_labels=False)
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


# ----------------------------------------------------------------------------- the wider catalogue, by hand

from distill.methods import (  # noqa: E402
    AttentionTransfer, CombinedMethod, DecoupledKD, FitNet, PrototypeKD, RelationalKD, check_method_supported, dkd_parts,
    soft_kl, standardize_logits,
)


def huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def dkd_by_hand(s: list[float], t: list[float], g: int, T: float) -> tuple[float, float]:
    ps, pt = softmax([v / T for v in s]), softmax([v / T for v in t])
    bs, bt = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
    qs = [p / (1 - ps[g]) for i, p in enumerate(ps) if i != g]
    qt = [p / (1 - pt[g]) for i, p in enumerate(pt) if i != g]
    return kl(bt, bs) * T * T, kl(qt, qs) * T * T


def test_dkd_terms_by_hand():
    s = [[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]]
    t = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    labels = torch.tensor([0, -1])  # row 1 is unlabelled: its target is the teacher's argmax, class 1
    T = 2.0
    m = DecoupledKD(temperature=T, alpha=1.5, beta=8.0, warmup_epochs=4, has_labels=True)
    terms = m(torch.tensor(s), torch.tensor(t), labels, epoch=1)
    (tc0, nc0), (tc1, nc1) = dkd_by_hand(s[0], t[0], 0, T), dkd_by_hand(s[1], t[1], 1, T)
    w = 1 / 4  # warm-up: min(epoch / 4, 1)
    assert terms["tckd"].item() == pytest.approx(w * 1.5 * (tc0 + tc1) / 2, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(w * 8.0 * (nc0 + nc1) / 2, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(1.0 * -math.log(softmax(s[0])[0]), rel=1e-6)  # ce_weight 1.0, labelled row only
    later = m(torch.tensor(s), torch.tensor(t), labels, epoch=9)
    assert later["tckd"].item() == pytest.approx(1.5 * (tc0 + tc1) / 2, rel=1e-5)
    assert list(terms) == m.term_names == ["tckd", "nckd", "ce"]


def test_dkd_decomposes_kd():
    # the paper's identity per sample: KD = TCKD + (1 - p_target^teacher) * NCKD
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g)
    T = 3.0
    tckd, nckd = dkd_parts(s, t, torch.tensor([2]), T)
    kd = soft_kl(s, t, T) * T * T
    pt = torch.softmax(t / T, dim=1)[0, 2]
    assert kd.item() == pytest.approx((tckd + (1 - pt) * nckd).item(), rel=1e-4)


def test_logit_standardization_by_hand():
    s, t = [[1.0, 2.0, 3.0]], [[6.0, 2.0, 4.0]]  # row means 2 and 4, unbiased stds 1 and 2
    assert standardize_logits(torch.tensor(s)).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert standardize_logits(torch.tensor(t)).tolist()[0] == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)
    T = 2.0
    m = build_method(method_of(name="kd", temperature=T, alpha=0.5, logit_standardization=True), has_labels=False)
    expected = T * T * kl(softmax([1 / T, -1 / T, 0.0]), softmax([-1 / T, 0.0, 1 / T]))
    assert m(torch.tensor(s), torch.tensor(t), torch.tensor([-1]))["kd"].item() == pytest.approx(expected, rel=1e-5)
    # standardisation makes KD blind to a per-row shift and scale of the teacher's logits
    plain = build_method(method_of(name="kd", temperature=T), has_labels=False)
    scaled = [[10 * v + 3 for v in t[0]]]
    assert m(torch.tensor(s), torch.tensor(scaled), torch.tensor([-1]))["kd"].item() == pytest.approx(expected, rel=1e-4)
    assert plain(torch.tensor(s), torch.tensor(scaled), torch.tensor([-1]))["kd"].item() != pytest.approx(expected, rel=1e-2)
    d = build_method(method_of(name="dkd", temperature=T, logit_standardization=True), has_labels=False)
    tc, nc = dkd_by_hand([-1.0, 0.0, 1.0], [1.0, -1.0, 0.0], 0, T)  # target: the teacher's argmax, class 0
    out = d(torch.tensor(s), torch.tensor(t), torch.tensor([-1]))
    assert out["tckd"].item() == pytest.approx(tc, rel=1e-4) and out["nckd"].item() == pytest.approx(8 * nc, rel=1e-4)


def test_fitnet_linear_and_conv_by_hand():
    m = FitNet(alpha=0.5, student_layer="a", teacher_layer="b", has_labels=False)
    m.setup({"a": (2,)}, {"b": (3,)})
    with torch.no_grad():
        m.adapter.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        m.adapter.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    sf, tf = [[1.0, 2.0], [0.0, -1.0]], [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    adapted = [[1.0, 2.0, 4.0], [0.0, -1.0, 0.0]]
    expected = sum((a - b) ** 2 for ra, rb in zip(adapted, tf) for a, b in zip(ra, rb)) / 6
    out = m(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([-1, -1]), student_features={"a": torch.tensor(sf)},
            teacher_features={"b": torch.tensor(tf)})
    assert out["fitnet"].item() == pytest.approx(expected, rel=1e-6)  # has no labels: weight 1
    # conv maps: 1x1 conv 1 -> 2 channels, student 2x2 pooled to the teacher's 1x1
    c = FitNet(alpha=1.0, student_layer="a", teacher_layer="b")
    c.setup({"a": (1, 2, 2)}, {"b": (2, 1, 1)})
    with torch.no_grad():
        c.adapter.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        c.adapter.bias.zero_()
    s = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 1, 2, 2)  # mean 3 -> channels 6 and -3
    t = torch.tensor([5.0, -1.0]).view(1, 2, 1, 1)
    out = c(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), student_features={"a": s}, teacher_features={"b": t})
    assert out["fitnet"].item() == pytest.approx(((6 - 5) ** 2 + (-3 + 1) ** 2) / 2, rel=1e-6)
    assert out["ce"].item() == 0.0  # alpha 1: ce weight 0


def test_attention_transfer_by_hand():
    m = build_method(method_of(name="attention_transfer", alpha=1.0, student_layer="a", teacher_layer="b"), has_labels=False)
    assert isinstance(m, AttentionTransfer) and (m.p, m.beta) == (2.0, 1000.0)
    m.setup({"a": (2, 2, 2)}, {"b": (3, 2, 2)})
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]]).unsqueeze(0)   # channel mean of A^2: [1, 0, 0, 1]
    t = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]).unsqueeze(0)  # [5/3, 0, 0, 0]
    qs = [1 / math.sqrt(2), 0.0, 0.0, 1 / math.sqrt(2)]
    qt = [1.0, 0.0, 0.0, 0.0]
    expected = 1000 / 2 * sum((a - b) ** 2 for a, b in zip(qs, qt)) / 4
    out = m(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([-1]), student_features={"a": s}, teacher_features={"b": t})
    assert out["attention_transfer"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DistillError) as e:
        m.setup({"a": (8,)}, {"b": (3, 2, 2)})
    assert e.value.code == "invalid_spec"


def test_rkd_by_hand():
    s = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    t = [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]

    def dist(p):
        d = [[math.dist(a, b) for b in p] for a in p]
        mean = sum(v for row in d for v in row if v > 0) / 6
        return [v / mean for row in d for v in row]

    def angles(p):
        def unit(a, b):
            v = [b[0] - a[0], b[1] - a[1]]
            n = math.hypot(*v)
            return [x / n for x in v] if n > 0 else [0.0, 0.0]
        return [sum(x * y for x, y in zip(unit(p[i], p[j]), unit(p[i], p[k]))) for i in range(3) for j in range(3) for k in range(3)]

    ed = sum(huber(a - b) for a, b in zip(dist(s), dist(t))) / 9
    ea = sum(huber(a - b) for a, b in zip(angles(s), angles(t))) / 27
    assert ed > 0 and ea > 0
    m = RelationalKD(alpha=1.0, student_layer="e", teacher_layer="e", has_labels=False)
    out = m(torch.zeros(3, 2), torch.zeros(3, 2), torch.full((3,), -1), student_features={"e": torch.tensor(s)},
            teacher_features={"e": torch.tensor(t)})
    assert out["rkd_distance"].item() == pytest.approx(25 * ed, rel=1e-4)
    assert out["rkd_angle"].item() == pytest.approx(50 * ea, rel=1e-4)
    # relations are scale-free: a uniformly scaled teacher gives zero distance loss
    same = m(torch.zeros(3, 2), torch.zeros(3, 2), torch.full((3,), -1), student_features={"e": torch.tensor(s)},
             teacher_features={"e": 7 * torch.tensor(s)})
    assert same["rkd_distance"].item() == pytest.approx(0.0, abs=1e-6) and same["rkd_angle"].item() == pytest.approx(0.0, abs=1e-6)


def test_prototype_by_hand():
    m = build_method(method_of(name="prototype", temperature=0.5, alpha=1.0, student_layer="s", teacher_layer="t"), has_labels=False)
    assert isinstance(m, PrototypeKD) and m.temperature == 0.5
    m.setup({"s": (2,)}, {"t": (2,)})
    tf = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    t_logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, -1, 1])  # row 2 unlabelled -> teacher argmax 0; row 3 labelled 1 (its argmax 2 is ignored)
    m.prepare(t_logits, {"t": tf}, labels)
    assert m.prototypes.tolist() == [[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]] and m.class_counts == [2, 2, 0]
    with torch.no_grad():
        m.proj.weight.copy_(torch.eye(2))
        m.proj.bias.zero_()
    sf = [[1.0, 1.0], [0.0, 1.0]]
    rows_t = [[1.0, 0.0], [0.0, 2.0]]
    batch_labels = torch.tensor([-1, 1])
    batch_logits = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])  # row 0 unlabelled -> class 2 (zero prototype)
    protos = [[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]
    cls = [2, 1]
    mse = sum((a - b) ** 2 for r, c in zip(sf, cls) for a, b in zip(r, protos[c])) / 4

    def cos(a, p):
        na, np_ = math.hypot(*a), math.hypot(*p)
        return 0.0 if np_ == 0 else (a[0] * p[0] + a[1] * p[1]) / (na * np_)

    kl_sum = 0.0
    for fs, ft in zip(sf, rows_t):
        ps = softmax([cos(fs, p) / 0.5 for p in protos])
        pt = softmax([cos(ft, p) / 0.5 for p in protos])
        kl_sum += kl(pt, ps)
    out = m(torch.zeros(2, 3), batch_logits, batch_labels, student_features={"s": torch.tensor(sf)},
            teacher_features={"t": torch.tensor(rows_t)})
    assert out["prototype_mse"].item() == pytest.approx(mse, rel=1e-5)
    assert out["prototype_kl"].item() == pytest.approx(kl_sum / 2, rel=1e-4)


def test_combined_method_sums_weighted_terms_and_renames_duplicates():
    spec = parse_method({"name": "kd", "temperature": 2.0, "alpha": 0.75, "extra": [
        {"name": "kd", "weight": 0.5, "temperature": 1.0}, {"name": "hard_label", "weight": 2.0}]})
    m = build_method(spec, has_labels=True)
    assert isinstance(m, CombinedMethod) and m.term_names == ["kd", "ce", "kd_2", "hard_label"]
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    out = m(s, t, torch.tensor([1]))
    assert list(out) == m.term_names
    assert out["kd"].item() == pytest.approx(0.75 * 4 * kl(softmax([math.log(3.0) / 2, 0.0]), [0.5, 0.5]), rel=1e-5)
    assert out["ce"].item() == pytest.approx(0.25 * math.log(2.0), rel=1e-6)
    assert out["kd_2"].item() == pytest.approx(0.5 * kl([0.75, 0.25], [0.5, 0.5]), rel=1e-5)
    assert out["hard_label"].item() == pytest.approx(2.0 * math.log(2.0), rel=1e-6)


def test_method_spec_checks():
    from pydantic import ValidationError

    ok = parse_method({"name": "kd", "temperature": 4, "alpha": 0.9,
                       "extra": [{"name": "fitnet", "weight": 1.0, "student_layer": "features.3", "teacher_layer": "features.7"}]})
    assert parse_method(ok.model_dump()) == ok  # a full dump validates again
    assert type(ok).__name__ == "KDMethod" and type(ok.extra[0]).__name__ == "FitNetExtra"
    for bad, words in [
        ({"name": "kd", "dkd_beta": 3}, "method.dkd_beta was renamed: use 'beta' under method 'dkd'"),
        ({"name": "dkd", "dkd_alpha": 3}, "use 'alpha' under method 'dkd'"),
        ({"name": "kd", "extra": [{"name": "rkd", "rkd_angle_weight": 3}]}, "method.extra.0.rkd_angle_weight was renamed: use 'angle_weight'"),
        ({"name": "prototype", "prototype_temperature": 0.5}, "use 'temperature' under method 'prototype'"),
        ({"name": "kd", "beta": 3}, "Extra inputs are not permitted"),       # another method's parameter
        ({"name": "hard_label", "temperature": 4.0}, "Extra inputs are not permitted"),  # hard_label has no temperature
        ({"name": "dkd", "alpha": -0.5}, "greater than or equal to 0"),       # dkd's alpha weighs TCKD (0..1000)
        ({"name": "fitnet"}, "Field required"),
        ({"name": "fitnet", "student_layer": "1"}, "teacher_layer"),
        ({"name": "kd", "extra": [{"name": "rkd", "unknown": 1}]}, "Extra inputs are not permitted"),
        ({"name": "kd", "extra": [{"name": "embedding"}]}, "does not match any of the expected tags"),
        ({"name": "embedding", "extra": []}, "Extra inputs are not permitted"),
        ({"name": "embedding", "alpha": 0.5}, "Extra inputs are not permitted"),
        ({"name": "kd", "extra": [{"name": "rkd", "weight": -1}]}, "greater than or equal to 0"),
        ({"name": "dkd", "beta": -2}, "greater than or equal to 0"),
        ({"name": "rkd", "logit_standardization": True}, "Extra inputs are not permitted"),
        ({"temperature": 4.0}, "method needs 'name': one of kd, hard_label, dkd"),
        ({"name": "kd", "temperature": True}, "valid number"),
        ({"name": "kd", "temperature": "4"}, "valid number"),
        ({"name": "nope"}, "does not match any of the expected tags"),
    ]:
        with pytest.raises(ValidationError) as e:
            parse_method(bad)
        assert words in str(e.value), (bad, str(e.value))
    assert parse_method({"name": "dkd", "alpha": 2, "beta": 3.5}).params() == {
        "temperature": 4.0, "logit_standardization": False, "alpha": 2.0, "beta": 3.5, "warmup_epochs": 1, "ce_weight": None}


def test_check_method_supported():
    fitnet = parse_method({"name": "kd", "extra": [{"name": "fitnet", "student_layer": "1", "teacher_layer": "2"}]})
    for fmt in ("safetensors", "state_dict", "torchscript", "torch_export", "onnx", "auto"):  # every tensor format gives features
        check_method_supported(fitnet, fmt)
        check_method_supported(method_of(name="prototype"), fmt)
    check_method_supported(method_of(name="dkd"), "onnx")
    with pytest.raises(DistillError) as e:
        check_method_supported(fitnet, "hf")
    assert e.value.code == "invalid_spec" and e.value.param == "method.extra.0.name" and "Hugging Face" in e.value.message
    with pytest.raises(DistillError):
        check_method_supported(parse_method({"name": "kd", "extra": [{"name": "hard_label"}]}), "hf")
