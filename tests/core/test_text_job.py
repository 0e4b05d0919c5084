"""The text side of the core: layer selection, weight copying (DistilBERT recipe), pooling, batching, and
short real jobs on a tiny BERT encoder / classifier with MiniLM's tokenizer."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from tests.specs import override
import torch

from distill.errors import DistillError, StopRequested
from distill.reporter import RecordingReporter
from distill.spec import FromTeacherSpec, JobSpec
from distill.text.data import collate, length_batches
from distill.text.hf import derive_student, layers_to_keep, pool
from .helpers import run_text_job  # distill.text.job.run_text_job with the report checked

from tests.models import MINILM_TOKENIZER_FILES


@pytest.fixture(scope="session")
def reviews(tmp_path_factory):
    """300 labelled review sentences as JSONL."""
    from distill.text_data import load_rotten_tomatoes

    td = load_rotten_tomatoes()
    p = tmp_path_factory.mktemp("rev") / "r.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in list(zip(td.texts, td.labels))[:300]))
    return p


def spec(**over) -> JobSpec:
    s = {"task": "sentence_embedding", "teacher": {"file_id": "file_t"}, "student": {"from_teacher": {"num_layers": 2}},
         "data": {"train": {"file_id": "file_d"}, "validation": {"fraction": 0.25}, "max_seq_length": 32},
         "method": {"name": "embedding"}, "training": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-3}},
         "evaluation": {"latency_iterations": 5, "throughput_batch_size": 8, "probe_max_samples": 200}}
    return JobSpec.model_validate(override(s, **over))


def files(reviews):
    from distill.formats import FileInput

    return {"file_d": FileInput(path=reviews, format="jsonl", bytes=reviews.stat().st_size)}


def test_layers_to_keep():
    assert layers_to_keep(6, FromTeacherSpec(num_layers=3)) == [0, 2, 5]
    assert layers_to_keep(12, FromTeacherSpec(num_layers=6)) == [0, 2, 4, 7, 9, 11]
    assert layers_to_keep(6, FromTeacherSpec(num_layers=1)) == [5]
    assert layers_to_keep(6, FromTeacherSpec(keep_layers=[0, 2, 4])) == [0, 2, 4]
    with pytest.raises(DistillError, match="has 6 layers"):
        layers_to_keep(6, FromTeacherSpec(keep_layers=[0, 6]))
    with pytest.raises(DistillError, match="only 6 layers"):
        layers_to_keep(6, FromTeacherSpec(num_layers=7))


def test_derived_student_copies_embeddings_and_kept_layers(minilm_dir):
    from distill.text.hf import load_model

    teacher = load_model(minilm_dir, "sentence_embedding")
    student, facts = derive_student(teacher, FromTeacherSpec(keep_layers=[1, 4]), "sentence_embedding", seed=0)
    assert facts["keep_layers"] == [1, 4] and student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["embeddings.word_embeddings.weight"], t["embeddings.word_embeddings.weight"])
    assert torch.equal(s["encoder.layer.0.attention.self.query.weight"], t["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(s["encoder.layer.1.output.dense.weight"], t["encoder.layer.4.output.dense.weight"])
    narrow, facts = derive_student(teacher, FromTeacherSpec(num_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4),
                                   "sentence_embedding", seed=0)
    assert narrow.config.hidden_size == 128 and facts["initialised"] == "fresh"
    with pytest.raises(DistillError, match="30522"):
        derive_student(teacher, FromTeacherSpec(num_layers=2, config={"vocab_size": 100}), "sentence_embedding", seed=0)


def test_pooling_modes():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(states, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(pool(states, mask, "max"), torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(pool(states, mask, "cls"), torch.tensor([[1.0, 2.0]]))


def test_length_batches_cover_every_row_once_and_group_lengths():
    lengths = np.random.default_rng(0).integers(5, 60, size=1000)
    batches = length_batches(lengths, 32, seed=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(np.arange(1000), 32)])
    assert spread < random_spread / 3
    assert [b.tolist() for b in batches] == [b.tolist() for b in length_batches(lengths, 32, seed=1)]
    ids, mask = collate([[1, 2, 3], [4]], np.array([0, 1]), 0, torch.device("cpu"))
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.slow
def test_sentence_embedding_job_learns_and_exports(tiny_encoder_dir, reviews, tmp_path):
    rep = RecordingReporter()
    res = run_text_job(spec(**{"training.epochs": 3}), tiny_encoder_dir, 1000, files(reviews), tmp_path / "w", rep)
    r = res.report
    assert r["task"] == "sentence_embedding" and r["pooling"] == {"mode": "mean", "normalize": True}
    cos = [row.value for row in rep.rows if row.name == "cosine"]
    assert len(cos) == 3 and cos[-1] > cos[0]
    assert r["student"]["kept_teacher_layers"] == [0, 3]
    assert r["cache"]["teacher_outputs"] is True and r["cache"]["teacher_passes_saved"] == 2 * r["data"]["train"]
    assert r["onnx"]["max_abs_diff"] < 1e-3 and r["export_checks"]["sentence_transformers_max_abs_diff"] < 1e-3
    assert rep.phases == ["loading_teacher", "caching_teacher_outputs", "training", "evaluating", "exporting"]
    with zipfile.ZipFile(res.artifacts[0]) as z:
        assert "student_hf/modules.json" in z.namelist() and "student_hf/model.safetensors" in z.namelist()


def test_compare_baseline_true_on_a_sentence_embedding_job_is_refused(tiny_encoder_dir, reviews, tmp_path):
    """The core refuses (invalid_spec naming evaluation.compare_baseline) rather than silently ignoring it: a
    sentence-embedding student has no labels, so no student alone can be trained (task auto resolves to it too)."""
    for task in ("sentence_embedding", "auto"):
        with pytest.raises(DistillError) as e:
            run_text_job(spec(**{"task": task, "evaluation.compare_baseline": True}), tiny_encoder_dir, 1000, files(reviews),
                         tmp_path / task, RecordingReporter())
        assert e.value.code == "invalid_spec" and e.value.param == "evaluation.compare_baseline"
        assert not (tmp_path / task / "artifacts").exists()


def test_feature_matching_disables_the_cache_and_logs_every_term(tiny_encoder_dir, reviews, tmp_path):
    rep = RecordingReporter()
    s = spec(**{"training.epochs": 1, "method": {"name": "embedding", "cosine_weight": 1.0, "mse_weight": 1.0,
                                                    "hidden_layers": [{"student": 1, "teacher": 3}],
                                                    "attention_layers": [{"student": 0, "teacher": 0}]},
                "export.formats": ["safetensors"]})
    r = run_text_job(s, tiny_encoder_dir, 1000, files(reviews), tmp_path / "w", rep).report
    assert r["cache"]["teacher_outputs"] is False
    assert set(r["training"]["final_loss_terms"]) == {"cosine", "mse", "hidden", "attention", "total"}
    with pytest.raises(DistillError, match="layer pair"):
        run_text_job(spec(**{"method": {"name": "embedding", "hidden_layers": [{"student": 5, "teacher": 0}]}}), tiny_encoder_dir, 1000,
                     files(reviews), tmp_path / "w2", RecordingReporter())


def test_cancel_and_resume(tiny_encoder_dir, reviews, tmp_path):
    wd = tmp_path / "w"
    s = spec(**{"training.epochs": 2, "export.formats": ["safetensors"]})
    steps_per_epoch = -(-225 // 16)
    with pytest.raises(StopRequested):
        run_text_job(s, tiny_encoder_dir, 1000, files(reviews), wd, RecordingReporter(stop_after_steps=steps_per_epoch + 3))
    assert not (wd / "artifacts").exists() and list(wd.glob("checkpoint-epoch1-*.pt"))
    rep = RecordingReporter()
    r = run_text_job(s, tiny_encoder_dir, 1000, files(reviews), wd, rep).report
    assert r["training"]["resumed_from_epoch"] == 1 and [e[0] for e in rep.events].count("resumed") == 1
    straight = run_text_job(s, tiny_encoder_dir, 1000, files(reviews), tmp_path / "w3", RecordingReporter()).report
    assert r["mean_cosine"] == straight["mean_cosine"]


def test_dkd_warm_up_reaches_text_jobs(minilm_dir, tmp_path, reviews):
    """The text loop passes the epoch to the method, so dkd's warm-up weight w(epoch) = min(epoch / warmup, 1) applies."""
    import shutil

    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "cls"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, folder / name)
    seen = []
    from distill import methods as methods_module

    original = methods_module.build_method

    def spy(*a, **kw):
        m = original(*a, **kw)
        inner = m.forward

        def forward(*fa, **fkw):
            seen.append(fkw.get("epoch"))
            return inner(*fa, **fkw)

        m.forward = forward
        return m

    import distill.text.job as text_job

    mp = pytest.MonkeyPatch()
    mp.setattr(text_job, "build_method", spy)
    try:
        s = spec(task="sequence_classification", method={"name": "dkd", "temperature": 2.0, "warmup_epochs": 2},
                 **{"student.from_teacher": {"num_layers": 1}, "training.epochs": 2, "export.formats": ["safetensors"]})
        run_text_job(s, folder, 1000, files(reviews), tmp_path / "w", RecordingReporter())
    finally:
        mp.undo()
    assert set(seen) == {1, 2}


