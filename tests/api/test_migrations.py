"""The Alembic migrations build exactly the schema the models declare (no drift), on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from stillhouse.db import get_engine
from stillhouse.models import DEFAULT_TENANT, Base, Tenant


def test_migrations_match_models(backend) -> None:
    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_default_tenant_exists(backend) -> None:
    from sqlalchemy.orm import Session

    with Session(get_engine()) as s:
        assert s.get(Tenant, DEFAULT_TENANT) is not None
