"""The outbox's retry schedule: exponential backoff from 2 s, capped, then the dead letter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from batchops.core.db import Database, utcnow
from batchops.core.outbox import DEAD, PENDING, Delivery, Outbox, OutboxItem, OutboxMessage, backoff_seconds, enqueue
from tests.unit.sqlite_db import temp_database


def test_backoff_doubles_from_2_seconds_up_to_5_minutes() -> None:
    assert [backoff_seconds(n) for n in range(0, 11)] == [2, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_seconds(3, base=1.5, cap=5) == 5 and backoff_seconds(2, base=1.5) == 3
    assert backoff_seconds(5000) == 300  # a row retried for ever (a large max_attempts): no float overflow


@settings(max_examples=50)
@given(a=st.integers(-5, 10_000), b=st.integers(-5, 10_000))
def test_backoff_never_shrinks_and_never_passes_its_cap(a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert 2 <= backoff_seconds(low) <= backoff_seconds(high) <= 300


@pytest.fixture(scope="module")
async def db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with temp_database(tmp_path_factory.mktemp("outbox")) as database:
        yield database


async def test_a_failed_delivery_is_due_again_after_its_backoff_and_dead_after_max_attempts(db: Database) -> None:
    outbox = Outbox(db, max_attempts=3)
    attempts: list[int] = []

    async def refuse(deliveries: list[Delivery]) -> dict[int, str]:
        attempts.extend(d.attempts for d in deliveries)
        return {d.id: "503 from billing" for d in deliveries}

    outbox.register("unit.backoff", refuse)
    async with db.transaction() as session:
        await enqueue(session, [OutboxItem("unit.backoff", "usage", {"n": 1})])
    for attempt, wait in ((1, 2), (2, 4), (3, 8)):
        before = utcnow()
        assert await outbox.dispatch_once() == 1
        after = utcnow()
        async with db.read() as session:
            row = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "unit.backoff"))).one()
        assert row.attempts == attempt and row.last_error == "503 from billing"
        assert before + timedelta(seconds=wait) <= row.available_at <= after + timedelta(seconds=wait)
        assert row.status == (DEAD if attempt == 3 else PENDING)
        assert await outbox.dispatch_once() == 0  # not due before its time
        async with db.transaction() as session:  # move its time instead of waiting for it
            await session.execute(update(OutboxMessage).values(available_at=utcnow() - timedelta(seconds=1)))
    assert await outbox.dispatch_once() == 0  # dead-lettered: only a requeue brings it back
    assert attempts == [1, 2, 3]
    assert await outbox.requeue_dead("unit.backoff") == 1
    assert await outbox.dispatch_once() == 1 and attempts[-1] == 1  # a fresh set of attempts
