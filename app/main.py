"""The FastAPI application: ``create_app()`` wires routers and the error handlers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.auth.mode import announce_auth_mode
from app.errors import RejectNulMiddleware, install_error_handlers
from app.files.router import router as files_router
from app.health.router import router as health_router
from app.metrics import MetricsMiddleware
from app.metrics import router as metrics_router
from app.jobs.router import router as jobs_router
from app.sweeps.router import router as sweeps_router
from app.reports.router import router as reports_router
from app.ui.router import router as ui_router, static_files as ui_static
from app.webhooks.router import router as webhooks_router
from stillhouse import metrics
from stillhouse.db import migrate
from stillhouse.jobs.sweep import start_sweeper
from stillhouse.settings import get_settings
from stillhouse.storage import StoreError, get_store

log = logging.getLogger("stillhouse.api")


def create_app(*, auto_migrate: bool | None = None) -> FastAPI:
    """Build the API. With ``auto_migrate`` (default: on for the embedded SQLite database) the
    Alembic migrations are applied at start-up; production runs ``alembic upgrade head`` first."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        settings = get_settings()
        announce_auth_mode(settings)  # raises (start-up fails) for STILLHOUSE_AUTH=off on a non-loopback host
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        metrics.forget_dead_processes()  # live gauges (open event streams) of API processes that ended
        store = get_store(settings)
        swept = store.sweep_temp()
        if not store.is_local:
            try:
                await anyio.to_thread.run_sync(store.ensure_bucket)
            except StoreError as e:  # /readyz says so until it works; uploads answer 503 storage_unavailable
                log.error("artifact store: %s", e)
        if swept:
            log.info("removed %d upload temp file(s) left by a stopped API process", swept)
        if auto_migrate if auto_migrate is not None else settings.database_url is None:
            migrate(settings)
        # sync endpoints run in anyio's thread pool: no more threads than pooled SQL connections (measured with
        # bench/load_status.py: 40 threads on 10 connections opened and closed connections all the time)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size
        log.info("stillhouse API ready: database=%s broker=%s data_dir=%s artifacts=%s", settings.resolved_database_url.split("@")[-1],
                 settings.broker_url.split("@")[-1], settings.data_dir.resolve(), settings.artifact_url or "data_dir")

        stop_sweeper = start_sweeper(settings, "stillhouse-api-sweep")  # re-sends unsent jobs and those whose worker died
        yield
        stop_sweeper()

    # /docs and /redoc with Swagger UI's and ReDoc's assets from the fastapi-offline package (served under /docs/assets),
    # not from a CDN: the pages work on a cluster without internet access
    app = FastAPIOffline(
        static_url="/docs/assets",
        title="stillhouse",
        version="0.1.0",
        description="Knowledge-distillation jobs over HTTP: upload a teacher and data, POST a job spec, follow its "
                    "progress, download the distilled student and its compression report.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RejectNulMiddleware)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(files_router)
    app.include_router(reports_router)
    app.include_router(jobs_router)
    app.include_router(sweeps_router)
    app.include_router(ui_router)
    app.mount("/ui/static", ui_static(), name="ui-static")
    app.include_router(webhooks_router)
    return app


app = create_app()
