"""Sign-in, sign-out and the language switch."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from batchops.console.i18n import LANG_COOKIE, LOCALES
from batchops.console.security import (
    SESSION_PASSWORD,
    SESSION_USER,
    SignInThrottle,
    client_address,
    password_fingerprint,
)
from batchops.console.web import BASE, render, runtime, safe_next
from batchops.identity.service import IdentityService

log = structlog.get_logger(__name__)
router = APIRouter()


@router.get("/signin")
async def signin_form(request: Request, next: str | None = None) -> Response:
    return render(request, "signin.html", next=safe_next(next))


@router.post("/signin")
async def signin(
    request: Request,
    user_id: Annotated[str, Form(alias="userId", max_length=128)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    rt = runtime(request)
    throttle: SignInThrottle = request.app.state.signin_throttle
    address = client_address(request)
    user_id = user_id.strip()
    wait = await throttle.retry_after(user_id, address)
    if wait is not None:
        log.warning("console_signin_throttled", user_id=user_id, client=address, retry_after=wait)
        response = render(request, "signin.html", status_code=429, next=safe_next(next), user_id=user_id, wait=wait)
        response.headers["Retry-After"] = str(wait)
        return response
    identity = rt.services.get(IdentityService)
    user = await identity.authenticate(user_id, password)
    if user is None:
        await throttle.failed(user_id, address)
        log.warning("console_signin_failed", user_id=user_id, client=address)
        return render(request, "signin.html", status_code=401, next=safe_next(next), user_id=user_id, failed=True)
    if user.status != "active":
        log.warning("console_signin_refused", user_id=user_id, client=address, status=user.status)
        return render(
            request, "signin.html", status_code=403, next=safe_next(next), user_id=user_id, refused=user.status
        )
    await throttle.succeeded(user_id)
    # A new session (and CSRF token) at sign-in: nothing planted before it carries over.
    request.session.clear()
    request.session.update(
        {
            SESSION_USER: user.id,
            SESSION_PASSWORD: password_fingerprint(rt.settings.console_secret, user.password_hash),
        }
    )
    log.info("console_signin", user_id=user.id, client=address)
    target = safe_next(next) if next else BASE + "/"
    return RedirectResponse(target, status_code=303)


@router.post("/signout")
async def signout(request: Request) -> Response:
    user_id = request.session.get(SESSION_USER)
    request.session.clear()
    log.info("console_signout", user_id=user_id)
    if request.headers.get("hx-request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": BASE + "/signin"})
    return RedirectResponse(BASE + "/signin", status_code=303)


@router.get("/lang/{locale}")
async def switch_language(request: Request, locale: str, next: str | None = None) -> Response:
    """A preference, not an action: a plain link on every page (a cookie for a year)."""
    response = RedirectResponse(safe_next(next), status_code=303)
    if locale in LOCALES:
        response.set_cookie(LANG_COOKIE, locale, max_age=365 * 86400, path=BASE, samesite="lax", httponly=True)
    return response
