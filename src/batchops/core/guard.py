"""What every HTTP request passes before the app reads a byte of its body.

FastAPI reads and parses a body before it solves the dependencies that check
credentials, so one unauthenticated 100 MB POST was read whole (GBs of memory) to be
answered 401. This pure ASGI middleware sees each request first and refuses:

1. a NUL character in the path or query string: 400 (PostgreSQL cannot store one);
2. a request with a body to a protected route without valid credentials: 401, with the
   body unread. Checked here: the bearer JWT's signature and expiry, or the service
   token under the service prefixes. Who the caller is (role, status) is still read from
   the database by the route's dependency, on every request. (A path no route serves
   is left to the app's 404 / 405, which read no body either);
3. a body over ``max_body_bytes``: 413 ``PayloadTooLargeException``, from its
   Content-Length before it is read, else as soon as the bytes received pass the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchops.core.auth import SERVICE_TOKEN_HEADER, bearer_token, check_service_token, decode_token
from batchops.core.errors import AppError, BadRequestError, UnauthorizedError, error_body
from batchops.core.text import has_nul

PAYLOAD_TOO_LARGE = "PayloadTooLargeException"


@dataclass(frozen=True)
class GuardPolicy:
    max_body_bytes: int
    jwt_secret: str
    service_token: str
    # Paths that check their own callers (or need none). "/docs" covers "/docs/…"; "/" only "/".
    open_paths: tuple[str, ...]
    # Path prefixes whose callers present the service token instead of a bearer token.
    service_prefixes: tuple[str, ...]

    def is_open(self, path: str) -> bool:
        return any(path == p or (p != "/" and path.startswith(p + "/")) for p in self.open_paths)

    def credentials_problem(self, path: str, headers: Headers) -> UnauthorizedError | None:
        try:
            if path.startswith(self.service_prefixes):
                check_service_token(headers.get(SERVICE_TOKEN_HEADER), self.service_token)
            else:
                token = bearer_token(headers.get("authorization"))
                if token is None:
                    raise UnauthorizedError("Missing bearer token")
                decode_token(token, self.jwt_secret)
        except UnauthorizedError as problem:
            return problem
        return None


class _BodyTooLarge(Exception):
    """Raised into the app by ``receive`` once the body passes the cap (never a ValueError:
    a route that reads a body leniently must not swallow it)."""


class RequestGuard:
    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]  # percent-decoded: %00 is a NUL here
        query: bytes = scope["query_string"]
        if has_nul(path) or has_nul(query) or b"%00" in query:
            await _answer(scope, receive, send, BadRequestError("The path or query contains a NUL character (%00)"))
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        has_body = "transfer-encoding" in headers or (length is not None and length.strip() not in ("", "0"))
        if not has_body:
            await self.app(scope, receive, send)
            return
        if (
            not self.policy.is_open(path)
            and (problem := self.policy.credentials_problem(path, headers))
            and _served_by_a_route(scope)
        ):
            await _answer(scope, receive, send, problem)
            return
        cap = self.policy.max_body_bytes
        if length is not None and length.strip().isdigit() and int(length) > cap:
            await _answer_too_large(scope, receive, send, cap)
            return
        await self._capped(scope, receive, send, cap)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Run the app with a ``receive`` that counts; past the cap, whatever the app made of
        the unreadable body is dropped and the 413 goes out instead."""
        received = 0
        refused = started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    refused = True
                    raise _BodyTooLarge
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, send_unless_refused)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await _answer_too_large(scope, receive, send, cap)


def _served_by_a_route(scope: Scope) -> bool:
    """Whether a route of the app (Starlette puts it in the scope) would take this request."""
    return any(route.matches(scope)[0] == Match.FULL for route in scope["app"].router.routes)


async def _answer(scope: Scope, receive: Receive, send: Send, problem: AppError) -> None:
    body = error_body(problem.name, problem.message, problem.details)
    await JSONResponse(body, status_code=problem.status_code, headers=problem.headers)(scope, receive, send)


async def _answer_too_large(scope: Scope, receive: Receive, send: Send, cap: int) -> None:
    message = f"Request body larger than {cap} bytes (BATCHOPS_MAX_BODY_BYTES)"
    body = error_body(PAYLOAD_TOO_LARGE, message, [{"field": "body", "maxBytes": cap}])
    await JSONResponse(body, status_code=413)(scope, receive, send)
