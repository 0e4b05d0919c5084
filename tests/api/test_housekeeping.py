"""What a new user hit, fixed: finished jobs can be deleted (artifacts and quota freed), artifacts answer
``If-None-Match`` with 304 and ``HEAD`` without a body, the same content uploaded twice is one file, a spec can
be validated (dry run) before anything is uploaded, jobs carry filterable ``metadata``, and ``/docs`` needs no CDN."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests import files as mk
from tests.api.test_files import assert_error, stored_files, upload
from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.tenancy import bearer, make_tenant


def publish(backend, job_id: str, name: str, payload: bytes, *, succeed: bool = True) -> str:
    """Write ``payload`` as artifact ``name`` of job ``job_id`` (as a worker publishes it) and, with ``succeed``, move the
    job to succeeded; returns the artifact's sha256."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.models import Artifact

    key = f"jobs/{job_id}/artifacts/attempt-1/{name}"
    path = backend.data_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    with session_scope() as s:
        if succeed:
            assert states.transition(s, job_id, states.RUNNING, attempt=1)
            assert states.transition(s, job_id, states.SUCCEEDED, report={"summary": "ok"})
        s.add(Artifact(job_id=job_id, name=name, bytes=len(payload), sha256=sha, content_type="application/json", storage_key=key))
    return sha


# -- conditional and HEAD requests on artifacts --------------------------------------------------------------------

async def test_if_none_match_answers_304_and_head_has_no_body(api, backend, teacher_id):  # noqa: F811
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    payload = b'{"weights": [1, 2, 3]}'
    sha = publish(backend, job, "student.json", payload)
    url = f"/v1/jobs/{job}/artifacts/student.json"
    etag = f'"{sha}"'
    for inm in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp = await api.get(url, headers={"If-None-Match": inm})
        assert resp.status_code == 304 and resp.content == b"" and resp.headers["etag"] == etag, inm
    changed = await api.get(url, headers={"If-None-Match": '"' + "0" * 64 + '"'})
    assert changed.status_code == 200 and changed.content == payload and changed.headers["etag"] == etag
    head = await api.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(payload)) and head.headers["etag"] == etag
    assert head.headers["content-type"].startswith("application/json")
    assert (await api.head(url, headers={"If-None-Match": etag})).status_code == 304
    assert (await api.head(f"/v1/jobs/{job}/artifacts/nope.bin")).status_code == 404
    ranged = await api.get(url, headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.content == payload[:4]


# -- DELETE /v1/jobs/{id} ------------------------------------------------------------------------------------------

async def test_delete_removes_a_finished_job_and_its_artifacts(api, backend, teacher_id):  # noqa: F811
    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    payload = b"x" * 1000
    publish(backend, job, "student.json", payload)
    (backend.data_dir / "jobs" / job / "work").mkdir(parents=True)  # a checkpoint folder a failure can leave
    resp = await api.delete(f"/v1/jobs/{job}")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": job, "object": "job", "deleted": True, "freed_bytes": 1000}
    assert not (backend.data_dir / "jobs" / job).exists()
    assert_error(await api.get(f"/v1/jobs/{job}"), 404, "not_found")
    assert_error(await api.get(f"/v1/jobs/{job}/events"), 404, "not_found")
    assert_error(await api.delete(f"/v1/jobs/{job}"), 404, "not_found")
    from stillhouse.db import session_scope
    from stillhouse.models import Artifact, JobEvent, JobFile

    with session_scope() as s:
        for model in (Artifact, JobEvent, JobFile):
            assert s.query(model).filter(model.job_id == job).count() == 0, model
    # the teacher it used stays, and can now be deleted too (no job uses it)
    assert (await api.get(f"/v1/files/{teacher_id}")).status_code == 200
    assert (await api.delete(f"/v1/files/{teacher_id}")).status_code == 200


@pytest.mark.parametrize("status", ["queued", "running", "cancelling"])
async def test_a_live_job_cannot_be_deleted(api, backend, teacher_id, status):  # noqa: F811
    from stillhouse.db import session_scope
    from stillhouse.jobs import states

    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
    with session_scope() as s:
        if status != "queued":
            assert states.transition(s, job, states.RUNNING, attempt=1)
        if status == "cancelling":
            assert states.transition(s, job, states.CANCELLING)
    err = assert_error(await api.delete(f"/v1/jobs/{job}"), 409, "job_not_finished")
    assert status in err["message"] and "cancel" in err["message"]
    assert (await api.get(f"/v1/jobs/{job}")).json()["status"] == status


async def test_a_tenant_over_quota_through_artifacts_gets_out_by_deleting_the_job(api, backend, tmp_path):
    """The trap a new user hit: artifacts took the tenant over its quota, files could go but artifacts could not."""
    model = mk.safetensors_file(tmp_path)
    size = model.stat().st_size
    _, key = make_tenant("acme", max_storage_bytes=2 * size)
    h = bearer(key)
    teacher = (await upload_as(api, model, h)).json()["id"]
    job = (await api.post("/v1/jobs", json=spec_for(teacher), headers=h)).json()["id"]
    publish(backend, job, "student.json", b"\0" * size)  # the tenant is now full: files + artifacts = quota
    other = mk.safetensors_file(tmp_path, seed=1)
    err = assert_error(await upload_as(api, other, h), 413, "storage_quota_exceeded")
    assert f"{size} bytes are used by its files and {size} by its jobs' artifacts" in err["message"]
    assert "DELETE /v1/jobs/{id}" in err["message"]
    assert (await api.delete(f"/v1/jobs/{job}", headers=h)).json()["freed_bytes"] == size
    assert (await upload_as(api, other, h)).status_code == 201


async def upload_as(api, path, headers, purpose="teacher"):
    with path.open("rb") as fh:
        return await api.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose}, headers=headers)


