"""Expected failures of a ``batchops`` command, said in one or two lines.

Every command runs inside :class:`CliGroup`: a failure the user can act on (the server
is not reachable, the API answered 4xx, a file or a CSV row is wrong, the database is
not migrated or not reachable, a setting is malformed) prints its cause and what
fixes it, and exits 1. ``batchops --debug …`` shows the traceback instead.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jwt
import pydantic
import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from typer.core import TyperGroup

err_console = Console(stderr=True, soft_wrap=True)  # a message stays one line, however narrow the terminal


class CliError(Exception):
    """A failure with its cause (``message``) and, when one is known, what fixes it (``hint``)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class CliGroup(TyperGroup):
    """The root command group: turns expected failures into :class:`CliError` lines."""

    def invoke(self, ctx: Any) -> Any:  # typer's Context: the one typer builds, whatever its class
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):  # usage errors, exits: typer's own lines
            raise
        except BrokenPipeError:  # the reader went away (`batchops … | head`): nothing to say
            raise typer.Exit(1) from None
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            error = explain(exc)
            err_console.print(Text("error: ", style="bold red") + Text(error.message))
            if error.hint:
                err_console.print(Text(error.hint, style="dim"))
            raise typer.Exit(1) from None


def safe_url(url: str) -> str:
    """A database URL fit to print (no password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(malformed BATCHOPS_DATABASE_URL)"


def _database_url() -> str:
    from batchops.settings import get_settings

    try:
        return safe_url(get_settings().database_url)
    except pydantic.ValidationError:
        return "BATCHOPS_DATABASE_URL"


def explain(exc: Exception) -> CliError:
    """What went wrong, for a person: the cause in a line, and the fix when there is one."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, httpx.TransportError):
        where = f"{exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        hint = "is it running? `make run` (or `batchops serve`) starts it; --url or BATCHOPS_URL names another"
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"no answer from {where} in time ({type(exc).__name__})", hint)
        return CliError(f"cannot reach batchops at {where}: {exc or type(exc).__name__}", hint)
    if isinstance(exc, pydantic.ValidationError):
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        return CliError(f"invalid setting: {problems}", "see the configuration table in the README")
    if isinstance(exc, DBAPIError):
        text = str(exc.orig)
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            return CliError(f"the database {_database_url()} is not migrated ({text})", "run `batchops migrate`")
        return CliError(
            f"database error on {_database_url()}: {text.splitlines()[0]}", "BATCHOPS_DATABASE_URL names the database"
        )
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return CliError(f"{exc.strerror or exc}: {exc.filename}")
        # httpx wraps its own network errors: a bare one comes from the database driver
        return CliError(
            f"cannot connect to the database {_database_url()}: {exc}",
            "is it running? BATCHOPS_DATABASE_URL names the database",
        )
    return CliError(
        f"unexpected error: {type(exc).__name__}: {exc}", "run again with `batchops --debug …` for the traceback"
    )


def api_error(response: httpx.Response, token: str | None = None) -> CliError:
    """An error answer of the API: its message and its details, and what to do about it."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if not isinstance(body, dict) or "message" not in body:
        return CliError(f"HTTP {status} from {response.request.url}: {response.text[:200]}")
    details = [d for d in body.get("details") or [] if isinstance(d, dict)]
    message = str(body["message"])
    shortfall = next((d for d in details if {"needed", "available", "currency"} <= set(d)), None)
    if shortfall is not None:
        currency = shortfall["currency"]
        message += f": need {_amount(shortfall['needed'], currency)}, have {_amount(shortfall['available'])}"
    line = f"{message} ({status} {body.get('error')})"
    if shortfall is not None:
        topup = {"userId": _user_of(token), "amount": shortfall.get("shortfall"), "currency": shortfall["currency"]}
        return CliError(line, f"top up with POST /admin/billing/topup {json.dumps(topup)} (an admin's token)")
    if status == 401:
        return CliError(
            line, "mint a token with `batchops token <userId>` (the server's BATCHOPS_JWT_SECRET) for --token"
        )
    if status == 429 and "Retry-After" in response.headers:
        return CliError(line, f"retry in {response.headers['Retry-After']} s")
    extra = [_detail(d) for d in details if not (d.get("message") and str(d["message"]) in message)]
    more = f"; {len(extra) - 3} more" if len(extra) > 3 else ""
    return CliError(line, "; ".join(extra[:3]) + more or None)


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a setting (a field name, or the alias it was read under)."""
    name = str(loc[0]) if loc else "?"
    return name if name.isupper() else f"BATCHOPS_{name.upper()}"


def _amount(value: Any, currency: str | None = None) -> str:
    """``15 credits``, ``12.50 CNY``; a bare number without the currency."""
    number = str(value) if isinstance(value, int) else f"{float(value):.2f}"
    return number if currency is None else f"{number} {'credits' if currency == 'CREDITS' else currency}"


def _detail(detail: dict[str, Any], limit: int = 100) -> str:
    text = (
        f"{detail['field']}: {detail['message']}"
        if "field" in detail and "message" in detail
        else ", ".join(f"{k}={v}" for k, v in detail.items())
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _user_of(token: str | None) -> str:
    """The token's user (not verified: only to name it in a hint)."""
    if token:
        try:
            sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
            if isinstance(sub, str):
                return sub
        except jwt.PyJWTError:
            pass
    return "<userId>"
