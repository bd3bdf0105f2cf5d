"""Console sessions: who is signed in, the CSRF token of each session, and the brake on
repeated failed sign-ins.

The session lives in a signed cookie (Starlette's SessionMiddleware: itsdangerous,
HttpOnly, SameSite=Lax). It holds the user id, a per-session CSRF token and a
fingerprint of the password hash it was opened with: a new password (or a removed one)
ends every session opened with the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import structlog
from limits import parse
from starlette.requests import Request

from batchops.core.errors import ForbiddenError
from batchops.core.ratelimit import Window

log = structlog.get_logger(__name__)

SESSION_USER = "uid"
SESSION_CSRF = "csrf"
SESSION_PASSWORD = "pw"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use: the sign-in form has one too)."""
    token = request.session.get(SESSION_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[SESSION_CSRF] = token
    return token


async def check_csrf(request: Request) -> None:
    """Every unsafe request carries the session's token: the ``X-CSRF-Token`` header
    (htmx sends it from ``hx-headers``) or the ``csrf_token`` form field. A dependency
    of the whole console, so no route can forget it."""
    if request.method in SAFE_METHODS:
        return
    expected = request.session.get(SESSION_CSRF)
    given = request.headers.get(CSRF_HEADER)
    if not given and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not expected or not given or not hmac.compare_digest(str(expected).encode(), given.encode()):
        log.warning("console_csrf_refused", path=request.url.path, client=client_address(request))
        raise ForbiddenError("CSRF token missing or invalid")


def password_fingerprint(secret: str, password_hash: str | None) -> str:
    """Names the password a session was opened with, without keeping the hash in a cookie."""
    return hmac.new(secret.encode(), (password_hash or "").encode(), hashlib.sha256).hexdigest()[:24]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class SignInThrottle:
    """Failed sign-ins per account and per address within a moving window (core.ratelimit,
    shared by every process through Redis when it is configured). Past the limit a
    sign-in is refused without checking the password until the window lets one more through."""

    def __init__(self, limit: str, redis_url: str | None = None) -> None:
        self.window = Window(parse(limit), redis_url, "batchops-signin")

    @staticmethod
    def _keys(user_id: str, address: str) -> list[tuple[str, str]]:
        return [("user", user_id.lower()[:128]), ("address", address)]

    async def retry_after(self, user_id: str, address: str) -> int | None:
        """Seconds until a sign-in may be tried again, or None when one may be tried now."""
        waits = [
            await self.window.retry_after(kind, key)
            for kind, key in self._keys(user_id, address)
            if not await self.window.allows(kind, key)
        ]
        return max(waits) if waits else None

    async def failed(self, user_id: str, address: str) -> None:
        for kind, key in self._keys(user_id, address):
            await self.window.hit(kind, key)

    async def succeeded(self, user_id: str) -> None:
        await self.window.clear("user", user_id.lower()[:128])
