"""Step 4 of the engine's tick: what the provider calls came to, written in one
transaction, guarded by state and lease owner (a cancel or a lease lost meanwhile wins).

:func:`apply_outcome` is the rule from one outcome to its task's new row: a submission
starts the poll schedule, a success spends the task's hold, a retryable error requeues
it with backoff, a final failure returns its credits, and the batch's adaptive
concurrency moves (:mod:`batchops.studio.degradation`). :class:`OutcomeRecorder` writes
a tick's outcomes in a constant number of statements, settles the credits in the ledger
and completes finished batches (notification, live progress after the commit)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CREDITS, Book
from batchops.core.clock import Clock, iso_utc
from batchops.core.db import Database, on_commit
from batchops.core.push import PushHub
from batchops.notifications.service import NewNotification, NotificationService
from batchops.studio import metrics
from batchops.studio.claims import Outcome
from batchops.studio.config import MAX_RETRIES
from batchops.studio.degradation import observe
from batchops.studio.models import (
    B_CANCELLED,
    B_COMPLETED,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    StudioBatch,
    StudioTask,
)
from batchops.studio.providers import RETRYABLE_KINDS, SERVER_ERROR, UNKNOWN_SUBMISSION, Provider
from batchops.studio.timing import Timing

log = structlog.get_logger(__name__)


@dataclass
class TaskChange:
    """What one outcome does: the task's new column values, and the credits it settles."""

    values: dict[str, Any]
    capture: tuple[str, int] | None = None  # (hold reference, credits): a success spends the task's hold
    release: str | None = None  # a hold reference: a final failure gives the credits back


def apply_outcome(outcome: Outcome, batch: StudioBatch | None, timing: Timing) -> TaskChange:
    """The task's new row for ``outcome`` (at ``outcome.at``), and the credits it settles.

    A success or an error also counts against ``batch``'s adaptive concurrency (the batch
    row, locked by the caller, is changed in place)."""
    task, now = outcome.claim.task, outcome.at
    free = {"lease_owner": None, "lease_until": None}
    if outcome.kind == "submitted":
        return TaskChange(
            {
                **free,
                "state": RUNNING,
                "provider_task_id": outcome.provider_task_id,
                "submitted_at": now,
                "deadline_at": timing.deadline(task, now),
                "due_at": timing.first_poll(task, now),
            }
        )
    if outcome.kind == "poll":
        return TaskChange({**free, "polls": task.polls + 1, "due_at": timing.next_poll(task, now)})
    if outcome.kind == "unknown":  # left to the provider's callback until the deadline
        until = timing.deadline(task, now) + timing.lease
        entry = {"attempt": task.attempts, "errorKind": UNKNOWN_SUBMISSION, "at": iso_utc(now)}
        entry["error"] = "answer lost (a crash or the network); waiting for the provider's callback"
        return TaskChange(
            {
                "lease_owner": None,
                "lease_until": until,  # nobody resumes it before then
                "deadline_at": until,
                "history": [*(task.history or []), entry],
            }
        )
    assert batch is not None, "a finishing outcome needs its batch"
    polled = task.polls + (1 if task.state == RUNNING else 0)
    if outcome.kind == "succeeded":
        observe(batch, failed=False)
        _finished(task, SUCCEEDED, now)
        values: dict[str, Any] = {
            **free,
            "state": SUCCEEDED,
            "polls": polled,
            "result_url": outcome.result_url,
            "finished_at": now,
            "error": None,
            "error_kind": None,
        }
        return TaskChange(values, capture=(task.hold_ref, task.credits))
    # an error: retry with backoff, or give up
    kind = outcome.error_kind or SERVER_ERROR
    entry = {"attempt": task.attempts, "errorKind": kind, "error": outcome.error, "at": iso_utc(now)}
    observe(batch, failed=True)
    metrics.ATTEMPTS.labels(outcome=kind).inc()
    if kind in RETRYABLE_KINDS and task.attempts <= MAX_RETRIES:
        retry_at = timing.retry_at(task, now)
        entry["retryAt"] = iso_utc(retry_at)
        return TaskChange(
            {
                **free,
                "state": QUEUED,
                "polls": polled,
                "due_at": retry_at,
                "provider_task_id": None,
                "deadline_at": None,
                "error": outcome.error,
                "error_kind": kind,
                "history": [*(task.history or []), entry],
            }
        )
    _finished(task, FAILED, now)
    values = {
        **free,
        "state": FAILED,
        "polls": polled,
        "finished_at": now,
        "error": outcome.error,
        "error_kind": kind,
        "history": [*(task.history or []), entry],
    }
    return TaskChange(values, release=task.hold_ref)


def _finished(task: StudioTask, state: str, now: datetime) -> None:
    metrics.TASKS_FINISHED.labels(state=state, model=task.model).inc()
    if state == SUCCEEDED:
        metrics.CREDITS_CONSUMED.labels(model=task.model).inc(task.credits)
        metrics.ATTEMPTS.labels(outcome="succeeded").inc()
    else:
        metrics.CREDITS_RETURNED.labels(model=task.model).inc(task.credits)
    if task.started_at is not None:
        metrics.PROCESSING_SECONDS.labels(model=task.model, resolution=task.resolution or "-").observe(
            (now - task.started_at).total_seconds()
        )


