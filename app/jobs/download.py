"""Artifact downloads: Starlette's ``FileResponse`` (streamed, Content-Length, single and multiple
``Range``s -> 206, ``HEAD`` without a body) with the artifact's sha256 as ``ETag``, plus RFC 9110 handling of
conditional requests and bad ranges: ``If-None-Match`` naming the ETag (or ``*``) gets 304 Not Modified without
a body; a syntactically invalid ``Range`` is ignored (200, whole file) and an unsatisfiable one gets 416 in
the API's error shape with ``Content-Range: bytes */<size>``.

From object storage (``StoreArtifactResponse``) the same response reads the object instead of a file: one ranged
GET per requested range (``Range: bytes=start-``), read a chunk (``STILLHOUSE_UPLOAD_CHUNK_BYTES``) at a time in a
worker thread, so a 1 GiB download holds one chunk in memory, and nothing is downloaded to the API's disk."""

from __future__ import annotations

import os
import re
import stat
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, BinaryIO

import anyio
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from app.errors import error_json
from stillhouse.storage import ArtifactStore, ObjectInfo

_RANGE = re.compile(r"^bytes=\s*(\d*-\d*)(\s*,\s*\d*-\d*)*\s*$")


def classify_range(value: str, size: int) -> str:
    """'ok' for a satisfiable byte-range set, 'invalid' for bad syntax (to be ignored), 'unsatisfiable' when
    no range overlaps a file of ``size`` bytes."""
    if not _RANGE.match(value):
        return "invalid"
    satisfiable = False
    for part in value.split("=", 1)[1].split(","):
        start, _, end = part.strip().partition("-")
        if not start and not end:
            return "invalid"
        if start and end and int(start) > int(end):
            return "invalid"
        if start and int(start) < size or not start and int(end) > 0:
            satisfiable = True
    return "ok" if satisfiable else "unsatisfiable"


def etag_matches(if_none_match: str, etag: str) -> bool:
    """True when an ``If-None-Match`` header value names ``etag`` (a quoted entity tag) or is ``*``. The comparison
    is weak (RFC 9110 §13.1.2): ``W/"x"`` matches ``"x"``."""
    value = if_none_match.strip()
    if value == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in value.split(","))


class ArtifactResponse(FileResponse):
    """A ``FileResponse`` whose conditional requests and ``Range`` errors follow RFC 9110 and the API's error shape."""

    def __init__(self, path: Path, *, sha256: str, media_type: str, filename: str, stat_result: os.stat_result | None = None) -> None:
        self._etag = f'"{sha256}"'
        super().__init__(path, media_type=media_type, filename=filename, headers={"etag": self._etag},
                         stat_result=stat_result or os.stat(path))
        self._size = self.stat_result.st_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        inm = headers.get("if-none-match")
        if inm is not None and etag_matches(inm, self._etag):  # the client's copy is current: no body (RFC 9110 §15.4.5)
            await Response(status_code=304, headers={"etag": self._etag})(scope, receive, send)
            return
        value = headers.get("range")
        if value is not None:
            kind = classify_range(value, self._size)
            if kind == "unsatisfiable":
                resp = error_json(416, "range_not_satisfiable", f"range {value!r} is outside the {self._size}-byte file",
                                  "Range", headers={"content-range": f"bytes */{self._size}"})
                await resp(scope, receive, send)
                return
            if kind == "invalid":  # ignore it: serve the whole file
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]}
        await super().__call__(scope, receive, send)


class _ObjectReader:
    """The async file interface ``FileResponse`` reads through (``seek``, ``read``), over ``store.open``: a seek drops
    the current stream; the next read opens one ranged GET from that offset."""

    def __init__(self, store: ArtifactStore, key: str) -> None:
        self.store, self.key, self.pos = store, key, 0
        self._body: BinaryIO | None = None

    async def seek(self, pos: int) -> None:
        if pos != self.pos or self._body is None:
            await self.aclose()
            self.pos = pos

    def _read(self, n: int) -> bytes:
        if self._body is None:
            self._body = self.store.open(self.key, self.pos)
        out = bytearray()
        while len(out) < n:  # FileResponse takes a short read for the end of the file
            piece = self._body.read(n - len(out))
            if not piece:
                break
            out += piece
        self.pos += len(out)
        return bytes(out)

    async def read(self, n: int) -> bytes:
        return await anyio.to_thread.run_sync(self._read, n)

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            await anyio.to_thread.run_sync(body.close)


class StoreArtifactResponse(ArtifactResponse):
    """An ``ArtifactResponse`` whose bytes come from an object in ``store`` (see the module doc), ``chunk`` bytes per read."""

    def __init__(self, store: ArtifactStore, info: ObjectInfo, *, sha256: str, media_type: str, filename: str, chunk: int) -> None:
        st = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, info.size, int(info.mtime), int(info.mtime), int(info.mtime)))
        super().__init__(Path(info.key), sha256=sha256, media_type=media_type, filename=filename, stat_result=st)
        self.store, self.key, self.chunk_size = store, info.key, chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}  # no local path
        await super().__call__({**scope, "extensions": extensions}, receive, send)

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[_ObjectReader]:
        reader = _ObjectReader(self.store, self.key)
        try:
            yield reader
        finally:
            with anyio.CancelScope(shield=True):
                await reader.aclose()
