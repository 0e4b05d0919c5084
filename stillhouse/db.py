"""Database engine and sessions (SQLAlchemy 2.0): SQLite embedded, PostgreSQL in production.

The schema comes from Alembic (``migrations/``); ``migrate()`` applies it. Nothing here calls
``create_all``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from stillhouse.settings import Settings, get_settings


def make_engine(url: str, pool_size: int = 20, ping_idle_s: float = 10.0) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a 30 s busy timeout and foreign keys so API and
    worker processes can share the file. Other databases get a pool of ``pool_size`` connections
    (+ 20 overflow); a connection idle for ``ping_idle_s`` seconds or more is pinged (``SELECT 1``) when checked out
    and replaced if that fails (see ``_ping_idle_connections``)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=20)
    _ping_idle_connections(engine, ping_idle_s)
    return engine


def _ping_idle_connections(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection at checkout only when it sat unused for ``idle_s`` seconds or more (0: always), as
    SQLAlchemy's "pessimistic disconnect handling" with a custom checkout event: a failed ping raises
    ``DisconnectionError``, so the pool discards the connection and opens a new one (a database restarted while the
    pool was idle costs no failed request). ``pool_pre_ping`` did this on every checkout: a ``SELECT 1`` round trip
    before each read (25% of a polled status read on PostgreSQL). A connection busy within ``idle_s`` is not
    pinged; if the database went away meanwhile, the statement fails once and SQLAlchemy invalidates the pool."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record) -> None:  # pragma: no cover - trivial
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_s:
            return  # a new connection, or one in recent use
        try:
            engine.dialect.do_ping(dbapi_conn)  # SELECT 1, as pool_pre_ping sends it
            dbapi_conn.rollback()  # the ping opened a transaction; the connection must leave the pool without one
        except Exception as e:  # noqa: BLE001 - any failure: let the pool replace the connection
            raise exc.DisconnectionError(f"idle connection failed its ping: {e}") from e


_SCHEMA_ERRORS = ("no such table", "no such column", "syntax error", "has no column")  # SQLite: a bug or no migration, not an outage


def database_unavailable(error: BaseException | None) -> bool:
    """Whether ``error`` (or an exception it wraps: ``__cause__``, ``__context__``, the members of an exception group)
    says the database cannot be reached right now, a transient condition worth retrying: SQLAlchemy's
    ``OperationalError`` (connection refused, server shutting down or restarted, connection lost mid-statement; SQLite:
    database locked or unreadable, but not a missing table), ``InterfaceError`` (a connection already closed), any
    DBAPI error that invalidated its connection, and the pool's ``TimeoutError`` (no connection within the pool timeout).
    Integrity and programming errors are not."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, exc.TimeoutError) or (isinstance(e, exc.DBAPIError) and e.connection_invalidated):
            return True
        if isinstance(e, exc.InterfaceError):
            return True
        if isinstance(e, exc.OperationalError):
            text = str(e.orig if e.orig is not None else e).lower()
            if not (type(e.orig).__module__.startswith("sqlite3") and any(m in text for m in _SCHEMA_ERRORS)):
                return True
        todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return False


@lru_cache
def _engine_for(url: str, pool_size: int = 20, ping_idle_s: float = 10.0) -> Engine:
    return make_engine(url, pool_size, ping_idle_s)


def get_engine(settings: Settings | None = None) -> Engine:
    """The process-wide engine for the configured database URL (pool of ``db_pool_size`` connections, idle ones
    pinged after ``db_ping_idle_s`` seconds)."""
    settings = settings or get_settings()
    return _engine_for(settings.resolved_database_url, settings.db_pool_size, settings.db_ping_idle_s)


@lru_cache
def _sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    """The ``sessionmaker`` bound to the configured engine (``expire_on_commit=False``), one per engine: making one
    per request built a new Session subclass and its event dispatch every time (~15% of a status request's CPU)."""
    return _sessionmaker_for(get_engine(settings))


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception (for workers and scripts)."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(settings: Settings | None = None) -> None:
    """Apply all Alembic migrations (``alembic upgrade head``) to the configured database."""
    from alembic import command
    from alembic.config import Config

    settings = settings or get_settings()
    root = Path(__file__).resolve().parent.parent
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.resolved_database_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
