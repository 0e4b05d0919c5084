"""``/v1/jobs``: spec validation (unknown fields, ranges, references), the state machine seen from the
API (cancel), lists and the sub-resources' errors. No worker runs here; tests/e2e covers execution."""

from __future__ import annotations

import warnings

import pytest
import torch

from distill.models import build

from tests.specs import override

from tests import files as mk
from tests.api.test_files import assert_error, upload


@pytest.fixture
async def teacher_id(api, tmp_path) -> str:
    return (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]


def spec_for(teacher_id: str, **over) -> dict:
    spec = {
        "name": "t",
        "teacher": {"file_id": teacher_id},
        "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [8]}}},
        "data": {"train": {"builtin": "digits"}},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "training": {"epochs": 1},
    }
    return override(spec, **over)


async def test_create_read_list(api, teacher_id):
    resp = await api.post("/v1/jobs", json=spec_for(teacher_id))
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["id"].startswith("job_") and job["status"] == "queued" and job["attempt"] == 0
    # defaults are filled in and echoed
    assert job["spec"]["training"]["batch_size"] == 64 and job["spec"]["data"]["validation"]["fraction"] == 0.2
    got = (await api.get(f"/v1/jobs/{job['id']}")).json()
    assert got["id"] == job["id"] and got["timings"]["queued_s"] >= 0
    listed = (await api.get("/v1/jobs", params={"status": "queued"})).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    assert (await api.get("/v1/jobs", params={"status": "running"})).json()["data"] == []
    events = (await api.get(f"/v1/jobs/{job['id']}/events")).json()["data"]
    assert events[0]["type"] == "status" and events[0]["data"]["status"] == "queued"


@pytest.mark.parametrize("path,value,param", [
    ("method.temperature", 0, "method.temperature"),
    ("method.temperature", -1.5, "method.temperature"),
    ("method.alpha", 1.5, "method.alpha"),
    ("method.alpha", -0.1, "method.alpha"),
    ("training.epochs", 0, "training.epochs"),
    ("training.batch_size", 0, "training.batch_size"),
    ("training.optimizer", {"name": "adamw", "lr": 0}, "training.optimizer.lr"),
    ("training.device", "tpu", "training.device"),
    ("method.name", "magic", "method.name"),
    ("data.validation", {"fraction": 1.0}, "data.validation.fraction"),
    ("data.train", {"builtin": "imagenet"}, "data.train.builtin"),
])
async def test_out_of_range_numbers_and_bad_choices_get_422_naming_the_field(api, teacher_id, path, value, param):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{path: value})), 422, "invalid_request")
    assert err["param"] == param, err


async def test_a_spec_without_a_method_gets_auto(api, teacher_id):
    spec = spec_for(teacher_id)
    del spec["method"]
    job = await api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["method"] == {"name": "auto", "selection_budget": 0.5}
    err = assert_error(await api.post("/v1/jobs", json={**spec, "method": {"name": "auto", "alpha": 0.5}}), 422)
    assert err["param"] == "method.alpha", err
    err = assert_error(await api.post("/v1/jobs", json={**spec, "method": {"name": "auto", "selection_budget": 2}}), 422)
    assert err["param"] == "method.selection_budget", err


async def test_unknown_fields_are_rejected(api, teacher_id):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.epochz": 3})), 422)
    assert err["param"] == "training.epochz" and "unknown field" in err["message"]
    err = assert_error(await api.post("/v1/jobs", json={**spec_for(teacher_id), "extra": 1}), 422)
    assert err["param"] == "extra"


async def test_dataset_needs_exactly_one_source(api, teacher_id):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.train": {}})), 422)
    assert err["param"] == "data.train.builtin" and "required" in err["message"]
    both = {"builtin": "digits", "file_id": teacher_id}
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.train": both})), 422)
    assert err["param"] == "data.train.builtin" and "unknown field" in err["message"]


async def test_student_needs_exactly_one_kind(api, teacher_id):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, student={})), 422)
    assert err["param"] == "student.architecture" and "required" in err["message"]


