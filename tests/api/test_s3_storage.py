"""Object storage against a real S3 server (SeaweedFS): the store itself (multipart uploads, ranged reads, prefixes,
the local cache, errors), and the API on it (uploads land in the bucket, downloads stream from it with Range)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests import files as mk
from tests.api.test_files import assert_error, upload
from tests.api.test_housekeeping import upload_as
from tests.api.test_jobs import spec_for
from tests.tenancy import bearer, make_tenant

pytestmark = pytest.mark.slow  # a SeaweedFS server process

def make_store(seaweedfs, tmp_path: Path, bucket: str | None = None, **over):
    from stillhouse.settings import Settings
    from stillhouse.storage import S3Store

    env = seaweedfs.env(bucket or seaweedfs.new_bucket())
    kw = {k.removeprefix("STILLHOUSE_").lower(): v for k, v in env.items()}
    return S3Store(Settings(data_dir=tmp_path / "data", **{**kw, **over}))


def test_multipart_upload_ranged_reads_and_prefix_delete(seaweedfs, tmp_path):
    from stillhouse.storage import S3Store

    store = make_store(seaweedfs, tmp_path, s3_part_bytes=5 * 1024**2)
    assert isinstance(store, S3Store) and store.check() is None
    payload = os.urandom(12 * 1024**2 + 123)  # three parts of 5 MiB
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    store.put(src, "jobs/job_a/artifacts/attempt-1/big.bin", source_mtime_ns=123456789)
    store.put(tmp_path.joinpath("small").open("wb+") if False else src.open("rb"), "jobs/job_a/work/checkpoint.pt")
    raw = seaweedfs.client().head_object(Bucket=store.bucket, Key="stillhouse/jobs/job_a/artifacts/attempt-1/big.bin")
    assert raw["ETag"].strip('"').endswith("-3"), raw["ETag"]  # a multipart upload of three parts
    info = store.stat("jobs/job_a/artifacts/attempt-1/big.bin")
    assert info.size == len(payload) and info.source_mtime_ns == 123456789
    assert store.stat("jobs/job_a/nothing") is None

    with store.open("jobs/job_a/artifacts/attempt-1/big.bin", 10 * 1024**2) as body:
        assert body.read() == payload[10 * 1024**2:]
    out = tmp_path / "got" / "big.bin"
    store.fetch("jobs/job_a/artifacts/attempt-1/big.bin", out)
    assert out.read_bytes() == payload and not list(out.parent.glob(".*tmp"))
    with pytest.raises(FileNotFoundError):
        store.fetch("jobs/job_a/none", tmp_path / "none")

    assert [o.key for o in store.list("jobs/job_a")] == ["jobs/job_a/artifacts/attempt-1/big.bin", "jobs/job_a/work/checkpoint.pt"]
    store.put(src, "jobs/job_ab/x")  # a sibling whose name shares the prefix must survive
    store.delete("jobs/job_a")
    assert seaweedfs.keys(store.bucket) == ["stillhouse/jobs/job_ab/x"]


def test_cache_checks_sha256_and_evicts_least_recently_used(seaweedfs, tmp_path):
    from stillhouse.storage import StoreError

    store = make_store(seaweedfs, tmp_path, cache_max_bytes=2500)
    blobs = {f"files/file_{i}": bytes([i]) * 1000 for i in range(3)}
    for key, data in blobs.items():
        src = tmp_path / key.replace("/", "_")
        src.write_bytes(data)
        store.put(src, key)
    p0 = store.local_path("files/file_0", sha256=hashlib.sha256(blobs["files/file_0"]).hexdigest())
    assert p0.read_bytes() == blobs["files/file_0"] and p0.is_relative_to(tmp_path / "data" / "cache")
    store.local_path("files/file_1")
    os.utime(p0)  # file_0 used most recently: file_1 goes first
    os.utime(store.cache_root / "files/file_1", (1, 1))
    store.local_path("files/file_2")
    cached = sorted(p.name for p in (store.cache_root / "files").iterdir())
    assert cached == ["file_0", "file_2"]

    work = tmp_path / "work"
    linked = store.job_input("files/file_0", work)
    assert linked.parent == work / "inputs" and linked.read_bytes() == blobs["files/file_0"]
    (store.cache_root / "files/file_0").unlink()  # evicted while a job runs: the job's link still reads
    assert linked.read_bytes() == blobs["files/file_0"]

    with pytest.raises(StoreError, match="sha256"):
        store.local_path("files/file_1", sha256="0" * 64)
    assert not (store.cache_root / "files/file_1").exists()  # a mismatching download is not kept


def test_errors_are_clear(seaweedfs, tmp_path):
    from stillhouse.storage import StoreError

    wrong_key = make_store(seaweedfs, tmp_path, s3_secret_access_key="not-the-secret")
    msg = wrong_key.check()
    assert msg and "403" in msg and "STILLHOUSE_S3_SECRET_ACCESS_KEY" in msg, msg
    with pytest.raises(StoreError, match="refused to stat files/x"):
        wrong_key.stat("files/x")
    missing = make_store(seaweedfs, tmp_path, bucket="no-such-bucket-here")
    assert "does not exist" in missing.check()
    missing.ensure_bucket()  # a fresh server: the API creates its bucket at start
    assert missing.check() is None
    with pytest.raises(ValueError, match="escapes"):
        missing.stat("../etc/passwd")


def test_artifact_url_must_be_s3():
    from pydantic import ValidationError

    from stillhouse.settings import Settings

    with pytest.raises(ValidationError, match="s3://bucket"):
        Settings(artifact_url="http://example.invalid/bucket")
    assert Settings(artifact_url="s3://b/some/prefix/").s3_bucket_prefix == ("b", "some/prefix")
    assert Settings(artifact_url="").artifact_url is None


async def test_uploads_live_in_the_bucket_and_layers_read_from_it(api, backend, s3_backend, seaweedfs, tmp_path):
    path = mk.safetensors_file(tmp_path)
    resp = await upload(api, path)
    assert resp.status_code == 201, resp.text
    f = resp.json()
    assert seaweedfs.keys(s3_backend) == [f"stillhouse/files/{f['id']}"]
    body = seaweedfs.client().get_object(Bucket=s3_backend, Key=f"stillhouse/files/{f['id']}")["Body"].read()
    assert body == path.read_bytes()
    assert not (backend.data_dir / "files").exists()  # nothing in the local store's place
    assert not list((backend.data_dir / "tmp").glob("upload-*"))
    for p in (backend.data_dir / "cache").rglob("*"):  # the API's cache may keep a copy; drop it to force a download
        if p.is_file():
            p.unlink()
    layers = await api.get(f"/v1/files/{f['id']}/layers")
    assert layers.status_code == 200, layers.text
    assert [layer["name"] for layer in layers.json()["data"]][-1] == "penultimate" or layers.json()["data"]
    assert (await api.delete(f"/v1/files/{f['id']}")).status_code == 200
    assert seaweedfs.keys(s3_backend) == []
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["artifact_store"] == "ok"


async def test_artifact_download_from_the_bucket_with_ranges(api, backend, s3_backend, seaweedfs, tmp_path):
    from stillhouse.db import session_scope
    from stillhouse.models import Artifact

    teacher = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    job = (await api.post("/v1/jobs", json=spec_for(teacher))).json()
    payload = os.urandom(3 * 1024**2 + 17)  # several API chunks (1 MiB)
    key = f"jobs/{job['id']}/artifacts/attempt-1/student.safetensors"
    seaweedfs.client().put_object(Bucket=s3_backend, Key=f"stillhouse/{key}", Body=payload)
    sha = hashlib.sha256(payload).hexdigest()
    with session_scope() as s:
        s.add(Artifact(job_id=job["id"], name="student.safetensors", bytes=len(payload), sha256=sha,
                       content_type="application/octet-stream", storage_key=key))
        s.add(Artifact(job_id=job["id"], name="gone.onnx", bytes=1, sha256="0" * 64, content_type="application/octet-stream",
                       storage_key=f"jobs/{job['id']}/artifacts/attempt-1/gone.onnx"))
    url = f"/v1/jobs/{job['id']}/artifacts/student.safetensors"
    full = await api.get(url)
    assert full.status_code == 200 and full.headers["etag"] == f'"{sha}"'
    assert full.headers["content-length"] == str(len(payload)) and hashlib.sha256(full.content).hexdigest() == sha
    part = await api.get(url, headers={"Range": "bytes=1048570-1048585"})
    assert part.status_code == 206 and part.content == payload[1048570:1048586]
    assert part.headers["content-range"] == f"bytes 1048570-1048585/{len(payload)}"
    tail = await api.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == payload[-5:]
    multi = await api.get(url, headers={"Range": "bytes=0-3, 2000000-2000009"})
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
    assert payload[:4] in multi.content and payload[2000000:2000010] in multi.content
    assert int(multi.headers["content-length"]) == len(multi.content)
    assert_error(await api.get(url, headers={"Range": f"bytes={len(payload) + 10}-"}), 416, "range_not_satisfiable")
    assert (await api.get(url, headers={"Range": "bytes=abc"})).content == payload
    err = assert_error(await api.get(f"/v1/jobs/{job['id']}/artifacts/gone.onnx"), 503, "artifact_unavailable")
    assert "artifact store" in err["message"]
    assert not (backend.data_dir / "jobs").exists()  # streamed from the bucket, never written to the API's disk


async def test_a_tenant_over_quota_through_artifacts_in_the_bucket_gets_out_by_deleting_the_job(api, backend, s3_backend,
                                                                                               seaweedfs, tmp_path):
    """Issue 14's quota trap on object storage: artifacts in the bucket take the tenant over its quota, the 413 says
    how to get out, and DELETE /v1/jobs/{id} removes the job's objects from the bucket and makes room."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.models import Artifact

    model = mk.safetensors_file(tmp_path)
    size = model.stat().st_size
    _, key = make_tenant("acme", max_storage_bytes=2 * size)
    h = bearer(key)
    teacher = (await upload_as(api, model, h)).json()["id"]
    job = (await api.post("/v1/jobs", json=spec_for(teacher), headers=h)).json()["id"]
    art = f"jobs/{job}/artifacts/attempt-1/student.safetensors"  # as a worker publishes it: in the bucket only
    payload = os.urandom(size)
    seaweedfs.client().put_object(Bucket=s3_backend, Key=f"stillhouse/{art}", Body=payload)
    with session_scope() as s:
        assert states.transition(s, job, states.RUNNING, attempt=1)
        assert states.transition(s, job, states.SUCCEEDED, report={"summary": "ok"})
        s.add(Artifact(job_id=job, name="student.safetensors", bytes=size, sha256=hashlib.sha256(payload).hexdigest(),
                       content_type="application/octet-stream", storage_key=art))
    other = mk.safetensors_file(tmp_path, seed=1)
    err = assert_error(await upload_as(api, other, h), 413, "storage_quota_exceeded")
    assert f"{size} bytes are used by its files and {size} by its jobs' artifacts, 0 left" in err["message"]
    assert "DELETE /v1/jobs/{id}" in err["message"] and "stillhouse delete JOB_ID" in err["message"]
    gone = await api.delete(f"/v1/jobs/{job}", headers=h)
    assert gone.status_code == 200 and gone.json()["freed_bytes"] == size, gone.text
    assert seaweedfs.keys(s3_backend, f"stillhouse/jobs/{job}/") == []
    assert seaweedfs.keys(s3_backend, "stillhouse/files/") == [f"stillhouse/files/{teacher}"]  # its files stay
    again = await upload_as(api, other, h)
    assert again.status_code == 201, again.text
    assert f"stillhouse/files/{again.json()['id']}" in seaweedfs.keys(s3_backend, "stillhouse/files/")


