"""``/ui``: the dashboard page and its static assets.

The page holds no data: the browser reads the tenant's jobs, metrics, events, reports and artifacts from the ``/v1``
API with the same authentication as any client (no key on a loopback server; otherwise an API key the user enters,
kept in the browser's ``localStorage``). So the page and its assets are served without a key, and left out of the
OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def dashboard() -> FileResponse:
    """The dashboard page (``text/html``): the tenant's jobs with live status; ``#/jobs/<id>`` shows one job's progress,
    loss and accuracy charts, events, report and downloads."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"cache-control": "no-cache"})


@router.get("/ui/")
def dashboard_slash() -> RedirectResponse:
    """``/ui/`` redirects to ``/ui`` (307)."""
    return RedirectResponse("/ui")


def static_files() -> StaticFiles:
    """The page's CSS and JavaScript, mounted at ``/ui/static``."""
    return StaticFiles(directory=STATIC)
