"""``create_app()``: routers, error handlers, lifespan (worker, bootstrap admin)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Response
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from batchops import __version__
from batchops.assembly import build_runtime
from batchops.billing.api import internal as billing_internal
from batchops.billing.api import public as billing_public
from batchops.console.app import create_console
from batchops.core.errors import ErrorResponseDoc, ServiceUnavailableError, install_error_handlers
from batchops.core.guard import GuardPolicy, RequestGuard
from batchops.core.logging import configure_logging
from batchops.core.runtime import Runtime
from batchops.core.schemas import Envelope, Schema, ok
from batchops.core.text import NO_NUL
from batchops.dining.api import router as dining_router
from batchops.identity.api import router as identity_router
from batchops.identity.service import IdentityService
from batchops.notifications.api import router as notifications_router
from batchops.scheduler.api import router as scheduler_router
from batchops.settings import Settings, get_settings
from batchops.studio.api import router as studio_router

log = structlog.get_logger(__name__)


class Health(Schema):
    status: str
    database: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponseDoc, "description": name}
    for code, name in [
        (400, "Bad request or validation failure"),
        (401, "Missing or invalid credentials"),
        (403, "Forbidden"),
        (404, "Not found"),
        (409, "Conflict"),
        (413, "Request body larger than BATCHOPS_MAX_BODY_BYTES"),
        (429, "Too many requests"),
        (503, "Service unavailable"),
    ]
}

# The one list of paths whose requests the guard lets through without credentials: they
# check their own callers (the console's session cookie, the KIE callback's signature) or
# need none. Everything else with a body must present a valid bearer or service token first.
OPEN_PATHS = (
    "/",
    "/health",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static-offline-docs",
    "/console",
    "/api/v1/workflow/providers/kie/callback",
)
SERVICE_PREFIXES = ("/api/internal/",)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    rt = runtime or build_runtime(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        if settings.bootstrap_admin:
            identity = rt.services.get(IdentityService)
            await identity.ensure_admin(settings.bootstrap_admin)
        stop = asyncio.Event()
        worker_task = asyncio.create_task(rt.worker.run_forever(stop)) if settings.embedded_worker else None
        # The objects of start-up (modules, mappers, compiled statements) live as long as the
        # process: frozen out of the collector's way, so a full collection in the middle of
        # some request does not walk them. Garbage first, so none is kept forever.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            if worker_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
            await rt.stop()

    app = FastAPIOffline(
        title="batchops",
        version=__version__,
        description="Batch operations: device scheduler, billing, canteen orders, AI video generation.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.runtime = rt
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        policy=GuardPolicy(
            max_body_bytes=settings.max_body_bytes,
            jwt_secret=settings.jwt_secret,
            service_token=settings.service_token,
            open_paths=OPEN_PATHS,
            service_prefixes=SERVICE_PREFIXES,
        ),
    )
    _publish_parameter_rules(app)
    routers = [billing_internal, billing_public, identity_router]
    if settings.billing_role == "all":  # a billing-only process serves billing (and who's calling) only
        routers += [notifications_router, scheduler_router, dining_router, studio_router]
    for router in routers:
        app.include_router(router)

    if settings.billing_role == "all":
        app.mount("/console", create_console(rt))

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/console/", status_code=307)

    @app.get("/health", tags=["ops"])
    async def health() -> Envelope[Health]:
        try:
            await asyncio.wait_for(rt.db.ping(), timeout=5)
        except Exception as exc:
            log.warning("health_db_unreachable", error=str(exc))
            raise ServiceUnavailableError("Database unreachable") from exc
        return ok(Health(status="ok", database="ok"))

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _publish_parameter_rules(app: FastAPI) -> None:
    """The guard refuses a NUL in any path or query parameter: say so in each one's schema
    (the bodies' strings say it through the shared types of core/schemas.py)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        document = build()
        if fresh:
            for operation in (op for item in document.get("paths", {}).values() for op in item.values()):
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") in ("path", "query"):
                        _no_nul(parameter.get("schema", {}))
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it


def _no_nul(schema: dict[str, Any]) -> None:
    for branch in schema.get("anyOf", []):
        _no_nul(branch)
    if schema.get("type") == "string" and not {"pattern", "enum", "const", "format"} & schema.keys():
        schema["pattern"] = NO_NUL