def test_checkpoint_mirror_uploads_while_allowed_and_restores_the_newest(seaweedfs, tmp_path):
    from stillhouse.jobs.scratch import CheckpointMirror

    bucket = seaweedfs.new_bucket()
    a = make_store(seaweedfs, tmp_path / "a", bucket=bucket)  # two machines, one bucket
    b = make_store(seaweedfs, tmp_path / "b", bucket=bucket)
    allowed = [True]
    wa = a.scratch_dir("job_m")
    wa.mkdir(parents=True)
    (wa / "checkpoint.pt").write_bytes(b"epoch-1")
    (wa / "checkpoint.pt.tmp").write_bytes(b"half-written")  # never mirrored
    (wa / "inputs").mkdir()
    (wa / "inputs" / "files_file_x").write_bytes(b"teacher")  # inputs stay local
    ma = CheckpointMirror(a, "job_m", wa, may_write=lambda: allowed[0])
    assert ma.sync() == ["checkpoint.pt"] and ma.sync() == []  # unchanged: not uploaded again
    assert seaweedfs.keys(bucket) == ["stillhouse/jobs/job_m/work/checkpoint.pt"]

    wb = b.scratch_dir("job_m")
    mb = CheckpointMirror(b, "job_m", wb, may_write=lambda: True)
    assert mb.restore() == ["checkpoint.pt"] and (wb / "checkpoint.pt").read_bytes() == b"epoch-1"
    assert mb.sync() == []  # what it restored is what the bucket holds
    (wb / "checkpoint.pt").write_bytes(b"epoch-2")  # b goes on and writes a newer one
    os.utime(wb / "checkpoint.pt", ns=((wa / "checkpoint.pt").stat().st_mtime_ns + 10**9,) * 2)
    assert mb.sync() == ["checkpoint.pt"]

    assert ma.restore() == ["checkpoint.pt"] and (wa / "checkpoint.pt").read_bytes() == b"epoch-2"  # newest wins
    (wa / "checkpoint.pt").write_bytes(b"epoch-3-local")
    os.utime(wa / "checkpoint.pt", ns=((wb / "checkpoint.pt").stat().st_mtime_ns + 10**9,) * 2)
    assert ma.restore() == [] and (wa / "checkpoint.pt").read_bytes() == b"epoch-3-local"  # a newer local copy is kept
    allowed[0] = False  # lease lost: nothing more is written
    assert ma.sync() == []
    with b.open("jobs/job_m/work/checkpoint.pt") as body:
        assert body.read() == b"epoch-2"
    # the core prunes its older checkpoints and sets unreadable ones aside: the store follows the folder
    (wb / "checkpoint-epoch3-step30.pt").write_bytes(b"epoch-3")
    assert mb.sync() == ["checkpoint-epoch3-step30.pt"]
    (wb / "checkpoint.pt").unlink()
    assert mb.sync() == [] and seaweedfs.keys(bucket) == ["stillhouse/jobs/job_m/work/checkpoint-epoch3-step30.pt"]
