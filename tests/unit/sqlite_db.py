"""A throw-away SQLite database for unit tests that need one (the ledger's Book, the
batch runner): the project's own ``Database`` on a temporary file, tables made from the
models (no migrations: tens of milliseconds), no PostgreSQL, no HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import MetaData, insert

import batchops.billing.models
import batchops.core.audit
import batchops.identity.models  # noqa: F401 - the tables the unit tests write
from batchops.core.db import Base, Database, table_of, utcnow
from batchops.identity.models import User


@asynccontextmanager
async def temp_database(directory: Path, *extra: MetaData) -> AsyncIterator[Database]:
    """A migrated-enough database in ``directory``: every model's table, plus ``extra`` ones."""
    db = Database(f"sqlite:///{directory / 'unit.db'}")
    async with db.engine.begin() as conn:
        for metadata in (Base.metadata, *extra):
            await conn.run_sync(metadata.create_all)
    try:
        yield db
    finally:
        await db.dispose()


async def add_users(db: Database, user_ids: Iterable[str]) -> None:
    now = utcnow()
    rows = [
        {"id": u, "name": u, "role": "user", "status": "active", "created_at": now, "updated_at": now} for u in user_ids
    ]
    async with db.transaction() as session:
        await session.execute(insert(table_of(User)), rows)