@pytest.mark.parametrize("path,value,param,words", [
    ("method", {"name": "dkd", "dkd_beta": 3.0}, "method", "use 'beta' under method 'dkd'"),
    ("method", {"name": "kd", "extra": [{"name": "rkd", "rkd_angle_weight": 3}]}, "method", "use 'angle_weight' under method 'rkd'"),
    ("embedding", {"cosine_weight": 1.0}, None, "method: {name: embedding"),
    ("method", {"temperature": 4.0}, "method", "needs 'name'"),
    ("method", {"name": "kd", "beta": 8.0}, "method.beta", "unknown field"),
    ("method", {"name": "kd", "extra": [{"name": "fitnet", "student_layer": "1", "teacher_layer": "2", "alpha": 0.5}]},
     "method.extra.0.alpha", "unknown field"),
    ("method.temperature", True, "method.temperature", "valid number"),
    ("method.temperature", "4", "method.temperature", "valid number"),
    ("training.epochs", "2", "training.epochs", "valid integer"),
    ("training.optimizer", {"name": "adamw", "momentum": 0.9}, "training.optimizer.momentum", "unknown field"),
])
async def test_old_shapes_and_loose_numbers_get_422_naming_the_field(api, teacher_id, path, value, param, words):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{path: value})), 422, "invalid_request")
    assert err["param"] == param and words in err["message"], err


async def test_each_method_own_parameters_are_accepted_and_echoed(api, teacher_id):
    method = {"name": "dkd", "temperature": 2, "alpha": 2.0, "beta": 4.0, "warmup_epochs": 3}
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id, method=method, **{"training.optimizer": {"name": "sgd", "momentum": 0.5}})))
    assert job.status_code == 201, job.text
    spec = job.json()["spec"]
    assert spec["method"] == {**method, "temperature": 2.0, "logit_standardization": False, "ce_weight": None, "extra": []}
    assert spec["training"]["optimizer"] == {"name": "sgd", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.5}  # a registry student's default lr
    assert (await api.get(f"/v1/jobs/{job.json()['id']}")).json()["spec"] == spec


def test_openapi_has_one_schema_per_method_discriminated_by_name():
    from app.main import create_app
    from distill.method_params import EXTRA_MODELS, MAIN_MODELS

    doc = create_app(auto_migrate=False).openapi()
    schemas = doc["components"]["schemas"]
    field = schemas["JobCreate"]["properties"]["method"]
    assert field["discriminator"]["propertyName"] == "name"
    assert field["discriminator"]["mapping"] == {n: f"#/components/schemas/{m.__name__}" for n, m in MAIN_MODELS.items()}
    assert {r["$ref"] for r in field["oneOf"]} == set(field["discriminator"]["mapping"].values())
    dkd = schemas["DKDMethod"]
    assert {"alpha", "beta", "warmup_epochs", "temperature", "ce_weight", "extra"} <= set(dkd["properties"]) and dkd["required"] == ["name"]
    assert "dkd_beta" not in dkd["properties"] and dkd["additionalProperties"] is False and "Zhao" in dkd["description"]
    assert "temperature" not in schemas["HardLabelMethod"]["properties"]
    assert set(schemas["FitNetMethod"]["required"]) == {"name", "student_layer", "teacher_layer"}
    assert schemas["EmbeddingMethod"]["properties"].keys() >= {"cosine_weight", "hidden_layers"}
    extra = schemas["KDMethod"]["properties"]["extra"]["items"]
    assert extra["discriminator"]["mapping"] == {n: f"#/components/schemas/{m.__name__}" for n, m in EXTRA_MODELS.items()}
    student = schemas["JobCreate"]["properties"]["student"]
    kinds = {r["$ref"].rsplit("/", 1)[1] for r in student["oneOf"]}  # '-Input': FastAPI's name for the request side
    assert kinds == {"ArchitectureStudent-Input", "DerivedStudent-Input"}
    assert schemas["ArchitectureStudent-Input"]["required"] == ["architecture"]
    optimizer = schemas["TrainingSpec"]["properties"]["optimizer"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in optimizer["oneOf"]} == {"AdamWSpec", "SGDSpec"}
    assert "momentum" not in schemas["AdamWSpec"]["properties"]


