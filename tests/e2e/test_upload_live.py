"""Uploads against a real uvicorn server over raw sockets: a client that disconnects mid-upload, a declared
size over the limit answered before any body byte is sent, a chunked body cut off at the limit, and a
Content-Length smaller than the body. Each leaves no temporary file and no row."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow
import sqlalchemy as sa

from tests.conftest import Backend
from tests.e2e.conftest import Live, start, stop

LIMIT = 4 * 1024 * 1024  # the server's STILLHOUSE_MAX_UPLOAD_BYTES here
BOUNDARY = "liveb0undary"


@pytest.fixture(scope="module")
def server(backend_session: Backend, tmp_path_factory) -> Iterator[Live]:
    """The API alone (no worker) with a 4 MiB upload limit and 64 KiB write chunks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", str(LIMIT))
        mp.setenv("STILLHOUSE_UPLOAD_CHUNK_BYTES", str(64 * 1024))
        lv = start(backend_session, tmp_path_factory.mktemp("upload-logs"), worker=False)
    yield lv
    stop(lv)


def head(purpose: bytes = b"dataset", filename: bytes = b"d.csv") -> bytes:
    """The multipart body up to the file part's data: the 'purpose' field, then the 'file' part headers."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n".encode() + purpose + b"\r\n"
            + f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"".encode() + filename + b"\"\r\n\r\n")


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def request_head(port: int, extra: str) -> bytes:
    """The request line and headers of a multipart POST /v1/files, with ``extra`` header lines."""
    return (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{extra}\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 30) -> tuple[int, dict | str]:
    """Status and body (JSON decoded when it is JSON) of one HTTP/1.1 response (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(l.split(":", 1)[1]) for l in lines[1:] if l.lower().startswith("content-length:"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    try:
        return status, json.loads(body[:length])
    except ValueError:
        return status, body[:length].decode("latin-1")


def temp_files(backend: Backend) -> list[Path]:
    """Upload temp files under <data_dir>/tmp."""
    d = backend.data_dir / "tmp"
    return sorted(d.glob("upload-*")) if d.exists() else []


def file_rows(backend: Backend) -> int:
    """Rows in the files table of ``backend``'s database, counted directly."""
    from stillhouse.settings import Settings

    url = Settings(**{k.removeprefix("STILLHOUSE_").lower(): v for k, v in backend.env().items()}).resolved_database_url
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(sa.text("SELECT count(*) FROM files")).scalar_one()
    finally:
        engine.dispose()


def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond()`` every 50 ms until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_error_shape(body: dict) -> dict:
    """``body`` is exactly {'error': {code, message, param}}; returns the error object."""
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}, body
    return body["error"]


def test_client_disconnect_mid_upload_leaves_nothing(server: Live):
    backend = server.backend
    rows, stored = file_rows(backend), sorted((backend.data_dir / "files").glob("*"))
    assert temp_files(backend) == []
    first = head()
    declared = len(first) + 3 * 1024 * 1024 + len(TAIL)  # under the limit: the server starts storing
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {declared}\r\n") + first)
        sock.sendall(b"a,b,label\n" + b"1,2,0\n" * (1536 * 1024 // 6))  # about half of the body
        # the upload really is being written to a temporary file
        wait_for(lambda: any(p.stat().st_size > 0 for p in temp_files(backend)), what="the temp file to fill")
        sock.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: temp_files(backend) == [], what="the temp file to be removed after the disconnect")
    assert file_rows(backend) == rows
    assert sorted((backend.data_dir / "files").glob("*")) == stored
    assert server.procs["api"].poll() is None  # the server lives on
    assert server.client.list_files() is not None


def test_declared_size_over_the_limit_is_answered_before_any_body_byte(server: Live):
    backend = server.backend
    rows = file_rows(backend)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {LIMIT + 10 * 1024 * 1024}\r\n"))  # headers only
        status, body = read_response(sock)
    assert status == 413
    err = assert_error_shape(body)
    assert err["code"] == "file_too_large" and str(LIMIT) in err["message"]
    assert temp_files(backend) == [] and file_rows(backend) == rows


def test_chunked_body_over_the_limit_is_cut_off_while_streaming(server: Live):
    backend = server.backend
    rows = file_rows(backend)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, "Transfer-Encoding: chunked\r\n"))

        def chunk(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        sock.sendall(chunk(head()))
        sent = 0
        piece = b"\0" * 65536
        try:
            while sent < 2 * LIMIT:  # the server answers 413 and may close before all of this is sent
                sock.sendall(chunk(piece))
                sent += len(piece)
            sock.sendall(chunk(TAIL) + b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = read_response(sock)
    assert status == 413 and assert_error_shape(body)["code"] == "file_too_large"
    wait_for(lambda: temp_files(backend) == [], what="the temp file to be removed")
    assert file_rows(backend) == rows


def test_content_length_smaller_than_the_body_is_refused(server: Live):
    """The server reads as many bytes as declared: the multipart body then lacks its end and must not be stored."""
    backend = server.backend
    rows = file_rows(backend)
    csv = b"a,b,label\n" + b"1,2,0\n" * 200_000  # 1.2 MB: a valid CSV at any line boundary
    body = head() + csv + TAIL
    declared = len(body) // 2 - 3
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {declared}\r\n") + body[:declared])
        status, resp = read_response(sock)
    assert status == 422, resp
    assert "closing boundary" in assert_error_shape(resp)["message"]
    wait_for(lambda: temp_files(backend) == [], what="the temp file to be removed")
    assert file_rows(backend) == rows
    # the whole body at once: the surplus is a malformed next request (uvicorn answers 400 and closes);
    # whichever way the first request ends, nothing of it is kept
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {declared}\r\n") + body)
        status, resp = read_response(sock)
    assert status in (400, 422), resp
    wait_for(lambda: temp_files(backend) == [], what="the temp file to be removed")
    assert file_rows(backend) == rows
    assert server.procs["api"].poll() is None


def test_hostile_filename_over_real_http(server: Live):
    backend = server.backend
    body = head(filename=b"../../etc/passwd\x00.csv") + b"a,label\n1,0\n" + TAIL
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {len(body)}\r\n") + body)
        status, resp = read_response(sock)
    assert status == 201, resp
    assert resp["filename"] == "passwd.csv"
    assert (backend.data_dir / "files" / resp["id"]).read_bytes() == b"a,label\n1,0\n"
    assert not (backend.data_dir.parent / "etc").exists()
