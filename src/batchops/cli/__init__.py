"""The ``batchops`` command: serve, worker, migrate, token, demo, user, billing, studio."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from batchops import migrate as migrations
from batchops.assembly import build_runtime
from batchops.billing.service import BillingService
from batchops.cli.errors import CliError, CliGroup, safe_url
from batchops.cli.studio import app as studio_app
from batchops.core.auth import create_token
from batchops.core.errors import AppError
from batchops.core.logging import configure_logging
from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from batchops.settings import Settings, get_settings

app = typer.Typer(cls=CliGroup, no_args_is_help=True)
console = Console(soft_wrap=True)  # a path or a URL stays on one line, to be copied
TTL_DEFAULT = Settings.model_fields["jwt_ttl_hours"].default
app.add_typer(studio_app, name="studio")
T = TypeVar("T")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of a failure, not one line")] = False,
) -> None:
    """batchops: batch operations for multi-tenant platforms."""


def migrated_database(settings: Settings) -> str:
    """The database URL of a command that does not migrate by itself, once it is known to be migrated."""
    problem = migrations.not_migrated(settings.database_url)
    if problem:
        raise CliError(f"the database {safe_url(settings.database_url)} {problem}", "run `batchops migrate`")
    return settings.database_url


def on_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run a command's ``work`` on a runtime built for it, stopped afterwards."""

    async def run() -> T:
        rt = build_runtime(settings)
        try:
            return await work(rt)
        finally:
            await rt.stop()

    return asyncio.run(run())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="run the worker loop in-process")] = True,
    processes: Annotated[int, typer.Option("--processes", min=1, help="HTTP server processes (one per core)")] = 1,
) -> None:
    """Apply migrations, then serve the HTTP API (with an embedded worker by default)."""
    import os

    import uvicorn

    from batchops.app import create_app

    settings = get_settings().model_copy(update={"embedded_worker": worker})
    if problem := settings.serving_problem(host):
        typer.secho(problem, fg="red", err=True)
        raise typer.Exit(1)
    configure_logging(settings.log_level, settings.log_json)
    console.print(f"database: {safe_url(settings.database_url)}")
    migrations.upgrade(settings.database_url)
    if processes == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())
        return
    # Several processes: each builds its app from the environment (the outbox and every
    # periodic job are safe with several workers, so each may embed one).
    os.environ["BATCHOPS_EMBEDDED_WORKER"] = "true" if worker else "false"
    uvicorn.run(
        "batchops.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=processes,
        log_level=settings.log_level.lower(),
    )


@app.command()
def worker() -> None:
    """Run a worker process: outbox delivery and periodic jobs, until SIGTERM / Ctrl-C."""
    settings = get_settings()
    migrated_database(settings)
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> None:
    rt = build_runtime(settings)
    await rt.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await rt.worker.run_forever(stop)
    finally:
        await rt.stop()


@app.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    settings = get_settings()
    migrations.upgrade(settings.database_url)
    revision = ", ".join(sorted(migrations.newest_revisions(settings.database_url)))
    console.print(f"[green]migrated[/green] {safe_url(settings.database_url)} (revision {revision})")


@app.command()
def token(
    user_id: Annotated[str, typer.Argument(help="the user the token speaks for (claim sub)")],
    hours: Annotated[
        int | None,
        typer.Option(min=1, help="lifetime in hours", show_default=f"BATCHOPS_JWT_TTL_HOURS ({TTL_DEFAULT})"),
    ] = None,
) -> None:
    """Print a bearer JWT for USER_ID."""
    settings = get_settings()
    ttl = timedelta(hours=hours or settings.jwt_ttl_hours)
    typer.echo(create_token(user_id, settings.jwt_secret, ttl))


@app.command()
def demo(
    admin: Annotated[str, typer.Option(help="admin user id to create")] = "admin",
    reset: Annotated[
        bool, typer.Option("--reset", help="into a fresh database: its contents are thrown away first")
    ] = False,
) -> None:
    """Load the demo data (idempotent): 100 devices and the users of seed 000's scenarios, a
    canteen department with menus, a studio creator with credits."""
    from batchops.demo import load_demo

    settings = get_settings()
    configure_logging("WARNING", settings.log_json)
    console.print(f"database: {safe_url(settings.database_url)}")
    if reset:
        console.print(f"reset: {migrations.reset(settings.database_url)}")
    migrations.upgrade(settings.database_url)
    summary = asyncio.run(load_demo(settings, admin))
    for line in summary:
        console.print(line)


billing_app = typer.Typer(help="Billing tools: dead-letter replay and reconciliation.", no_args_is_help=True)
app.add_typer(billing_app, name="billing")


class ReplayRefused(Exception):
    """The runtime could not start: replaying now would mark events delivered unpublished."""


@billing_app.command("replay")
def billing_replay() -> None:
    """Redeliver every dead-lettered usage report now."""
    settings = get_settings()
    migrated_database(settings)
    configure_logging("WARNING", settings.log_json)

    async def replay(rt: Runtime) -> tuple[int, int]:
        # Started as the server's is: the replay delivers every due outbox row, events
        # too, and an event bus never connected would mark them delivered unpublished.
        try:
            await rt.start()
        except Exception as exc:
            raise ReplayRefused(f"{type(exc).__name__}: {exc}") from exc
        result: tuple[int, int] = await rt.services.get(BillingService).replay()
        return result

    try:
        requeued, delivered = on_runtime(settings, replay)
    except ReplayRefused as exc:
        console.print(
            "[red]replay refused:[/red] cannot connect what the server delivers through "
            f"(BATCHOPS_AMQP_URL, BATCHOPS_REDIS_URL): {exc}. Nothing was replayed."
        )
        raise typer.Exit(1) from exc
    console.print(f"requeued {requeued} dead-lettered usage reports; {delivered} outbox rows delivered")


@billing_app.command("reconcile")
def billing_reconcile(
    fix: Annotated[bool, typer.Option("--fix", help="charge what was never charged")] = False,
) -> None:
    """List released allocations whose usage was never charged (and charge them with --fix)."""
    from rich.table import Table

    settings = get_settings()
    migrated_database(settings)
    configure_logging("WARNING", settings.log_json)

    async def reconcile(rt: Runtime) -> tuple[list[Any], int]:
        result: tuple[list[Any], int] = await rt.services.get(BillingService).reconcile(fix=fix)
        return result

    missing, charged = on_runtime(settings, reconcile)
    if missing:
        table = Table("allocationId", "userId", "durationSeconds", "releasedAt", "report")
        for m in missing:
            table.add_row(
                m.allocation_id, m.user_id, str(m.duration_seconds), str(m.released_at), m.outbox_status or "-"
            )
        console.print(table)
    console.print(f"{len(missing)} released allocations never charged" + (f"; charged {charged} now" if fix else ""))
    if missing and not fix:
        raise typer.Exit(1)


user_app = typer.Typer(help="Users: console passwords.", no_args_is_help=True)
app.add_typer(user_app, name="user")


@user_app.command("set-password")
def user_set_password(
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
    migrated_database(settings)
    configure_logging("WARNING", settings.log_json)

    async def set_password(rt: Runtime) -> None:
        await rt.services.get(IdentityService).set_password(user_id, password)

    try:
        on_runtime(settings, set_password)
    except AppError as exc:
        raise CliError(exc.message) from exc
    typer.echo(f"password set for {user_id}")