async def test_references_must_exist_and_have_the_right_purpose(api, teacher_id, tmp_path):
    err = assert_error(await api.post("/v1/jobs", json=spec_for("file_doesnotexist")), 422, "file_not_found")
    assert err["param"] == "teacher.file_id"
    data_id = (await upload(api, mk.npz_file(tmp_path), purpose="dataset")).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(data_id)), 422, "wrong_file_purpose")
    assert "dataset" in err["message"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.train": {"file_id": teacher_id}})), 422,
                       "wrong_file_purpose")
    assert err["param"] == "data.train.file_id"


async def test_weights_only_teacher_needs_an_architecture(api, tmp_path):
    bare = (await upload(api, mk.safetensors_file(tmp_path, with_metadata=False))).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(bare)), 422)
    assert err["param"] == "teacher.architecture"
    ok = spec_for(bare, **{"teacher.architecture": mk.MLP})
    assert (await api.post("/v1/jobs", json=ok)).status_code == 201


async def test_unknown_architecture_and_kwargs(api, teacher_id):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"student.architecture": {"name": "gpt9"}})), 422)
    assert err["param"] == "student.architecture.name" and "mlp" in err["message"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(
        teacher_id, **{"student.architecture": {"name": "mlp", "kwargs": {"hidden": [3]}}})), 422)
    assert "hidden" in err["message"]


async def test_forced_teacher_format_must_match(api, teacher_id):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"teacher.format": "onnx"})), 422)
    assert err["param"] == "teacher.format"


