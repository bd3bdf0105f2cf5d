"""``core.writes.WriteSet``: several writes sent together (one statement on PostgreSQL),
with the row counts, Python-side defaults and lost-claim checks of separate statements."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from batchops.core.db import table_of, utcnow
from batchops.core.errors import ConflictError
from batchops.core.runtime import Runtime
from batchops.core.writes import WriteSet, insert_at_commit, insert_rows
from batchops.identity.models import User
from batchops.notifications.models import Notification

USERS, NOTES = table_of(User), table_of(Notification)


async def test_inserts_and_updates_go_together_with_their_row_counts(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        session.add(User(id="pending", name="added through the ORM"))  # flushed before the set
        w = WriteSet(session)
        w.insert(USERS, [{"id": f"u{i}", "name": f"user {i}"} for i in range(3)])
        # rows that exist before the set (not ones it inserts: its parts share one snapshot on PostgreSQL)
        w.update(USERS, [{"id": "pending", "name": "renamed"}, {"id": "nobody", "name": "x"}], values={"plan": "pro"})
        w.insert(
            NOTES,
            [
                {
                    "user_id": "pending",
                    "type": "t",
                    "title": "a",
                    "content": "",
                    "channel": "c",
                    "data": {"k": 1, "标题": "🔓"},
                },
                {"user_id": "u1", "type": "t", "title": "b", "content": "", "channel": "c", "data": {}},
            ],
        )
        assert await w.execute() == [3, 1, 2]
    async with runtime.db.read() as session:
        users = {u.id: u for u in await session.scalars(select(User))}
        notes = list(await session.scalars(select(Notification).order_by(Notification.title)))
    assert (users["pending"].name, users["pending"].plan) == ("renamed", "pro") and users["u1"].name == "user 1"
    assert users["u2"].created_at <= utcnow()  # a Python-side default, filled in for the set
    assert [(n.user_id, n.data) for n in notes] == [("pending", {"k": 1, "标题": "🔓"}), ("u1", {})]


async def test_a_lost_claim_raises_and_nothing_is_written(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        session.add(User(id="busy", name="busy", status="suspended"))
    with pytest.raises(ConflictError):
        async with runtime.db.transaction() as session:
            w = WriteSet(session)
            w.update(
                USERS,
                [{"id": "busy"}],
                values={"name": "claimed"},
                where={"status": "active"},
                unless_all=ConflictError("taken"),
            )
            w.insert(USERS, [{"id": "after", "name": "after"}])
            await w.execute()
    async with runtime.db.read() as session:
        assert [u.name for u in await session.scalars(select(User))] == ["busy"]


def kinds(statements: list[str]) -> list[str]:
    return [" ".join(s.split()[:3]) for s in statements]


async def test_a_failed_write_raises_sqlalchemys_error_and_listeners_see_every_statement(
    runtime: Runtime, statement_counter: Callable[[], list[str]]
) -> None:
    """On SQLite the set's writes go to the driver in one call, past SQLAlchemy's execute:
    engine listeners (logging, statement counts) must still see them, and a constraint
    violation must surface as the IntegrityError callers catch, with nothing written."""
    async with runtime.db.transaction() as session:
        w = WriteSet(session)
        w.insert(USERS, [{"id": "dup", "name": "first"}])
        await w.execute()
    async with runtime.db.transaction() as session:
        w = WriteSet(session)
        w.update(USERS, [{"id": "dup", "name": "renamed"}])
        w.insert(USERS, [{"id": "other", "name": "other"}])
        await w.execute()
    with pytest.raises(IntegrityError):
        async with runtime.db.transaction() as session:
            w = WriteSet(session)
            w.insert(NOTES, [{"user_id": "dup", "type": "t", "title": "kept?", "content": "", "channel": "c"}])
            w.insert(USERS, [{"id": "dup", "name": "second"}])
            await w.execute()
    if runtime.db.is_sqlite:  # (PostgreSQL: one statement of CTEs through asyncpg)
        seen = kinds(statement_counter())
        assert seen[:3] == ["INSERT INTO users", "UPDATE users SET", "INSERT INTO users"], seen
    async with runtime.db.read() as session:
        users = [(u.id, u.name) for u in await session.scalars(select(User).order_by(User.id))]
        assert users == [("dup", "renamed"), ("other", "other")]
        assert list(await session.scalars(select(Notification))) == []


async def test_rows_inserted_at_commit_are_kept_on_commit_and_dropped_on_rollback(
    runtime: Runtime, statement_counter: Callable[[], list[str]]
) -> None:
    """``insert_at_commit`` (the batch runner's audit row): kept only if the transaction
    commits; a failing row fails the transaction with nothing kept."""
    async with runtime.db.transaction() as session:
        await insert_at_commit(session, USERS, [{"id": "audited", "name": "at commit"}])
        await insert_rows(session, USERS, [{"id": "before", "name": "a later statement"}])
    with pytest.raises(RuntimeError):
        async with runtime.db.transaction() as session:
            await insert_at_commit(session, USERS, [{"id": "rolled-back", "name": "never"}])
            raise RuntimeError("the request failed")
    with pytest.raises(IntegrityError):
        async with runtime.db.transaction() as session:
            await insert_rows(session, USERS, [{"id": "lost", "name": "rolled back with the failed row"}])
            await insert_at_commit(session, USERS, [{"id": "audited", "name": "a duplicate"}])
    async with runtime.db.transaction() as session:  # the connection is usable afterwards
        await insert_at_commit(session, USERS, [{"id": "next", "name": "next"}])
    if runtime.db.is_sqlite:  # listeners see each row's statement (PostgreSQL: raw asyncpg)
        seen = kinds(statement_counter())
        assert seen.count("INSERT INTO users") == 6, seen
    async with runtime.db.read() as session:
        ids = list(await session.scalars(select(User.id).order_by(User.id)))
    assert ids == ["audited", "before", "next"]
