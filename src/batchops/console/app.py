"""The console application, mounted at ``/console`` by ``create_app``: its own session
middleware, CSRF check, error pages and static files, so the JSON API is untouched
(it keeps its bearer tokens and its error bodies)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchops.console import (
    allocations,
    audit,
    billing,
    devices,
    dining,
    dining_orders,
    live,
    mine,
    overview,
    reservations,
    session_routes,
    studio,
    studio_batch,
    users,
)
from batchops.console.security import SignInThrottle, check_csrf
from batchops.console.web import BASE, NotSignedIn, Renderer, here, is_htmx, render
from batchops.core.errors import AppError
from batchops.core.runtime import Runtime

log = structlog.get_logger(__name__)
STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "batchops_console"
# Everything the console loads is its own: no inline script, no other origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the console's security headers to every response it sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_console(rt: Runtime) -> FastAPI:
    settings = rt.settings
    console = FastAPI(
        docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(check_csrf)], redirect_slashes=True
    )
    console.state.runtime = rt
    console.state.renderer = Renderer(settings.timezone)
    console.state.signin_throttle = SignInThrottle(settings.console_signin_limit, settings.redis_url)
    console.add_middleware(SecurityHeaders)
    console.add_middleware(
        SessionMiddleware,
        secret_key=settings.console_secret,
        session_cookie=SESSION_COOKIE,
        max_age=settings.console_session_hours * 3600,
        path=BASE,
        same_site="lax",
        https_only=settings.console_secure_cookie,
    )
    console.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (
        *(session_routes, live, overview, devices, allocations, reservations, users, billing, audit, mine),
        *(dining, dining_orders, studio, studio_batch),
    ):
        console.include_router(module.router)
    install_error_pages(console)
    return console


def install_error_pages(console: FastAPI) -> None:
    def page(request: Request, status: int, message: str, details: Sequence[object] | None = None) -> Response:
        template = "_error.html" if is_htmx(request) else "error.html"
        response = render(request, template, status_code=status, status=status, message=message, details=details)
        if is_htmx(request):  # errors of an action go to the page's message area, whatever the action targeted
            response.headers.update({"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
        return response

    @console.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        target = f"{BASE}/signin?" + urlencode({"next": here(request)})
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        if request.method in ("GET", "HEAD"):
            return RedirectResponse(target, status_code=303)
        return page(request, 401, exc.message)

    @console.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> Response:
        response = page(request, exc.status_code, exc.message, exc.details)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @console.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "form", "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        return page(request, 400, "Validation failed", details)

    @console.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return page(request, exc.status_code, exc.detail if isinstance(exc.detail, str) else "Error")

    @console.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("console_unhandled_error", path=request.url.path)
        return page(request, 500, "Internal server error")
