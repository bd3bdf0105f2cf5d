"""The studio task engine: the database is the queue.

One ``tick`` (a PeriodicJob of every worker process):

1. **admit** queued tasks whose time has come, and 2. **claim** due polls and
   orphaned submissions (:mod:`batchops.studio.admission`), each with a lease;
3. **step** every claim concurrently, without any transaction open: submit or
   poll (:mod:`batchops.studio.provider_calls`);
4. **record** the outcomes in one transaction (:mod:`batchops.studio.outcomes`):
   success captures the task's hold, a final failure releases it, a retryable
   error requeues with backoff, the batch's adaptive concurrency moves
   (:mod:`batchops.studio.degradation`), finished batches complete.

Nothing waits in process memory between ticks: a task between steps is a row
with a due time (:mod:`batchops.studio.timing`), judged by the runtime's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import and_, func, or_, select

from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database, new_id
from batchops.core.push import PushHub
from batchops.notifications.service import NotificationService
from batchops.studio.admission import Admission
from batchops.studio.models import B_PAUSED, FINAL_STATES, QUEUED, RUNNING, SUBMITTING, StudioBatch, StudioTask
from batchops.studio.outcomes import OutcomeRecorder
from batchops.studio.provider_calls import ProviderCalls
from batchops.studio.providers import Provider
from batchops.studio.timing import Timing


class Engine:
    def __init__(
        self,
        db: Database,
        provider: Provider,
        notifications: NotificationService,
        push: PushHub,
        *,
        clock: Clock = system_clock,
        time_scale: float = 1.0,
        lease_seconds: float = 60.0,
        max_claim: int = 200,
    ) -> None:
        self.db = db
        self.clock = clock
        self.timing = Timing(time_scale, lease_seconds)
        owner = new_id("w")[:40]  # this worker's name on the leases it takes
        admission = Admission(db, clock, self.timing, owner, max_claim=max_claim)
        self.admit = admission.admit
        self.claim_due = admission.claim_due
        self.step = ProviderCalls(provider, clock).step
        self.record = OutcomeRecorder(db, clock, self.timing, provider, notifications, push, owner).record

    async def tick(self) -> int:
        """Admit, claim, call the provider, record; once more at once if slots were freed
        (admitting only: the freed slots are filled without waiting for the next tick)."""
        handled = 0
        for again in (False, True):
            claims = await self.admit()
            if not again:
                claims += await self.claim_due()
            if not claims:
                break
            outcomes = await asyncio.gather(*(self.step(c) for c in claims))
            await self.record(list(outcomes))
            handled += len(claims)
            if not any(o.kind in ("succeeded", "error") for o in outcomes):
                break
        return handled

    async def run_until_idle(
        self,
        *,
        limit_seconds: float = 60.0,
        max_sleep: float = 0.05,
        advance: Callable[[float], object] | None = None,
    ) -> None:
        """Tick until no task of any batch is left unfinished (tests, bench).

        Between ticks it waits until the next task is due: it sleeps (at most ``max_sleep``,
        so work submitted meanwhile is seen; no busy-waiting, and no latency added to a due
        poll), or, given ``advance`` (a ManualClock's), moves the clock there at once.
        ``limit_seconds`` bounds the real time it may take.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_seconds
        while loop.time() < end:
            if not await self.tick():
                left, wait = await self.idle_hint()
                if not left:
                    return
                pause = max(wait, 0.001)  # a lease ends once the clock is past it
                if advance is not None:
                    advance(pause)
                else:
                    await asyncio.sleep(min(pause, max_sleep))
        raise TimeoutError("studio tasks still unfinished")

    async def idle_hint(self) -> tuple[int, float]:
        """Unfinished tasks (queued ones of paused batches aside), and seconds until one is due.

        A ``submitting`` task counts as due when its lease runs out (its worker died). A queued
        task already past its due time is not counted: asked after a tick that admitted nothing,
        it waits for room, which only a task ending makes (and the tick that records the end
        admits at once); counting it would have the caller tick without pause until then."""
        now = self.clock()
        async with self.db.read() as session:
            left, next_due, next_lease = (
                await session.execute(
                    select(
                        func.count(),
                        func.min(StudioTask.due_at).filter(
                            or_(StudioTask.state == RUNNING, and_(StudioTask.state == QUEUED, StudioTask.due_at > now))
                        ),
                        func.min(StudioTask.lease_until).filter(StudioTask.state == SUBMITTING),
                    )
                    .select_from(StudioTask)
                    .join(StudioBatch, StudioBatch.id == StudioTask.batch_id)
                    .where(
                        StudioTask.state.not_in(FINAL_STATES),
                        or_(StudioTask.state != QUEUED, StudioBatch.status != B_PAUSED),
                    )
                )
            ).one()
        moments = [m for m in (next_due, next_lease) if m is not None]
        wait = (min(moments) - now).total_seconds() if moments else 0.0
        return int(left or 0), wait
