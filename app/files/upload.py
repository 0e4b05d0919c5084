"""Streaming multipart upload: the body is parsed as it arrives (python-multipart's push parser),
the file part written to a temporary file in ``upload_chunk_bytes`` blocks and hashed (sha256) on
the way; at most one chunk of the body is ever in memory. Over-limit uploads stop at the limit; a body
that ends before its closing boundary (a lying Content-Length, a cut connection) is refused, never stored
truncated. The client's filename is metadata only (``safe_filename``)."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import PayloadTooLarge, Unprocessable

MAX_FIELD_BYTES = 1024  # text fields ('purpose') are short
MAX_PARTS = 16  # 'file', 'purpose' and a few a client may add; more is not a real upload
MAX_FILENAME_CHARS = 255  # the files.filename column
_DROP_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")  # control, format (bidi overrides, zero-width), line/paragraph separators


def safe_filename(raw: str | None) -> str:
    """The client's file name reduced to safe metadata: NFC-normalised, its base name only (after the last ``/``
    or ``\\``), control/format characters (NUL, ESC, bidi overrides, zero-width) removed, surrounding spaces
    trimmed, at most ``MAX_FILENAME_CHARS`` characters (the extension, up to 16 characters, kept). ``'upload'``
    when nothing is left (empty, ``.``, ``..``). It is never used as a path: stored files get server ids."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROP_CATEGORIES).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        ext = dot + ext if dot and stem and len(ext) <= 16 else ""
        name = name[: MAX_FILENAME_CHARS - len(ext)] + ext
    return name


@dataclass
class ReceivedUpload:
    """What a multipart request carried: the stored temp file, its size (bytes), sha256 and the text fields."""

    path: Path
    filename: str | None = None
    bytes: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    file_parts: int = 0


class _Sink:
    """Collects parser callbacks into fields and one file part written to ``path``."""

    def __init__(self, path: Path, limit: int, chunk: int) -> None:
        self.path, self.limit, self.chunk = path, limit, chunk
        self.out = ReceivedUpload(path=path)
        self._hash = hashlib.sha256()
        self._fh = None
        self._buf = bytearray()
        self._pending: list[bytes] = []  # full chunks waiting to be written off the event loop
        self._hname = b""
        self._hval = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._field = bytearray()
        self.parts = 0
        self.complete = False  # the closing boundary was seen

    # -- callbacks -----------------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise Unprocessable(f"more than {MAX_PARTS} multipart parts; send 'file' and 'purpose'", param="file")
        self._headers, self._name, self._is_file = {}, None, False

    def on_end(self) -> None:
        """The closing boundary was parsed: the body is complete."""
        self.complete = True

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hval += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hval
        self._hname, self._hval = b"", b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace") or None
        self._is_file = self._name == "file"  # with or without a filename (which may be empty)
        if self._is_file:
            self.out.file_parts += 1
            if self.out.file_parts > 1:
                raise Unprocessable("send exactly one 'file' part", param="file")
            self.out.filename = safe_filename(opts.get(b"filename", b"").decode("utf-8", "replace"))
            self._fh = open(self.path, "wb")
        self._field = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._is_file:
            self.out.bytes += len(piece)
            if self.out.bytes > self.limit:
                raise PayloadTooLarge(f"file is larger than the limit of {self.limit} bytes", param="file")
            self._hash.update(piece)
            self._buf += piece
            if len(self._buf) >= self.chunk:
                self._pending.append(bytes(self._buf))
                self._buf.clear()
        else:
            self._field += piece
            if len(self._field) > MAX_FIELD_BYTES:
                raise Unprocessable(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes", param=self._name)

    def on_part_end(self) -> None:
        if self._is_file:
            if self._buf:
                self._pending.append(bytes(self._buf))
                self._buf.clear()
        elif self._name:
            self.out.fields[self._name] = self._field.decode("utf-8", "replace")

    # -- I/O -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write pending chunks (called in a worker thread)."""
        while self._pending:
            assert self._fh is not None
            self._fh.write(self._pending.pop(0))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> ReceivedUpload:
        self.out.sha256 = self._hash.hexdigest()
        return self.out


async def receive_upload(request: Request, tmp_path: Path, *, limit: int, chunk: int) -> ReceivedUpload:
    """Stream a ``multipart/form-data`` request body into ``tmp_path``.

    Returns the text fields, the file part's size (bytes), sha256 and sanitised filename. Raises
    ``PayloadTooLarge`` (413) before reading any of the body when the declared Content-Length passes
    ``limit`` + 64 KiB of form overhead, and as soon as the file bytes received pass ``limit`` (a chunked
    body, or a Content-Length that lies). ``Unprocessable`` (422) for a body that is not multipart, is
    malformed (e.g. a part header over python-multipart's 4 KiB line limit), ends before its closing
    boundary, was cut by the client disconnecting, has more than ``MAX_PARTS`` parts, or no or several
    ``file`` parts. The caller removes ``tmp_path`` on every failure.
    """
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise Unprocessable("expected a multipart/form-data body with fields 'file' and 'purpose'", param="file")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"upload of {declared} bytes is larger than the limit of {limit} bytes", param="file")
    sink = _Sink(tmp_path, limit, chunk)
    parser = MultipartParser(opts[b"boundary"], callbacks={
        "on_part_begin": sink.on_part_begin, "on_part_data": sink.on_part_data, "on_part_end": sink.on_part_end,
        "on_header_field": sink.on_header_field, "on_header_value": sink.on_header_value,
        "on_header_end": sink.on_header_end, "on_headers_finished": sink.on_headers_finished, "on_end": sink.on_end,
    })
    try:
        async for data in request.stream():
            if data:
                parser.write(data)
                if sink._pending:
                    await anyio.to_thread.run_sync(sink.flush)
        parser.finalize()
        await anyio.to_thread.run_sync(sink.flush)
    except MultipartParseError as e:
        hint = " (a part header line, e.g. its filename, is limited to 4 KiB)" if "header size" in str(e) else ""
        raise Unprocessable(f"malformed multipart body: {e}{hint}", param="file") from e
    except ClientDisconnect as e:
        raise Unprocessable("client disconnected before the upload finished", param="file") from e
    finally:
        sink.close()
    if sink.out.file_parts == 0:
        raise Unprocessable("missing the 'file' part (a multipart field named 'file')", param="file")
    if not sink.complete:
        raise Unprocessable(f"the multipart body ended before its closing boundary after {sink.out.bytes} bytes of the file "
                            "(truncated upload, or a Content-Length smaller than the body); nothing was stored", param="file")
    return sink.finish()
