"""method 'auto' (issue 11): candidates trained on the training rows outside a selection split, scored on it, the winner
retrained on all training rows and reported on the untouched validation split."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from distill import auto, job as _job
from distill.formats import FileInput
from distill.data import load_builtin
from distill.teacher_training import train_classifier
from distill.spec import JobSpec
from distill.training import steps_per_epoch
from tests.models import TEACHER_ARCH, save_model

from distill.reporter import RecordingReporter

from .helpers import make_spec, run, run_text_job
from .test_report_jobs import _text_spec


def auto_spec(**over) -> JobSpec:
    """``make_spec(**over)`` with no method named (so the default, 'auto')."""
    d = make_spec(**over).model_dump(mode="json", exclude_unset=True)
    d.pop("method")
    spec = JobSpec.model_validate(d)
    assert spec.method.name == "auto"
    return spec


def test_auto_job_reports_every_candidate_and_retrains_the_winner(teacher_file, tmp_path):
    spec = auto_spec(training={"epochs": 13}, evaluation={"compare_baseline": True})
    result, rep = run(spec, teacher_file, tmp_path / "j")
    sel = result.report["selection"]
    names = [c["name"] for c in sel["candidates"]]
    assert len(names) == 4 and {c["lr"] for c in sel["candidates"]} == {spec.training.optimizer.lr}
    assert sel["candidates"][0]["epochs"] == 2  # floor(0.5 x 13 x 23 / (4 x 18))
    assert sel["chosen"] in names and sel["reason"]
    assert sel["margin_points"] == (auto.MEMORISED_MARGIN_POINTS if sel["teacher_selection_top1"] >= 0.99 else 0)
    assert sel["steps"] <= 0.5 * sel["job_steps"] and sel["steps_fraction"] <= 0.5
    assert 0 < sel["cost_fraction_of_job_time"] < 1
    # the winner was retrained on all training rows for the full epochs
    tr = result.report["training"]
    assert tr["epochs"] == 13 and tr["steps"] == sel["job_steps"]
    assert result.report["data"]["train"] == sel["selection_rows"] + sel["candidate_training_rows"]
    assert "Method auto" in result.report["summary"]
    candidates = {c["name"]: c for c in sel["candidates"]}
    assert result.report["training"]["method"] == "auto"
    if not sel["student_alone"]:
        assert result.report["training"]["method_detail"]["name"] == candidates[sel["chosen"]]["method"]["name"]
    assert [e for e in rep.events if e[0] == "selection_done"]


def _poisoned_load(monkeypatch):
    """Make every job load data whose reported validation labels are shuffled (and its images reversed in order)."""
    real = _job.load_data

    def poisoned(*a, **kw):
        d = real(*a, **kw)
        g = np.random.default_rng(1)
        d.val_y = d.val_y[np.asarray(g.permutation(d.val_y.shape[0]))]
        d.val_x = d.val_x.flip(0)
        return d

    monkeypatch.setattr(_job, "load_data", poisoned)


def test_selection_never_reads_the_reported_validation_rows(teacher_file, tmp_path, monkeypatch):
    spec = auto_spec(training={"epochs": 7})
    clean, _ = run(spec, teacher_file, tmp_path / "clean")
    _poisoned_load(monkeypatch)
    dirty, _ = run(spec, teacher_file, tmp_path / "dirty")
    a, b = clean.report["selection"], dirty.report["selection"]
    assert [c["selection_top1"] for c in a["candidates"]] == [c["selection_top1"] for c in b["candidates"]]
    assert a["chosen"] == b["chosen"] and a["reason"] == b["reason"]
    # the poison did reach the reported validation split: the returned student scores near chance there
    assert dirty.report["student"]["val_top1"] < 0.3 < clean.report["student"]["val_top1"]
    # and the returned students are the same weights
    wa, wb = (load_file(r.artifacts[0]) for r in (clean, dirty))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_student_alone_wins_and_is_returned(tmp_path):
    # an untrained teacher: its soft and hard labels are noise, so the student alone wins the selection
    x, y, _ = load_builtin("digits")
    teacher = train_classifier(TEACHER_ARCH, x[:64], y[:64], epochs=0, seed=0)
    path = tmp_path / "noise_teacher.safetensors"
    size = save_model(teacher, teacher.stillhouse_architecture, path)
    spec = auto_spec(training={"epochs": 7})
    result, _ = run(spec, FileInput(path, "safetensors", size), tmp_path / "j")
    r, sel = result.report, result.report["selection"]
    assert sel["student_alone"] is True and sel["chosen"].startswith(auto.ALONE) and sel["chosen_method"] is None
    assert r["training"]["method_detail"]["name"] == "ce"  # trained on the labels alone
    assert "trained without the teacher" in r["summary"]
    vs, ts = r["comparisons"]["distilled_vs_alone"], r["comparisons"]["teacher_vs_student"]
    assert vs["a"] == ts["b"] == "returned student (trained alone)"  # not 'teacher − distilled student'
    # the returned student is the student alone: the baseline is that same training, not run twice
    if sel["chosen_lr"] == spec.training.optimizer.lr:
        assert r["baseline"]["val_top1"] == r["student"]["val_top1"] and result.baseline_student is not None
        assert r["distillation_gain_points"] == 0
    assert "Distillation helped" not in r["summary"] and "did not help" in r["summary"]
    best = max(c["selection_top1"] for c in sel["candidates"] if c["method"] is not None)
    assert best < max(c["selection_top1"] for c in sel["candidates"] if c["method"] is None)


@pytest.mark.parametrize("epochs,n_train,batch", [(7, 1437, 64), (13, 1437, 64), (30, 4000, 64), (10, 4000, 128), (20, 500, 32)])
def test_plan_respects_the_budget(epochs, n_train, batch):
    rest = n_train - int(np.ceil(0.2 * n_train))
    plan = auto.plan_budget(1e-2, epochs, batch, n_train, rest, 0.5)
    assert plan.epochs >= 1 and plan.candidates
    assert plan.steps == plan.epochs * len(plan.candidates) * steps_per_epoch(rest, batch) <= 0.5 * plan.job_steps
    assert plan.job_steps == epochs * steps_per_epoch(n_train, batch)
    assert {c.name.split("@")[0] for c in plan.candidates} == {n for n, _ in auto.CANDIDATE_METHODS}


def test_too_small_a_budget_runs_kd_and_says_so(teacher_file, tmp_path):
    assert auto.plan_budget(1e-2, 3, 64, 1437, 1149, 0.5).epochs == 0
    result, _ = run(auto_spec(training={"epochs": 3}), teacher_file, tmp_path / "j")
    sel = result.report["selection"]
    assert sel["chosen"] is None and "cannot give" in sel["note"] and sel["candidates"] == []
    assert result.report["training"]["method_detail"]["name"] == "kd"


def test_auto_spec_validation():
    assert JobSpec.model_fields["method"].default_factory().name == "auto"
    spec = auto_spec()
    assert JobSpec.model_validate(spec.model_dump()).method.name == "auto"  # a full dump round-trips
    base = spec.model_dump(mode="json")
    for bad, field in (({"name": "auto", "alpha": 0.5}, "alpha"), ({"name": "auto", "selection_budget": 0}, "selection_budget"),
                       ({"name": "kd", "selection_budget": 0.3}, "selection_budget")):
        with pytest.raises(ValueError, match=field):
            JobSpec.model_validate({**base, "method": bad})
    assert JobSpec.model_validate({**base, "method": {"name": "auto", "selection_budget": 0.3}}).method.selection_budget == 0.3
    assert auto.method_spec(spec, {"name": "kd", "temperature": 2, "alpha": 0.5}).temperature == 2


def test_text_tasks_run_kd_and_say_so(tiny_bert_classifier_dir, review_jsonl, tmp_path):
    spec = _text_spec("sequence_classification", **{"student.from_teacher": {"num_layers": 1}})
    assert spec.method.name == "auto"
    files = {"file_d": FileInput(path=review_jsonl, format="jsonl", bytes=review_jsonl.stat().st_size)}
    rep = RecordingReporter()
    r = run_text_job(spec, tiny_bert_classifier_dir, 12345, files, tmp_path / "w", rep).report
    assert r["training"]["method"] == "kd"
    assert [m for t, m, _ in rep.events if t == "method_auto" and "runs kd" in m]


def test_choose_needs_a_clear_win_over_the_student_alone_at_the_spec_lr():
    cands = auto.candidates(1e-2, (1.0, 3.0))  # student_alone@lr0.01 first, then kd..., then the 3x lr ones
    rng = np.random.default_rng(0)
    base = rng.random(800) < 0.9

    def flip(v, n, to):
        v = v.copy()
        idx = np.flatnonzero(v != to)[:n]
        v[idx] = to
        return v

    scores = [(c, base) for c in cands]
    scores[4] = (cands[4], flip(flip(base, 10, True), 4, False))  # student alone at 3x: +10 -4 rows, inside the noise
    ch = auto.choose(scores, seed=0)
    assert ch.winner is cands[0] and "tie goes to the student alone" in ch.reason and ch.interval_points[0] <= 0
    assert ch.rule == "tie_to_alone"
    scores[1] = (cands[1], flip(base, 60, True))  # kd T4: +7.5 points, clearly better
    ch = auto.choose(scores, seed=0)
    assert ch.winner is cands[1] and ch.interval_points[0] > 0 and "outside the noise" in ch.reason and ch.rule == "best"
    ch = auto.choose([(c, flip(base, 40, False) if i else base) for i, c in enumerate(cands)], seed=0)
    assert ch.winner is cands[0] and ch.interval_points is None and "did not help" in ch.reason


def _flip(v, n, to):
    v = v.copy()
    v[np.flatnonzero(v != to)[:n]] = to
    return v


def test_few_labels_tie_goes_to_the_distilled_candidate_only_with_a_better_teacher():
    """40 selection rows (200 labels, 20% carved): kd +7.5 points over the student alone is inside the noise there. With
    most candidate rows unlabelled and a teacher measurably better than the student alone, the tie goes to kd; not with
    all rows labelled, not with a teacher no better than the student alone, and never to a measurably worse kd."""
    cands = auto.candidates(1e-3)  # student_alone, kd_t4_a0.9, kd_t2_a0.5, hard_label
    alone = np.zeros(40, bool)
    alone[:30] = True  # 75%
    kd = _flip(alone, 3, True)  # 82.5%
    teacher = np.ones(40, bool)  # 100%: +25 points over the student alone
    scores = [(cands[0], alone), (cands[1], kd), (cands[2], alone), (cands[3], alone)]
    tie = auto.choose(scores, seed=0, teacher_correct=teacher, unlabelled_fraction=0.0)
    assert tie.winner is cands[0] and tie.rule == "tie_to_alone"  # all labelled: unchanged
    few = auto.choose(scores, seed=0, teacher_correct=teacher, unlabelled_fraction=3800 / 3960)
    assert few.winner is cands[1] and few.rule == "few_labels_tie_to_distilled" and few.interval_points[0] <= 0 <= few.interval_points[1]
    assert few.teacher_vs_alone_points[0] > 0 and "96% of the candidates' training rows are unlabelled" in few.reason
    # the student alone scored best, the distilled candidates within the noise: the few-labels rule still applies
    level = [(cands[0], alone), *[(c, _flip(alone, 2, False)) for c in cands[1:]]]
    assert auto.choose(level, seed=0, teacher_correct=teacher, unlabelled_fraction=0.95).winner is cands[1]
    # a teacher no better than the student alone: the tie stays with the student alone
    bad = auto.choose(scores, seed=0, teacher_correct=_flip(alone, 1, True), unlabelled_fraction=0.95)
    assert bad.winner is cands[0] and bad.rule == "tie_to_alone" and bad.teacher_vs_alone_points[0] <= 0
    # every distilled candidate measurably worse: the student alone, whatever the teacher
    worse = [(cands[0], alone), *[(c, _flip(alone, 15, False)) for c in cands[1:]]]
    assert auto.choose(worse, seed=0, teacher_correct=teacher, unlabelled_fraction=0.95).winner is cands[0]


def test_a_teacher_that_memorised_the_selection_rows_raises_the_bar_for_distilled_candidates():
    """kd +2.5 points on 800 selection rows (20 rows more right, none fewer: interval about [+1.4, +3.6], above 0) wins
    with a teacher at 97% there, but with a teacher at 100% (trained on those rows, which inflates a distilled score:
    auto.MEMORISED_MARGIN_POINTS) the interval must clear +2 points: a tie to the student alone, saying why. A clear win
    (+7.5 points) still goes to kd, and the few-labels rule still applies."""
    cands = auto.candidates(1e-2)
    base = np.random.default_rng(0).random(800) < 0.9
    kd = _flip(base, 20, True)
    scores = [(cands[0], base), (cands[1], kd), (cands[2], base), (cands[3], base)]
    fair = auto.choose(scores, seed=0, teacher_correct=_flip(np.ones(800, bool), 24, False))  # 97%
    assert fair.winner is cands[1] and fair.rule == "best" and 0 < fair.interval_points[0] <= auto.MEMORISED_MARGIN_POINTS
    assert fair.margin_points == 0 and "outside the noise" in fair.reason
    memorised = auto.choose(scores, seed=0, teacher_correct=np.ones(800, bool))
    assert memorised.winner is cands[0] and memorised.rule == "memorised_teacher_tie_to_alone"
    assert memorised.margin_points == auto.MEMORISED_MARGIN_POINTS and memorised.interval_points == fair.interval_points
    assert "100.0% on those rows" in memorised.reason and "2-point margin" in memorised.reason
    clear = auto.choose([(cands[0], base), (cands[1], _flip(base, 60, True)), *scores[2:]], seed=0,
                        teacher_correct=np.ones(800, bool))
    assert clear.winner is cands[1] and clear.rule == "best" and clear.interval_points[0] > auto.MEMORISED_MARGIN_POINTS
    assert "margin for a teacher that memorised" in clear.reason
    few = auto.choose(scores, seed=0, teacher_correct=np.ones(800, bool), unlabelled_fraction=0.95)
    assert few.winner is cands[1] and few.rule == "few_labels_tie_to_distilled"


def _few_labels_files(tmp_path, digits, per_class: int = 10) -> dict[str, FileInput]:
    """digits' default training split as ``per_class`` labelled rows per class + the rest as an unlabelled transfer set,
    and its validation split as a validation file."""
    x, y, tr, va = digits["x"], digits["y"], digits["train_idx"], digits["val_idx"]
    rng = np.random.default_rng(0)
    lab = np.concatenate([rng.permutation(tr[y[tr] == c])[:per_class] for c in range(10)])
    rest = np.setdiff1d(tr, lab)
    out = {}
    for name, arrays in (("file_l", {"X": x[lab], "y": y[lab]}), ("file_u", {"X": x[rest]}), ("file_v", {"X": x[va], "y": y[va]})):
        np.savez(tmp_path / f"{name}.npz", **arrays)
        out[name] = FileInput(tmp_path / f"{name}.npz", "npz", (tmp_path / f"{name}.npz").stat().st_size)
    return out


def test_few_labels_job_says_what_its_selection_split_was_and_why(teacher_file, tmp_path, digits):
    """100 labels + 1,337 transfer rows: the selection split keeps 20 labelled rows; the report says how many rows the
    candidates trained on and how many were unlabelled, the teacher's selection top-1, and the rule that decided. The
    trained digits teacher is far better than a student on 80 labels, so a distilled candidate wins (here outright, even
    on 20 rows; the few-labels tie rule itself: test_few_labels_tie_goes_to_the_distilled_candidate_only_with_a_better_teacher)."""
    files = _few_labels_files(tmp_path, digits)
    spec = auto_spec(data={"train": {"file_id": "file_l"}, "transfer": {"file_id": "file_u"}, "validation": {"file_id": "file_v"}},
                     training={"epochs": 10})
    result, _ = run(spec, teacher_file, tmp_path / "j", files=files)
    sel, d = result.report["selection"], result.report["data"]
    assert sel["selection_rows"] == 20 and sel["candidate_training_rows"] == d["train"] - 20
    assert sel["candidate_unlabelled_rows"] == d["transfer"] == d["unlabelled"] > 0.9 * sel["candidate_training_rows"]
    assert 0.8 <= sel["teacher_selection_top1"] <= 1 and sel["teacher_vs_alone_points"][0] > 0
    assert sel["rule"] in ("best", "few_labels_tie_to_distilled") and sel["student_alone"] is False
    if sel["rule"] == "few_labels_tie_to_distilled":
        assert "few labels" in sel["reason"] and "20 labelled rows" in sel["reason"]
    vs = result.report["comparisons"]["distilled_vs_alone"]
    assert vs["verdict"] == "a better"  # and on the untouched validation split the distilled student is clearly better


def test_few_labels_with_a_useless_teacher_keeps_the_student_alone(tmp_path, digits):
    """The few-labels rule needs a teacher measurably better than the student alone: an untrained teacher (noise) on
    100 labels + 1,337 transfer rows leaves the tie with the student alone."""
    x, y, _ = load_builtin("digits")
    teacher = train_classifier(TEACHER_ARCH, x[:64], y[:64], epochs=0, seed=0)
    path = tmp_path / "noise_teacher.safetensors"
    size = save_model(teacher, teacher.stillhouse_architecture, path)
    spec = auto_spec(data={"train": {"file_id": "file_l"}, "transfer": {"file_id": "file_u"}, "validation": {"file_id": "file_v"}},
                     training={"epochs": 10})
    result, _ = run(spec, FileInput(path, "safetensors", size), tmp_path / "j", files=_few_labels_files(tmp_path, digits))
    sel = result.report["selection"]
    assert sel["candidate_unlabelled_rows"] > 0.9 * sel["candidate_training_rows"] and sel["teacher_vs_alone_points"][0] <= 0
    assert sel["student_alone"] is True and sel["rule"] in ("best", "tie_to_alone")


def test_the_selection_split_line_names_the_memorised_teacher_margin():
    """The CLI and HTML line of the selection split (``SelectionSummary.split_text``) says when a memorising teacher
    raised the bar, and says nothing of it otherwise (margin 0, or a report stored before the field)."""
    from distill.report import SelectionSummary

    base = {"chosen": "student_alone@lr0.01", "reason": "r", "budget": 0.5, "job_steps": 100, "selection_rows": 800,
            "candidate_training_rows": 3200, "teacher_selection_top1": 1.0}
    text = SelectionSummary(**base, margin_points=auto.MEMORISED_MARGIN_POINTS).split_text()
    assert "teacher top-1 there 100.00%" in text and "trained on those rows" in text and "more than 2 points" in text
    for margin in (0.0, None):
        assert "trained on those rows" not in SelectionSummary(**base, margin_points=margin).split_text()
