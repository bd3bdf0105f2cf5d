"""``Database.read()``: one-off reads outside a transaction must not leak autocommit
(or a skipped BEGIN) into the pooled connection's next transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, func, select, text

from batchops.core.db import UTCDateTime, fetch_rows, in_list, table_of
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


async def test_fetch_rows_gives_what_sqlalchemy_gives_with_a_list_bound_as_one_parameter(
    runtime: Runtime, statement_counter: Callable[[], list[str]]
) -> None:
    """``fetch_rows`` + ``in_list``: the driver's rows, processed as SQLAlchemy processes
    them (UTC datetimes, JSON), for an empty, a one-value and a long list (ids with
    quotes and non-ASCII: the list travels as JSON on SQLite), with one SQL text for all."""
    ids = [f"u{i}" for i in range(40)] + ['quo"te', "it's", "用户"]
    async with runtime.db.transaction() as session:
        session.add_all(User(id=i, name=f"name of {i}", max_devices=len(i)) for i in ids)
        await session.flush()
        base = select(USERS.c.id, USERS.c.max_devices, USERS.c.created_at).where(USERS.c.status == "active")
        stmt = base.where(in_list(USERS.c.id, "ids")).order_by(USERS.c.id)
        for wanted in ([], ["it's"], [*ids, "nobody"]):
            rows = await fetch_rows(session, stmt, {"ids": wanted})  # sees the transaction's own rows
            expected = (await session.execute(base.where(USERS.c.id.in_(wanted)).order_by(USERS.c.id))).all()
            assert [tuple(r) for r in rows] == [tuple(r) for r in expected]
            assert (await session.execute(stmt, {"ids": wanted})).all() == expected  # also through SQLAlchemy
            assert [r.id for r in rows] == sorted(wanted[: len(ids)]) if wanted else rows == []
    first = rows[0]
    assert first.created_at.tzinfo is not None and first.max_devices == len(first.id)
    seen = statement_counter()
    assert len({s for s in seen if "json_each" in s or "ANY" in s}) == 1, seen  # one SQL for any length


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
