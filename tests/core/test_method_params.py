"""Per-method parameter models (torch-free ``distill.method_params``): ranges per method, methods built as
``cls(**params)``, the strict numbers of the spec, the unions (student, datasets, optimizer), the old flat shape
refused naming the new field, stored specs of the flat shape converted by migration 0008, and every job spec shown
in the README and demo/ validating."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import distill.text.adapters as text_adapters
from client.cli import load_spec
from distill.method_params import EXTRA_MODELS, MAIN_MODELS, METHOD_PARAMS
from distill.methods import (AttentionTransfer, CombinedMethod, DecoupledKD, FitNet, HardLabelKD, PrototypeKD, RelationalKD, SoftTargetKD,
                             build_method)
from distill.spec import JobSpec, field_path, parse_method

ROOT = Path(__file__).resolve().parents[2]
BASE = {"teacher": {"file_id": "file_t"}, "student": {"architecture": {"name": "mlp"}}, "data": {"train": {"builtin": "digits"}}}


def job(**over) -> JobSpec:
    return JobSpec.model_validate({**BASE, **over})


def errors(data: dict) -> list[tuple[str | None, str]]:
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate(data)
    return [(field_path(err["loc"]), err["msg"]) for err in e.value.errors()]


# ------------------------------------------------------------------ per-method parameters

@pytest.mark.parametrize("method, field, ok, bad", [
    ("kd", "temperature", 0.5, 0), ("kd", "temperature", 100, 101), ("dkd", "alpha", 1000, -1), ("dkd", "beta", 0, 1001),
    ("dkd", "warmup_epochs", 10, 0), ("attention_transfer", "p", 8, 0), ("attention_transfer", "beta", 1e6, -1),
    ("rkd", "distance_weight", 0, -0.5), ("rkd", "angle_weight", 1e4, 1e5), ("prototype", "temperature", 0.05, 0),
    ("prototype", "mse_weight", 3, -1), ("prototype", "kl_weight", 0, -1), ("embedding", "cosine_weight", 0, -1),
    ("embedding", "mse_weight", 1000, 1001), ("kd", "alpha", 1, 1.5), ("hard_label", "ce_weight", 1000, -1),
])
def test_each_method_checks_the_ranges_of_its_own_parameters(method, field, ok, bad):
    layers = {"student_layer": "1", "teacher_layer": "2"} if method in ("fitnet", "attention_transfer") else {}
    assert getattr(parse_method({"name": method, **layers, field: ok}), field) == ok
    with pytest.raises(ValidationError) as e:
        parse_method({"name": method, **layers, field: bad})
    assert e.value.errors()[0]["loc"][-1] == field


def test_every_method_documents_its_paper_and_each_field():
    for name, params in METHOD_PARAMS.items():
        assert params.paper and re.search(r"(19|20)\d\d|stillhouse", params.paper), name
        for model in (MAIN_MODELS[name], EXTRA_MODELS.get(name)):
            if model is None:
                continue
            assert params.paper in model.__doc__, model.__name__
            for f, info in model.model_fields.items():
                assert info.description, (model.__name__, f)


def test_methods_take_only_their_own_parameters():
    assert set(MAIN_MODELS["kd"].model_fields) == {"name", "temperature", "logit_standardization", "alpha", "ce_weight", "extra"}
    assert set(MAIN_MODELS["hard_label"].model_fields) == {"name", "alpha", "ce_weight", "extra"}
    assert set(MAIN_MODELS["dkd"].model_fields) == {"name", "temperature", "logit_standardization", "alpha", "beta", "warmup_epochs",
                                                    "ce_weight", "extra"}
    assert set(MAIN_MODELS["embedding"].model_fields) == {"name", "cosine_weight", "mse_weight", "hidden_layers", "hidden_weight",
                                                          "attention_layers", "attention_weight"}
    assert set(EXTRA_MODELS["rkd"].model_fields) == {"name", "student_layer", "teacher_layer", "distance_weight", "angle_weight", "weight"}
    assert "embedding" not in EXTRA_MODELS  # embedding does not combine


# ------------------------------------------------------------------ built as cls(**params)

@pytest.mark.parametrize("data, cls, attrs", [
    ({"name": "kd", "temperature": 2, "alpha": 0.3, "logit_standardization": True}, SoftTargetKD,
     {"temperature": 2.0, "alpha": 0.3, "logit_standardization": True, "_ce_weight": 0.7}),
    ({"name": "hard_label", "alpha": 0.6, "ce_weight": 2.0}, HardLabelKD, {"alpha": 0.6, "_ce_weight": 2.0}),
    ({"name": "dkd", "temperature": 3, "alpha": 2, "beta": 5, "warmup_epochs": 4}, DecoupledKD,
     {"temperature": 3.0, "dkd_alpha": 2.0, "dkd_beta": 5.0, "warmup_epochs": 4, "_ce_weight": 1.0}),
    ({"name": "fitnet", "student_layer": "2", "teacher_layer": "10"}, FitNet, {"s_layer": "2", "t_layer": "10"}),
    ({"name": "attention_transfer", "student_layer": "a", "teacher_layer": "b", "p": 3, "beta": 10}, AttentionTransfer,
     {"p": 3.0, "beta": 10.0}),
    ({"name": "rkd", "distance_weight": 1, "angle_weight": 2}, RelationalKD,
     {"distance_weight": 1.0, "angle_weight": 2.0, "s_layer": "penultimate"}),
    ({"name": "prototype", "temperature": 0.3, "mse_weight": 2, "kl_weight": 0}, PrototypeKD,
     {"temperature": 0.3, "mse_weight": 2.0, "kl_weight": 0.0}),
    ({"name": "embedding", "mse_weight": 1, "hidden_layers": [{"student": 0, "teacher": 1}]}, text_adapters.EmbeddingKD,
     {"term_names": ["cosine", "mse", "hidden"]}),
])
def test_methods_are_built_from_their_parameters(data, cls, attrs):
    m = build_method(parse_method(data), has_labels=True)
    assert type(m) is cls and m.name == data["name"] and cls.params_model is METHOD_PARAMS[data["name"]]
    for k, v in attrs.items():
        assert getattr(m, k) == v, k


def test_extras_are_built_from_their_parameters_with_their_weight():
    m = build_method(parse_method({"name": "kd", "extra": [{"name": "rkd", "weight": 0.5, "angle_weight": 3},
                                                            {"name": "dkd", "beta": 2}]}), has_labels=True)
    assert isinstance(m, CombinedMethod)
    rkd, dkd = m.extras
    assert (rkd.angle_weight, rkd.distance_weight, rkd._teacher_weight, rkd.has_labels) == (3.0, 25.0, 0.5, False)
    assert (dkd.dkd_beta, dkd.dkd_alpha) == (2.0, 1.0)
    assert m.term_names == ["kd", "ce", "rkd_distance", "rkd_angle", "tckd", "nckd"]


# ------------------------------------------------------------------ strict numbers, unions, old shapes

def test_numbers_are_strict_and_ints_count_as_floats():
    assert job(method={"name": "kd", "temperature": 4}).method.temperature == 4.0
    assert job(training={"epochs": 3, "max_runtime_s": 60}).training.max_runtime_s == 60.0
    assert job(training={"epochs": 3.0}).training.epochs == 3  # JSON Schema's integer: 3.0 is one
    for over, where in [({"method": {"name": "kd", "temperature": True}}, "method.temperature"),
                        ({"method": {"name": "kd", "temperature": "4"}}, "method.temperature"),
                        ({"training": {"epochs": "3"}}, "training.epochs"), ({"training": {"epochs": 2.5}}, "training.epochs"),
                        ({"training": {"optimizer": {"lr": "1e-3"}}}, "training.optimizer.lr"),
                        ({"method": {"name": "kd", "logit_standardization": 1}}, "method.logit_standardization")]:
        assert errors({**BASE, **over})[0][0] == where, over


def test_the_schema_states_every_bound_in_json_schema_words():
    """Pydantic writes a bound it cannot place as a raw 'ge'/'le' key, which JSON Schema ignores (a fuzzer then sends 0)."""
    text = json.dumps(JobSpec.model_json_schema())
    assert not re.search(r'"(ge|le|gt|lt)": ', text)
    assert '"minimum": 1' in text and '"pattern": "^[^\\\\x00]*$"' in text


def test_momentum_only_with_sgd():
    assert job(training={"optimizer": {"name": "sgd", "momentum": 0.5}}).training.optimizer.momentum == 0.5
    assert job(training={"optimizer": {"lr": 0.01}}).training.optimizer.name == "adamw"  # the default when name is left out
    assert errors({**BASE, "training": {"optimizer": {"name": "adamw", "momentum": 0.9}}})[0] == (
        "training.optimizer.momentum", "Extra inputs are not permitted")
    assert errors({**BASE, "training": {"optimizer": {"momentum": 0.9}}})[0][0] == "training.optimizer.momentum"


def test_student_and_datasets_are_exactly_one_of_their_kinds():
    assert job().student.architecture.name == "mlp" and job().student.from_teacher is None
    derived = job(student={"from_teacher": {"keep_layers": [3, 1]}})
    assert derived.student.architecture is None and derived.student.from_teacher.keep_layers == [1, 3]
    assert errors({**BASE, "student": {}})[0][0] == "student.architecture"
    assert errors({**BASE, "student": {"architecture": {"name": "mlp"}, "from_teacher": {"num_layers": 2}}})[0][0] == "student.architecture"
    assert errors({**BASE, "student": {"from_teacher": {"keep_layers": [1, 1]}}})[0][1].endswith("must not repeat a layer")
    assert errors({**BASE, "data": {"train": {}}})[0][0] == "data.train.builtin"
    assert errors({**BASE, "data": {"train": {"builtin": "digits", "file_id": "file_x"}}})[0][0] == "data.train.builtin"
    assert job(data={"train": {"file_id": "file_x", "label_column": "y"}}).data.train.builtin is None


def test_old_flat_fields_get_a_422_naming_the_new_field():
    cases = [({"method": {"name": "dkd", "dkd_beta": 3}}, "use 'beta' under method 'dkd'"),
             ({"method": {"name": "kd", "extra": [{"name": "attention_transfer", "at_p": 3}]}}, "use 'p' under method 'attention_transfer'"),
             ({"method": {"name": "rkd", "rkd_distance_weight": 3}}, "use 'distance_weight' under method 'rkd'"),
             ({"task": "sentence_embedding", "embedding": {"mse_weight": 1.0}}, "method: {name: embedding, cosine_weight"),
             ({"method": {"temperature": 2.0}}, "method needs 'name'")]
    for over, words in cases:
        (_, msg), *_ = errors({**BASE, **over})
        assert words in msg, (over, msg)


def test_a_sentence_embedding_spec_without_a_method_gets_embedding():
    s = job(task="sentence_embedding", student={"from_teacher": {"num_layers": 2}})
    assert s.method.name == "embedding" and s.method.cosine_weight == 1.0
    assert job().method.name == "auto" and "method" not in job().model_fields_set


def test_a_full_dump_validates_again():
    for over in ({"method": {"name": "kd", "extra": [{"name": "fitnet", "student_layer": "1", "teacher_layer": "2"}]}},
                 {"method": {"name": "dkd", "beta": 2}, "training": {"optimizer": {"name": "sgd"}}},
                 {"task": "sentence_embedding", "student": {"from_teacher": {"num_layers": 1}},
                  "method": {"name": "embedding", "hidden_layers": [{"student": 0, "teacher": 1}]}}):
        s = job(**over)
        assert JobSpec.model_validate(s.model_dump(mode="json")) == s
        assert JobSpec.model_validate_json(s.model_dump_json()) == s


# ------------------------------------------------------------------ stored specs of the flat shape (migration 0008)

def _migration():
    path = ROOT / "migrations" / "versions" / "0008_method_params.py"
    spec = importlib.util.spec_from_file_location("m0008", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_migration_converts_stored_flat_specs():
    stored = json.loads((ROOT / "tests" / "fixtures" / "stored_specs_0005.json").read_text())  # model_dump()s of the old JobSpec
    convert = _migration().convert
    new = {k: JobSpec.model_validate(convert(v)) for k, v in stored.items()}
    for k, s in new.items():
        assert convert(s.model_dump(mode="json")) == s.model_dump(mode="json"), k  # converting twice changes nothing
    kd = new["kd_fitnet"].method
    assert (kd.name, kd.temperature, kd.alpha) == ("kd", 2.0, 0.8)
    assert [(e.name, e.weight) for e in kd.extra] == [("fitnet", 2.0), ("rkd", 1.0)] and kd.extra[1].angle_weight == 10.0
    dkd = new["dkd"]
    assert dkd.method.params() == {"temperature": 2.0, "logit_standardization": False, "alpha": 2.0, "beta": 4.0, "warmup_epochs": 3,
                                   "ce_weight": 0.5}
    assert dkd.training.optimizer.momentum == 0.8
    assert "momentum" not in new["hard_label"].training.optimizer.model_dump()
    assert (new["prototype"].method.temperature, new["prototype"].method.kl_weight) == (0.3, 2.0)
    assert (new["attention_transfer"].method.p, new["attention_transfer"].method.beta) == (3.0, 10.0)
    assert new["attention_transfer"].data.train.label_column == "y"
    emb = new["embedding_explicit"].method
    assert (emb.name, emb.mse_weight, emb.hidden_layers[0].teacher) == ("embedding", 1.0, 2)
    assert new["embedding_auto"].method.name == "embedding" and new["embedding_auto"].method.cosine_weight == 0.5
    assert new["seqcls_auto"].method.name == "kd" and new["seqcls_auto"].method.temperature == 3.0


def test_migration_converts_stored_flat_causal_lm_specs():
    """model_dump()s of branch lm's flat JobSpec (at 885c6b8, before it merged): gkd's flat beta moves under gkd,
    seqkd loses alpha/ce_weight/extra, which it has no longer; the stored temperature stays."""
    stored = json.loads((ROOT / "tests" / "fixtures" / "stored_specs_lm.json").read_text())
    convert = _migration().convert
    new = {k: JobSpec.model_validate(convert(v)) for k, v in stored.items()}
    for k, s in new.items():
        assert convert(s.model_dump(mode="json")) == s.model_dump(mode="json"), k
        assert s.task == "causal_lm" and s.cache.top_k == 16
    assert new["lm_gkd"].method.params() == {"temperature": 4.0, "beta": 0.3, "alpha": 0.8, "ce_weight": None}
    assert new["lm_reverse_kl"].method.params() == {"temperature": 2.0, "alpha": 0.7, "ce_weight": 0.2}
    assert new["lm_seqkd"].method.params() == {} and new["lm_seqkd"].data.generation.max_new_tokens == 6
    assert (new["lm_kd_default"].method.name, new["lm_kd_default"].method.alpha) == ("kd", 0.5)


# ------------------------------------------------------------------ the README's and demo/'s specs

def _readme_specs() -> list[tuple[str, dict]]:
    text = (ROOT / "README.md").read_text()
    found = []
    for lang, body in re.findall(r"```(yaml|json)\n(.*?)```", text, flags=re.S):
        try:
            data = yaml.safe_load(body.replace("file_…", "file_x"))  # JSON is YAML; 'file_…' stands for an upload's id
        except yaml.YAMLError:
            if lang == "json":  # a fragment of a response, not a spec
                continue
            raise
        if isinstance(data, dict) and ({"teacher", "method", "training", "student"} & set(data)):
            found.append((body.splitlines()[0], data))
    return found


def _as_uploaded(data):
    """The spec the CLI posts: every ``path:`` (a local file it uploads first) becomes a ``file_id``."""
    if isinstance(data, dict):
        return {("file_id" if k == "path" else k): ("file_x" if k == "path" else _as_uploaded(v)) for k, v in data.items()}
    return data


def test_every_spec_in_the_readme_and_demo_validates():
    specs = _readme_specs()
    assert len(specs) >= 3  # the job spec, the methods example, the text example
    specs.append(("demo/spec.yaml", yaml.safe_load((ROOT / "demo" / "spec.yaml").read_text())))
    for first_line, data in specs:
        data = _as_uploaded(data)
        if "teacher" not in data:  # a fragment: completed with a teacher, student and data
            data = {**BASE, **data}
        try:
            JobSpec.model_validate(data)
        except ValidationError as e:
            raise AssertionError(f"README spec starting {first_line!r} does not validate: {e}") from e


def test_the_cli_reads_yaml_exponents_as_numbers(tmp_path):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); with strict numbers the spec would refuse it."""
    path = tmp_path / "spec.yaml"
    path.write_text("teacher: {file_id: file_t}\nstudent: {architecture: {name: mlp}}\ndata: {train: {builtin: digits}}\n"
                    "training: {epochs: 1e1, optimizer: {lr: 1e-3}}\nname: '1e-3'\n")
    spec = JobSpec.model_validate(load_spec(path))
    assert (spec.training.optimizer.lr, spec.training.epochs, spec.name) == (0.001, 10, "1e-3")


