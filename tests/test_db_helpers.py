"""core.db's shared helpers (upsert, insert_ignore, paginate) on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from batchops.core.db import insert_ignore, paginate, upsert
from batchops.core.runtime import Runtime
from batchops.identity.models import User

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def row(user_id: str, name: str, plan: str = "free") -> dict[str, object]:
    return {"id": user_id, "name": name, "plan": plan, "created_at": NOW, "updated_at": NOW}


async def names(rt: Runtime) -> dict[str, tuple[str | None, str]]:
    async with rt.db.read() as session:
        return {u.id: (u.name, u.plan) for u in await session.scalars(select(User))}


async def test_upsert_inserts_then_updates_only_the_named_columns(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        await upsert(session, User, [row("u1", "one"), row("u2", "two")], key=["id"], update=["name"])
    async with runtime.db.transaction() as session:
        await upsert(session, User, [row("u2", "TWO", plan="pro"), row("u3", "three")], key=["id"], update=["name"])
    assert await names(runtime) == {"u1": ("one", "free"), "u2": ("TWO", "free"), "u3": ("three", "free")}


async def test_upsert_sets_constants_given_as_also(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        await upsert(session, User, [row("u1", "one")], key=["id"], update=[])
        await upsert(session, User, [row("u1", "one")], key=["id"], update=["name"], also={"plan": "enterprise"})
    assert await names(runtime) == {"u1": ("one", "enterprise")}


async def test_insert_ignore_returns_only_the_rows_it_inserted(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        first = await insert_ignore(session, User, [row("u1", "one")], key=["id"], returning="id")
        second = await insert_ignore(
            session, User, [row("u1", "changed"), row("u2", "two")], key=["id"], returning="id"
        )
        assert await insert_ignore(session, User, [], key=["id"]) == []
    assert first == ["u1"] and second == ["u2"]
    assert await names(runtime) == {"u1": ("one", "free"), "u2": ("two", "free")}


async def test_paginate_counts_the_whole_query_and_returns_one_page(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        await insert_ignore(session, User, [row(f"u{i:02d}", f"n{i}") for i in range(25)], key=["id"])
    async with runtime.db.read() as session:
        users, total = await paginate(session, select(User).order_by(User.id), offset=20, limit=10)
        rows, rows_total = await paginate(
            session, select(User.id, User.name).where(User.id >= "u10").order_by(User.id), offset=0, limit=3
        )
    assert total == 25 and [u.id for u in users] == ["u20", "u21", "u22", "u23", "u24"]
    assert rows_total == 15 and [tuple(r) for r in rows] == [("u10", "n10"), ("u11", "n11"), ("u12", "n12")]
