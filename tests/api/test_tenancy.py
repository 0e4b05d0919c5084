"""Tenant isolation, route by route from the OpenAPI schema: another tenant's id gets the same 404 as an unknown id
(never 403), listings show only the caller's rows, a spec naming another tenant's file gets the same 422
``file_not_found`` as an unknown file, and uploads and jobs record their tenant. A route added to the API without
a case here fails ``test_every_route_is_covered``."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pytest

from tests import files as mk
from tests.api.test_files import assert_error
from tests.api.test_jobs import spec_for
from tests.api.test_reports import real_report  # noqa: F401 - fixture: a report from a real (small) core run
from tests.tenancy import bearer, make_tenant

UNKNOWN = {"file_id": "file_" + "0" * 24, "job_id": "job_" + "0" * 24, "name": "student.json"}


def schema_routes() -> list[tuple[str, str]]:
    from app.main import create_app

    return sorted((m.upper(), p) for p, ops in create_app(auto_migrate=False).openapi()["paths"].items() for m in ops)


@dataclass
class World:
    """Tenant A's objects (a teacher, a spare dataset, a succeeded job with report, metrics and an artifact, a
    queued job) and tenant B's own teacher and job; ``a``/``b`` are request headers."""

    a: dict
    b: dict
    teacher: str
    spare: str
    done: str
    queued: str
    b_teacher: str
    b_job: str


async def _upload(api, path, purpose, headers):
    with path.open("rb") as fh:
        resp = await api.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.fixture
async def world(api, backend, tmp_path, real_report) -> World:  # noqa: F811
    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.models import Artifact, Metric

    _, key_a = make_tenant("tenant-a")
    _, key_b = make_tenant("tenant-b")
    a, b = bearer(key_a), bearer(key_b)
    teacher = await _upload(api, mk.safetensors_file(tmp_path), "teacher", a)
    spare = await _upload(api, mk.npz_file(tmp_path), "dataset", a)
    done = (await api.post("/v1/jobs", json=spec_for(teacher), headers=a)).json()["id"]
    queued = (await api.post("/v1/jobs", json=spec_for(teacher), headers=a)).json()["id"]
    report, rows = real_report
    payload = b'{"student": "weights"}'
    key = f"jobs/{done}/artifacts/student.json"
    (backend.data_dir / key).parent.mkdir(parents=True)
    (backend.data_dir / key).write_bytes(payload)
    with session_scope() as s:
        assert states.transition(s, done, states.RUNNING, attempt=1)
        s.add_all(Metric(job_id=done, name=r.name, split=r.split, step=r.step, epoch=r.epoch, value=r.value) for r in rows)
        s.add(Artifact(job_id=done, name="student.json", bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                       content_type="application/json", storage_key=key))
        assert states.transition(s, done, states.SUCCEEDED, report=report)
    b_teacher = await _upload(api, mk.safetensors_file(tmp_path), "teacher", b)
    b_job = (await api.post("/v1/jobs", json=spec_for(b_teacher), headers=b)).json()["id"]
    return World(a, b, teacher, spare, done, queued, b_teacher, b_job)


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _same_404(theirs, unknown, swap: dict[str, str]) -> None:
    """``theirs`` (another tenant's ids) is the very answer ``unknown`` (unknown ids) is, ids aside."""
    assert_error(theirs, 404, "not_found")
    assert_error(unknown, 404, "not_found")
    text = unknown.text
    for u, t in swap.items():
        text = text.replace(u, t)
    assert theirs.text == text
    assert theirs.headers.get("www-authenticate") is None  # not an auth failure, and never 403


async def _path_route(api, w: World, method: str, path: str) -> None:
    """A route with ids in its path: as B, A's ids answer exactly like unknown ids; A's object is unchanged;
    as A the same request succeeds (so the check could fail)."""
    mine = {"file_id": w.spare if method == "DELETE" else w.teacher,
            "job_id": w.queued if path.endswith("/cancel") else w.done, "name": "student.json"}
    swap = {UNKNOWN[k]: mine[k] for k in ("file_id", "job_id")}
    variants = [{}]
    if path.endswith("/report"):
        variants.append({"format": "html"})
    for params in variants:
        theirs = await api.request(method, _fill(path, mine), params=params, headers=w.b)
        unknown = await api.request(method, _fill(path, UNKNOWN), params=params, headers=w.b)
        _same_404(theirs, unknown, swap)
    # B's attempt changed nothing
    assert (await api.get(f"/v1/files/{w.spare}", headers=w.a)).status_code == 200
    assert (await api.get(f"/v1/jobs/{w.queued}", headers=w.a)).json()["status"] == "queued"
    for params in variants:
        ok = await api.request(method, _fill(path, mine), params=params, headers=w.a)
        assert ok.status_code == 200, (path, params, ok.text)
        if path.endswith("/cancel"):
            assert ok.json()["status"] == "cancelled"
            break
    if path.endswith("/artifacts/{name}"):
        assert ok.content == b'{"student": "weights"}'


