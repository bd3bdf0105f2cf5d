"""``core.sqlite_driver``: SQLite runs on the event loop unless a statement must wait for
another connection's write lock; then it waits in aiosqlite's thread, and the loop
goes on serving everything else."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text

from batchops.core.db import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with database.transaction() as session:
        await session.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
    yield database
    await database.dispose()


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to aiosqlite's threads."""
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(args[2], "__name__", "?") if fn.__name__ == "_after_begin" else fn.__name__)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


@contextmanager
def write_lock_held(db: Database) -> Iterator[threading.Event]:
    """Another connection (another process, as far as SQLite can tell) holds the write
    lock until the yielded event is set."""
    path = db.engine.url.database
    assert path is not None
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO items (id, name) VALUES (1000, 'held')")
        taken.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    try:
        yield release
    finally:
        release.set()
        holder.join(10)


async def ticks_while_locked(db: Database, write: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``write`` while another connection holds the write lock: how many times the
    loop ran this task meanwhile (up to 20, then the lock is let go). A loop blocked by
    the write ticks once, after the holder gives up on its own (30 s)."""
    ticks = 0
    with write_lock_held(db) as release:
        work = asyncio.create_task(write())
        while not work.done() and ticks < 20:
            await asyncio.sleep(0)  # a turn of the loop, no clock
            ticks += 1
        release.set()
        await asyncio.wait_for(work, timeout=30)
    return ticks


async def test_a_transaction_that_gets_the_lock_runs_on_the_loop(db: Database, thread_calls: list[str]) -> None:
    async with db.transaction() as session:
        await session.execute(text("INSERT INTO items (name) VALUES ('a'), ('b')"))
        await session.execute(text("UPDATE items SET name = 'c' WHERE name = 'b'"))
        assert (await session.execute(text("SELECT count(*) FROM items"))).scalar() == 2
    async with db.read() as session:
        assert (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all() == ["a", "c"]
    assert thread_calls == []


async def test_a_transaction_waits_for_the_lock_in_the_thread_and_the_loop_goes_on(
    db: Database, thread_calls: list[str]
) -> None:
    async def write() -> None:
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO items (name) VALUES ('after the holder')"))
            await session.execute(text("UPDATE items SET name = name || '!'"))

    ticks = await ticks_while_locked(db, write)
    # it waited (the loop ran 20 times before the lock was let go), then went on
    assert ticks >= 20
    # only the BEGIN IMMEDIATE and the first statement went to the thread; the rest and
    # the COMMIT ran on the loop, under the lock the thread took
    assert thread_calls == ["_run"]
    async with db.read() as session:
        names = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
    assert names == ["held!", "after the holder!"]


async def test_reads_do_not_wait_for_a_writer(db: Database, thread_calls: list[str]) -> None:
    with write_lock_held(db):
        async with db.read() as session:
            assert (await session.execute(text("SELECT count(*) FROM items"))).scalar() == 0
    assert thread_calls == []


async def test_a_write_outside_a_transaction_that_finds_the_database_busy_waits_in_the_thread(
    db: Database, thread_calls: list[str]
) -> None:
    async def write() -> None:
        async with db.read() as session:  # autocommit: the INSERT is its own transaction
            await session.execute(text("INSERT INTO items (name) VALUES ('alone')"))

    ticks = await ticks_while_locked(db, write)
    assert ticks >= 20
    assert thread_calls == ["_run"]  # tried on the loop, found it busy, waited in the thread: once
    async with db.read() as session:
        names = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
    assert names == ["held", "alone"]


async def test_a_busy_database_past_the_timeout_still_fails_as_sqlite_says(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchops.core.sqlite_driver as driver

    async with db.engine.connect() as conn:  # a connection made with a short busy timeout
        raw = (await conn.get_raw_connection()).dbapi_connection
        raw._connection._conn.execute("PRAGMA busy_timeout=50")
        monkeypatch.setattr(driver, "BUSY_TIMEOUT_MS", 50)
        with write_lock_held(db):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await raw.fetch("INSERT INTO items (name) VALUES ('never') RETURNING id", ())
            assert not raw.holds_write_lock and not raw.in_transaction
