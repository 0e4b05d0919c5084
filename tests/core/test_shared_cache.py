"""The shared teacher cache: a second job of the same teacher and data reads the teacher's measurements and its
training outputs instead of recomputing them, and ends with the same student and the same teacher numbers."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from distill import shared_cache
from distill.shared_cache import DirCache

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