# -- uploads deduplicated by sha256 --------------------------------------------------------------------------------

async def test_the_same_content_uploaded_again_is_the_same_file(api, backend, tmp_path):
    model = mk.safetensors_file(tmp_path)
    first = await upload(api, model)
    assert first.status_code == 201 and "stillhouse-deduplicated" not in first.headers
    again = await upload(api, model, filename="renamed.safetensors")
    assert again.status_code == 200 and again.headers["stillhouse-deduplicated"] == "true"
    assert again.json() == first.json()  # the existing file, its first name included
    assert len([p for p in stored_files(backend) if p.parent.name == "files"]) == 1
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    found = (await api.get("/v1/files", params={"sha256": sha.upper()})).json()["data"]
    assert [f["id"] for f in found] == [first.json()["id"]]
    assert (await api.get("/v1/files", params={"sha256": "0" * 64})).json()["data"] == []
    assert_error(await api.get("/v1/files", params={"sha256": "xyz"}), 422, "invalid_request")
    # another purpose is another file; another tenant's identical upload is its own file
    assert (await upload(api, model, purpose="student_init")).status_code == 201
    _, key = make_tenant("acme")
    theirs = await upload_as(api, model, bearer(key))
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert (await api.get("/v1/files", params={"sha256": sha}, headers=bearer(key))).json()["data"][0]["id"] == theirs.json()["id"]


# -- dry run -------------------------------------------------------------------------------------------------------

