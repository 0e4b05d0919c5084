"""Causal-LM uploads over HTTP: a GGUF file and a Hugging Face causal-LM archive are accepted and described, and a job
naming one is refused with a 422 that says why (language-model jobs arrive with the one trainer)."""

from __future__ import annotations

import pytest

from tests.api.test_files import assert_error, upload


@pytest.mark.parametrize("fixture,fmt", [("tiny_llama_gguf", "gguf"), ("tiny_llama_zip", "hf")])
async def test_causal_lm_teacher_upload_and_job_refusal(api, request, fixture, fmt):
    resp = await upload(api, request.getfixturevalue(fixture))
    assert resp.status_code == 201, resp.text
    f = resp.json()
    assert f["format"] == fmt and f["details"]["task"] == "causal_lm" and f["parameters"] > 0
    spec = {"teacher": {"file_id": f["id"]}, "student": {"from_teacher": {"num_layers": 2}},
            "data": {"train": {"builtin": "rotten_tomatoes"}}}
    err = assert_error(await api.post("/v1/jobs", json=spec), 422)
    assert err["param"] == "teacher.file_id" and "causal language model" in err["message"]
