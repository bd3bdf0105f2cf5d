"""``Database.read()``: one-off reads outside a transaction must not leak autocommit
(or a skipped BEGIN) into the pooled connection's next transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, func, select, text

from batchops.core.db import UTCDateTime, table_of
from batchops.core.runtime import Runtime
from batchops.identity.models import User
from batchops.identity.service import IdentityService
from tests.conftest import SERVICE_TOKEN
from tests.helpers import create_devices, create_users, data

USERS = table_of(User)


async def roll_back_a_write(runtime: Runtime, user_id: str) -> None:
    """A transaction that writes and rolls back: it must leave nothing, whichever pooled
    connection it gets (one a read left in autocommit would keep the row)."""
    with pytest.raises(RuntimeError):
        async with runtime.db.transaction() as session:
            session.add(User(id=user_id, name="x"))
            await session.flush()
            raise RuntimeError("roll it back")


async def count_users(runtime: Runtime) -> int | None:
    async with runtime.db.read() as session:
        return await session.scalar(select(func.count()).select_from(User))


async def test_read_sessions_leave_later_transactions_transactional(runtime: Runtime) -> None:
    for i in range(25):  # more rounds than the pool has connections: every one is reused after a read
        assert await count_users(runtime) == 0
        await roll_back_a_write(runtime, f"rolled-back-{i}")
    assert await count_users(runtime) == 0


async def test_a_read_sees_what_was_committed(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        session.add(User(id="kept", name="kept"))
    async with runtime.db.read() as session:
        user = await session.get(User, "kept")
    assert user is not None and user.name == "kept"


async def test_the_caller_lookup_leaves_later_transactions_transactional(runtime: Runtime) -> None:
    """The caller lookup (``Database.read``) reads outside any transaction; the connection
    it gives back must not leave the next transaction in autocommit."""
    db = runtime.db
    async with db.transaction() as session:
        session.add(User(id="kept", name="kept"))
    identity = IdentityService(db)
    for i in range(25):  # more rounds than the pool has connections
        user = await identity.find("kept")
        assert user is not None and user.name == "kept" and user.created_at.tzinfo is not None
        assert await identity.find("nobody") is None
        await roll_back_a_write(runtime, f"rolled-back-{i}")
    assert await count_users(runtime) == 1


def other_writer_can_begin(database_url: str) -> bool:
    """Whether another connection takes SQLite's write lock right now (no waiting)."""
    other = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    finally:
        other.close()


@pytest.mark.sqlite_only
async def test_a_transaction_takes_the_write_lock_at_its_first_statement_and_a_read_takes_none(
    runtime: Runtime,
) -> None:
    """SQLite's transactions begin IMMEDIATE (the 'begin' event of core.db), so a
    read-check-write never fails to upgrade its lock half-way; ``Database.read()`` takes none."""
    url = runtime.settings.database_url
    async with runtime.db.transaction() as session:
        await session.execute(select(func.count()).select_from(User))  # only a read, yet the lock is held
        assert not await asyncio.to_thread(other_writer_can_begin, url)
    assert await asyncio.to_thread(other_writer_can_begin, url)
    async with runtime.db.read() as session:
        await session.execute(select(func.count()).select_from(User))
        assert await asyncio.to_thread(other_writer_can_begin, url)


def test_utc_datetimes_read_back_aware_whatever_text_sqlite_holds() -> None:
    """SQLite keeps datetimes as text; ``UTCDateTime`` parses the text SQLAlchemy writes in
    one step and any other shape the general way: always an aware UTC datetime."""
    engine = create_engine("sqlite://")
    table = Table("stamps", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime()))
    table.create(engine)
    written = datetime(2026, 12, 3, 7, 49, 39, 123456, tzinfo=UTC)
    texts = ["2026-12-03 07:49:39.123456", "2026-12-03 07:49:39", "2026-12-03 07:49:39.123456+00:00"]
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 0, "at": written}])  # as the service writes it
        conn.execute(
            text("INSERT INTO stamps (id, at) VALUES (1, :a), (2, :b), (3, :c), (4, NULL)"),
            dict(zip("abc", texts, strict=True)),
        )
        read = dict(conn.execute(select(table.c.id, table.c.at)).all())
    assert read[0] == read[1] == read[3] == written
    assert read[2] == written.replace(microsecond=0)
    assert read[4] is None
    assert all(v.tzinfo is UTC for v in read.values() if v is not None)


async def test_listings_do_not_wait_for_a_writer(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    """GET listings read outside any transaction: a writer holding its locks (SQLite's
    write lock, PostgreSQL row and table locks: another process, a long batch) does not
    hold them up."""
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 2)
    body = {"requests": [{"userId": "u1", "durationMinutes": 5}]}
    data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    paths = (
        "/scheduler/allocations",
        "/scheduler/devices",
        "/scheduler/nodes",
        "/scheduler/reservations",
        "/notifications",
    )
    others = ("/metering/users/u1", "/api/dining/departments", "/api/dining/menus", "/api/dining/orders")
    internal = {"X-Service-Token": SERVICE_TOKEN}
    async with writer_holding_locks(runtime):
        for path, headers in [*((p, admin) for p in paths + others), ("/api/internal/balance/user/u1", internal)]:
            r = await asyncio.wait_for(client.get(path, headers=headers), timeout=5)
            assert r.status_code == 200, (path, r.text)
        assert data(await client.get("/scheduler/allocations", headers=admin))["total"] == 1


@asynccontextmanager
async def writer_holding_locks(runtime: Runtime) -> AsyncIterator[None]:
    url = runtime.settings.database_url
    if runtime.db.is_sqlite:
        writer = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.rollback()
            writer.close()
        return
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE allocations SET status = status")
            await conn.execute("LOCK TABLE devices IN EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()
