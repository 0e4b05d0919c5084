"""FastAPI dependencies as ``Annotated`` aliases (as the full-stack FastAPI template does)."""

from __future__ import annotations

import logging
from typing import Annotated, Iterator

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.mode import auth_mode, is_loopback
from app.auth.service import DEFAULT_PRINCIPAL, AuthTenant, authenticate
from stillhouse.db import database_unavailable, session_factory
from app.errors import Unauthorized
from stillhouse.settings import Settings, get_settings
from stillhouse.storage import ArtifactStore, get_store as _configured_store

log = logging.getLogger("stillhouse.api")


def get_session() -> Iterator[Session]:
    """A request-scoped session; services commit explicitly once, errors roll back.

    Closing runs after the response has started; when the database went away meanwhile, the close's rollback fails
    and SQLAlchemy discards the connection. That error is logged, not raised: raised there, it would cut off the
    response already on its way (the client saw a dropped connection instead of its answer)."""
    session = session_factory()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        try:
            session.close()
        except Exception as e:
            if not database_unavailable(e):
                raise
            log.warning("closing a request's session: database unavailable (%s)", str(e).splitlines()[0])


def get_store() -> ArtifactStore:
    """The configured artifact store: the data directory, or the S3 bucket of ``STILLHOUSE_ARTIFACT_URL``."""
    return _configured_store(get_settings())


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="An API key: `Authorization: Bearer sh_…`. An operator creates one with "
                                 "`python -m app keys create --tenant NAME`. Not needed when the server runs with authentication "
                                 "off (bound to loopback); a key sent anyway is checked and selects its tenant.")


def _authenticate(token: str) -> AuthTenant:
    with session_factory()() as session:
        return authenticate(session, token)


async def get_current_tenant(request: Request,
                             credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> AuthTenant:
    """The tenant the request acts as.

    With an ``Authorization`` header: the key's tenant (401 ``unauthorized`` if the header is not ``Bearer <key>``
    or the key is unknown or revoked), whatever the mode. Without one: 401 when keys are required
    (``STILLHOUSE_AUTH``), else the built-in tenant ``default``; even then a keyless request from a non-loopback
    client is refused (401), in case the server was bound elsewhere than ``STILLHOUSE_HOST`` says (e.g. by running
    uvicorn by hand). Every 401 carries ``WWW-Authenticate: Bearer``.

    Async and session-free on purpose: a keyless request costs no thread hand-off and no SQL; a key is looked up
    in a worker thread with its own short session (the status endpoint clients poll has no session dependency).
    """
    if request.headers.get("authorization") is not None:
        if credentials is None:
            raise Unauthorized("the Authorization header must be 'Bearer <API key>'", invalid_token=True)
        return await run_in_threadpool(_authenticate, credentials.credentials)
    if auth_mode(get_settings()).required:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' (an operator creates keys with "
                           "`python -m app keys create --tenant NAME`)")
    client = request.client
    if client is not None and not is_loopback(client.host):
        raise Unauthorized(f"an API key is required for requests from {client.host}: without a key only loopback clients are "
                           "served; send 'Authorization: Bearer <key>'")
    return DEFAULT_PRINCIPAL


CurrentTenant = Annotated[AuthTenant, Depends(get_current_tenant)]
