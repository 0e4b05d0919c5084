"""The measured defaults (issue 11): a registry student's learning rate, DKD's beta and warm-up, a FitNets extra's
weight. Each is filled only when the user gave none, and a dump of the spec validates to the same spec."""

from __future__ import annotations

import pytest

from distill.methods import DecoupledKD, build_method
from distill.spec import DKD_BETA, FITNET_EXTRA_WEIGHT, REGISTRY_STUDENT_LR, JobSpec

BASE = {"teacher": {"file_id": "file_t"}, "student": {"architecture": {"name": "mlp"}}, "data": {"train": {"builtin": "digits"}}}
HINT = {"name": "fitnet", "student_layer": "2", "teacher_layer": "10"}


def _spec(**kw) -> JobSpec:
    spec = JobSpec.model_validate({**BASE, **kw})
    assert JobSpec.model_validate(spec.model_dump()) == spec  # the filled defaults survive a round trip
    return spec


def test_registry_students_default_to_lr_1e_2_and_a_given_lr_is_kept():
    assert REGISTRY_STUDENT_LR == 1e-2
    assert _spec().training.optimizer.lr == 1e-2
    assert _spec(training={"optimizer": {"name": "sgd"}}).training.optimizer.lr == 1e-2
    assert _spec(training={"optimizer": {"lr": 1e-3}}).training.optimizer.lr == 1e-3
    hf = JobSpec.model_validate({**BASE, "student": {"from_teacher": {"num_layers": 1}}})
    assert hf.training.optimizer.lr == 1e-3  # transformer students keep the fine-tuning default


@pytest.mark.parametrize("epochs,warmup", [(1, 1), (4, 1), (10, 2), (20, 4), (30, 6)])
def test_dkd_warms_up_over_the_first_fifth_of_the_epochs(epochs, warmup):
    spec = _spec(method={"name": "dkd"}, training={"epochs": epochs})
    assert spec.method.warmup_epochs == warmup and spec.method.beta == DKD_BETA == 0.5
    extra = _spec(method={"name": "kd", "extra": [{"name": "dkd"}]}, training={"epochs": epochs})
    assert extra.method.extra[0].warmup_epochs == warmup and not hasattr(extra.method, "warmup_epochs")  # kd: has none


def test_a_given_dkd_warmup_and_beta_are_kept_and_reach_the_method():
    spec = _spec(method={"name": "dkd", "warmup_epochs": 1, "beta": 8.0}, training={"epochs": 30})
    assert (spec.method.warmup_epochs, spec.method.beta) == (1, 8.0)
    m = build_method(_spec(method={"name": "dkd"}, training={"epochs": 30}).method, has_labels=True, all_labelled=True)
    assert isinstance(m, DecoupledKD) and (m.dkd_beta, m.warmup_epochs) == (0.5, 6)
    assert DecoupledKD(temperature=4.0, has_labels=True).dkd_beta == 0.5


def test_a_fitnet_extra_defaults_to_weight_0_1_and_other_extras_to_1():
    assert FITNET_EXTRA_WEIGHT == 0.1
    spec = _spec(method={"name": "kd", "extra": [HINT, {"name": "rkd"}]})
    assert [e.weight for e in spec.method.extra] == [0.1, 1.0]
    assert _spec(method={"name": "kd", "extra": [{**HINT, "weight": 1.0}]}).method.extra[0].weight == 1.0