class OutcomeRecorder:
    """Writes the outcomes of one worker's tick (``owner`` names its leases)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        timing: Timing,
        provider: Provider,
        notifications: NotificationService,
        push: PushHub,
        owner: str,
    ) -> None:
        self.db = db
        self.clock = clock
        self.timing = timing
        self.provider = provider
        self.notifications = notifications
        self.push = push
        self.owner = owner

    async def record(self, outcomes: list[Outcome]) -> None:
        """Write every outcome of a tick in one transaction, a constant number of statements."""
        if not outcomes:
            return
        orphans: list[str] = []
        async with self.db.transaction() as session:
            batch_ids = sorted({o.claim.task.batch_id for o in outcomes if o.kind in ("succeeded", "error")})
            batches: dict[str, StudioBatch] = {}
            if batch_ids:  # lock order everywhere: batch rows, then task rows, then ledger accounts
                found = await session.scalars(
                    select(StudioBatch).where(StudioBatch.id.in_(batch_ids)).order_by(StudioBatch.id).with_for_update()
                )
                batches = {b.id: b for b in found}
            # still ours, in the state we saw? (a cancel, or a lease lost meanwhile, wins)
            current = dict(
                (
                    await session.execute(
                        select(StudioTask.id, StudioTask.state)
                        .where(
                            StudioTask.id.in_([o.claim.task.id for o in outcomes]),
                            StudioTask.lease_owner == self.owner,
                        )
                        .order_by(StudioTask.id)
                        .with_for_update()
                    )
                ).all()
            )
            writes: list[dict[str, Any]] = []
            captures: list[tuple[str, int]] = []
            releases: list[str] = []
            touched: set[str] = set()
            for outcome in outcomes:
                task = outcome.claim.task
                if current.get(task.id) != task.state:
                    if outcome.kind == "submitted" and outcome.provider_task_id:
                        orphans.append(outcome.provider_task_id)  # cancelled meanwhile: stop the render
                    continue
                change = apply_outcome(outcome, batches.get(task.batch_id), self.timing)
                writes.append({"id": task.id, **change.values})
                if change.capture is not None:
                    captures.append(change.capture)
                if change.release is not None:
                    releases.append(change.release)
                if outcome.kind != "poll":
                    touched.add(task.batch_id)
            by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in writes:
                by_keys.setdefault(tuple(sorted(row)), []).append(row)
            for rows in by_keys.values():
                await session.execute(update(StudioTask), rows)
            if captures or releases:
                settled = {r for r, _ in captures} | set(releases)
                users = {o.claim.task.user_id for o in outcomes if o.claim.task.hold_ref in settled}
                book = await Book(session, CREDITS).load(users, hold_references=[r for r, _ in captures] + releases)
                for reference, amount in captures:
                    book.capture(reference, amount, {"source": "studio"})
                for reference in releases:
                    book.release(reference, {"source": "studio"})
                await book.flush()
            now = self.clock()
            for batch in batches.values():
                batch.updated_at = now
            if touched:
                await self._progress(session, sorted(touched), batches, now)
        for provider_task_id in orphans:
            try:
                await self.provider.cancel(provider_task_id)
            except Exception:
                log.warning("studio_orphan_cancel_failed", provider_task_id=provider_task_id)

    async def _progress(
        self, session: AsyncSession, batch_ids: list[str], batches: dict[str, StudioBatch], now: datetime
    ) -> None:
        """Complete finished batches; push progress to their owners after commit."""
        rows = (
            await session.execute(
                select(StudioTask.batch_id, StudioTask.user_id, StudioTask.state, func.count())
                .where(StudioTask.batch_id.in_(batch_ids))
                .group_by(StudioTask.batch_id, StudioTask.user_id, StudioTask.state)
            )
        ).all()
        counts: dict[str, dict[str, int]] = {}
        owners: dict[str, str] = {}
        for batch_id, user_id, state, n in rows:
            counts.setdefault(batch_id, {})[state] = n
            owners[batch_id] = user_id
        done: list[NewNotification] = []
        messages: list[tuple[str, dict[str, Any]]] = []
        for batch_id in batch_ids:
            c = counts.get(batch_id, {})
            total = sum(c.values())
            finished = sum(c.get(s, 0) for s in FINAL_STATES)
            message = {
                "type": "studio.batch.progress",
                "batchId": batch_id,
                "totalCount": total,
                "finishedCount": finished,
                "counts": {s: c.get(s, 0) for s in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)},
            }
            messages.append((owners[batch_id], message))
            batch = batches.get(batch_id)
            if finished == total and batch is not None and batch.status not in (B_COMPLETED, B_CANCELLED):
                batch.status, batch.finished_at = B_COMPLETED, now
                ok_count, failed_count = c.get(SUCCEEDED, 0), c.get(FAILED, 0)
                done.append(
                    NewNotification(
                        user_id=batch.user_id,
                        type="studio.batch.completed",
                        title="🎬 批量生成完成",
                        content=f"批次 {batch_id} 已完成：成功 {ok_count} 个，失败 {failed_count} 个。",
                        data={"batchId": batch_id, "succeeded": ok_count, "failed": failed_count},
                    )
                )
        await self.notifications.send(session, done)

        async def push() -> None:
            await self.push.publish(messages)

        on_commit(session, push)
