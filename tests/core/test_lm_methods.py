"""The causal-LM methods as registered (kd, reverse_kl, gkd, seqkd): built from the spec, their terms and weights
against the loss functions they are made of, on the full vocabulary and on a top-k cache."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.lm.losses import cached_kd_loss, divergence, next_token_ce, topk_from_logits
from distill.lm.methods import available_lm_methods, build_lm_method
from distill.method_params import LM_METHODS, METHOD_PARAMS
from distill.spec import JobSpec, lm_method_defaults, parse_method


def method(**fields):
    """The per-method model of ``fields`` (as the spec's ``method`` object validates)."""
    return parse_method(fields)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 11, generator=g), torch.randn(7, 11, generator=g), torch.randint(0, 11, (7,), generator=g)


def test_registry_lists_the_lm_methods():
    assert available_lm_methods() == ["gkd", "kd", "reverse_kl", "seqkd"]


@pytest.mark.parametrize("name,kind", [("kd", "forward_kl"), ("reverse_kl", "reverse_kl"), ("gkd", "jsd")])
def test_token_level_terms_are_alpha_weighted_divergence_and_ce(logits, name, kind):
    s, t, y = logits
    m = build_lm_method(method(name=name, alpha=0.7, temperature=2.0, **({"beta": 0.3} if name == "gkd" else {})))
    terms = m(s, t, y)
    assert list(terms) == [name, "ce"] == m.term_names
    p, q = torch.log_softmax(t / 2.0, -1), torch.log_softmax(s / 2.0, -1)
    assert terms[name].item() == pytest.approx(0.7 * 4.0 * divergence(q, p, kind, 0.3).mean().item(), rel=1e-5)
    if name == "kd":  # beta is a parameter of gkd alone
        with pytest.raises(ValueError, match=r"kd\.beta\s+Extra inputs are not permitted"):
            parse_method({"name": "kd", "beta": 0.3})
    assert terms["ce"].item() == pytest.approx(0.3 * next_token_ce(s, y).item(), rel=1e-5)
    cache = topk_from_logits(t, 4, 2.0)
    assert m(s, cache, y)[name].item() == pytest.approx(0.7 * cached_kd_loss(s, cache, kind, beta=0.3, temperature=2.0).item(), rel=1e-5)


def test_temperature_defaults_to_one_for_lms_and_alpha_one_drops_ce(logits):
    s, t, y = logits
    m = build_lm_method(method(name="kd", alpha=1.0))
    assert m.temperature == 1.0 and m.term_names == ["kd"]
    p, q = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    assert m(s, t, y)["kd"].item() == pytest.approx(divergence(q, p, "forward_kl").mean().item(), rel=1e-5)
    assert build_lm_method(method(name="kd", alpha=1.0, ce_weight=0.2)).term_names == ["kd", "ce"]


def test_seqkd_is_next_token_ce_without_a_teacher(logits):
    s, _, y = logits
    m = build_lm_method(method(name="seqkd"))
    assert not m.needs_teacher and m.term_names == ["seqkd"]
    assert m(s, None, y)["seqkd"].item() == pytest.approx(next_token_ce(s, y).item())


def test_methods_of_other_tasks_are_refused():
    with pytest.raises(DistillError) as e:
        build_lm_method(method(name="dkd"))
    assert e.value.code == "invalid_spec" and e.value.param == "method.name"


def test_lm_methods_come_from_the_registry_with_their_own_fields():
    assert LM_METHODS == ("kd", "reverse_kl", "gkd", "seqkd")
    assert [n for n, p in METHOD_PARAMS.items() if "causal_lm" in p.tasks] == list(LM_METHODS)
    assert parse_method({"name": "gkd"}).params() == {"temperature": 1.0, "beta": 0.5, "alpha": 0.9, "ce_weight": None}
    assert parse_method({"name": "seqkd"}).params() == {}
    with pytest.raises(ValueError, match=r"seqkd\.alpha\s+Extra inputs are not permitted"):
        parse_method({"name": "seqkd", "alpha": 0.5})
    with pytest.raises(ValueError, match=r"gkd\.beta\s+Input should be less than or equal to 1"):
        parse_method({"name": "gkd", "beta": 1.5})