async def test_transfer_set_must_be_unlabelled(api, teacher_id, tmp_path):
    labelled = (await upload(api, mk.npz_file(tmp_path), purpose="dataset")).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.transfer": {"file_id": labelled}})), 422)
    assert err["param"] == "data.transfer.file_id"
    raw = (await upload(api, mk.npz_file(tmp_path, labels=False, name="raw.npz"), purpose="dataset")).json()["id"]
    assert (await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.transfer": {"file_id": raw}}))).status_code == 201


async def test_cancel_queued_job_and_finished_job(api, teacher_id):
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    resp = await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled" and resp.json()["finished_at"]
    err = assert_error(await api.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_not_cancellable")
    assert "cancelled" in err["message"]


async def test_file_in_use_by_live_job_cannot_be_deleted(api, teacher_id):
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    assert_error(await api.delete(f"/v1/files/{teacher_id}"), 409, "file_in_use")
    await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert (await api.delete(f"/v1/files/{teacher_id}")).status_code == 200


async def test_sub_resources_of_unknown_job_are_404_and_report_is_409_until_done(api, teacher_id):
    for sub in ("", "/events", "/metrics", "/report", "/artifacts", "/artifacts/student.onnx"):
        assert_error(await api.get(f"/v1/jobs/job_nope{sub}"), 404, "not_found")
    assert_error(await api.post("/v1/jobs/job_nope/cancel"), 404, "not_found")
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    assert_error(await api.get(f"/v1/jobs/{job['id']}/report"), 409, "report_not_ready")
    assert (await api.get(f"/v1/jobs/{job['id']}/artifacts")).json()["data"] == []
    assert_error(await api.get(f"/v1/jobs/{job['id']}/artifacts/student.onnx"), 404)


async def test_unknown_route_and_method_use_the_error_shape(api):
    assert_error(await api.get("/v1/nothing"), 404, "not_found")
    assert_error(await api.put("/v1/jobs"), 405, "method_not_allowed")
    assert_error(await api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422)


async def test_health_and_ready(api):
    assert (await api.get("/healthz")).json()["status"] == "ok"
    ready = await api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "artifact_store": "ok"}


async def test_readyz_reports_an_unreachable_broker(api, monkeypatch):
    from stillhouse.jobs.queue import _celery_for
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_BROKER_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    _celery_for.cache_clear()
    err = assert_error(await api.get("/readyz"), 503, "unavailable")
    assert "broker" in err["message"]


async def test_openapi_documents_every_field(api):
    schema = (await api.get("/openapi.json")).json()
    undocumented = []
    for name, comp in schema["components"]["schemas"].items():
        for field, prop in comp.get("properties", {}).items():
            if "description" not in prop and name not in ("ValidationError", "HTTPValidationError"):
                undocumented.append(f"{name}.{field}")
    assert undocumented == []
    assert "multipart/form-data" in schema["paths"]["/v1/files"]["post"]["requestBody"]["content"]


async def test_cancel_of_a_running_job_goes_through_cancelling(api, teacher_id):
    """running -> cancelling (the worker then stops at its next step and moves it to cancelled)."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states

    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    with session_scope() as s:
        assert states.transition(s, job["id"], states.RUNNING, attempt=1)
    resp = await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
    again = await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelling"
    messages = [e["message"] for e in (await api.get(f"/v1/jobs/{job['id']}/events")).json()["data"]]
    assert "cancel requested; stopping at the next step" in messages
    assert not any("before it started" in m for m in messages)


async def test_cursor_errors(api, teacher_id):
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    for path in (f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{job['id']}/metrics"):
        err = assert_error(await api.get(path, params={"after": 2**63}), 422)
        assert err["param"] == "after"
        assert (await api.get(path, params={"after": 2**63 - 1})).json()["data"] == []
    for path in ("/v1/jobs", "/v1/files"):  # an id no object has: 404, as the object itself would be
        err = assert_error(await api.get(path, params={"after": "garbage"}), 404, "not_found")
        assert err["param"] == "after"


async def test_body_errors_say_what_is_wrong(api):
    err = assert_error(await api.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}), 422)
    assert "not valid JSON" in err["message"] and err["param"] is None
    err = assert_error(await api.post("/v1/jobs"), 422)
    assert "body is required" in err["message"]


async def test_validation_fraction_cannot_be_null(api, teacher_id):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.validation": {"fraction": None}})), 422)
    assert err["param"] == "data.validation.fraction"


async def test_label_column_must_exist_in_the_csv(api, teacher_id, tmp_path):
    csv_id = (await upload(api, mk.csv_file(tmp_path), purpose="dataset")).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(
        teacher_id, **{"data.train": {"file_id": csv_id, "label_column": "nope"}})), 422)
    assert err["param"] == "data.train.label_column" and "f0" in err["message"]
    npz_id = (await upload(api, mk.npz_file(tmp_path), purpose="dataset")).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(
        teacher_id, **{"data.train": {"file_id": npz_id, "label_column": "target"}})), 422)
    assert "CSV files only" in err["message"]
    ok = spec_for(teacher_id, **{"data.train": {"file_id": csv_id, "label_column": "f3"}})
    assert (await api.post("/v1/jobs", json=ok)).status_code == 201


async def test_file_deleted_while_the_job_is_created(api, teacher_id, tmp_path, monkeypatch):
    """The race between DELETE /v1/files and POST /v1/jobs ends in a clean 422, not a 500."""
    from stillhouse.db import session_scope
    from app.jobs import service
    from stillhouse.models import File

    data_id = (await upload(api, mk.npz_file(tmp_path), purpose="dataset")).json()["id"]
    original = service.validate_references

    def racing(session, spec, tenant_id):
        files = original(session, spec, tenant_id)
        with session_scope() as other:  # a concurrent DELETE commits here
            other.delete(other.get(File, data_id))
        return files

    monkeypatch.setattr(service, "validate_references", racing)
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"data.train": {"file_id": data_id}})), 422,
                       "file_not_found")
    assert "deleted" in err["message"]
    assert (await api.get("/v1/jobs")).json()["data"] == []


async def test_artifact_download_ranges(api, backend, teacher_id):
    from stillhouse.db import session_scope
    from stillhouse.models import Artifact

    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    key = f"jobs/{job['id']}/artifacts/student.json"
    path = backend.data_dir / key
    path.parent.mkdir(parents=True)
    payload = b'{"hello": "world", "n": 12345}'
    path.write_bytes(payload)
    import hashlib

    sha = hashlib.sha256(payload).hexdigest()
    with session_scope() as s:
        s.add(Artifact(job_id=job["id"], name="student.json", bytes=len(payload), sha256=sha,
                       content_type="application/json", storage_key=key))
    url = f"/v1/jobs/{job['id']}/artifacts/student.json"
    full = await api.get(url)
    assert full.status_code == 200 and full.content == payload and full.headers["etag"] == f'"{sha}"'
    assert full.headers["content-length"] == str(len(payload))
    part = await api.get(url, headers={"Range": "bytes=2-6"})
    assert part.status_code == 206 and part.content == payload[2:7]
    for bad in ("bytes=9-0", "bytes=abc", "items=0-1"):
        resp = await api.get(url, headers={"Range": bad})
        assert resp.status_code == 200 and resp.content == payload, bad
    err = assert_error(await api.get(url, headers={"Range": "bytes=5000-6000"}), 416, "range_not_satisfiable")
    assert err["param"] == "Range"


async def test_artifact_whose_bytes_are_missing_is_a_clear_503(api, backend, teacher_id):
    """A recorded artifact whose file is not in this API's storage (data dir not shared, file removed by hand)."""
    from stillhouse.db import session_scope
    from stillhouse.models import Artifact

    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    with session_scope() as s:
        s.add(Artifact(job_id=job["id"], name="student.onnx", bytes=10, sha256="0" * 64,
                       content_type="application/octet-stream", storage_key=f"jobs/{job['id']}/artifacts/student.onnx"))
    err = assert_error(await api.get(f"/v1/jobs/{job['id']}/artifacts/student.onnx"), 503, "artifact_unavailable")
    assert "STILLHOUSE_DATA_DIR" in err["message"]


async def test_a_student_too_large_to_train_is_refused_at_creation(api, teacher_id, monkeypatch):
    """Each width is in range, but two 1M-wide layers make a 10^12-parameter student: 422 naming the parameter count."""
    err = assert_error(await api.post("/v1/jobs", json=spec_for(
        teacher_id, **{"student.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [1_000_000, 1_000_000]}}})), 422,
        "student_too_large")
    assert err["param"] == "student.architecture" and "STILLHOUSE_MAX_STUDENT_PARAMETERS" in err["message"]
    monkeypatch.setenv("STILLHOUSE_MAX_STUDENT_PARAMETERS", "600")  # mlp [8] on digits: 610
    from stillhouse.settings import get_settings

    get_settings.cache_clear()
    assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id)), 422, "student_too_large")
    monkeypatch.setenv("STILLHOUSE_MAX_STUDENT_PARAMETERS", "610")
    get_settings.cache_clear()
    assert (await api.post("/v1/jobs", json=spec_for(teacher_id))).status_code == 201


@pytest.mark.parametrize("kwargs,needle", [
    ({"hidden_sizes": [-3]}, "hidden_sizes"), ({"hidden_sizes": "x"}, "hidden_sizes"), ({"hidden_sizes": [10**9]}, "hidden_sizes"),
    ({"activation": "bogus"}, "activation"), ({"dropout": 5}, "dropout"),
])
async def test_architecture_values_are_checked_at_creation(api, teacher_id, kwargs, needle):
    err = assert_error(await api.post("/v1/jobs", json=spec_for(
        teacher_id, **{"student.architecture": {"name": "mlp", "kwargs": kwargs}})), 422)
    assert err["param"] == f"student.architecture.kwargs.{needle}", err


async def test_cnn_student_needs_an_image_shape(api, tmp_path):
    """The teacher file says its input is [1, 8, 8]; a cnn student given a flat shape is refused at once."""
    teacher = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(
        teacher, **{"student.architecture": {"name": "cnn", "kwargs": {"input_shape": [64], "channels": [4]}}})), 422)
    assert "input_shape" in err["param"]
    ok = spec_for(teacher, **{"student.architecture": {"name": "cnn", "kwargs": {"channels": [4, 8], "hidden": 16}}})
    assert (await api.post("/v1/jobs", json=ok)).status_code == 201


