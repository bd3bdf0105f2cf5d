"""The batch runner (core/batch.py) with a fake work on temp-file SQLite: the three modes,
savepoints, the audit row and the progress pushes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.audit import AuditLog
from batchops.core.batch import ROLLED_BACK, SKIPPED, BatchMode, BatchResult, BatchRunner, ItemFailure, counted
from batchops.core.db import Database
from batchops.core.errors import BadRequestError, ConflictError
from tests.unit.sqlite_db import temp_database

# What the fake work writes: one row per item it flushed (or, with savepoints, per item it handled).
WRITTEN = Table("unit_batch_items", MetaData(), Column("item", Integer, primary_key=True))
CONTINUE, STOP, ATOMIC = BatchMode(), BatchMode(continue_on_error=False), BatchMode(atomic=True)


class FakeWork:
    """Fails the items named in ``failing`` (a ConflictError for odd ones, else BadRequest)."""

    def __init__(self, session: AsyncSession, failing: set[int], *, write_each: bool = False) -> None:
        self.session, self.failing, self.write_each = session, failing, write_each
        self.handled: list[int] = []
        self.flushed: list[list[int]] = []

    async def handle(self, item: int) -> int:
        self.handled.append(item)
        if self.write_each:  # writes before it decides: only a savepoint can take that back
            await self.session.execute(insert(WRITTEN), [{"item": item}])
        if item in self.failing:
            raise (ConflictError if item % 2 else BadRequestError)(f"item {item} refused")
        return item * 10

    async def flush(self, results: list[int]) -> None:
        self.flushed.append(results)
        if results and not self.write_each:
            await self.session.execute(insert(WRITTEN), [{"item": r // 10} for r in results])


class FakeHub:
    def __init__(self, *, broken: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.broken = broken

    async def publish(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        if self.broken:
            raise ConnectionError("redis is down")
        self.sent.extend(messages)


@pytest.fixture(scope="module")
async def db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with temp_database(tmp_path_factory.mktemp("batch"), WRITTEN.metadata) as database:
        yield database


@pytest.fixture(autouse=True)
async def _empty(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(delete(WRITTEN))
        await session.execute(delete(AuditLog))


async def run(
    db: Database,
    items: Sequence[int],
    failing: set[int],
    mode: BatchMode = CONTINUE,
    *,
    runner: BatchRunner | None = None,
    savepoints: bool = False,
    actor: str | None = "admin",
) -> tuple[BatchResult[int, int], FakeWork]:
    works: list[FakeWork] = []

    async def prepare(session: AsyncSession) -> FakeWork:
        works.append(FakeWork(session, failing, write_each=savepoints))
        return works[-1]

    result = await (runner or BatchRunner(db)).run(
        domain="unit",
        operation="things",
        actor_id=actor,
        items=items,
        prepare=prepare,
        mode=mode,
        savepoints=savepoints,
        audit_detail={"why": "test"},
    )
    return result, works[0]


async def written(db: Database) -> list[int]:
    async with db.read() as session:
        return list(await session.scalars(select(WRITTEN.c.item).order_by(WRITTEN.c.item)))


def outcome(result: BatchResult[int, int]) -> dict[int, str]:
    """Per item: ``ok`` or the error name it was reported with."""
    found = {item: "ok" for item, _ in result.successes}
    for f in result.failures:
        assert f.item not in found, f"item {f.item} reported twice"
        found[f.item] = f.error
    return found


async def test_continue_on_error_reports_failures_and_commits_the_rest(db: Database) -> None:
    result, work = await run(db, [1, 2, 3, 4, 5], failing={2, 3})
    assert result.results == [10, 40, 50]
    assert [(f.index, f.item, f.error, f.reason) for f in result.failures] == [
        (1, 2, "BadRequestException", "item 2 refused"),
        (2, 3, "ConflictException", "item 3 refused"),
    ]
    assert (result.success_count, result.failed_count, result.total_count, result.committed) == (3, 2, 5, True)
    assert work.handled == [1, 2, 3, 4, 5] and work.flushed == [[10, 40, 50]]  # one flush for the lot
    assert await written(db) == [1, 4, 5]


async def test_stop_on_first_failure_skips_the_rest_and_commits_what_came_before(db: Database) -> None:
    result, work = await run(db, [1, 2, 3, 4, 5], failing={3, 5}, mode=STOP)
    assert outcome(result) == {1: "ok", 2: "ok", 3: "ConflictException", 4: SKIPPED[0], 5: SKIPPED[0]}
    assert [f.reason for f in result.failures[1:]] == [SKIPPED[1]] * 2
    assert work.handled == [1, 2, 3]  # never attempted after the failure
    assert result.committed and await written(db) == [1, 2]


async def test_atomic_rolls_everything_back_and_names_the_culprit(db: Database) -> None:
    result, work = await run(db, [1, 2, 3, 4], failing={2}, mode=ATOMIC)
    assert outcome(result) == {1: ROLLED_BACK[0], 2: "BadRequestException", 3: ROLLED_BACK[0], 4: ROLLED_BACK[0]}
    assert [f.index for f in result.failures] == [0, 1, 2, 3]
    assert (result.success_count, result.failed_count, result.committed) == (0, 4, False)
    assert work.flushed == [] and await written(db) == []


async def test_atomic_without_a_failure_commits_everything(db: Database) -> None:
    result, _ = await run(db, [1, 2, 3], failing=set(), mode=ATOMIC)
    assert result.committed and result.results == [10, 20, 30] and result.failures == []
    assert await written(db) == [1, 2, 3]


async def test_savepoints_take_back_only_the_failed_items_writes(db: Database) -> None:
    result, _ = await run(db, [1, 2, 3, 4], failing={2, 4}, savepoints=True)
    assert result.results == [10, 30]
    assert await written(db) == [1, 3]  # items 2 and 4 wrote, then failed: their rows are gone
    result, _ = await run(db, [5, 6, 7], failing={6}, savepoints=True, mode=ATOMIC)
    assert not result.committed and await written(db) == [1, 3]


async def test_an_unexpected_error_rolls_the_batch_back_and_propagates(db: Database) -> None:
    async def prepare(session: AsyncSession) -> FakeWork:
        work = FakeWork(session, set(), write_each=True)

        async def broken(results: list[int]) -> None:
            raise RuntimeError("disk full")

        work.flush = broken  # type: ignore[method-assign]
        return work

    with pytest.raises(RuntimeError, match="disk full"):
        await BatchRunner(db).run(domain="unit", operation="things", actor_id="a", items=[1, 2], prepare=prepare)
    assert await written(db) == []
    async with db.read() as session:
        assert await session.scalar(select(AuditLog.id)) is None


async def audit_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.read() as session:
        rows = await session.execute(
            select(
                AuditLog.actor_id,
                AuditLog.domain,
                AuditLog.operation,
                AuditLog.total_count,
                AuditLog.success_count,
                AuditLog.failed_count,
                AuditLog.committed,
                AuditLog.detail,
            ).order_by(AuditLog.id)
        )
        return [tuple(r) for r in rows]


async def test_every_batch_is_audited_committed_or_not(db: Database) -> None:
    await run(db, [1, 2, 3], failing={2})
    await run(db, [4, 5], failing={5}, mode=ATOMIC, actor="bob")
    assert await audit_rows(db) == [
        ("admin", "unit", "things", 3, 2, 1, True, {"why": "test"}),
        ("bob", "unit", "things", 2, 0, 2, False, {"why": "test"}),  # in a transaction of its own
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fails=st.lists(st.booleans(), max_size=12),
    mode=st.sampled_from([CONTINUE, STOP, ATOMIC]),
)
async def test_counts_add_up_for_any_items_in_any_mode(db: Database, fails: list[bool], mode: BatchMode) -> None:
    async with db.transaction() as session:
        await session.execute(delete(WRITTEN))
    items = list(range(len(fails)))
    failing = {i for i, fail in enumerate(fails) if fail}
    result, _ = await run(db, items, failing, mode)
    assert result.success_count + result.failed_count == result.total_count == len(items)
    assert sorted(outcome(result)) == items  # every item reported exactly once
    first = min(failing, default=None)

    def own_error(i: int) -> str:
        return "ConflictException" if i % 2 else "BadRequestException"

    expected: dict[int, str]
    if first is None:
        expected = dict.fromkeys(items, "ok")
    elif mode.atomic:
        expected = {i: ROLLED_BACK[0] for i in items} | {first: own_error(first)}
    elif not mode.continue_on_error:
        expected = {i: "ok" if i < first else SKIPPED[0] for i in items} | {first: own_error(first)}
    else:
        expected = {i: own_error(i) if i in failing else "ok" for i in items}
    assert outcome(result) == expected
    assert await written(db) == sorted(i for i, o in expected.items() if o == "ok")
    assert result.committed == (not mode.atomic or first is None)


# --- progress pushes ------------------------------------------------------------------------------
async def test_progress_is_pushed_while_items_are_decided_and_at_the_end(db: Database) -> None:
    hub = FakeHub()
    # interval 0: a push before every item after the first (the runner reads time.perf_counter itself)
    runner = BatchRunner(db, push=hub, progress_every_seconds=0)  # type: ignore[arg-type]
    await run(db, [1, 2, 3, 4], failing={3}, runner=runner)
    assert [user for user, _ in hub.sent] == ["admin"] * 4
    messages = [m for _, m in hub.sent]
    assert [(m["completed"], m["progress"]) for m in messages] == [(1, 25), (2, 50), (3, 75), (4, 100)]
    assert {(m["type"], m["operation"], m["total"]) for m in messages} == {("batch.progress", "batch_things", 4)}
    assert "succeeded" not in messages[0]
    assert (messages[-1]["succeeded"], messages[-1]["failed"], messages[-1]["committed"]) == (3, 1, True)


async def test_a_short_batch_pushes_only_its_end(db: Database) -> None:
    hub = FakeHub()
    runner = BatchRunner(db, push=hub, progress_every_seconds=3600)  # type: ignore[arg-type]
    await run(db, [1, 2, 3], failing={1}, mode=ATOMIC, runner=runner)
    assert [m for _, m in hub.sent] == [
        {
            "type": "batch.progress",
            "operation": "batch_things",
            "progress": 100,
            "completed": 3,
            "total": 3,
            "succeeded": 0,
            "failed": 3,
            "committed": False,
        }
    ]


async def test_an_operation_named_as_a_batch_keeps_its_name_in_pushes(db: Database) -> None:
    hub = FakeHub()
    runner = BatchRunner(db, push=hub, progress_every_seconds=3600)  # type: ignore[arg-type]

    async def prepare(session: AsyncSession) -> FakeWork:
        return FakeWork(session, set())

    for item, operation in enumerate(("quick_batch_orders", "batch_orders", "daily_release"), 100):
        await runner.run(domain="unit", operation=operation, actor_id="admin", items=[item], prepare=prepare)
    assert [m["operation"] for _, m in hub.sent] == ["quick_batch_orders", "batch_orders", "batch_daily_release"]


async def test_pushes_need_a_caller_and_never_fail_the_batch(db: Database) -> None:
    hub = FakeHub()
    await run(db, [1, 2], set(), runner=BatchRunner(db, push=hub, progress_every_seconds=0), actor=None)  # type: ignore[arg-type]
    assert hub.sent == []
    broken = BatchRunner(db, push=FakeHub(broken=True), progress_every_seconds=0)  # type: ignore[arg-type]
    result, _ = await run(db, [3, 4, 5], set(), runner=broken)
    assert result.committed and await written(db) == [1, 2, 3, 4, 5]


def test_the_closing_log_line_is_the_seeds() -> None:
    result: BatchResult[int, int] = BatchResult(total_count=10, execution_time_ms=1250)
    result.successes = [(i, i) for i in range(8)]
    result.failures = [ItemFailure(i, i, "NotFoundException", "User not found") for i in (8, 9)]
    assert counted("allocation")(result) == "✅ Batch allocation completed: 8 success, 2 failed, 1250ms"
    assert result.summary() == {"success_count": 8, "failed_count": 2, "total_count": 10, "execution_time_ms": 1250}
