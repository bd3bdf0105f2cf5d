"""The one batch runner every batch endpoint goes through.

A batch is done in three steps inside ONE transaction:

1. ``prepare(session)`` loads everything the items need in a constant number
   of queries (and takes the locks) and returns a *work* object;
2. ``work.handle(item)`` decides each item in memory and raises an
   :class:`~batchops.core.errors.AppError` to fail it. A handler must check
   before it stages anything, so a failed item leaves no trace;
3. ``work.flush(results)`` writes every successful item in bulk.

That keeps a batch at a constant number of statements plus one commit. Handlers
that must write as they go can ask for ``savepoints=True``: each item then runs
in its own SAVEPOINT and a failure rolls back only that item.

Modes (``BatchMode``):

* ``continue_on_error`` (default): failed items are reported, the rest go on;
* ``continue_on_error=False``: stop at the first failure; earlier items commit,
  later ones are reported as ``SkippedException``;
* ``atomic``: all or nothing; the failing item carries its error, every other
  one is reported as ``RolledBackException`` and nothing is committed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.audit import AuditLog
from batchops.core.db import Database, table_of
from batchops.core.errors import AppError
from batchops.core.metrics import batch_metrics
from batchops.core.push import PushHub

log = structlog.get_logger(__name__)
AUDIT = table_of(AuditLog)

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")  # result
R_co = TypeVar("R_co", covariant=True)
I_contra = TypeVar("I_contra", contravariant=True)

SKIPPED = ("SkippedException", "Not attempted: an earlier item failed")
ROLLED_BACK = ("RolledBackException", "Rolled back: another item of this all-or-nothing batch failed")


@dataclass(frozen=True)
class BatchMode:
    continue_on_error: bool = True
    atomic: bool = False


class BatchWork(Protocol[I_contra, R]):
    async def handle(self, item: I_contra) -> R: ...

    async def flush(self, results: list[R]) -> None: ...


@dataclass
class ItemFailure(Generic[I]):
    index: int
    item: I
    error: str
    reason: str


@dataclass
class BatchResult(Generic[I, R]):
    total_count: int
    successes: list[tuple[I, R]] = field(default_factory=list)
    failures: list[ItemFailure[I]] = field(default_factory=list)
    committed: bool = True
    execution_time_ms: int = 0

    @property
    def success_count(self) -> int:
        return len(self.successes)

    @property
    def failed_count(self) -> int:
        return len(self.failures)

    @property
    def results(self) -> list[R]:
        return [r for _, r in self.successes]

    def summary(self) -> dict[str, int]:
        """Keyword arguments for a :class:`~batchops.core.schemas.BatchSummary` response."""
        return {
            "success_count": self.success_count,
            "failed_count": self.failed_count,
            "total_count": self.total_count,
            "execution_time_ms": self.execution_time_ms,
        }


@dataclass(frozen=True)
class LogLines:
    """A domain's own words for a batch's two log lines, as seed 000 lists them under
    日志监控 ("🔄 Batch allocating 10 devices...", "✅ Batch allocation completed: 8
    success, 2 failed, 1250ms"). The lines keep their structured fields."""

    started: str
    completed: Callable[[BatchResult[Any, Any]], str]


def counted(verb: str) -> Callable[[BatchResult[Any, Any]], str]:
    """The seed's closing line: ``✅ Batch <verb> completed: 8 success, 2 failed, 1250ms``."""
    return lambda r: (
        f"✅ Batch {verb} completed: {r.success_count} success, {r.failed_count} failed, {r.execution_time_ms}ms"
    )


class _Discard(Exception):
    """Raised inside the transaction to roll an atomic batch back, with its outcome."""

    def __init__(self, result: BatchResult[Any, Any]) -> None:
        super().__init__("atomic batch rolled back")
        self.result = result


class _Progress:
    """Seed 000 §5 (进度通知): the caller's WebSocket hears how far a long batch has got,
    at most once per interval while its items are decided, then how it ended (after the
    commit, or after the rollback of an all-or-nothing batch)."""

    def __init__(self, hub: PushHub, actor_id: str, operation: str, total: int, every: float) -> None:
        self.hub, self.actor_id, self.total, self.every = hub, actor_id, total, every
        # Seed 000 names a batch by what it does (batch_allocate); a name that says it is
        # a batch already keeps it.
        self.operation = operation if "batch" in operation.split("_") else f"batch_{operation}"
        self.last = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every

    async def send(self, completed: int, **outcome: Any) -> None:
        self.last = time.perf_counter()
        message = {
            "type": "batch.progress",
            "operation": self.operation,
            "progress": completed * 100 // self.total if self.total else 100,
            "completed": completed,
            "total": self.total,
            **outcome,
        }
        try:
            await self.hub.publish([(self.actor_id, message)])
        except Exception:  # a push is best effort (core.push): never fail the batch for it
            log.warning("batch_progress_push_failed", operation=self.operation, exc_info=True)

    async def done(self, result: BatchResult[Any, Any]) -> None:
        await self.send(
            result.total_count,
            succeeded=result.success_count,
            failed=result.failed_count,
            committed=result.committed,
        )


@dataclass
class BatchRunner:
    db: Database
    push: PushHub | None = None
    progress_every_seconds: float = 1.0

    async def run(
        self,
        *,
        domain: str,
        operation: str,
        actor_id: str | None,
        items: Sequence[I],
        prepare: Callable[[AsyncSession], Awaitable[BatchWork[I, R]]],
        mode: BatchMode = BatchMode(),
        savepoints: bool = False,
        audit_detail: dict[str, Any] | None = None,
        log_lines: LogLines | None = None,
    ) -> BatchResult[I, R]:
        started = time.perf_counter()
        log.info(
            log_lines.started if log_lines else "batch_started",
            domain=domain,
            operation=operation,
            size=len(items),
            actor=actor_id,
        )
        progress = None
        if self.push is not None and actor_id is not None:
            progress = _Progress(self.push, actor_id, operation, len(items), self.progress_every_seconds)

        async def run_once(session: AsyncSession) -> BatchResult[I, R]:
            # A unit of work for Database.run: a run the database aborts (deadlock) is run
            # again from here, with a fresh work object and every item decided again.
            result: BatchResult[I, R] = BatchResult(total_count=len(items))
            work = await prepare(session)
            await self._handle_all(session, work, items, mode, savepoints, result, progress)
            if not result.committed:
                raise _Discard(result)
            await work.flush(result.results)
            result.execution_time_ms = _elapsed_ms(started)
            await self._audit(session, domain, operation, actor_id, result, audit_detail)
            return result

        try:
            result = await self.db.run(run_once)
        except _Discard as discarded:
            result = discarded.result
            result.execution_time_ms = _elapsed_ms(started)
            await self.db.run(lambda session: self._audit(session, domain, operation, actor_id, result, audit_detail))
        batch_metrics(domain).observe(
            operation,
            succeeded=result.success_count,
            failed=result.failed_count,
            seconds=time.perf_counter() - started,
        )
        log.info(
            log_lines.completed(result) if log_lines else "batch_completed",
            domain=domain,
            operation=operation,
            succeeded=result.success_count,
            failed=result.failed_count,
            committed=result.committed,
            ms=result.execution_time_ms,
        )
        if progress is not None:
            await progress.done(result)
        return result

    async def _handle_all(
        self,
        session: AsyncSession,
        work: BatchWork[I, R],
        items: Sequence[I],
        mode: BatchMode,
        savepoints: bool,
        result: BatchResult[I, R],
        progress: _Progress | None,
    ) -> None:
        for index, item in enumerate(items):
            if progress is not None and index and progress.due():
                await progress.send(index)
            try:
                if savepoints:
                    async with session.begin_nested():
                        value = await work.handle(item)
                else:
                    value = await work.handle(item)
            except AppError as exc:
                result.failures.append(ItemFailure(index, item, exc.name, exc.message))
                if mode.atomic:
                    self._roll_back_others(items, index, result)
                    return
                if not mode.continue_on_error:
                    name, reason = SKIPPED
                    result.failures.extend(ItemFailure(i, items[i], name, reason) for i in range(index + 1, len(items)))
                    return
                continue
            result.successes.append((item, value))

    @staticmethod
    def _roll_back_others(items: Sequence[I], failed_index: int, result: BatchResult[I, R]) -> None:
        name, reason = ROLLED_BACK
        own = result.failures[-1]
        others = [ItemFailure(i, items[i], name, reason) for i in range(len(items)) if i != failed_index]
        result.failures = sorted([own, *others], key=lambda f: f.index)
        result.successes = []
        result.committed = False

    @staticmethod
    async def _audit(
        session: AsyncSession,
        domain: str,
        operation: str,
        actor_id: str | None,
        result: BatchResult[Any, Any],
        detail: dict[str, Any] | None,
    ) -> None:
        # A Core INSERT, not session.add() (the ORM unit of work costs more than the row),
        # as the transaction's last write: nothing in it reads the row.
        row = {
            "actor_id": actor_id,
            "domain": domain,
            "operation": operation,
            "total_count": result.total_count,
            "success_count": result.success_count,
            "failed_count": result.failed_count,
            "committed": result.committed,
            "execution_time_ms": result.execution_time_ms,
            "detail": detail or {},
        }
        await session.execute(insert(AUDIT), [row])


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