# ---------------------------------------------------------------------------------------------- the one trainer on text
TEXT_SPE = -(-225 // 16)  # 300 reviews, 25% held out, batch 16: 15 steps per epoch


def _text_case(task, tiny_encoder_dir, tiny_bert_classifier_dir, **over):
    """(spec, teacher folder) of a short text job of ``task`` that uses dropout (BERT's 0.1) and logs every 4 steps."""
    base = {"training.epochs": 2, "training.log_every_steps": 4, "training.optimizer": {"name": "sgd", "lr": 0.05},
            "export.formats": ["safetensors"], **over}
    if task == "sentence_embedding":
        return spec(**{"method": {"name": "embedding", "cosine_weight": 1.0, "mse_weight": 1.0}, **base}), tiny_encoder_dir
    return spec(task="sequence_classification", method={"name": "kd", "temperature": 2.0, "alpha": 0.5},
                **{"student.from_teacher": {"num_layers": 1}, **base}), tiny_bert_classifier_dir


def _zip_weights(result):
    from safetensors.torch import load

    with zipfile.ZipFile(result.artifacts[0]) as z:
        return load(z.read("student_hf/model.safetensors"))


def _same(a, b) -> bool:
    wa, wb = _zip_weights(a), _zip_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("task", ["sentence_embedding", pytest.param("sequence_classification", marks=pytest.mark.slow)])
def test_handed_back_text_job_resumes_at_its_step_bit_identical(task, tiny_encoder_dir, tiny_bert_classifier_dir, reviews, tmp_path):
    s, folder = _text_case(task, tiny_encoder_dir, tiny_bert_classifier_dir)
    straight_rep = RecordingReporter()
    straight = run_text_job(s, folder, 1000, files(reviews), tmp_path / "straight", straight_rep)
    # checks: while loading, after caching, then one before every step -> stop 6 steps into epoch 2 (past log point 20)
    handed = RecordingReporter(stop_after_steps=2 + TEXT_SPE + 6, hand_back=True)
    with pytest.raises(StopRequested):
        run_text_job(s, folder, 1000, files(reviews), tmp_path / "w", handed)
    saved = [e for e in handed.events if e[0] == "checkpoint_saved" and "steps_done_in_epoch" in (e[2] or {})]
    assert saved and saved[-1][2] == {"epoch": 1, "step": TEXT_SPE + 6, "steps_done_in_epoch": 6}
    assert max(r.step for r in handed.rows) == 20  # the last log point before the stop
    again = RecordingReporter(rows=list(handed.rows))
    resumed = run_text_job(s, folder, 1000, files(reviews), tmp_path / "w", again)
    ev = [e for e in again.events if e[0] == "resumed"]
    assert len(ev) == 1 and ev[0][2] == {"epoch": 1, "step": TEXT_SPE + 6, "steps_done_in_epoch": 6}
    assert again.rows == straight_rep.rows  # every loss term, lr, val metric (and train top-1), step and epoch
    assert _same(straight, resumed)
    assert resumed.report["training"]["final_loss_terms"] == straight.report["training"]["final_loss_terms"]
    if task == "sequence_classification":
        assert [r.epoch for r in again.rows if r.name == "top1" and r.split == "train"] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sentence_embedding", "sequence_classification"])
def test_text_job_resumed_after_a_finished_epoch_matches_a_straight_run(task, tiny_encoder_dir, tiny_bert_classifier_dir, reviews,
                                                                        tmp_path):
    s, folder = _text_case(task, tiny_encoder_dir, tiny_bert_classifier_dir)
    straight_rep = RecordingReporter()
    straight = run_text_job(s, folder, 1000, files(reviews), tmp_path / "straight", straight_rep)
    crashed = RecordingReporter(stop_after_steps=2 + TEXT_SPE + 9)  # a crash (no hand-back) 9 steps into epoch 2
    with pytest.raises(StopRequested):
        run_text_job(s, folder, 1000, files(reviews), tmp_path / "w", crashed)
    assert max(r.epoch for r in crashed.rows) == 2
    again = RecordingReporter(rows=list(crashed.rows))
    resumed = run_text_job(s, folder, 1000, files(reviews), tmp_path / "w", again)
    assert resumed.report["training"]["resumed_from_epoch"] == 1
    assert [e[2] for e in again.events if e[0] == "resumed"] == [{"epoch": 1, "step": TEXT_SPE}]
    assert again.rows == straight_rep.rows and _same(straight, resumed)


@pytest.mark.parametrize("task", ["sentence_embedding", "sequence_classification"])
def test_bf16_autocast_is_in_effect_on_a_text_job(task, tiny_encoder_dir, tiny_bert_classifier_dir, reviews, tmp_path, monkeypatch):
    """With training.precision bf16 every Linear of the student computes in bfloat16 while training (the student's
    forward runs under torch.autocast); with fp32 in float32. Losses stay float32 and the exported weights too."""
    import distill.text.job as text_job

    seen: dict[str, set] = {}
    original = text_job.derive_student

    def spy(*a, **kw):
        student, facts = original(*a, **kw)
        for mod in student.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.register_forward_hook(lambda m, i, o: seen[current].add((o.dtype, torch.is_autocast_enabled("cpu")))
                                          if m.training else None)
        return student, facts

    monkeypatch.setattr(text_job, "derive_student", spy)
    over = {"training.epochs": 1}
    if task == "sentence_embedding":  # the TinyBERT hidden-state term reads the student's bf16 states in float32
        over["method"] = {"name": "embedding", "cosine_weight": 1.0, "hidden_layers": [{"student": 1, "teacher": 3}]}
    for current in ("bf16", "fp32"):
        seen[current] = set()
        s, folder = _text_case(task, tiny_encoder_dir, tiny_bert_classifier_dir, **over, **{"training.precision": current})
        rep = RecordingReporter()
        result = run_text_job(s, folder, 1000, files(reviews), tmp_path / current, rep)
        assert result.report["training"]["precision"] == current
        assert all(np.isfinite(v) for v in result.report["training"]["final_loss_terms"].values())
        assert {w.dtype for w in _zip_weights(result).values()} == {torch.float32}
    assert seen["bf16"] == {(torch.bfloat16, True)}
    assert seen["fp32"] == {(torch.float32, False)}