async def _list_files(api, w: World) -> None:
    assert [f["id"] for f in (await api.get("/v1/files", headers=w.b)).json()["data"]] == [w.b_teacher]
    assert {f["id"] for f in (await api.get("/v1/files", headers=w.a)).json()["data"]} == {w.teacher, w.spare}
    assert (await api.get("/v1/files", params={"purpose": "teacher"})).json()["data"] == []  # tenant 'default' has none
    theirs = await api.get("/v1/files", params={"after": w.teacher}, headers=w.b)
    unknown = await api.get("/v1/files", params={"after": UNKNOWN["file_id"]}, headers=w.b)
    assert_error(theirs, 404)  # an unknown cursor is a missing resource (as another tenant's)
    assert theirs.text == unknown.text.replace(UNKNOWN["file_id"], w.teacher)


async def _list_jobs(api, w: World) -> None:
    assert [j["id"] for j in (await api.get("/v1/jobs", headers=w.b)).json()["data"]] == [w.b_job]
    assert {j["id"] for j in (await api.get("/v1/jobs", headers=w.a)).json()["data"]} == {w.done, w.queued}
    assert [j["id"] for j in (await api.get("/v1/jobs", params={"status": "succeeded"}, headers=w.b)).json()["data"]] == []
    theirs = await api.get("/v1/jobs", params={"after": w.done}, headers=w.b)
    unknown = await api.get("/v1/jobs", params={"after": UNKNOWN["job_id"]}, headers=w.b)
    assert_error(theirs, 404)
    assert theirs.text == unknown.text.replace(UNKNOWN["job_id"], w.done)


async def _create_job(api, w: World) -> None:
    for over in ({}, {"data.train": {"file_id": w.spare}}):
        teacher = w.teacher if not over else w.b_teacher
        theirs = await api.post("/v1/jobs", json=spec_for(teacher, **over), headers=w.b)
        unknown_over = {"data.train": {"file_id": UNKNOWN["file_id"]}} if over else {}
        unknown = await api.post("/v1/jobs", json=spec_for(UNKNOWN["file_id"] if not over else w.b_teacher, **unknown_over),
                                 headers=w.b)
        err = assert_error(theirs, 422, "file_not_found")
        assert err["param"] == ("data.train.file_id" if over else "teacher.file_id")
        assert theirs.text == unknown.text.replace(UNKNOWN["file_id"], w.spare if over else w.teacher)
    ok = await api.post("/v1/jobs", json=spec_for(w.b_teacher), headers=w.b)
    assert ok.status_code == 201
    await _owner_is(api, "job", ok.json()["id"], "tenant-b")


async def _upload_file(api, w: World, tmp_path) -> None:
    new = await _upload(api, mk.npz_file(tmp_path, name="b-data.npz"), "dataset", w.b)
    await _owner_is(api, "file", new, "tenant-b")
    assert_error(await api.get(f"/v1/files/{new}", headers=w.a), 404, "not_found")
    assert (await api.get(f"/v1/files/{new}", headers=w.b)).status_code == 200


async def _owner_is(api, kind: str, obj_id: str, tenant_name: str) -> None:
    from stillhouse.db import session_factory
    from stillhouse.models import File, Job, Tenant

    with session_factory()() as s:
        row = s.get(File if kind == "file" else Job, obj_id)
        assert s.get(Tenant, row.tenant_id).name == tenant_name


async def _compare(api, w: World) -> None:
    for params in ({}, {"format": "html"}):
        theirs = await api.get("/v1/reports", params={"job_ids": w.done, **params}, headers=w.b)
        unknown = await api.get("/v1/reports", params={"job_ids": UNKNOWN["job_id"], **params}, headers=w.b)
        _same_404(theirs, unknown, {UNKNOWN["job_id"]: w.done})
        assert (await api.get("/v1/reports", params={"job_ids": w.done, **params}, headers=w.a)).status_code == 200