def test_dict_key_rules_reach_json_schema_validators():
    """Pydantic writes a dict's key pattern as patternProperties, which lets any other key through a JSON Schema
    validator; ``dict_keys_as_property_names`` (every spec model, sweeps and job metadata) writes it as propertyNames,
    so a validator refuses the keys pydantic refuses."""
    from typing import Annotated

    import jsonschema_rs
    from pydantic import Field

    from app.jobs.schemas import JobCreate
    from distill.method_params import SpecModel
    from stillhouse.sweeps.spec import SweepSpec

    class Labels(SpecModel):
        by_name: dict[Annotated[str, Field(pattern="^[a-z]+$", max_length=3)], int]

    schema = Labels.model_json_schema()
    assert "patternProperties" not in json.dumps(schema)
    ok = jsonschema_rs.validator_for(schema).is_valid
    assert ok({"by_name": {"ab": 1}}) and not ok({"by_name": {"AB": 1}}) and not ok({"by_name": {"abcd": 1}})
    assert not ok({"by_name": {"ab": "x"}})  # the values keep their schema
    for bad in ({"AB": 1}, {"abcd": 1}, {"ab": "x"}):
        with pytest.raises(ValidationError):
            Labels.model_validate({"by_name": bad})
    sweep = SweepSpec.model_json_schema()
    assert sweep["properties"]["search_space"]["propertyNames"]["pattern"] == r"^[a-z_]+(\.[A-Za-z0-9_]+)+$"
    meta = JobCreate.model_json_schema()["properties"]["metadata"]
    assert meta["propertyNames"] == {"minLength": 1, "maxLength": 64, "pattern": "^[^\\x00]*$"}
    with pytest.raises(ValidationError):
        JobCreate.model_validate({**BASE, "metadata": {"a\x00": "x"}})
    assert "patternProperties" not in json.dumps([sweep, JobSpec.model_json_schema()])
