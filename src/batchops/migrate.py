"""Apply the Alembic migrations shipped inside the package (no alembic.ini needed), tell
whether a database is migrated, and reset one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from batchops.core.db import async_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url)
    return cfg


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL (None: another engine, or an in-memory database)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Bring the database to the newest schema. Runs its own event loop: call it
    from synchronous code, or through ``asyncio.to_thread``."""
    path = sqlite_path(database_url)
    if path is not None:  # the default file lives in a data directory that may not exist yet
        path.parent.mkdir(parents=True, exist_ok=True)
    # Alembic's INFO lines ("Context impl SQLiteImpl", one per revision) are noise at every start-up.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command.upgrade(alembic_config(database_url), revision)


def newest_revisions(database_url: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


async def _current_revisions(database_url: str) -> set[str]:
    engine = create_async_engine(async_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:

            def read(sync: Connection) -> set[str]:
                return set(MigrationContext.configure(sync).get_current_heads())

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


def not_migrated(database_url: str) -> str | None:
    """Why the database is not at the newest schema, to follow "the database …" (None: it
    is). Creates nothing: a SQLite file that is not there is reported, not made."""
    path = sqlite_path(database_url)
    if path is not None and not path.exists():
        return "does not exist"
    current, newest = asyncio.run(_current_revisions(database_url)), newest_revisions(database_url)
    if not current:
        return "has no schema"
    script = ScriptDirectory.from_config(alembic_config(database_url))
    known = {r.revision for r in script.walk_revisions()}
    if current == newest or not current <= known:  # newest, or migrated by a newer batchops
        return None
    return f"is at revision {', '.join(sorted(current))}, the newest is {', '.join(sorted(newest))}"


def reset(database_url: str) -> str:
    """Throw the database's contents away (SQLite: remove the file; PostgreSQL: drop and
    recreate the current schema), then migrate it. Returns what was removed."""
    path = sqlite_path(database_url)
    if path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        removed = f"removed {path}"
    else:
        removed = asyncio.run(_drop_schema(database_url))
    upgrade(database_url)
    return removed


async def _drop_schema(database_url: str) -> str:
    engine = create_async_engine(async_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            schema = await conn.scalar(text("SELECT current_schema()"))
            quoted = conn.dialect.identifier_preparer.quote(str(schema))
            await conn.execute(text(f"DROP SCHEMA {quoted} CASCADE"))
            await conn.execute(text(f"CREATE SCHEMA {quoted}"))
        return f"dropped and recreated schema {schema}"
    finally:
        await engine.dispose()
