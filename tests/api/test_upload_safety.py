"""Upload safety through the ASGI app: hostile client filenames are metadata only, size limits are answered
before storing, and every failure path leaves no temporary file and no row behind."""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from tests import files as mk
from tests.api.test_files import assert_error

BOUNDARY = "b0undary"
CTYPE = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(file_bytes: bytes, *, filename: bytes | None = b"d.csv", purpose: bytes | None = b"dataset",
              close: bool = True, disposition: bytes | None = None) -> bytes:
    """A multipart body written byte by byte (so filenames reach the server exactly as given, NUL included)."""
    out = b""
    if purpose is not None:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n".encode() + purpose + b"\r\n"
    if disposition is None:
        disposition = b'form-data; name="file"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
    out += f"--{BOUNDARY}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n\r\n" + file_bytes
    if close:
        out += f"\r\n--{BOUNDARY}--\r\n".encode()
    return out


def csv_bytes(rows: int = 20) -> bytes:
    """A numeric CSV with a header and ``rows`` rows (columns a, b, label)."""
    return b"a,b,label\n" + b"".join(f"{i},{i * 2},{i % 3}\n".encode() for i in range(rows))


def leftovers(backend) -> list[str]:
    """Everything under <data_dir>/tmp and <data_dir>/files."""
    return sorted(str(p.relative_to(backend.data_dir)) for sub in ("tmp", "files") for p in (backend.data_dir / sub).rglob("*"))


def file_rows() -> int:
    """Rows in the files table, counted directly."""
    from stillhouse.db import get_engine
    from stillhouse.models import File

    with get_engine().connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(File)).scalar_one()


@pytest.mark.parametrize("raw,expected", [
    (b"../../x", "x"),
    (b"/etc/passwd", "passwd"),
    (b"..\\..\\x", "x"),
    (b"a\x00b.csv", "ab.csv"),
    (b"C:\\Users\\me\\data.csv", "data.csv"),
    (b"a\x1b[31m\xe2\x80\xaeevil.csv", "a[31mevil.csv"),  # ESC and U+202E (right-to-left override) removed
    (b"..", "upload"),
    (b"", "upload"),
    (None, "upload"),  # no filename attribute at all
    ("caf\u00e9 d\u00e9j\u00e0.csv".encode(), "caf\u00e9 d\u00e9j\u00e0.csv"),
])
async def test_hostile_filenames_are_metadata_only(api, backend, raw, expected):
    resp = await api.post("/v1/files", content=multipart(csv_bytes(), filename=raw), headers=CTYPE)
    assert resp.status_code == 201, resp.text
    f = resp.json()
    assert f["filename"] == expected
    assert leftovers(backend) == [f"files/{f['id']}"]  # the only thing written: under the server's id
    assert not (backend.data_dir.parent / "x").exists() and not (backend.data_dir / "x").exists()
    assert (await api.get(f"/v1/files/{f['id']}")).json()["filename"] == expected


async def test_very_long_filename_is_capped_keeping_its_extension(api, backend):
    name = ("n" * 1000 + ".safetensors").encode()
    resp = await api.post("/v1/files", content=multipart(csv_bytes(), filename=name), headers=CTYPE)
    assert resp.status_code == 201, resp.text
    assert resp.json()["filename"] == "n" * (255 - len(".safetensors")) + ".safetensors"


async def test_filename_longer_than_a_header_line_is_refused_clearly(api, backend):
    err = assert_error(await api.post("/v1/files", content=multipart(csv_bytes(), filename=b"n" * 5000), headers=CTYPE), 422)
    assert "4 KiB" in err["message"] and err["param"] == "file"
    assert leftovers(backend) == [] and file_rows() == 0


async def test_truncated_body_is_refused_not_stored_truncated(api, backend):
    """A body that ends inside the file part (a Content-Length smaller than the body, a cut stream) is a 422;
    before, the chunks already written were stored as a valid, shorter CSV."""
    body = multipart(csv_bytes(150_000), close=False)  # over 2 MiB of CSV, no closing boundary
    assert len(body) > 2 * 1024 * 1024
    err = assert_error(await api.post("/v1/files", content=body, headers=CTYPE), 422)
    assert "closing boundary" in err["message"]
    assert leftovers(backend) == [] and file_rows() == 0


async def test_file_part_without_filename_is_accepted(api):
    resp = await api.post("/v1/files", content=multipart(csv_bytes(), filename=None), headers=CTYPE)
    assert resp.status_code == 201 and resp.json()["details"]["samples"] == 20


