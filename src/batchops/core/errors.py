"""The error contract: ``{"success": false, "error", "message", "details"}``.

Services raise :class:`AppError` subclasses; the same names appear in the
``error`` field of per-item batch failures, so one class serves both.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchops.core.responses import JSONResponse

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
        details.append(
            {"field": ".".join(loc) or "body", "message": err.get("msg", "invalid"), "type": err.get("type")}
        )
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
