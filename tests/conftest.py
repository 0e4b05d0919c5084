"""Shared fixtures: database backends (embedded SQLite always; PostgreSQL + Redis where reachable,
required when STILLHOUSE_REQUIRE_SERVICES=1 as in CI), settings isolation, the ASGI API client."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

# Each test process (each pytest-xdist worker) counts its Prometheus samples in its own directory, chosen before
# anything imports stillhouse.metrics: with one shared directory, a test reading /metrics counted the requests of the
# other process too (test_metrics: 6 where it made 3, under -n 2).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"stillhouse-metrics-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")

PG_ADMIN_URL = os.environ.get("STILLHOUSE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("STILLHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("STILLHOUSE_REQUIRE_SERVICES") == "1"

os.environ.setdefault("OMP_NUM_THREADS", "1")

# shared model and data fixtures (digits teacher, MiniLM, tiny BERT, reviews); real SeaweedFS and MLflow servers
pytest_plugins = ["tests.models", "tests.s3", "tests.mlflow_server"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def services_or_skip() -> None:
    """Skip (or fail, when STILLHOUSE_REQUIRE_SERVICES=1) unless PostgreSQL and Redis answer on 127.0.0.1."""
    missing = [n for n, p in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable("127.0.0.1", p)]
    if missing:
        msg = f"{' and '.join(missing)} not reachable on 127.0.0.1"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " but STILLHOUSE_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(msg)


class Backend:
    """Connection settings of one test backend (env vars for the service's Settings)."""

    def __init__(self, name: str, data_dir: Path, database_url: str | None, broker_url: str, queue: str) -> None:
        self.name, self.data_dir, self.database_url, self.broker_url, self.queue = name, data_dir, database_url, broker_url, queue

    def env(self) -> dict[str, str]:
        env = {"STILLHOUSE_DATA_DIR": str(self.data_dir), "STILLHOUSE_BROKER_URL": self.broker_url, "STILLHOUSE_QUEUE": self.queue}
        if self.database_url:
            env["STILLHOUSE_DATABASE_URL"] = self.database_url
        return env


def _create_pg_database() -> tuple[str, callable]:
    import sqlalchemy as sa

    name = f"stillhouse_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        from stillhouse.db import _engine_for

        _engine_for.cache_clear()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def make_backend(kind: str, base: Path) -> tuple[Backend, callable]:
    """A fresh backend of ``kind`` ('sqlite' or 'postgres'); returns it and its teardown."""
    queue = f"stillhouse-test-{uuid.uuid4().hex[:8]}"
    data_dir = base / kind
    data_dir.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":
        return Backend(kind, data_dir, None, "filesystem://", queue), lambda: None
    services_or_skip()
    url, drop = _create_pg_database()
    return Backend(kind, data_dir, url, REDIS_URL, queue), drop


def apply_env(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> None:
    """Point Settings (and everything cached on them) at ``backend``."""
    from stillhouse.jobs.queue import _celery_for
    from stillhouse.settings import get_settings

    for k in ("STILLHOUSE_DATABASE_URL", "STILLHOUSE_BROKER_URL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in backend.env().items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    _celery_for.cache_clear()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_session(request, tmp_path_factory) -> Iterator[Backend]:
    """One migrated database per backend kind for the whole session."""
    backend, teardown = make_backend(request.param, tmp_path_factory.mktemp("backend"))
    from stillhouse.db import migrate
    from stillhouse.settings import Settings

    migrate(Settings(**{k.removeprefix("STILLHOUSE_").lower(): v for k, v in backend.env().items()}))
    yield backend
    teardown()


@pytest.fixture
def backend(backend_session: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The session's backend with settings applied and every table emptied before the test."""
    import sqlalchemy as sa

    from stillhouse.db import get_engine
    from stillhouse.models import DEFAULT_TENANT, Base, Tenant

    import shutil

    apply_env(monkeypatch, backend_session)
    for sub in ("files", "tmp", "jobs"):
        shutil.rmtree(backend_session.data_dir / sub, ignore_errors=True)
    with get_engine().begin() as c:
        for table in reversed(Base.metadata.sorted_tables):
            c.execute(sa.delete(table))
        c.execute(sa.insert(Tenant).values(id=DEFAULT_TENANT, name=DEFAULT_TENANT))  # as migration 0002 creates it
    yield backend_session


@pytest.fixture
async def api(backend: Backend):
    """An ``httpx.AsyncClient`` on the ASGI app (no network), against ``backend``."""
    import httpx

    from app.main import create_app

    app = create_app(auto_migrate=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


# Modules whose tests are independent and long enough to be worth spreading over both xdist processes.
SPREAD_MODULES = {"tests.api.test_fuzz"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collection rules for the suite's time budget (CI under 20 minutes; ``make test`` is one
    ``pytest -n 2 --dist loadgroup`` run):

    - ``@pytest.mark.backend_only("sqlite" | "postgres", reason=...)`` deselects a backend-parametrized test's other
      variant (before its fixtures start any process), for tests whose mechanism is the same on both backends;
    - every test without an ``xdist_group`` mark joins its module's group (a module and its module-scoped servers stay
      on one process, as with ``--dist loadfile``), except in ``SPREAD_MODULES``, whose tests go one by one; the
      fault-injection modules share the ``faults`` group, so they never run beside each other;
    - the end-to-end tests come first, the ``faults`` group at their head: the longest groups start first and the
      short ones fill in behind them, so neither process idles at the end.
    """
    keep, drop = [], []
    for item in items:
        only = item.get_closest_marker("backend_only")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if only is not None and params.get("backend_session", only.args[0]) != only.args[0]:
            drop.append(item)
            continue
        if item.get_closest_marker("xdist_group") is None and item.module.__name__ not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        keep.append(item)

    def rank(item: pytest.Item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args and group.args[0] == "faults":
            return 0
        return 1 if item.get_closest_marker("e2e") is not None else 2

    keep.sort(key=rank)  # stable: collection order within each rank
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
