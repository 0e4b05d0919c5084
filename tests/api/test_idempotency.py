"""``Idempotency-Key`` on ``POST /v1/jobs``: same key + same body -> the same job and no second broker message; same
key + another body -> 409; keys are per tenant; concurrent duplicates (real threads in the API's thread pool, real
database transactions) make exactly one job. Broker messages are counted in the real queue (no worker runs here)."""

from __future__ import annotations

import asyncio

import pytest

from tests import files as mk
from tests.api.test_files import assert_error, upload
from tests.api.test_jobs import spec_for
from tests.tenancy import SentMessages, bearer, make_tenant


@pytest.fixture
async def teacher_id(api, tmp_path) -> str:
    return (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]


@pytest.fixture
def sent(backend) -> SentMessages:
    """The broker messages this test sends."""
    return SentMessages(backend)


def job_rows(**where) -> list:
    from sqlalchemy import select

    from stillhouse.db import session_factory
    from stillhouse.models import Job

    with session_factory()() as s:
        return list(s.scalars(select(Job).filter_by(**where)))


async def test_same_key_and_body_returns_the_same_job_once(api, sent, teacher_id):
    key = {"Idempotency-Key": "build-1234"}
    first = await api.post("/v1/jobs", json=spec_for(teacher_id), headers=key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # the same spec written differently (key order, a default spelled out) is the same request
    body = spec_for(teacher_id)
    again_body = {k: body[k] for k in reversed(list(body))}
    again_body["training"] = {**body["training"], "batch_size": 64}
    again = await api.post("/v1/jobs", json=again_body, headers=key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    rows = job_rows()
    assert [r.id for r in rows] == [first.json()["id"]] and rows[0].idempotency_key == "build-1234"
    assert len(rows[0].request_sha256) == 64
    assert sent.job_ids() == [first.json()["id"]]
    # a replay after the job moved on shows its current state
    await api.post(f"/v1/jobs/{first.json()['id']}/cancel")
    third = await api.post("/v1/jobs", json=body, headers=key)
    assert third.json()["id"] == first.json()["id"] and third.json()["status"] == "cancelled"
    assert len(sent.job_ids()) == 1
    # without a key every request is a new job
    assert (await api.post("/v1/jobs", json=body)).json()["id"] != first.json()["id"]
    assert len(job_rows()) == 2


async def test_same_key_with_another_body_is_409(api, sent, teacher_id):
    key = {"Idempotency-Key": "k"}
    first = await api.post("/v1/jobs", json=spec_for(teacher_id), headers=key)
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher_id, **{"training.epochs": 2}), headers=key), 409,
                       "idempotency_key_reused")
    assert err["param"] == "Idempotency-Key" and first.json()["id"] in err["message"]
    assert len(job_rows()) == 1 and len(sent.job_ids()) == 1


async def test_keys_are_per_tenant(api, sent, tmp_path):
    _, key_a = make_tenant("acme")
    _, key_b = make_tenant("globex")
    ids = []
    for key in (key_a, key_b):
        with mk.safetensors_file(tmp_path).open("rb") as fh:
            teacher = (await api.post("/v1/files", files={"file": ("t.safetensors", fh)}, data={"purpose": "teacher"},
                                      headers=bearer(key))).json()["id"]
        resp = await api.post("/v1/jobs", json=spec_for(teacher), headers={**bearer(key), "Idempotency-Key": "same"})
        assert resp.status_code == 201 and "idempotent-replayed" not in resp.headers
        ids.append(resp.json()["id"])
    assert ids[0] != ids[1] and sent.job_ids() == sorted(ids)


@pytest.mark.parametrize("value,ok", [("x" * 255, True), ("x" * 256, False), ("", False)])
async def test_key_length(api, teacher_id, value, ok):
    resp = await api.post("/v1/jobs", json=spec_for(teacher_id), headers={"Idempotency-Key": value})
    if ok:
        assert resp.status_code == 201
    else:
        assert assert_error(resp, 422, "invalid_request")["param"] == "Idempotency-Key"
        assert job_rows() == []


async def test_an_invalid_spec_does_not_burn_the_key(api, teacher_id):
    key = {"Idempotency-Key": "retry-me"}
    assert_error(await api.post("/v1/jobs", json=spec_for("file_missing"), headers=key), 422, "file_not_found")
    assert (await api.post("/v1/jobs", json=spec_for(teacher_id), headers=key)).status_code == 201


async def test_concurrent_duplicates_make_exactly_one_job(api, sent, teacher_id):
    """10 identical requests at once: one job row, one broker message, every answer 201 with the same id."""
    key = {"Idempotency-Key": "burst"}
    responses = await asyncio.gather(*(api.post("/v1/jobs", json=spec_for(teacher_id), headers=key) for _ in range(10)))
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses if r.status_code != 201]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 9
    assert [j.id for j in job_rows()] == list(ids)
    assert sent.job_ids() == sorted(ids)
