"""The shared teacher cache: a second job of the same teacher and data reads the teacher's measurements and its
training outputs instead of recomputing them, and ends with the same student and the same teacher numbers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from distill import shared_cache
from distill.shared_cache import DirCache
from distill.teachers import TorchTeacher

from .helpers import make_spec, run


def _count_teacher_passes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = shared_cache.teacher_outputs

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(shared_cache, "teacher_outputs", counting)
    return calls


def test_second_job_reuses_teacher_outputs_and_profile(teacher_file, tmp_path, monkeypatch):
    cache = DirCache(tmp_path / "cache")
    passes = _count_teacher_passes(monkeypatch)
    spec = make_spec(cache={"teacher_outputs": "on"})
    first, rep1 = run(spec, teacher_file, tmp_path / "a", shared=cache)
    latency_calls = []
    monkeypatch.setattr(shared_cache, "_measure",
                        lambda *a, **kw: latency_calls.append(1) or (_ for _ in ()).throw(AssertionError("measured again")))
    second, rep2 = run(spec, teacher_file, tmp_path / "b", shared=cache)
    assert passes == [1]  # the teacher ran over the training rows once for the two jobs
    assert first.report["cache"]["shared"]["teacher_outputs"] == "computed"
    assert first.report["cache"]["shared"]["teacher_profile"] == "measured"
    assert second.report["cache"]["shared"] == {**first.report["cache"]["shared"], "teacher_outputs": "reused",
                                                 "teacher_profile": "reused"}
    assert latency_calls == []
    for rep, what in ((rep1, "computed"), (rep2, "reused")):  # an event too: it outlives an attempt that dies before its report
        assert [d["teacher_outputs"] for t, _, d in rep.events if t == "teacher_outputs_shared"] == [what]
    for block in ("val_top1", "latency_ms", "flops_per_sample"):
        assert second.report["teacher"][block] == first.report["teacher"][block]
    assert second.report["agreement"] == first.report["agreement"]
    a, b = load_file(str(first.artifacts[0])), load_file(str(second.artifacts[0]))
    assert all(torch.equal(a[k], b[k]) for k in a)  # cached outputs are bit-identical to computed ones


def test_other_data_is_another_entry(teacher_file, tmp_path, monkeypatch):
    cache = DirCache(tmp_path / "cache")
    passes = _count_teacher_passes(monkeypatch)
    run(make_spec(cache={"teacher_outputs": "on"}), teacher_file, tmp_path / "a", shared=cache)
    other = make_spec(cache={"teacher_outputs": "on"}, data={"train": {"builtin": "digits"}, "validation": {"fraction": 0.3}})
    result, _ = run(other, teacher_file, tmp_path / "b", shared=cache)
    assert passes == [1, 1]
    assert result.report["cache"]["shared"]["teacher_outputs"] == "computed"
    assert result.report["cache"]["shared"]["teacher_profile"] == "measured"


def test_no_shared_cache_reports_nothing(teacher_file, tmp_path):
    result, _ = run(make_spec(), teacher_file, tmp_path / "a")
    assert result.report["cache"]["shared"] is None and result.report["holdout"] is None


@pytest.fixture
def teacher_rows(monkeypatch) -> list[int]:
    """The batch sizes (rows) of every ``TorchTeacher.forward`` call made while the test runs, in call order."""
    seen: list[int] = []
    real_forward = TorchTeacher.forward
    monkeypatch.setattr(TorchTeacher, "forward", lambda self, x: seen.append(int(x.shape[0])) or real_forward(self, x))
    return seen


def test_second_job_reads_the_layout_decision_and_validation_logits(teacher_file, tmp_path, monkeypatch, teacher_rows):
    """The teacher's channels-last check (two teacher passes over a training batch) and its pass over the validation
    rows (the per-epoch agreement) run in the first job only; the second reads both from the shared cache, runs the
    teacher in the same layout and gives the same report numbers."""
    cache = DirCache(tmp_path / "cache")
    spec = make_spec(cache={"teacher_outputs": "on"}, evaluation={"compare_baseline": True})
    first, _ = run(spec, teacher_file, tmp_path / "a", shared=cache)
    first_rows = sum(teacher_rows)
    teacher_rows.clear()
    monkeypatch.setattr(TorchTeacher, "use_channels_last", lambda self, sample: (_ for _ in ()).throw(AssertionError("checked again")))
    layouts = []
    real_set = TorchTeacher.set_channels_last
    monkeypatch.setattr(TorchTeacher, "set_channels_last", lambda self: layouts.append(1) or real_set(self))
    second, _ = run(spec, teacher_file, tmp_path / "b", shared=cache)
    n_val = first.report["data"]["validation"]["rows"]
    # the second job's teacher saw only the probe batch (and the feature probes): no validation or training pass
    assert sum(teacher_rows) <= spec.training.batch_size + 8 < n_val < first_rows
    assert layouts == [1]
    notes = [n for n in first.report["teacher"]["notes"] if "channels-last" in n]
    assert notes and second.report["teacher"]["notes"] == first.report["teacher"]["notes"]
    assert second.report["agreement"] == first.report["agreement"]
    assert second.report["baseline"]["val_top1"] == first.report["baseline"]["val_top1"]
    a, b = load_file(str(first.artifacts[0])), load_file(str(second.artifacts[0]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_the_output_cache_the_second_job_reads_the_teachers_training_predictions(teacher_file, tmp_path, teacher_rows):
    """With ``cache.teacher_outputs: off`` a job still runs the teacher once over the labelled training rows, for its
    training top-1 (the teacher_memorised_training check); the shared cache keeps those logits, so a second job of the
    same teacher and rows runs the teacher over the probe batch only and reports the same warnings."""
    cache = DirCache(tmp_path / "cache")
    spec = make_spec(cache={"teacher_outputs": "off"}, evaluation={"compare_baseline": False})
    first, _ = run(spec, teacher_file, tmp_path / "a", shared=cache)
    data = first.report["data"]
    in_training = spec.training.epochs * data["train"]  # the cache is off: the teacher runs at every training step
    assert sum(teacher_rows) - in_training >= data["labelled"]  # ... and once over the labelled rows
    teacher_rows.clear()
    second, _ = run(spec, teacher_file, tmp_path / "b", shared=cache)
    assert sum(teacher_rows) - in_training <= spec.training.batch_size + 8  # the probe batch (and the feature probes) only
    assert second.report["warnings"] == first.report["warnings"]
    assert second.report["teacher"] == first.report["teacher"]


def test_a_job_without_the_shared_cache_runs_the_teacher_over_validation_once(teacher_file, tmp_path, monkeypatch):
    """The distilled pass and the baseline pass share one teacher pass over the validation rows (it was one each)."""
    from distill.training import tensor

    calls = []
    real = tensor.batched_logits

    def counting(fn, x, batch=None):
        calls.append(fn)
        return real(fn, x, batch)

    monkeypatch.setattr(tensor, "batched_logits", counting)
    from distill import job as job_module

    monkeypatch.setattr(job_module, "batched_logits", counting)
    result, _ = run(make_spec(evaluation={"compare_baseline": True}), teacher_file, tmp_path / "a")
    assert result.report["baseline"] is not None
    from distill.teachers import Teacher

    assert sum(isinstance(f, Teacher) for f in calls) == 1


def test_the_profile_is_measured_while_another_job_computes_the_outputs(teacher_file, tmp_path, monkeypatch):
    """On a cold cache a job measures the teacher's profile before the outputs (its own wall_time_s entry) and not
    again at evaluation, so a second trial that starts meanwhile (and finds the profile's lock taken) computes the
    outputs at the same time; a later job reads both."""
    import threading

    from distill import job as job_module

    class OutputsBeingComputed(DirCache):
        def busy(self, key: str) -> bool:
            return "/outputs-" in key or super().busy(key)

    cache = OutputsBeingComputed(tmp_path / "cache")
    calls: list[str] = []
    real = job_module.teacher_profile
    monkeypatch.setattr(job_module, "teacher_profile", lambda *a, **kw: calls.append("profile") or real(*a, **kw))
    real_outputs = job_module.shared_teacher_outputs
    monkeypatch.setattr(job_module, "shared_teacher_outputs", lambda *a, **kw: calls.append("outputs") or real_outputs(*a, **kw))
    spec = make_spec(cache={"teacher_outputs": "on"})
    result, _ = run(spec, teacher_file, tmp_path / "a", shared=cache)
    assert calls == ["profile", "outputs"]
    assert result.report["wall_time_s"]["teacher_profile"] > 0
    assert result.report["cache"]["shared"]["teacher_profile"] == "measured"
    assert result.report["cache"]["shared"]["teacher_outputs"] == "computed"
    calls.clear()
    again, _ = run(spec, teacher_file, tmp_path / "b", shared=DirCache(tmp_path / "cache"))  # a later trial: both read
    assert calls == ["outputs", "profile"] and "teacher_profile" not in again.report["wall_time_s"]
    # the profile being measured by another (its lock taken): this job goes to the outputs and reads the profile later

    class ProfileBeingMeasured(DirCache):
        def busy(self, key: str) -> bool:
            return "/profile-" in key or super().busy(key)

    calls.clear()
    third, _ = run(spec, teacher_file, tmp_path / "c", shared=ProfileBeingMeasured(tmp_path / "cache3"))
    assert calls == ["outputs", "profile"] and "teacher_profile" not in third.report["wall_time_s"]
    assert third.report["cache"]["shared"] == {**result.report["cache"]["shared"], "key": third.report["cache"]["shared"]["key"]}
    assert again.report["cache"]["shared"]["teacher_profile"] == "reused" and again.report["teacher"] == result.report["teacher"]
    # DirCache.busy sees a lock another holder has
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache.lock("teachers/x/e"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10) and DirCache(tmp_path / "cache").busy("teachers/x/e")
    release.set()
    t.join()
    assert not DirCache(tmp_path / "cache").busy("teachers/x/e")