async def test_dry_run_validates_and_creates_nothing(api, backend, teacher_id):  # noqa: F811
    from tests.tenancy import SentMessages

    sent = SentMessages(backend)
    resp = await api.post("/v1/jobs", params={"dry_run": "true"}, json={**spec_for(teacher_id), "metadata": {"run": "1"}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "job.validation" and body["valid"] is True and body["pending"] == []
    assert body["spec"]["training"]["batch_size"] == 64 and body["metadata"] == {"run": "1"}
    assert (await api.get("/v1/jobs")).json()["data"] == [] and sent.job_ids() == []
    err = assert_error(await api.post("/v1/jobs", params={"dry_run": "true"}, json=spec_for(teacher_id, **{"method.temperature": 0})),
                       422, "invalid_request")
    assert err["param"] == "method.temperature"
    assert_error(await api.post("/v1/jobs", params={"dry_run": "true"}, json=spec_for("file_nope")), 422, "file_not_found")


async def test_dry_run_with_files_still_to_upload(api, teacher_id):  # noqa: F811
    """What `stillhouse submit` sends before uploading: placeholders for the pending files, everything else checked."""
    ok = await api.post("/v1/jobs", params={"dry_run": "true", "pending": "teacher,data.train"},
                        json=spec_for("file_pending", **{"data.train": {"file_id": "file_pending"}}))
    assert ok.status_code == 200, ok.text
    assert ok.json()["pending"] == ["data.train", "teacher"]
    for over, param in (({"method.temperature": 0}, "method.temperature"), ({"method.alpha": 2}, "method.alpha"),
                        ({"student.architecture": {"name": "transformerz"}}, "student.architecture.name"),
                        ({"student.architecture": {"name": "mlp", "kwargs": {"hidden_sizez": [3]}}}, None)):
        resp = await api.post("/v1/jobs", params={"dry_run": "true", "pending": "teacher"}, json=spec_for("file_pending", **over))
        err = assert_error(resp, 422)
        if param:
            assert err["param"] == param, err
    # a registry student's layers are listed by a dry run naming one that does not exist (the README says so)
    fitnet = {"name": "kd", "extra": [{"name": "fitnet", "student_layer": "99", "teacher_layer": "0"}]}
    err = assert_error(await api.post("/v1/jobs", params={"dry_run": "true", "pending": "teacher"},
                                      json=spec_for("file_pending", method=fitnet)), 422)
    assert err["param"] == "method.extra.0.student_layer" and "its layers are: 0, 1, 2, 3, penultimate" in err["message"], err
    # a file that is not pending is still checked
    assert_error(await api.post("/v1/jobs", params={"dry_run": "true", "pending": "teacher"},
                                json=spec_for("file_pending", **{"data.train": {"file_id": "file_nope"}})), 422, "file_not_found")
    err = assert_error(await api.post("/v1/jobs", params={"dry_run": "true", "pending": "teacher,student"},
                                      json=spec_for("file_pending")), 422)
    # refused by the documented pattern of the parameter, whose message lists the roles it takes
    assert err["param"] == "pending" and all(role in err["message"] for role in ("teacher", "data\\.train", "data\\.transfer"))


# -- metadata ------------------------------------------------------------------------------------------------------

async def test_metadata_is_kept_and_filterable(api, teacher_id):  # noqa: F811
    a = (await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": {"dag": "nightly", "run_id": "41"}})).json()
    b = (await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": {"dag": "nightly", "run_id": "42"}})).json()
    c = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    assert a["metadata"] == {"dag": "nightly", "run_id": "41"} and c["metadata"] == {}
    assert "metadata" not in a["spec"]
    assert (await api.get(f"/v1/jobs/{b['id']}")).json()["metadata"] == {"dag": "nightly", "run_id": "42"}

    async def ids(**params):
        return [j["id"] for j in (await api.get("/v1/jobs", params=params)).json()["data"]]

    assert await ids(**{"metadata[dag]": "nightly"}) == [b["id"], a["id"]]
    assert await ids(**{"metadata[dag]": "nightly", "metadata[run_id]": "42"}) == [b["id"]]
    assert await ids(**{"metadata[dag]": "weekly"}) == []
    assert await ids(**{"metadata[nope]": "x"}) == []
    assert await ids(**{"metadata[dag]": "nightly", "status": "queued", "limit": 1}) == [b["id"]]
    assert_error(await api.get("/v1/jobs", params={f"metadata[{'k' * 65}]": "x"}), 422, "invalid_request")


async def test_metadata_with_the_same_idempotency_key_must_match(api, teacher_id):  # noqa: F811
    h = {"Idempotency-Key": "k1"}
    first = await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": {"a": "1"}}, headers=h)
    again = await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": {"a": "1"}}, headers=h)
    assert first.status_code == again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert_error(await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": {"a": "2"}}, headers=h), 409,
                 "idempotency_key_reused")


@pytest.mark.parametrize("metadata", [{str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"": "v"}, {"k": "v" * 513}, {"k": 5},
                                      ["k"]])
async def test_metadata_limits(api, teacher_id, metadata):  # noqa: F811
    err = assert_error(await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": metadata}), 422, "invalid_request")
    assert err["param"].startswith("metadata"), err
    assert (await api.get("/v1/jobs")).json()["data"] == []
    at_the_limits = {**{f"k{i}": "v" * 512 for i in range(15)}, "k" * 64: ""}  # 16 keys, 64-character key, 512-character values
    ok = await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": at_the_limits})
    assert ok.status_code == 201 and ok.json()["metadata"] == at_the_limits, ok.text


# -- /docs without a CDN -------------------------------------------------------------------------------------------

async def test_docs_are_served_from_the_package_not_a_cdn(api):
    page = await api.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]|url: ?['"]([^'"]+)['"]""", page.text)
    urls = [u for pair in urls for u in pair if u]
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
    for u in urls:
        resp = await api.get(u)
        assert resp.status_code == 200, u
    js = await api.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000 and "javascript" in js.headers["content-type"]
    assert (await api.get("/docs/assets/swagger-ui.css")).headers["content-type"].startswith("text/css")
    redoc = await api.get("/redoc")
    assert redoc.status_code == 200 and "/docs/assets/redoc.standalone.js" in redoc.text and "fonts.googleapis" not in redoc.text
