"""Per-tenant limits: live jobs (429 ``too_many_jobs`` with Retry-After, race-free under concurrent creations) and
storage (413 ``storage_quota_exceeded``: from Content-Length before the body is read, else mid-stream, temporary
file removed; uploads and job artifacts both count; race-free under concurrent uploads)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from tests import files as mk
from tests.api.test_files import assert_error, stored_files
from tests.api.test_jobs import spec_for
from tests.tenancy import SentMessages, bearer, make_tenant


async def _upload(api, path, headers, purpose="teacher", name=None):
    with path.open("rb") as fh:
        return await api.post("/v1/files", files={"file": (name or path.name, fh)}, data={"purpose": purpose}, headers=headers)


def _set_default(monkeypatch, var: str, value: int) -> None:
    from stillhouse.settings import get_settings

    monkeypatch.setenv(var, str(value))
    get_settings.cache_clear()


async def test_live_job_limit_answers_429_with_retry_after(api, tmp_path):
    from stillhouse.db import session_scope
    from stillhouse.jobs import states

    _, key = make_tenant("acme", max_running_jobs=2)
    h = bearer(key)
    teacher = (await _upload(api, mk.safetensors_file(tmp_path), h)).json()["id"]
    jobs = [(await api.post("/v1/jobs", json=spec_for(teacher), headers=h)).json()["id"] for _ in range(2)]
    resp = await api.post("/v1/jobs", json=spec_for(teacher), headers=h)
    err = assert_error(resp, 429, "too_many_jobs")
    assert "has 2 live jobs" in err["message"] and "limit is 2" in err["message"] and "acme" in err["message"]
    assert resp.headers["retry-after"] == "30"  # nothing running with an ETA yet
    # a running job's training ETA becomes the hint
    with session_scope() as s:
        assert states.transition(s, jobs[0], states.RUNNING, attempt=1, progress_eta_s=12.4)
    resp = await api.post("/v1/jobs", json=spec_for(teacher), headers=h)
    assert resp.status_code == 429 and resp.headers["retry-after"] == "12"
    # another tenant is not limited by acme's jobs
    assert (await api.post("/v1/jobs", json=spec_for((await _upload(api, mk.safetensors_file(tmp_path), {})).json()["id"]))).status_code == 201
    # cancelling frees a slot (cancelled is not live); 'cancelling' still counts
    assert (await api.post(f"/v1/jobs/{jobs[0]}/cancel", headers=h)).json()["status"] == "cancelling"
    assert (await api.post("/v1/jobs", json=spec_for(teacher), headers=h)).status_code == 429
    assert (await api.post(f"/v1/jobs/{jobs[1]}/cancel", headers=h)).json()["status"] == "cancelled"
    assert (await api.post("/v1/jobs", json=spec_for(teacher), headers=h)).status_code == 201


async def test_service_default_applies_without_a_tenant_override(api, tmp_path, monkeypatch):
    _set_default(monkeypatch, "STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT", 1)
    teacher = (await _upload(api, mk.safetensors_file(tmp_path), {})).json()["id"]
    assert (await api.post("/v1/jobs", json=spec_for(teacher))).status_code == 201
    err = assert_error(await api.post("/v1/jobs", json=spec_for(teacher)), 429, "too_many_jobs")
    assert "'default'" in err["message"] and "limit is 1" in err["message"]
    _, key = make_tenant("big", max_running_jobs=3)  # the override wins over the default
    t = (await _upload(api, mk.safetensors_file(tmp_path), bearer(key))).json()["id"]
    assert [(await api.post("/v1/jobs", json=spec_for(t), headers=bearer(key))).status_code for _ in range(4)] == [201, 201, 201, 429]


async def test_concurrent_creations_cannot_pass_the_limit_together(api, backend, tmp_path):
    """8 creations at once against a limit of 3: exactly 3 jobs exist (and 3 messages were sent), 5 answers are 429."""
    sent = SentMessages(backend)
    _, key = make_tenant("acme", max_running_jobs=3)
    h = bearer(key)
    teacher = (await _upload(api, mk.safetensors_file(tmp_path), h)).json()["id"]
    responses = await asyncio.gather(*(api.post("/v1/jobs", json=spec_for(teacher, name=f"j{i}"), headers=h) for i in range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 3 + [429] * 5, [r.text for r in responses if r.status_code not in (201, 429)]
    created = sorted(r.json()["id"] for r in responses if r.status_code == 201)
    assert sorted(j["id"] for j in (await api.get("/v1/jobs", headers=h)).json()["data"]) == created
    assert sent.job_ids() == created


async def test_upload_over_quota_is_refused_from_content_length_before_the_body_is_read(api, backend, tmp_path):
    _, key = make_tenant("acme", max_storage_bytes=500_000)
    consumed = []
    resp = await api.post("/v1/files", content=mk.streamed_upload(100, 10_000, consumed), headers={
        **bearer(key), "content-type": mk.STREAM_CTYPE, "content-length": str(1_000_000 + 300)})
    err = assert_error(resp, 413, "storage_quota_exceeded")
    assert "500000" in err["message"] and "acme" in err["message"] and err["param"] == "file"
    assert len(consumed) == 0  # answered before a byte of the file part was read
    assert stored_files(backend) == []


async def test_upload_over_quota_without_content_length_stops_mid_stream(api, backend, tmp_path):
    """A chunked body (no Content-Length) is cut off once it passes what is left of the quota; the temp file goes."""
    _, key = make_tenant("acme", max_storage_bytes=50_000)
    h = bearer(key)
    small = mk.npz_file(tmp_path)  # a first upload uses part of the quota
    assert (await _upload(api, small, h, purpose="dataset")).status_code == 201
    left = 50_000 - small.stat().st_size
    consumed = []
    resp = await api.post("/v1/files", content=mk.streamed_upload(100, 1_000, consumed), headers={**h, "content-type": mk.STREAM_CTYPE})
    err = assert_error(resp, 413, "storage_quota_exceeded")
    assert f"{small.stat().st_size} bytes are used by its files" in err["message"] and f"{left} left" in err["message"]
    assert left // 1000 <= len(consumed) < 100  # read up to the quota, not to the end
    assert [p.parent.name for p in stored_files(backend)] == ["files"]  # the first upload only; no temp file left


async def test_artifacts_count_toward_storage(api, backend, tmp_path):
    from stillhouse.db import session_scope
    from stillhouse.models import Artifact

    model = mk.safetensors_file(tmp_path)
    size = model.stat().st_size
    _, key = make_tenant("acme", max_storage_bytes=2 * size + 100)
    h = bearer(key)
    teacher = (await _upload(api, model, h)).json()["id"]
    job = (await api.post("/v1/jobs", json=spec_for(teacher), headers=h)).json()["id"]
    payload = b"\1" * (size - 50)
    with session_scope() as s:  # as the worker publishes a student
        s.add(Artifact(job_id=job, name="student.safetensors", bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                       content_type="application/octet-stream", storage_key=f"jobs/{job}/artifacts/student.safetensors"))
    err = assert_error(await _upload(api, mk.safetensors_file(tmp_path, seed=1), h), 413, "storage_quota_exceeded")
    assert f"{size} bytes are used by its files and {size - 50} by its jobs' artifacts" in err["message"]
    assert "DELETE /v1/jobs/{id}" in err["message"] and "DELETE /v1/files/{id}" in err["message"]
    assert (await api.get("/v1/files", headers=h)).json()["data"][0]["id"] == teacher and len(stored_files(backend)) == 1


async def test_concurrent_uploads_cannot_pass_the_quota_together(api, backend, tmp_path, monkeypatch):
    """Each of 4 simultaneous uploads fits what is left, all four do not: the final check under the tenant lock
    lets exactly as many through as fit, and removes the others' bytes."""
    models = [mk.safetensors_file(tmp_path, seed=i) for i in range(4)]  # four contents of one size
    size = models[0].stat().st_size
    assert {m.stat().st_size for m in models} == {size}
    _, key = make_tenant("acme", max_storage_bytes=2 * size + size // 2)
    h = bearer(key)
    responses = await asyncio.gather(*(api.post("/v1/files", files={"file": (m.name, m.read_bytes())}, data={"purpose": "teacher"},
                                                headers=h) for m in models))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 201, 413, 413], [r.text for r in responses]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 413} == {"storage_quota_exceeded"}
    assert len((await api.get("/v1/files", headers=h)).json()["data"]) == 2
    assert sorted(p.parent.name for p in stored_files(backend)) == ["files", "files"]


async def test_deleting_files_makes_room(api, tmp_path):
    model = mk.safetensors_file(tmp_path)
    _, key = make_tenant("acme", max_storage_bytes=model.stat().st_size + 10)
    h = bearer(key)
    first = (await _upload(api, model, h)).json()["id"]
    assert_error(await _upload(api, model, h), 413, "storage_quota_exceeded")
    assert (await api.delete(f"/v1/files/{first}", headers=h)).status_code == 200
    assert (await _upload(api, model, h)).status_code == 201


@pytest.mark.parametrize("max_upload,code", [(10**9, "storage_quota_exceeded"), (1000, "file_too_large")])
async def test_the_tighter_limit_names_the_error(api, tmp_path, monkeypatch, max_upload, code):
    _set_default(monkeypatch, "STILLHOUSE_MAX_UPLOAD_BYTES", max_upload)
    _, key = make_tenant("acme", max_storage_bytes=2000)
    assert_error(await _upload(api, mk.safetensors_file(tmp_path), bearer(key)), 413, code)
