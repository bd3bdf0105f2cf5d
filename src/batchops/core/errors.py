"""The error contract: ``{"success": false, "error", "message", "details"}``.

Services raise :class:`AppError` subclasses; the same names appear in the
``error`` field of per-item batch failures, so one class serves both.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchops.core.text import PATTERN_MESSAGES

log = structlog.get_logger(__name__)


class AppError(Exception):
    status_code = 500
    name = "InternalServerErrorException"

    def __init__(self, message: str, *, details: list[Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers


class BadRequestError(AppError):
    status_code, name = 400, "BadRequestException"


class UnauthorizedError(AppError):
    status_code, name = 401, "UnauthorizedException"


class ForbiddenError(AppError):
    status_code, name = 403, "ForbiddenException"


class NotFoundError(AppError):
    status_code, name = 404, "NotFoundException"


class ConflictError(AppError):
    status_code, name = 409, "ConflictException"


class TooManyRequestsError(AppError):
    status_code, name = 429, "TooManyRequestsException"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailableError(AppError):
    status_code, name = 503, "ServiceUnavailableException"


# Come back in a second: what a 503 for a busy database tells the client.
RETRY_AFTER_SECONDS = 1
# PostgreSQL aborts a transaction with these when it lost a deadlock or a serialization
# race: nothing of it was written, and the same work may succeed if it runs again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def database_busy(message: str) -> ServiceUnavailableError:
    """503 with ``Retry-After``: the work was refused for load, not for what it asked."""
    return ServiceUnavailableError(message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def is_retryable_abort(error: BaseException) -> bool:
    """A transaction the database aborted for a deadlock or a serialization failure,
    however it is raised (SQLAlchemy wraps the driver's error; raw driver calls raise it)."""
    current: BaseException | None = error
    while current is not None:
        for candidate in (current, getattr(current, "orig", None)):
            if getattr(candidate, "sqlstate", None) in RETRYABLE_SQLSTATES:
                return True
        current = current.__cause__
    return False


_STATUS_NAMES = {
    400: "BadRequestException",
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "NotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictException",
    413: "PayloadTooLargeException",
    415: "UnsupportedMediaTypeException",
    429: "TooManyRequestsException",
    503: "ServiceUnavailableException",
}


def error_body(name: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"success": False, "error": name, "message": message, "details": details or []}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        message = err.get("msg", "invalid")
        if err.get("type") == "string_pattern_mismatch":  # the shared text rules, in words
            message = PATTERN_MESSAGES.get((err.get("ctx") or {}).get("pattern", ""), message)
        details.append({"field": ".".join(loc) or "body", "message": message, "type": err.get("type")})
    return details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.name, exc.message, exc.details), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        if any(d["type"] == "json_invalid" for d in details):
            message = "Malformed JSON body"
        else:
            message = "Validation failed: " + "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return JSONResponse(error_body("BadRequestException", message, details), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = _STATUS_NAMES.get(exc.status_code, "HttpException")
        message = exc.detail if isinstance(exc.detail, str) else name
        if exc.status_code == 404 and message == "Not Found":
            message = "Route not found"
        headers = exc.headers
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse(error_body(name, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(PoolTimeoutError)
    async def _pool_exhausted(request: Request, exc: PoolTimeoutError) -> JSONResponse:
        # every connection of this process's pool stayed busy for BATCHOPS_DB_POOL_TIMEOUT_SECONDS
        log.warning("db_pool_exhausted", path=request.url.path, error=str(exc))
        return await _app_error(request, database_busy("The service is busy (no database connection free); retry"))

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        """A transaction aborted for a deadlock that no retry (``Database.run``) covered: 503."""
        if not is_retryable_abort(exc):
            return await _unexpected(request, exc)
        log.warning("db_transaction_aborted", path=request.url.path, error=str(exc))
        return await _app_error(request, database_busy("The database aborted the transaction (conflict); retry"))

    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return JSONResponse(error_body("InternalServerErrorException", "Internal server error"), status_code=500)


def allowed_methods(request: Request) -> list[str]:
    """Every documented method of this path, from the app's OpenAPI document (Starlette's
    own 405 names only the first route that matched the path: POST of a GET + POST path)."""
    app = request.app
    table: dict[str, tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = {
            path: (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"), [m.upper() for m in ops])
            for path, ops in app.openapi().get("paths", {}).items()
        }
        app.state.allowed_methods = table
    path = request.url.path
    if path in table:  # OpenAPI: a concrete path wins over a templated one (/users/batch vs /users/{id})
        return sorted(table[path][1])
    return sorted({m for pattern, methods in table.values() if pattern.match(path) for m in methods})


class ErrorResponseDoc(BaseModel):
    """The error shape, for the OpenAPI document."""

    success: Literal[False] = False
    error: str
    message: str
    details: list[Any] = []
