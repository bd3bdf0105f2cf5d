"""Studio business rules: submit a batch (credits held per task), look at it,
pause / resume / cancel / retry the failed, download the results.

The work itself is done by :mod:`batchops.studio.engine` in the worker processes;
this module only writes rows the engine picks up.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CREDITS, Book
from batchops.core.db import Database, new_id, on_commit, utcnow
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from batchops.core.push import PushHub
from batchops.identity.models import User
from batchops.studio.config import (
    DEFAULT_IMAGE_MODEL,
    IMAGE,
    get_batch_config,
    get_image_price,
    get_polling_config,
    get_video_model_info,
    sort_key,
)
from batchops.studio.models import (
    B_CANCELLED,
    B_COMPLETED,
    B_PAUSED,
    B_QUEUED,
    B_RUNNING,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUBMITTING,
    SUCCEEDED,
    StudioBatch,
    StudioTask,
)
from batchops.studio.providers import RETRYABLE_KINDS, Provider, callback_signature, expected_render_seconds
from batchops.studio.schemas import (
    BatchAccepted,
    BatchActionOut,
    BatchDetailOut,
    BatchGenerateIn,
    BatchSummaryOut,
    Counts,
    Credits,
    FailureAnalysis,
    TaskOut,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ResolvedRow:
    model: str
    resolution: str | None
    duration: int | None
    credits: int


def hold_reference(task_id: str) -> str:
    return f"studio:{task_id}"


def _public_state(state: str) -> str:
    return RUNNING if state == SUBMITTING else state


class StudioService:
    def __init__(
        self, db: Database, provider: Provider, push: PushHub, *, callback_key: str = "", time_scale: float = 1.0
    ) -> None:
        self.db = db
        self.provider = provider
        self.push = push
        self.callback_key = callback_key
        self.time_scale = time_scale

    # --- provider callbacks ---------------------------------------------------------------
    async def provider_callback(self, request_id: str, signature: str, provider_task_id: str) -> str:
        """KIE posted a task to the callBackUrl we gave it for ``request_id``.

        A task whose createTask answer was lost in a crash learns its provider id here and
        runs on (polled at once); a running task is polled at once (its render ended).
        Anything else (unknown id, a live submission that will record itself, a finished
        or cancelled task) is left alone. Returns what was done.
        """
        if not self.callback_key or not hmac.compare_digest(
            signature, callback_signature(self.callback_key, request_id)
        ):
            raise ForbiddenError("Bad callback signature")
        now = utcnow()
        async with self.db.transaction() as session:
            task = await session.scalar(select(StudioTask).where(StudioTask.request_id == request_id).with_for_update())
            if task is None:
                return "ignored"
            if task.state == SUBMITTING and task.provider_task_id is None and task.lease_owner is None:
                timeout = timedelta(seconds=get_polling_config(task.resolution).timeout_seconds * self.time_scale)
                task.state, task.provider_task_id = RUNNING, provider_task_id
                task.submitted_at, task.deadline_at, task.due_at = now, now + timeout, now
                task.lease_until = None
                log.info("studio_submission_reconciled", task_id=task.id, request_id=request_id)
                return "reconciled"
            if task.state == RUNNING and task.provider_task_id == provider_task_id and task.lease_owner is None:
                task.due_at = now
                return "poll"
        return "ignored"

    # --- submit ---------------------------------------------------------------------------
    def resolve_rows(self, body: BatchGenerateIn) -> list[ResolvedRow]:
        """Each row's model / resolution / duration (falling back to the defaults) and price."""
        resolved: list[ResolvedRow] = []
        problems: list[dict[str, Any]] = []
        first: str | None = None
        for i, row in enumerate(body.rows):
            try:
                if body.generation_type == IMAGE:
                    model = row.model or body.default_model or DEFAULT_IMAGE_MODEL
                    resolved.append(ResolvedRow(model, None, None, get_image_price(model)))
                else:
                    info = get_video_model_info(
                        row.model or body.default_model or "sora-2",
                        row.resolution or body.default_resolution or "720p",
                        row.duration or body.default_duration or 10,
                    )
                    resolved.append(ResolvedRow(info.model, info.resolution, info.duration, info.credits))
            except BadRequestError as exc:
                first = first or f"rows[{i}]: {exc.message}"
                problems.append({"field": f"rows.{i}", "message": exc.message})
        if problems:
            raise BadRequestError(first or "Invalid rows", details=problems)
        return resolved

    async def submit(self, user: User, body: BatchGenerateIn) -> BatchAccepted:
        cfg = get_batch_config(user.plan)
        if len(body.rows) > cfg.batch_size:
            raise BadRequestError(
                f"Batch size {len(body.rows)} exceeds the {cfg.plan} plan's limit of {cfg.batch_size}",
                details=[{"field": "rows", "max": cfg.batch_size, "given": len(body.rows), "plan": cfg.plan}],
            )
        resolved = self.resolve_rows(body)
        now = utcnow()
        batch_id = new_id("batch")
        tasks: list[dict[str, Any]] = []
        for i, (row, r) in enumerate(zip(body.rows, resolved, strict=True)):
            task_id = new_id("task")
            tasks.append(
                {
                    "id": task_id,
                    "batch_id": batch_id,
                    "user_id": user.id,
                    "index": i,
                    "generation_type": body.generation_type,
                    "model": r.model,
                    "resolution": r.resolution,
                    "duration": r.duration,
                    "prompt": row.prompt,
                    "image_url": row.image_url,
                    "credits": r.credits,
                    "hold_ref": hold_reference(task_id),
                    "sort_key": sort_key(
                        r.resolution,
                        r.duration,
                        expected_render_seconds(body.generation_type, r.model, r.resolution, r.duration),
                    ),
                    "state": QUEUED,
                    "attempts": 0,
                    "due_at": now,
                    "polls": 0,
                    "history": [],
                    "created_at": now,
                }
            )
        total = sum(r.credits for r in resolved)
        async with self.db.transaction() as session:
            session.add(
                StudioBatch(
                    id=batch_id,
                    user_id=user.id,
                    plan=cfg.plan,
                    generation_type=body.generation_type,
                    status=B_QUEUED,
                    total_count=len(tasks),
                    credits_held=total,
                    concurrency_limit=cfg.concurrency,
                    max_concurrency=cfg.concurrency,
                    recent_outcomes=[],
                    degradations=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            await session.flush()
            await session.execute(insert(StudioTask), tasks)
            await self._hold_all(session, user.id, [(t["hold_ref"], t["credits"]) for t in tasks])
        log.info("studio_batch_submitted", batch_id=batch_id, tasks=len(tasks), credits=total)
        return BatchAccepted(
            batch_id=batch_id,
            status=B_QUEUED,
            total_count=len(tasks),
            credits_held=total,
            plan=cfg.plan,
            concurrency=cfg.concurrency,
            batch_size=cfg.batch_size,
        )

    async def _hold_all(self, session: AsyncSession, user_id: str, holds: list[tuple[str, int]]) -> None:
        """One hold per task, all or none: the whole batch's total is checked first (403 with the shortfall)."""
        book = await Book(session, CREDITS).load([user_id], hold_references=[ref for ref, _ in holds])
        needed = sum(amount for _, amount in holds)
        available = book.balance(user_id).available
        if needed > available:
            from batchops.billing.ledger import InsufficientBalance

            raise InsufficientBalance(CREDITS, needed, available)
        for ref, amount in holds:
            book.hold(user_id, amount, ref, {"source": "studio"})
        await book.flush()

    async def _release_all(self, session: AsyncSession, user_id: str, refs: list[str]) -> None:
        if not refs:
            return
        book = await Book(session, CREDITS).load([user_id], hold_references=refs)
        for ref in refs:
            book.release(ref)
        await book.flush()

    # --- read -------------------------------------------------------------------------------
    async def _batch(self, session: AsyncSession, caller: User, batch_id: str, *, lock: bool = False) -> StudioBatch:
        stmt = select(StudioBatch).where(StudioBatch.id == batch_id)
        if lock:
            stmt = stmt.with_for_update()
        batch = await session.scalar(stmt)
        if batch is None:
            raise NotFoundError("Batch not found")
        if batch.user_id != caller.id and not caller.is_admin:
            raise ForbiddenError("You may only act on your own batches")
        return batch

    async def get(self, caller: User, batch_id: str) -> BatchDetailOut:
        async with self.db.transaction() as session:
            batch = await self._batch(session, caller, batch_id)
            tasks = list(
                await session.scalars(
                    select(StudioTask).where(StudioTask.batch_id == batch_id).order_by(StudioTask.index)
                )
            )
        return self.detail(batch, tasks)

    def detail(self, batch: StudioBatch, tasks: list[StudioTask]) -> BatchDetailOut:
        summary = self.summary(batch, [(t.state, t.credits) for t in tasks])
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
            **summary.model_dump(),
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
                    status=_public_state(t.state),
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

    def summary(self, batch: StudioBatch, states: list[tuple[str, int]]) -> BatchSummaryOut:
        counts = Counts()
        held = spent = returned = 0
        for state, credits in states:
            public = _public_state(state)
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
        async with self.db.transaction() as session:
            total = await session.scalar(select(func.count()).select_from(StudioBatch).where(*where))
            batches = list(
                await session.scalars(
                    select(StudioBatch)
                    .where(*where)
                    .order_by(StudioBatch.created_at.desc(), StudioBatch.id)
                    .offset(offset)
                    .limit(limit)
                )
            )
            states: dict[str, list[tuple[str, int]]] = {b.id: [] for b in batches}
            if batches:
                rows = await session.execute(
                    select(StudioTask.batch_id, StudioTask.state, StudioTask.credits, func.count())
                    .where(StudioTask.batch_id.in_(list(states)))
                    .group_by(StudioTask.batch_id, StudioTask.state, StudioTask.credits)
                )
                for batch_id, state, credits, n in rows:
                    states[batch_id] += [(state, credits)] * int(n)
        items = [self.summary(b, states[b.id]) for b in batches]
        if status in (B_QUEUED, B_RUNNING):
            items = [i for i in items if i.status == status]
        return items, int(total or 0)

    async def snapshot(self, caller: User, batch_id: str) -> BatchSummaryOut:
        """Counts and credits only (the SSE stream): two small queries."""
        async with self.db.transaction() as session:
            batch = await self._batch(session, caller, batch_id)
            query = select(StudioTask.state, StudioTask.credits).where(StudioTask.batch_id == batch_id)
            rows = (await session.execute(query)).all()
        return self.summary(batch, [(s, c) for s, c in rows])

    # --- control ---------------------------------------------------------------------------
    async def pause(self, caller: User, batch_id: str) -> BatchActionOut:
        return await self._switch(caller, batch_id, (B_QUEUED, B_RUNNING), B_PAUSED, "Batch cannot be paused")

    async def resume(self, caller: User, batch_id: str) -> BatchActionOut:
        return await self._switch(caller, batch_id, (B_PAUSED,), B_RUNNING, "Batch is not paused")

    async def _switch(
        self, caller: User, batch_id: str, allowed: tuple[str, ...], to: str, refusal: str
    ) -> BatchActionOut:
        """Pause or resume: only the batch row changes; its queued tasks are counted for the answer."""
        async with self.db.transaction() as session:
            batch = await self._batch(session, caller, batch_id, lock=True)
            if batch.status not in allowed:
                raise ConflictError(f"{refusal} (status: {batch.status})")
            batch.status, batch.updated_at = to, utcnow()
            waiting = await session.scalar(
                select(func.count())
                .select_from(StudioTask)
                .where(StudioTask.batch_id == batch_id, StudioTask.state == QUEUED)
            )
        return BatchActionOut(batch_id=batch_id, status=to, affected_count=int(waiting or 0))

    async def cancel(self, caller: User, batch_id: str) -> BatchActionOut:
        """Cancel everything not finished and return its credits (running renders are stopped)."""
        async with self.db.transaction() as session:
            batch = await self._batch(session, caller, batch_id, lock=True)
            if batch.status in (B_COMPLETED, B_CANCELLED):
                raise ConflictError(f"Batch is already {batch.status}")
            open_tasks = (
                await session.execute(
                    select(StudioTask.id, StudioTask.hold_ref, StudioTask.credits, StudioTask.provider_task_id)
                    .where(StudioTask.batch_id == batch_id, StudioTask.state.not_in(FINAL_STATES))
                    .with_for_update()
                )
            ).all()
            now = utcnow()
            if open_tasks:
                await session.execute(
                    update(StudioTask)
                    .where(StudioTask.id.in_([t.id for t in open_tasks]))
                    .values(state=CANCELLED, finished_at=now, lease_owner=None, lease_until=None)
                )
                await self._release_all(session, batch.user_id, [t.hold_ref for t in open_tasks])
            batch.status, batch.finished_at, batch.updated_at = B_CANCELLED, now, now
            running = [t.provider_task_id for t in open_tasks if t.provider_task_id]

            async def stop_renders() -> None:
                for provider_task_id in running:
                    await self.provider.cancel(provider_task_id)

            on_commit(session, stop_renders)
        returned = sum(t.credits for t in open_tasks)
        log.info("studio_batch_cancelled", batch_id=batch_id, tasks=len(open_tasks), credits=returned)
        return BatchActionOut(
            batch_id=batch_id, status=B_CANCELLED, affected_count=len(open_tasks), credits_returned=returned
        )

    async def retry_failed(self, caller: User, batch_id: str) -> BatchActionOut:
        """Queue the finally failed tasks again, holding their credits anew."""
        async with self.db.transaction() as session:
            batch = await self._batch(session, caller, batch_id, lock=True)
            if batch.status == B_CANCELLED:
                raise ConflictError("Batch is cancelled")
            failed = (
                await session.execute(
                    select(StudioTask.id, StudioTask.credits)
                    .where(StudioTask.batch_id == batch_id, StudioTask.state == FAILED)
                    .with_for_update()
                )
            ).all()
            if not failed:
                return BatchActionOut(batch_id=batch_id, status=batch.status, affected_count=0)
            now = utcnow()
            suffix = new_id("r")[-8:]
            refs = {t.id: f"{hold_reference(t.id)}:retry-{suffix}" for t in failed}
            await session.execute(
                update(StudioTask),
                [
                    {
                        "id": t.id,
                        "state": QUEUED,
                        "attempts": 0,
                        "due_at": now,
                        "hold_ref": refs[t.id],
                        "error": None,
                        "error_kind": None,
                        "finished_at": None,
                        "provider_task_id": None,
                        "request_id": None,
                        "deadline_at": None,  # the first run's: a resumed retry would be judged by it
                    }
                    for t in failed
                ],
            )
            await self._hold_all(session, batch.user_id, [(refs[t.id], t.credits) for t in failed])
            held = sum(t.credits for t in failed)
            if batch.status != B_PAUSED:
                batch.status = B_RUNNING
            batch.credits_held += held
            batch.finished_at, batch.updated_at = None, now
            status = batch.status
        return BatchActionOut(batch_id=batch_id, status=status, affected_count=len(failed), credits_held=held)

    # --- download ------------------------------------------------------------------------------
    async def download(self, caller: User, batch_id: str) -> bytes:
        """A ZIP: ``manifest.json`` (the batch and every task), ``results.csv`` and one
        ``.url`` shortcut per generated file (the provider keeps the media)."""
        detail = await self.get(caller, batch_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            manifest = detail.model_dump(mode="json", by_alias=True)
            archive.writestr("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2))
            table = io.StringIO()
            writer = csv.writer(table)
            writer.writerow(["index", "taskId", "model", "resolution", "duration", "status", "resultUrl", "error"])
            for t in detail.tasks:
                writer.writerow(
                    [t.index, t.task_id, t.model, t.resolution, t.duration, t.status, t.result_url, t.error]
                )
                if t.result_url:
                    archive.writestr(
                        f"results/{t.index:04d}_{t.task_id}.url", f"[InternetShortcut]\nURL={t.result_url}\n"
                    )
            archive.writestr("results.csv", table.getvalue())
        return buffer.getvalue()
