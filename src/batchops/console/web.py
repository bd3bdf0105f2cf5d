"""What every console page shares: the signed-in user, the role check, paging, and
rendering a template in the reader's language."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from babel.dates import format_skeleton
from fastapi import Depends, Query, Request
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from starlette.responses import HTMLResponse

from batchops.console.i18n import HTML_LANG, LANGUAGE_NAMES, LOCALES, request_locale, translations
from batchops.console.security import SESSION_PASSWORD, SESSION_USER, csrf_token, password_fingerprint
from batchops.core.errors import ForbiddenError, UnauthorizedError
from batchops.core.runtime import Runtime
from batchops.identity.models import User
from batchops.identity.service import IdentityService

BASE = "/console"
TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZES = (10, 25, 50, 100)


class NotSignedIn(UnauthorizedError):
    """No valid console session: pages redirect to the sign-in form."""


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


class Renderer:
    """One Jinja2 environment per language, each with its catalog installed (newstyle
    gettext: ``_("…", n=1)`` formats and escapes)."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        self.environments = {locale: self._environment(locale) for locale in LOCALES}

    def _environment(self, locale: str) -> Environment:
        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True),
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
        env.filters.update(when=self.when, money=money, minutes_left=minutes_left, dom_id=dom_id)
        env.filters["day"] = lambda value: format_skeleton("MMMEd", value, locale=locale)  # "Mon, Dec 7", "12月7日周一"
        return env

    def when(self, value: datetime | None, seconds: bool = False) -> str:
        """A time in the service's zone (BATCHOPS_TIMEZONE), as operators read it."""
        if value is None:
            return "–"
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def render(self, request: Request, template: str, context: dict[str, Any]) -> str:
        locale = request_locale(request)
        env = self.environments[locale]
        values = {
            "request": request,
            "base": BASE,
            "locale": locale,
            "html_lang": HTML_LANG[locale],
            "languages": LANGUAGE_NAMES,
            "csrf_token": csrf_token(request),
            "path": request.url.path,
            "here": here(request),
            "url_with": lambda **changes: url_with(request, **changes),
            "user": getattr(request.state, "console_user", None),
            "now": runtime(request).clock(),  # the runtime's clock: what "time left" is judged by
            **context,
        }
        return env.get_template(template).render(values)


def money(minor: int | Decimal | None, currency: str = "CNY") -> str:
    if minor is None:
        return "–"
    if currency == "CREDITS":
        return f"{int(minor):,}"
    return f"{Decimal(minor) / 100:,.2f}"


def dom_id(value: object) -> str:
    """An element id for any key (ids may hold characters a CSS selector cannot)."""
    return "k" + hashlib.sha1(str(value).encode(), usedforsecurity=False).hexdigest()[:16]


@pass_context
def minutes_left(context: Mapping[str, Any], expires_at: datetime | None) -> int | None:
    """Whole minutes from the page's ``now`` (the runtime's clock) to ``expires_at``."""
    if expires_at is None:
        return None
    now: datetime = context["now"]
    return max(0, math.ceil((expires_at - now).total_seconds() / 60))


def here(request: Request) -> str:
    """This page's path and query: where the language switch and sign-in come back to."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def url_with(request: Request, **changes: Any) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    params = {k: v for k, v in request.query_params.multi_items() if k not in changes}
    params.update({k: v for k, v in changes.items() if v not in (None, "")})
    query = urlencode(params, doseq=True)
    return request.url.path + (f"?{query}" if query else "")


def safe_next(target: str | None) -> str:
    """Only a console path may be returned to (no open redirect)."""
    if target and target.startswith(BASE) and not target.startswith("//") and "\\" not in target:
        return target
    return BASE + "/"


def gettext_for(request: Request) -> Callable[[str], str]:
    """The reader's ``gettext``, for the few messages the console writes in Python."""
    return translations(request_locale(request)).gettext


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    renderer: Renderer = request.app.state.renderer
    return HTMLResponse(renderer.render(request, template, context), status_code=status_code)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# --- who is asking ---------------------------------------------------------------------------
async def signed_in(request: Request) -> User:
    """The signed-in user, read from the users table on every request like the API's
    caller: a suspension, a role change or a new password acts at once."""
    user_id = request.session.get(SESSION_USER)
    if not isinstance(user_id, str):
        raise NotSignedIn("Sign in required")
    rt = runtime(request)
    identity = rt.services.get(IdentityService)
    user = await identity.find(user_id)
    opened_with = request.session.get(SESSION_PASSWORD)
    if user is None or opened_with != password_fingerprint(rt.settings.console_secret, user.password_hash):
        request.session.pop(SESSION_USER, None)
        raise NotSignedIn("Sign in required")
    if user.status != "active":
        request.session.pop(SESSION_USER, None)
        raise NotSignedIn(f"User account is {user.status}")
    request.state.console_user = user
    return user


async def admin(user: Annotated[User, Depends(signed_in)]) -> User:
    """Operator pages and actions: the API's AdminUser rule, checked on the server."""
    if not user.is_admin:
        raise ForbiddenError("Admin role required")
    return user


SignedIn = Annotated[User, Depends(signed_in)]
Admin = Annotated[User, Depends(admin)]


@dataclass(frozen=True)
class Paging:
    page: int
    size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def pages(self, total: int) -> int:
        return max(1, math.ceil(total / self.size))


async def paging(
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per: Annotated[int, Query(ge=1, le=100)] = 25,
) -> Paging:
    return Paging(page, per)


PagingParams = Annotated[Paging, Depends(paging)]