def test_logit_standardization_is_refused_for_lms():
    with pytest.raises(DistillError) as e:
        build_lm_method(method(name="kd", logit_standardization=True))
    assert e.value.code == "invalid_spec" and e.value.param == "method.logit_standardization"


@pytest.mark.parametrize("given,task,want", [(None, "causal_lm", 1.0), (2.0, "causal_lm", 2.0), (None, "classification", 4.0)])
def test_a_causal_lm_kd_job_defaults_to_temperature_one_and_keeps_it_through_storage(given, task, want):
    from distill.spec import JobSpec

    s = JobSpec.model_validate({"task": task, "teacher": {"file_id": "file_t"}, "student": {"from_teacher": {"num_layers": 1}},
                                "data": {"train": {"file_id": "file_d"}},
                                "method": {"name": "kd", **({"temperature": given} if given else {})}})
    stored = JobSpec.model_validate(s.model_dump(mode="json"))  # as the worker reads the job row
    assert s.method.temperature == stored.method.temperature == want
    assert build_lm_method(stored.method).temperature == want


def test_lm_method_defaults_one_rule_for_spec_and_api():
    """Method auto -> kd at T=1; kd without a temperature -> 1 (given: kept); other methods untouched. JobSpec with task
    causal_lm applies the same rule, and the filled values survive a dump/validate round trip."""
    auto = lm_method_defaults(parse_method({"name": "auto"}))
    assert auto.name == "kd" and auto.temperature == 1.0 and "temperature" in auto.model_fields_set
    assert lm_method_defaults(parse_method({"name": "kd"})).temperature == 1.0
    assert lm_method_defaults(parse_method({"name": "kd", "temperature": 3.0})).temperature == 3.0
    assert lm_method_defaults(parse_method({"name": "gkd", "beta": 0.2})).params()["beta"] == 0.2
    base = {"teacher": {"file_id": "file_t"}, "student": {"from_teacher": {"num_layers": 2}},
            "data": {"train": {"file_id": "file_d"}}}
    lm = JobSpec.model_validate({**base, "task": "causal_lm"})
    assert lm.method.name == "kd" and lm.method.temperature == 1.0
    assert JobSpec.model_validate(lm.model_dump()).method == lm.method
    assert JobSpec.model_validate(base).method.name == "auto"  # task auto: the API resolves it (app.jobs.service)


@pytest.mark.parametrize("name", ["kd", "reverse_kl", "gkd"])
@pytest.mark.parametrize("cached", [False, True])
def test_at_temperature_one_both_terms_share_one_log_softmax_with_the_same_values_and_gradients(logits, name, cached):
    """At T = 1 the method computes the student's log-softmax once for the teacher term and the CE; the terms and the
    gradient must be those of the two separate loss functions."""
    s, t, y = logits
    m = build_lm_method(method(name=name, alpha=0.6, **({"beta": 0.3} if name == "gkd" else {})))
    assert m.temperature == 1.0
    teacher = topk_from_logits(t, 4, 1.0) if cached else t
    kind = {"kd": "forward_kl", "reverse_kl": "reverse_kl", "gkd": "jsd"}[name]
    s1 = s.clone().requires_grad_(True)
    terms = m(s1, teacher, y)
    sum(terms.values()).backward()
    s2 = s.clone().requires_grad_(True)
    if cached:
        want_kd = cached_kd_loss(s2, teacher, kind, beta=0.3)
    else:
        want_kd = divergence(torch.log_softmax(s2, -1), torch.log_softmax(t, -1), kind, 0.3).mean()
    want_ce = next_token_ce(s2, y)
    (0.6 * want_kd + 0.4 * want_ce).backward()
    assert terms[name].item() == pytest.approx(0.6 * want_kd.item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(0.4 * want_ce.item(), rel=1e-6)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)
