"""FastAPI dependencies as ``Annotated`` aliases (as the full-stack FastAPI template does)."""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends
from sqlalchemy.orm import Session

from app.db import session_factory
from app.settings import Settings, get_settings
from app.storage import LocalStore


def get_session() -> Iterator[Session]:
    """A request-scoped session; services commit explicitly once, errors roll back."""
    session = session_factory()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_store() -> LocalStore:
    """The artifact store for the configured data directory."""
    return LocalStore(get_settings())


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[LocalStore, Depends(get_store)]