async def _head_artifact(api, w: World) -> None:
    """HEAD has no body to compare: as B, A's artifact answers exactly like an unknown one (404, same headers but the
    request id); as A, 200 with the ETag and size and no body."""
    path = "/v1/jobs/{job_id}/artifacts/student.json"
    theirs = await api.head(_fill(path, {"job_id": w.done}), headers=w.b)
    unknown = await api.head(_fill(path, UNKNOWN), headers=w.b)
    assert theirs.status_code == unknown.status_code == 404 and theirs.content == unknown.content == b""
    assert theirs.headers.get("content-type") == unknown.headers.get("content-type")
    ok = await api.head(_fill(path, {"job_id": w.done}), headers=w.a)
    payload = b'{"student": "weights"}'
    assert ok.status_code == 200 and ok.content == b"" and ok.headers["content-length"] == str(len(payload))
    assert ok.headers["etag"] == f'"{hashlib.sha256(payload).hexdigest()}"'


async def _webhook_route(api, w: World, method: str, path: str) -> None:
    """A webhook route with an endpoint id: as B, A's endpoint answers exactly like an unknown one (with a valid body
    where the route takes one), and is left unchanged; as A the same request succeeds."""
    created = await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/hook"}, headers=w.a)
    assert created.status_code == 201, created.text
    mine = created.json()["id"]
    unknown_id = "whep_000000000000000000000000"
    body = {"PATCH": {"description": "changed"}, "POST": {}}.get(method)
    kw = {"json": body} if body is not None else {}
    theirs = await api.request(method, path.replace("{endpoint_id}", mine), headers=w.b, **kw)
    unknown = await api.request(method, path.replace("{endpoint_id}", unknown_id), headers=w.b, **kw)
    _same_404(theirs, unknown, {unknown_id: mine})
    after = (await api.get(f"/v1/webhooks/{mine}", headers=w.a)).json()
    assert after["description"] is None and after["updated_at"] == created.json()["updated_at"]
    ok = await api.request(method, path.replace("{endpoint_id}", mine), headers=w.a, **kw)
    assert ok.status_code in (200, 202), (path, ok.text)