async def test_feature_method_layers_are_checked_at_creation_on_every_format(api, teacher_id, tmp_path):
    def fitnet(student: str, teacher: str) -> dict:
        return {"name": "kd", "extra": [{"name": "fitnet", "weight": 1.0, "student_layer": student, "teacher_layer": teacher}]}

    # a student layer that does not exist: 422 at creation, naming the student and its layers (was: 201, then a
    # failed job that did not say which model)
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, method=fitnet("99", "1"))), 422)
    assert err["param"] == "method.extra.0.student_layer" and "the student (mlp) has no layer '99'" in err["message"]
    assert "its layers are: 0, 1, 2, 3, penultimate" in err["message"]
    for maker in (mk.onnx_file, mk.torchscript_file, mk.torch_export_file):
        fid = (await upload(api, maker(tmp_path))).json()["id"]
        assert (await api.post("/v1/jobs", json=spec_for(fid, method=fitnet("0", "1")))).status_code == 201
        err = assert_error(await api.post("/v1/jobs", json=spec_for(fid, method=fitnet("0", "l1"))), 422)
        assert err["param"] == "method.extra.0.teacher_layer" and f"the teacher (file {fid}" in err["message"]
        assert "no layer 'l1'" in err["message"] and "nearest: 1" in err["message"]
    prototype = spec_for(teacher_id, method={"name": "prototype", "student_layer": "3x"})
    err = assert_error(await api.post("/v1/jobs", json=prototype), 422)
    assert err["param"] == "method.student_layer" and "nearest: 3" in err["message"]


