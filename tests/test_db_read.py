"""``Database.read()``: one-off reads outside a transaction must not leak autocommit
(or a skipped BEGIN) into the pooled connection's next transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from batchops.core.runtime import Runtime
from batchops.identity.models import User


async def test_read_sessions_leave_later_transactions_transactional(runtime: Runtime) -> None:
    db = runtime.db
    for i in range(25):  # more rounds than the pool has connections: every one is reused after a read
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 0
        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                session.add(User(id=f"rolled-back-{i}", name="x"))
                await session.flush()
                raise RuntimeError("roll it back")
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 0


async def test_a_read_sees_what_was_committed(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        session.add(User(id="kept", name="kept"))
    async with runtime.db.read() as session:
        user = await session.get(User, "kept")
    assert user is not None and user.name == "kept"
