"""Causal-LM uploads and jobs over HTTP: a GGUF file and a Hugging Face causal-LM archive are accepted and described,
a causal_lm job naming one is accepted (task 'auto' resolves to causal_lm), and specs that do not suit a language
model are refused with a 422 naming the field."""

from __future__ import annotations

import json

import pytest

from tests import files as mk
from tests.api.test_files import assert_error, upload
from tests.api.test_jobs import spec_for


def lm_job(teacher_id: str, **over) -> dict:
    s = {"teacher": {"file_id": teacher_id}, "student": {"from_teacher": {"num_layers": 2}},
         "data": {"train": {"builtin": "rotten_tomatoes"}}}
    s.update(over)
    return s


@pytest.mark.parametrize("fixture,fmt", [("tiny_llama_gguf", "gguf"), ("tiny_llama_zip", "hf")])
async def test_causal_lm_teacher_upload_and_job_accepted(api, request, fixture, fmt):
    resp = await upload(api, request.getfixturevalue(fixture))
    assert resp.status_code == 201, resp.text
    f = resp.json()
    assert f["format"] == fmt and f["details"]["task"] == "causal_lm" and f["parameters"] > 0
    resp = await api.post("/v1/jobs", json=lm_job(f["id"], method={"name": "gkd", "beta": 0.2}, cache={"top_k": 8}))
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["spec"]["task"] == "auto" and job["spec"]["cache"]["top_k"] == 8
    assert job["spec"]["method"] == {"name": "gkd", "beta": 0.2, "temperature": 1.0, "alpha": 0.9, "ce_weight": None}
    for given, stored in ((None, 1.0), (3.0, 3.0)):  # kd's own default is 4 (class logits); an LM job's is 1, stored as such
        method = {"name": "kd", **({"temperature": given} if given else {})}
        resp = await api.post("/v1/jobs", json=lm_job(f["id"], method=method))
        assert resp.status_code == 201, resp.text
        got = (await api.get(f"/v1/jobs/{resp.json()['id']}")).json()["spec"]["method"]
        assert got["temperature"] == stored and "beta" not in got
    resp = await api.post("/v1/jobs", json=lm_job(f["id"]))  # no method (auto): task auto resolves to causal_lm -> kd at T=1
    assert resp.status_code == 201, resp.text
    got = (await api.get(f"/v1/jobs/{resp.json()['id']}")).json()["spec"]["method"]
    assert got["name"] == "kd" and got["temperature"] == 1.0


async def test_causal_lm_job_refusals(api, tiny_llama_gguf, tmp_path):
    tid = (await upload(api, tiny_llama_gguf)).json()["id"]
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"sentence {i}"}) + "\n" for i in range(5)))
    text_id = (await upload(api, text, "dataset")).json()["id"]
    cases = [
        (lm_job(tid, method={"name": "dkd"}), "method.name"),
        (lm_job(tid, data={"train": {"builtin": "digits"}}), "data.train"),
        (lm_job(tid, student={"from_teacher": {"num_layers": 9}}), "student.from_teacher.num_layers"),
        (lm_job(tid, student={"architecture": {"name": "mlp"}}), "student.from_teacher"),
        (lm_job(tid, method={"name": "seqkd"}, data={"train": {"file_id": text_id}}), "method.name"),
        (lm_job(tid, task="sentence_embedding"), "task"),
        (lm_job(tid, method={"name": "kd", "logit_standardization": True}), "method.logit_standardization"),
    ]
    for spec, param in cases:
        err = assert_error(await api.post("/v1/jobs", json=spec), 422)
        assert err["param"] == param, (spec, err)
    assert (await api.post("/v1/jobs", json=lm_job(tid, task="causal_lm", data={"train": {"file_id": text_id}},
                                                   export={"formats": ["safetensors", "gguf"]}))).status_code == 201


async def test_lm_methods_and_gguf_export_are_refused_for_other_tasks(api, tmp_path):
    teacher_id = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"method": {"name": "reverse_kl"}})), 422)
    assert err["param"] == "method.name"
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"export": {"formats": ["gguf"]}})), 422)
    assert err["param"] == "export.formats"


async def test_training_devices_is_accepted_for_causal_lm_and_refused_for_other_tasks(api, tiny_llama_gguf, tmp_path):
    tid = (await upload(api, tiny_llama_gguf)).json()["id"]
    resp = await api.post("/v1/jobs", json=lm_job(tid, training={"devices": 2}))
    assert resp.status_code == 201, resp.text
    assert resp.json()["spec"]["training"]["devices"] == 2
    err = assert_error(await api.post("/v1/jobs", json=lm_job(tid, training={"devices": 0})), 422)
    assert err["param"] == "training.devices"
    teacher_id = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.devices": 2})), 422)
    assert err["param"] == "training.devices" and "causal_lm only" in err["message"]
    ok = await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.devices": 1}))
    assert ok.status_code == 201, ok.text