async def _list_webhooks(api, w: World) -> None:
    mine = (await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/a"}, headers=w.a)).json()["id"]
    assert (await api.get("/v1/webhooks", headers=w.b)).json()["data"] == []
    assert [e["id"] for e in (await api.get("/v1/webhooks", headers=w.a)).json()["data"]] == [mine]
    theirs = await api.get("/v1/webhooks", params={"after": mine}, headers=w.b)
    assert_error(theirs, 404)


async def _create_webhook(api, w: World) -> None:
    made = await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/b"}, headers=w.b)
    assert made.status_code == 201
    assert_error(await api.get(f"/v1/webhooks/{made.json()['id']}", headers=w.a), 404, "not_found")


def _sweep_body(teacher: str) -> dict:
    return {"base": spec_for(teacher), "budget": {"max_trials": 2, "max_parallel": 1},
            "search_space": {"method.temperature": {"type": "float", "low": 1.0, "high": 4.0}}}


async def _sweep_route(api, w: World, method: str, path: str) -> None:
    """A sweep route: as B, A's sweep answers exactly like an unknown one and is left running; as A it succeeds."""
    made = await api.post("/v1/sweeps", json=_sweep_body(w.teacher), headers=w.a)
    assert made.status_code == 201, made.text
    mine, unknown_id = made.json()["id"], "swp_" + "0" * 24
    theirs = await api.request(method, path.replace("{sweep_id}", mine), headers=w.b)
    unknown = await api.request(method, path.replace("{sweep_id}", unknown_id), headers=w.b)
    _same_404(theirs, unknown, {unknown_id: mine})
    assert (await api.get(f"/v1/sweeps/{mine}", headers=w.a)).json()["status"] == "running"
    ok = await api.request(method, path.replace("{sweep_id}", mine), headers=w.a)
    assert ok.status_code == 200, (path, ok.text)


async def _list_sweeps(api, w: World) -> None:
    mine = (await api.post("/v1/sweeps", json=_sweep_body(w.teacher), headers=w.a)).json()["id"]
    assert (await api.get("/v1/sweeps", headers=w.b)).json()["data"] == []
    assert [x["id"] for x in (await api.get("/v1/sweeps", headers=w.a)).json()["data"]] == [mine]
    theirs = await api.get("/v1/sweeps", params={"after": mine}, headers=w.b)
    unknown = await api.get("/v1/sweeps", params={"after": "swp_" + "0" * 24}, headers=w.b)
    assert_error(theirs, 404)  # as for files and jobs: an unknown cursor is a missing resource (as another tenant's)
    assert theirs.text == unknown.text.replace("swp_" + "0" * 24, mine)


async def _create_sweep(api, w: World) -> None:
    theirs = await api.post("/v1/sweeps", json=_sweep_body(w.teacher), headers=w.b)
    unknown = await api.post("/v1/sweeps", json=_sweep_body(UNKNOWN["file_id"]), headers=w.b)
    err = assert_error(theirs, 422, "file_not_found")
    assert err["param"] == "base.teacher.file_id"
    assert theirs.text == unknown.text.replace(UNKNOWN["file_id"], w.teacher)
    ok = await api.post("/v1/sweeps", json=_sweep_body(w.b_teacher), headers=w.b)
    assert ok.status_code == 201
    assert all(j["id"] != ok.json()["id"] for j in (await api.get("/v1/sweeps", headers=w.a)).json()["data"])


async def _unscoped(api, path: str) -> None:
    assert (await api.get(path)).status_code == 200


ROUTES = {
    ("GET", "/healthz"): "unscoped", ("GET", "/readyz"): "unscoped", ("GET", "/metrics"): "unscoped",
    ("GET", "/v1/files"): _list_files, ("POST", "/v1/files"): _upload_file,
    ("GET", "/v1/jobs"): _list_jobs, ("POST", "/v1/jobs"): _create_job,
    ("GET", "/v1/reports"): _compare,
    ("GET", "/v1/files/{file_id}"): "path", ("DELETE", "/v1/files/{file_id}"): "path", ("GET", "/v1/files/{file_id}/layers"): "path",
    ("GET", "/v1/jobs/{job_id}"): "path", ("POST", "/v1/jobs/{job_id}/cancel"): "path", ("GET", "/v1/jobs/{job_id}/events"): "path",
    ("GET", "/v1/jobs/{job_id}/metrics"): "path", ("GET", "/v1/jobs/{job_id}/report"): "path",
    ("GET", "/v1/jobs/{job_id}/report.html"): "path", ("GET", "/v1/jobs/{job_id}/artifacts"): "path",
    ("GET", "/v1/jobs/{job_id}/artifacts/{name}"): "path", ("HEAD", "/v1/jobs/{job_id}/artifacts/{name}"): _head_artifact,
    ("DELETE", "/v1/jobs/{job_id}"): "path", ("GET", "/v1/jobs/{job_id}/events/stream"): "path",
    ("GET", "/v1/webhooks"): _list_webhooks, ("POST", "/v1/webhooks"): _create_webhook,
    ("GET", "/v1/sweeps"): _list_sweeps, ("POST", "/v1/sweeps"): _create_sweep,
    **{(m, p): "sweep" for m, p in (("GET", "/v1/sweeps/{sweep_id}"), ("GET", "/v1/sweeps/{sweep_id}/trials"),
                                    ("GET", "/v1/sweeps/{sweep_id}/front"), ("GET", "/v1/sweeps/{sweep_id}/front.html"),
                                    ("POST", "/v1/sweeps/{sweep_id}/cancel"))},
    **{(m, p): "webhook" for m, p in (("GET", "/v1/webhooks/{endpoint_id}"), ("PATCH", "/v1/webhooks/{endpoint_id}"),
                                      ("DELETE", "/v1/webhooks/{endpoint_id}"), ("POST", "/v1/webhooks/{endpoint_id}/rotate-secret"),
                                      ("POST", "/v1/webhooks/{endpoint_id}/test"), ("GET", "/v1/webhooks/{endpoint_id}/deliveries"))},
}


def test_every_route_is_covered():
    assert set(schema_routes()) == set(ROUTES), "a route was added or removed: give it a tenant-isolation case in ROUTES"


@pytest.mark.parametrize("method,path", schema_routes())
async def test_route_is_tenant_scoped(api, world, tmp_path, method, path):
    case = ROUTES[(method, path)]
    if case == "unscoped":
        await _unscoped(api, path)
    elif case == "path":
        await _path_route(api, world, method, path)
    elif case == "webhook":
        await _webhook_route(api, world, method, path)
    elif case == "sweep":
        await _sweep_route(api, world, method, path)
    elif case is _upload_file:
        await _upload_file(api, world, tmp_path)
    else:
        await case(api, world)


async def test_file_in_use_check_and_deletion_stay_within_the_tenant(api, world):
    """B deleting its own file is not blocked by A's jobs, and A's file in use by A's queued job is 409 only for A."""
    assert_error(await api.delete(f"/v1/files/{world.teacher}", headers=world.a), 409, "file_in_use")
    assert_error(await api.delete(f"/v1/files/{world.teacher}", headers=world.b), 404, "not_found")
    await api.post(f"/v1/jobs/{world.b_job}/cancel", headers=world.b)
    assert (await api.delete(f"/v1/files/{world.b_teacher}", headers=world.b)).status_code == 200
