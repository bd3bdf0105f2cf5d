"""Steering a batch: pause and resume (its queued tasks wait or go on; running ones finish),
cancel (everything unfinished stops and its credits come back) and retry the failed
(queued again, their credits held anew)."""

from __future__ import annotations

import structlog
from sqlalchemy import func, select, update

from batchops.core.clock import Clock
from batchops.core.db import Database, new_id, on_commit
from batchops.core.errors import ConflictError
from batchops.identity.models import User
from batchops.studio.holds import hold_all, hold_reference, release_all
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
    StudioTask,
)
from batchops.studio.providers import Provider
from batchops.studio.schemas import BatchActionOut
from batchops.studio.views import owned_batch

log = structlog.get_logger(__name__)


class BatchControl:
    def __init__(self, db: Database, clock: Clock, provider: Provider) -> None:
        self.db = db
        self.clock = clock
        self.provider = provider  # stops the renders of a cancelled batch

    async def pause(self, caller: User, batch_id: str) -> BatchActionOut:
        return await self._switch(caller, batch_id, (B_QUEUED, B_RUNNING), B_PAUSED, "Batch cannot be paused")

    async def resume(self, caller: User, batch_id: str) -> BatchActionOut:
        return await self._switch(caller, batch_id, (B_PAUSED,), B_RUNNING, "Batch is not paused")

    async def _switch(
        self, caller: User, batch_id: str, allowed: tuple[str, ...], to: str, refusal: str
    ) -> BatchActionOut:
        """Pause or resume: only the batch row changes; its queued tasks are counted for the answer."""
        async with self.db.transaction() as session:
            batch = await owned_batch(session, caller, batch_id, lock=True)
            if batch.status not in allowed:
                raise ConflictError(f"{refusal} (status: {batch.status})")
            batch.status, batch.updated_at = to, self.clock()
            waiting = await session.scalar(
                select(func.count())
                .select_from(StudioTask)
                .where(StudioTask.batch_id == batch_id, StudioTask.state == QUEUED)
            )
        return BatchActionOut(batch_id=batch_id, status=to, affected_count=int(waiting or 0))

    async def cancel(self, caller: User, batch_id: str) -> BatchActionOut:
        """Cancel everything not finished and return its credits (running renders are stopped)."""
        async with self.db.transaction() as session:
            batch = await owned_batch(session, caller, batch_id, lock=True)
            if batch.status in (B_COMPLETED, B_CANCELLED):
                raise ConflictError(f"Batch is already {batch.status}")
            open_tasks = (
                await session.execute(
                    select(StudioTask.id, StudioTask.hold_ref, StudioTask.credits, StudioTask.provider_task_id)
                    .where(StudioTask.batch_id == batch_id, StudioTask.state.not_in(FINAL_STATES))
                    .with_for_update()
                )
            ).all()
            now = self.clock()
            if open_tasks:
                await session.execute(
                    update(StudioTask)
                    .where(StudioTask.id.in_([t.id for t in open_tasks]))
                    .values(state=CANCELLED, finished_at=now, lease_owner=None, lease_until=None)
                )
                await release_all(session, batch.user_id, [t.hold_ref for t in open_tasks])
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
            batch = await owned_batch(session, caller, batch_id, lock=True)
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
            now = self.clock()
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
            await hold_all(session, batch.user_id, [(refs[t.id], t.credits) for t in failed])
            held = sum(t.credits for t in failed)
            if batch.status != B_PAUSED:
                batch.status = B_RUNNING
            batch.credits_held += held
            batch.finished_at, batch.updated_at = None, now
            status = batch.status
        return BatchActionOut(batch_id=batch_id, status=status, affected_count=len(failed), credits_held=held)
