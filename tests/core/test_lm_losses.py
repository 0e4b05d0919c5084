"""The causal-LM losses against values computed by hand, the masking of prompt tokens, and the top-k cache's
reconstruction and cached loss."""

from __future__ import annotations

import math

import pytest
import torch

from distill.lm.losses import (cache_bytes_per_token, cache_fidelity_kl, cached_kd_loss, divergence, next_token_ce,
                               reconstruct, targets, token_kd_loss, topk_from_logits)

P = [0.5, 0.5]      # teacher
Q = [0.25, 0.75]    # student
KL_PQ = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)           # = 0.5 ln(4/3)
KL_QP = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)          # = -0.25 ln 2 + 0.75 ln 1.5
# beta = 0.5: m = (0.375, 0.625)
JSD_HALF = 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)) \
    + 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625))


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(rows, dtype=torch.float32))


def test_hand_values_are_what_they_claim():
    assert KL_PQ == pytest.approx(0.5 * math.log(4 / 3))
    assert KL_QP == pytest.approx(0.1308120, abs=1e-6)
    assert JSD_HALF == pytest.approx(0.0338214, abs=1e-6)


@pytest.mark.parametrize("kind,beta,want", [
    ("forward_kl", 0.5, KL_PQ), ("reverse_kl", 0.5, KL_QP),
    ("jsd", 0.0, KL_PQ), ("jsd", 0.5, JSD_HALF), ("jsd", 1.0, KL_QP),
])
def test_divergences_match_hand_computed_values(kind, beta, want):
    s, t = logits(Q), logits(P)
    assert token_kd_loss(s, t, kind, beta=beta).item() == pytest.approx(want, rel=1e-5)


def test_jsd_between_its_ends_and_symmetry():
    s, t = torch.log_softmax(torch.tensor([[2.0, -1.0, 0.5]]), -1), torch.log_softmax(torch.tensor([[0.0, 1.0, -2.0]]), -1)
    for beta in (0.1, 0.3, 0.7, 0.9):
        j = divergence(s, t, "jsd", beta).item()
        assert 0 < j < max(divergence(s, t, "forward_kl").item(), divergence(s, t, "reverse_kl").item())
    # JSD(beta) of (p, q) equals JSD(1 - beta) with the roles swapped
    assert divergence(s, t, "jsd", 0.3).item() == pytest.approx(divergence(t, s, "jsd", 0.7).item(), rel=1e-5)
    with pytest.raises(ValueError):
        divergence(s, t, "jsd", 1.5)
    with pytest.raises(ValueError):
        divergence(s, t, "cosine")


def test_temperature_scales_by_t_squared():
    s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    ps, pt = torch.softmax(s / 2, -1), torch.softmax(t / 2, -1)
    want = 4 * float((pt * (pt.log() - ps.log())).sum())
    assert token_kd_loss(s, t, temperature=2.0).item() == pytest.approx(want, rel=1e-5)


def test_zero_probability_teacher_tokens_are_finite_with_finite_gradients():
    """Forward KL and JSD ignore tokens the teacher rules out; reverse KL is infinite there, as it should be."""
    t = torch.tensor([[0.0, float("-inf"), 0.0]])  # the teacher gives token 1 no mass
    s = torch.tensor([[0.3, 0.1, -0.2]], requires_grad=True)
    for kind in ("forward_kl", "jsd"):
        loss = token_kd_loss(s, t, kind)
        loss.backward()
        assert torch.isfinite(s.grad).all()
        s.grad = None
    assert torch.isinf(token_kd_loss(s, t, "reverse_kl"))  # the student puts mass where the teacher has none


def test_prompt_tokens_are_masked():
    v = 2
    ids = torch.tensor([[0, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 1]])  # tokens 2 and 3 are completion tokens: predicted at positions 1 and 2
    s = torch.zeros(1, 4, v)
    t = torch.zeros(1, 4, v)
    s[0, 1], t[0, 1] = logits(Q)[0], logits(P)[0]
    s[0, 2], t[0, 2] = logits(P)[0], logits(P)[0]           # zero divergence here
    s[0, 0], t[0, 0] = torch.tensor([9.0, -9.0]), torch.tensor([-9.0, 9.0])  # prompt position: must not count
    s = s.requires_grad_(True)
    ls, target_ids = targets(s, ids, mask)
    lt, _ = targets(t, ids, mask)
    assert target_ids.tolist() == [1, 0]
    loss = token_kd_loss(ls, lt)
    assert loss.item() == pytest.approx(KL_PQ / 2, rel=1e-5)
    loss.backward()
    assert s.grad[0, 0].abs().sum() == 0 and s.grad[0, 3].abs().sum() == 0
    # CE over the same targets: -log q(1) at position 1 and -log p(0) at position 2
    assert next_token_ce(ls, target_ids).item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, rel=1e-5)


