"""``batchops user set-password USER``: a console password, typed twice or read from stdin."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from batchops.assembly import build_runtime
from batchops.core.errors import AppError
from batchops.core.logging import configure_logging
from batchops.identity.service import IdentityService
from batchops.settings import get_settings

app = typer.Typer(help="Users: console passwords.", no_args_is_help=True)


@app.command("set-password")
def set_password(
    user_id: Annotated[str, typer.Argument(help="the user who signs in to the console with it")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input (first line)")
    ] = False,
) -> None:
    """Set USER_ID's console password (argon2). Bearer tokens of the API are unaffected."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    settings = get_settings()
    configure_logging("WARNING", settings.log_json)

    async def run() -> None:
        rt = build_runtime(settings)
        try:
            identity: IdentityService = rt.services["identity"]
            await identity.set_password(user_id, password)
        finally:
            await rt.stop()

    try:
        asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"password set for {user_id}")
