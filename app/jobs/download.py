"""Artifact downloads: Starlette's ``FileResponse`` (streamed, Content-Length, single and multiple
``Range``s -> 206) with the artifact's sha256 as ``ETag``, plus RFC 9110 handling of bad ranges:
a syntactically invalid ``Range`` is ignored (200, whole file) and an unsatisfiable one gets 416 in
the API's error shape with ``Content-Range: bytes */<size>``."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from app.errors import error_json

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


class ArtifactResponse(FileResponse):
    """A ``FileResponse`` whose ``Range`` errors follow RFC 9110 and the API's error shape."""

    def __init__(self, path: Path, *, sha256: str, media_type: str, filename: str) -> None:
        super().__init__(path, media_type=media_type, filename=filename, headers={"etag": f'"{sha256}"'})
        self._size = path.stat().st_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = Headers(scope=scope).get("range")
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