def test_no_target_tokens_gives_zero_not_nan():
    empty = torch.zeros(0, 5, requires_grad=True)
    assert token_kd_loss(empty, torch.zeros(0, 5)).item() == 0
    assert next_token_ce(empty, torch.zeros(0, dtype=torch.long)).item() == 0


# ------------------------------------------------------------------------------------------- top-k cache


def test_topk_cache_reconstruction_by_hand():
    p = [0.5, 0.3, 0.15, 0.05]
    cache = topk_from_logits(logits(p), k=2)
    assert cache.ids.tolist() == [[0, 1]]
    assert cache.logp.exp().tolist()[0] == pytest.approx([0.5, 0.3], rel=1e-5)
    assert math.exp(cache.rest.item()) == pytest.approx(0.2, rel=1e-5)
    assert reconstruct(cache, 4).exp().tolist()[0] == pytest.approx([0.5, 0.3, 0.1, 0.1], rel=1e-5)
    # KL(p || p_hat) = 0.15 ln(0.15/0.1) + 0.05 ln(0.05/0.1)
    assert cache_fidelity_kl(logits(p), 2).item() == pytest.approx(0.15 * math.log(1.5) + 0.05 * math.log(0.5), rel=1e-4)


def test_cached_loss_by_hand_and_bounded_by_the_full_loss():
    p, q = [0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]
    cache = topk_from_logits(logits(p), k=2)
    # buckets: teacher (0.5, 0.3, 0.2), student (0.25, 0.25, 0.5)
    want = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    got = cached_kd_loss(logits(q), cache).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert got <= token_kd_loss(logits(q), logits(p)).item()


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)])
def test_full_k_cache_equals_the_online_loss(kind, beta):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g) * 3
    cache = topk_from_logits(t, k=11, temperature=2.0)
    assert torch.isinf(cache.rest).all()
    assert cached_kd_loss(s, cache, kind, beta=beta, temperature=2.0).item() == pytest.approx(
        token_kd_loss(s, t, kind, beta=beta, temperature=2.0).item(), rel=1e-5)
    assert cache_fidelity_kl(t, 11, 2.0).abs().max().item() < 1e-6


def test_cached_loss_gradient_matches_online_for_a_peaked_teacher():
    """With nearly all the teacher's mass in the top k, the cached loss and its gradient approach the full ones."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(4, 50, generator=g)
    t[:, :3] += 12.0
    s = torch.randn(4, 50, generator=g, requires_grad=True)
    cached_kd_loss(s, topk_from_logits(t, 3)).backward()
    g_cached, s.grad = s.grad.clone(), None
    token_kd_loss(s, t).backward()
    assert torch.allclose(g_cached, s.grad, atol=1e-3)


def test_cache_bytes():
    assert cache_bytes_per_token(32) == 32 * (2 + 4) + 4


def test_student_rest_bucket_is_exact_on_both_sides_of_the_subtraction_threshold():
    """The student's rest bucket: ``log1p(-mass)`` below ``REST_BY_SUBTRACTION_BELOW`` and the exact logsumexp over the
    other tokens at or above it; both agree with the exact value, and a student that puts almost all its mass on the
    cached ids (rest ~1e-30) keeps a finite loss and gradient."""
    from distill.lm.losses import REST_BY_SUBTRACTION_BELOW, student_buckets

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g)
    ids = torch.stack([torch.randperm(50, generator=g)[:4] for _ in range(6)])
    logits[3:, :] -= 5.0  # rows 3-5: most of the mass on their cached ids (mass above the threshold)
    for r in range(3, 6):
        logits[r, ids[r]] += 9.0
    logits[5, ids[5]] += 60.0  # row 5: everything on the cached ids
    logits.requires_grad_(True)
    got = student_buckets(logits, ids)
    logp = torch.log_softmax(logits.detach(), -1)
    mass = logp.gather(-1, ids).exp().sum(-1)
    assert (mass[:3] < REST_BY_SUBTRACTION_BELOW).all() and (mass[3:] >= REST_BY_SUBTRACTION_BELOW).all()
    exact = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), -1)
    assert torch.allclose(got[:, :4].detach(), logp.gather(-1, ids))
    assert torch.allclose(got[:, 4].detach(), exact, rtol=1e-5, atol=1e-5)
    assert got[5, 4].item() < -50  # far below what a subtraction in float32 could give (log of ~1e-7 is about -16)
    teacher = topk_from_logits(torch.randn(6, 50, generator=g), 4)
    teacher = type(teacher)(teacher.logp, ids, teacher.rest)
    loss = cached_kd_loss(logits, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