async def test_a_teacher_with_more_classes_than_the_data_needs_the_students_num_classes(api, tmp_path):
    torch.manual_seed(0)
    twelve = tmp_path / "twelve.onnx"  # a 12-output mlp as ONNX: its output count is known at upload
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build("mlp", {"input_shape": [1, 8, 8], "num_classes": 12, "hidden_sizes": [8]}).eval(),
                          (torch.zeros(1, 1, 8, 8),), str(twelve), dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "b"}})
    fid = (await upload(api, twelve)).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(fid)), 422)
    assert err["param"] == "student.architecture.kwargs.num_classes" and "12 classes" in err["message"] and "has 10" in err["message"]
    for k in (12, 10):
        ok = spec_for(fid, **{"student.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [8], "num_classes": k}}})
        assert (await api.post("/v1/jobs", json=ok)).status_code == 201


async def test_sql_reporter_discards_only_the_given_splits(api, teacher_id):
    from stillhouse.db import session_factory
    from distill.reporter import MetricRow
    from stillhouse.jobs.reporter import SqlReporter

    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    rep = SqlReporter(session_factory(), job["id"], interval_s=0)
    rep.metrics([MetricRow("top1", split, 10 * e, e, 0.5) for split in ("val", "baseline_val") for e in (1, 2, 3)])
    rep.flush()
    rep.discard_metrics_after(1, ["baseline_val"])
    rows = (await api.get(f"/v1/jobs/{job['id']}/metrics")).json()["data"]
    assert sorted((r["split"], r["epoch"]) for r in rows) == [("baseline_val", 1), ("val", 1), ("val", 2), ("val", 3)]
    rep.discard_metrics_after(2)
    rows = (await api.get(f"/v1/jobs/{job['id']}/metrics")).json()["data"]
    assert sorted((r["split"], r["epoch"]) for r in rows) == [("baseline_val", 1), ("val", 1), ("val", 2)]


@pytest.mark.parametrize("content_type,body", [("text/plain", '{"name": "x"}'), ("application/yaml", "name: x\n"),
                                               ("application/x-www-form-urlencoded", "name=x")])
async def test_a_job_spec_in_another_content_type_says_json_is_expected(api, content_type, body):
    err = assert_error(await api.post("/v1/jobs", content=body, headers={"Content-Type": content_type}), 422, "invalid_request")
    assert "application/json" in err["message"], err


async def test_compare_baseline_true_on_sentence_embedding_is_refused_naming_the_field(api, tiny_encoder_dir):
    """A sentence-embedding student has no labels to learn from alone: compare_baseline true is a 422 on that field (it was
    silently ignored), for task sentence_embedding and for task auto resolved to it; unset or false is accepted."""
    from tests.models import zip_folder

    archive = zip_folder(tiny_encoder_dir, tiny_encoder_dir.parent / "enc.zip", prefix="enc/")
    tid = (await upload(api, archive)).json()["id"]
    base = {"teacher": {"file_id": tid}, "student": {"from_teacher": {"num_layers": 2}},
            "data": {"train": {"builtin": "rotten_tomatoes"}}, "training": {"epochs": 1}}
    for task in ("sentence_embedding", "auto"):
        err = assert_error(await api.post("/v1/jobs", json={**base, "task": task, "evaluation": {"compare_baseline": True}}), 422)
        assert err["param"] == "evaluation.compare_baseline", err
        assert "sentence_embedding" in err["message"] and "no labels" in err["message"]
    for asked in (False, None):
        resp = await api.post("/v1/jobs", json={**base, "task": "sentence_embedding", "evaluation": {"compare_baseline": asked}})
        assert resp.status_code == 201, resp.text
