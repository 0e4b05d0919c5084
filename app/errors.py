"""Domain errors with an HTTP status and a code, and the one handler that renders them all as
``{"error": {"code", "message", "param"}}`` (DESIGN.md)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from distill.spec import field_path

from stillhouse.db import database_unavailable

log = logging.getLogger("stillhouse.api")


class ErrorBody(BaseModel):
    """The error object."""

    code: str = Field(..., description="Stable machine-readable code, e.g. 'not_found', 'invalid_request', 'file_too_large'.")
    message: str = Field(..., description="What went wrong and what was expected, for a person.")
    param: str | None = Field(None, description="The request field at fault (dotted path), when there is one.")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx response body."""

    error: ErrorBody = Field(..., description="The error: code, message, param.")


class ApiError(Exception):
    """Base domain error: ``status`` (HTTP), ``code``, ``message`` and optional ``param``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers
        if code:
            self.code = code


class Unauthorized(ApiError):
    """401: no API key, or one that is malformed, unknown or revoked, where a key is required. Carries
    ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        challenge = 'Bearer realm="stillhouse"' + (', error="invalid_token"' if invalid_token else "")
        super().__init__(message, param="Authorization", headers={"WWW-Authenticate": challenge})


class NotFound(ApiError):
    """404: the resource does not exist."""

    status = 404
    code = "not_found"


class Conflict(ApiError):
    """409: the resource is in a state that forbids the request."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    """413: the upload is over the configured limit."""

    status = 413
    code = "file_too_large"


class Unprocessable(ApiError):
    """422: the request is well-formed but its content is invalid (bad spec, unreadable file)."""

    status = 422
    code = "invalid_request"


class TooManyRequests(ApiError):
    """429: a per-tenant limit is reached; ``Retry-After`` (seconds) says when to try again."""

    status = 429
    code = "rate_limited"


class ServiceUnavailable(ApiError):
    """503: a dependency (database, broker) is not reachable."""

    status = 503
    code = "unavailable"


DB_RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 ``database_unavailable``, seconds (a PostgreSQL restart takes a few)."""


class DatabaseUnavailable(ServiceUnavailable):
    """503 ``database_unavailable``: the database cannot be reached right now (refused, restarting, connection lost);
    carries ``Retry-After: DB_RETRY_AFTER_S``. Nothing was changed, or the change was rolled back."""

    code = "database_unavailable"

    def __init__(self, message: str = "the database cannot be reached right now; nothing was changed, try again shortly") -> None:
        super().__init__(message, headers={"Retry-After": str(DB_RETRY_AFTER_S)})


class InternalError(ApiError):
    """500: the server cannot answer, e.g. stored data it cannot read (the cause is logged)."""

    status = 500
    code = "internal_error"


def error_json(status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSONResponse in the error shape."""
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "param": param}}, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               406: "not_acceptable", 409: "conflict", 411: "length_required", 413: "file_too_large", 415: "unsupported_media_type",
               416: "range_not_satisfiable", 422: "invalid_request", 429: "rate_limited"}


_BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 detail when a body cannot be decoded


# The field a body-level rule's message begins with: a dotted path ('budget.pruner ...') or a name and a colon
# ('objectives: ...', 'search_space.x.y: ...').
_MODEL_LEVEL_PARAM = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_\-\[\]]+)+(?=[: ])|[a-z_][a-z0-9_]*(?=:))")


def _loc(loc: tuple[Any, ...]) -> str | None:
    if loc[:1] == ("body",):  # a job spec: without the tags pydantic inserts for its unions (method name, student kind ...)
        return field_path(loc[1:])
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: every method ``/openapi.json`` documents for the request's path (HEAD where GET
    is). Starlette names only the first matching route's methods, and FastAPI makes one route per method, so
    ``DELETE`` went missing from a 405 on ``/v1/files/{id}``. Comma-separated, sorted."""
    app = request.app
    paths = getattr(app.state, "allow_paths", None)
    if paths is None:  # once per app: each documented path template as a regex, with its methods
        paths = [(compile_path(t)[0], {m.upper() for m in ops if m in _HTTP_METHODS}) for t, ops in app.openapi()["paths"].items()]
        app.state.allow_paths = paths
    methods: set[str] = set()
    for regex, ms in paths:
        if regex.match(request.url.path):
            methods |= ms
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def install_error_handlers(app: FastAPI) -> None:
    """Render every error (domain, validation, HTTP, unexpected) in the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _loc(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            param, msg = None, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', msg)})"
        elif first.get("type") == "missing" and param is None:
            msg = "the request body is required (a JSON object)"
        elif param is None and tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
            msg = "the request body must be a JSON object sent with 'Content-Type: application/json' (the CLI also reads YAML files)"
        elif first.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # e.g. an unknown method name
            param = f"{param}.{str(first.get('ctx', {}).get('discriminator', '')).strip(chr(39))}" if param else param
            msg = f"{param}: {msg}"
        elif first.get("type") == "extra_forbidden":
            msg = f"unknown field {param!r}"
        elif param is None and first.get("type") == "value_error" and _MODEL_LEVEL_PARAM.match(msg.removeprefix("Value error, ")):
            # a rule over several fields of the body (its model_validator): the message begins with the field it is about
            msg = msg.removeprefix("Value error, ")
            param = _MODEL_LEVEL_PARAM.match(msg).group(1)
        elif param:
            msg = f"{param}: {msg}"
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_json(422, "invalid_request", msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:  # FastAPI: a JSON body that is not UTF-8
            return error_json(422, "invalid_request", "the request body is not valid JSON (it must be UTF-8 encoded JSON)")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_json(exc.status_code, code, str(exc.detail), None, headers)

    def _database_down(request: Request, exc: BaseException) -> JSONResponse:
        log.warning("%s %s: database unavailable (%s)", request.method, request.url.path,
                    str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__)
        e = DatabaseUnavailable()
        return error_json(e.status, e.code, e.message, None, e.headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeoutError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):
            return _database_down(request, exc)
        log.exception("unhandled database error on %s %s", request.method, request.url.path)
        return error_json(500, "internal_error", "internal server error; the event is logged on the server")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):  # wrapped by something else (an exception group, a re-raise)
            return _database_down(request, exc)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_json(500, "internal_error", "internal server error; the event is logged on the server")


class RejectNulMiddleware:
    """Answers 422 ``invalid_request`` to a request whose path or query string holds a NUL character (raw or
    ``%00``): no id, cursor or filter with one can exist, and PostgreSQL text cannot even be compared with one
    (psycopg raises, which was a 500). Pure ASGI, so streamed bodies pass through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
            where = None
            if "\x00" in scope.get("path", "") or b"%00" in raw_path.lower():
                where = "path"
            elif b"%00" in scope.get("query_string", b"").lower() or b"\x00" in scope.get("query_string", b""):
                where = "query"
            if where:
                resp = error_json(422, "invalid_request", f"the request {where} contains a NUL character (%00)", where)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, invalid or revoked API key (when keys are required)"},
    404: {"model": ErrorResponse, "description": "Not found"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
    503: {"model": ErrorResponse, "description": "database_unavailable: the database cannot be reached right now (with Retry-After)"},
}


def json_error_responses(responses: dict[int | str, dict[str, Any]] = ERROR_RESPONSES) -> dict[int | str, dict[str, Any]]:
    """``responses`` documented as ``application/json`` whatever the route's own media type: FastAPI puts an additional
    response's ``model`` under the route's response class's media type, which for a ``text/event-stream`` route would
    document its JSON errors as event streams."""
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    return {code: {"description": r["description"], "content": {"application/json": {"schema": ref}}} for code, r in responses.items()}