async def test_declared_length_over_the_limit_is_answered_before_reading_the_body(api, backend, monkeypatch):
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "100000")
    get_settings.cache_clear()
    pulled = []

    async def body():
        for i in range(40):
            pulled.append(i)
            yield b"\0" * 10_000

    headers = {**CTYPE, "content-length": str(100_000 + 64 * 1024 + 1)}
    err = assert_error(await api.post("/v1/files", content=body(), headers=headers), 413, "file_too_large")
    assert "100000" in err["message"]
    assert pulled == [], f"the app read {len(pulled)} body chunks before answering 413"
    assert leftovers(backend) == [] and file_rows() == 0


async def test_lying_content_length_is_cut_off_while_streaming(api, backend, monkeypatch):
    """In-process the app gets every byte whatever Content-Length says: the byte count, not the header, decides."""
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "50000")
    get_settings.cache_clear()
    body = multipart(b"\0" * 200_000)

    async def stream():
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    assert_error(await api.post("/v1/files", content=stream(), headers={**CTYPE, "content-length": "1000"}), 413, "file_too_large")
    assert leftovers(backend) == [] and file_rows() == 0


def _failing_uploads(tmp_path):
    marker = tmp_path / "pwned"
    big = multipart(b"\0" * 300_000)
    second = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"2.csv\"\r\n\r\n".encode()
              + csv_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
    two_file_parts = multipart(csv_bytes(10_000)).removesuffix(f"--{BOUNDARY}--\r\n".encode()) + second
    return {
        "413 declared": ({**CTYPE, "content-length": str(len(big) + 10**9)}, big, 413),
        "413 streamed": (CTYPE, big, 413),
        "422 invalid_file": (CTYPE, multipart(mk.random_bytes(tmp_path, 200_000).read_bytes(), purpose=b"teacher"), 422),
        "422 unsafe_checkpoint": (CTYPE, multipart(mk.malicious_checkpoint(tmp_path, marker).read_bytes(), purpose=b"teacher"), 422),
        "422 missing purpose": (CTYPE, multipart(csv_bytes(10_000), purpose=None), 422),
        "422 unknown purpose": (CTYPE, multipart(csv_bytes(10_000), purpose=b"weights"), 422),
        "422 truncated": (CTYPE, multipart(csv_bytes(10_000), close=False), 422),
        "422 two file parts": (CTYPE, two_file_parts, 422),
    }


@pytest.mark.parametrize("case", ["413 declared", "413 streamed", "422 invalid_file", "422 unsafe_checkpoint",
                                  "422 missing purpose", "422 unknown purpose", "422 truncated", "422 two file parts"])
async def test_every_failure_path_removes_the_temporary_file(api, backend, tmp_path, monkeypatch, case):
    """The temporary file is written (where the body was read) and gone afterwards; no row, nothing stored."""
    from app.files import router
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "250000")
    monkeypatch.setenv("STILLHOUSE_UPLOAD_CHUNK_BYTES", "4096")  # written to disk every 4 KiB
    get_settings.cache_clear()
    seen: list[int] = []
    real = router.receive_upload

    async def spy(request, tmp_path_, **kw):
        try:
            return await real(request, tmp_path_, **kw)
        finally:
            seen.append(tmp_path_.stat().st_size if tmp_path_.exists() else -1)

    monkeypatch.setattr(router, "receive_upload", spy)
    headers, body, status = _failing_uploads(tmp_path)[case]

    async def pieces():  # as a network delivers it: 8 KiB at a time
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    assert_error(await api.post("/v1/files", content=pieces(), headers=headers), status)
    if case != "413 declared":  # the body was read, so bytes reached the temporary file before the failure
        assert seen and seen[0] > 0, seen
    else:
        assert seen == [-1]
    assert leftovers(backend) == [] and file_rows() == 0
    assert not (tmp_path / "pwned").exists()


async def test_part_count_is_bounded(api, backend):
    parts = b"".join(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n".encode() for i in range(40))
    body = parts + multipart(csv_bytes())
    err = assert_error(await api.post("/v1/files", content=body, headers=CTYPE), 422)
    assert "parts" in err["message"]
    assert leftovers(backend) == []


def test_stale_temporary_files_are_swept(tmp_path):
    """Uploads cut by a killed API process leave temp files; the next start removes those idle for an hour."""
    import os
    import time

    from stillhouse.settings import Settings
    from stillhouse.storage import LocalStore

    store = LocalStore(Settings(data_dir=tmp_path))
    old, fresh = store.temp_path(), store.temp_path()
    old.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / "tmp" / "keep.txt"
    other.write_text("not ours")
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert store.sweep_temp(older_than_s=3600) == 1
    assert not old.exists() and fresh.exists() and other.exists()
