"""Looking at batches: one in full (tasks, failure analysis), a page of them, the counts
the SSE stream sends, and the ZIP of results. Reads only."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.db import Database, paginate
from batchops.core.errors import ForbiddenError, NotFoundError
from batchops.identity.models import User
from batchops.studio.models import (
    B_CANCELLED,
    B_COMPLETED,
    B_PAUSED,
    B_QUEUED,
    B_RUNNING,
    CANCELLED,
    FAILED,
    RUNNING,
    SUBMITTING,
    SUCCEEDED,
    StudioBatch,
    StudioTask,
)
from batchops.studio.providers import RETRYABLE_KINDS
from batchops.studio.schemas import BatchDetailOut, BatchSummaryOut, Counts, Credits, FailureAnalysis, TaskOut


def public_state(state: str) -> str:
    """A submission under way is ``running`` to the user."""
    return RUNNING if state == SUBMITTING else state


async def owned_batch(session: AsyncSession, caller: User, batch_id: str, *, lock: bool = False) -> StudioBatch:
    """The batch, if the caller may see and act on it (its owner, or an admin)."""
    stmt = select(StudioBatch).where(StudioBatch.id == batch_id)
    if lock:
        stmt = stmt.with_for_update()
    batch = await session.scalar(stmt)
    if batch is None:
        raise NotFoundError("Batch not found")
    if batch.user_id != caller.id and not caller.is_admin:
        raise ForbiddenError("You may only act on your own batches")
    return batch


def summary(batch: StudioBatch, states: list[tuple[str, int]]) -> BatchSummaryOut:
    """A batch's counts and credits from its tasks' (state, credits)."""
    counts = Counts()
    held = spent = returned = 0
    for state, credits in states:
        public = public_state(state)
        setattr(counts, public, getattr(counts, public) + 1)
        if state == SUCCEEDED:
            spent += credits
        elif state in (FAILED, CANCELLED):
            returned += credits
        else:
            held += credits
    status = batch.status
    if status == B_QUEUED and counts.queued < batch.total_count:
        status = B_RUNNING
    return BatchSummaryOut(
        batch_id=batch.id,
        user_id=batch.user_id,
        status=status,
        generation_type=batch.generation_type,
        plan=batch.plan,
        total_count=batch.total_count,
        counts=counts,
        credits=Credits(held=held, spent=spent, returned=returned),
        concurrency_limit=batch.concurrency_limit,
        max_concurrency=batch.max_concurrency,
        degradations=batch.degradations,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
    )


def detail(batch: StudioBatch, tasks: list[StudioTask]) -> BatchDetailOut:
    counted = summary(batch, [(t.state, t.credits) for t in tasks])
    failed = [t for t in tasks if t.state == FAILED]
    succeeded = sum(1 for t in tasks if t.state == SUCCEEDED)
    kinds = Counter(t.error_kind or "unknown" for t in failed)
    analysis = FailureAnalysis(
        failed_count=len(failed),
        by_kind=dict(kinds),
        retryable_count=sum(1 for t in failed if t.error_kind in RETRYABLE_KINDS),
        retried_attempts=sum(len(t.history or []) for t in tasks),
        failure_rate=round(len(failed) / (len(failed) + succeeded), 4) if failed or succeeded else 0.0,
    )
    return BatchDetailOut(
        **counted.model_dump(),
        tasks=[
            TaskOut(
                task_id=t.id,
                index=t.index,
                generation_type=t.generation_type,
                model=t.model,
                resolution=t.resolution,
                duration=t.duration,
                prompt=t.prompt,
                credits=t.credits,
                status=public_state(t.state),
                attempts=t.attempts,
                error=t.error if t.state != SUCCEEDED else None,
                error_kind=t.error_kind if t.state != SUCCEEDED else None,
                started_at=t.started_at,
                finished_at=t.finished_at,
                result_url=t.result_url,
            )
            for t in tasks
        ],
        failure_analysis=analysis,
    )


class BatchViews:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, caller: User, batch_id: str) -> BatchDetailOut:
        async with self.db.transaction() as session:
            batch = await owned_batch(session, caller, batch_id)
            tasks = list(
                await session.scalars(
                    select(StudioTask).where(StudioTask.batch_id == batch_id).order_by(StudioTask.index)
                )
            )
        return detail(batch, tasks)

    async def list(
        self, caller: User, *, user_id: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[BatchSummaryOut], int]:
        owner = user_id if caller.is_admin else caller.id
        where = []
        if owner:
            where.append(StudioBatch.user_id == owner)
        if status in (B_PAUSED, B_COMPLETED, B_CANCELLED):
            where.append(StudioBatch.status == status)
        elif status in (B_QUEUED, B_RUNNING):
            where.append(StudioBatch.status.in_((B_QUEUED, B_RUNNING)))
        query = select(StudioBatch).where(*where).order_by(StudioBatch.created_at.desc(), StudioBatch.id)
        async with self.db.transaction() as session:  # the page and its tasks' counts agree
            batches, total = await paginate(session, query, offset=offset, limit=limit)
            states: dict[str, list[tuple[str, int]]] = {b.id: [] for b in batches}
            if batches:
                rows = await session.execute(
                    select(StudioTask.batch_id, StudioTask.state, StudioTask.credits, func.count())
                    .where(StudioTask.batch_id.in_(list(states)))
                    .group_by(StudioTask.batch_id, StudioTask.state, StudioTask.credits)
                )
                for batch_id, state, credits, n in rows:
                    states[batch_id] += [(state, credits)] * int(n)
        items = [summary(b, states[b.id]) for b in batches]
        if status in (B_QUEUED, B_RUNNING):
            items = [i for i in items if i.status == status]
        return items, total

    async def snapshot(self, caller: User, batch_id: str) -> BatchSummaryOut:
        """Counts and credits only (the SSE stream): two small queries."""
        async with self.db.transaction() as session:
            batch = await owned_batch(session, caller, batch_id)
            query = select(StudioTask.state, StudioTask.credits).where(StudioTask.batch_id == batch_id)
            rows = (await session.execute(query)).all()
        return summary(batch, [(s, c) for s, c in rows])

    async def download(self, caller: User, batch_id: str) -> bytes:
        """A ZIP: ``manifest.json`` (the batch and every task), ``results.csv`` and one
        ``.url`` shortcut per generated file (the provider keeps the media)."""
        view = await self.get(caller, batch_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            manifest = view.model_dump(mode="json", by_alias=True)
            archive.writestr("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2))
            table = io.StringIO()
            writer = csv.writer(table)
            writer.writerow(["index", "taskId", "model", "resolution", "duration", "status", "resultUrl", "error"])
            for t in view.tasks:
                writer.writerow(
                    [t.index, t.task_id, t.model, t.resolution, t.duration, t.status, t.result_url, t.error]
                )
                if t.result_url:
                    archive.writestr(
                        f"results/{t.index:04d}_{t.task_id}.url", f"[InternetShortcut]\nURL={t.result_url}\n"
                    )
            archive.writestr("results.csv", table.getvalue())
        return buffer.getvalue()
