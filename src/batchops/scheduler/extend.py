"""Extend: push allocations' ends later, unless that runs into a reserved window; with
billing enforced, the hold grows by the added time's cost."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import Book
from batchops.billing.service import allocation_hold
from batchops.core.batch import BatchMode, BatchResult, LogLines, counted
from batchops.core.clock import iso_utc
from batchops.core.errors import BadRequestError, ConflictError
from batchops.core.outbox import enqueue
from batchops.identity.models import User
from batchops.scheduler import texts
from batchops.scheduler.context import DOMAIN, Context, ensure_actor_may_act_for
from batchops.scheduler.loading import check_active, load_allocations, reserved_windows
from batchops.scheduler.models import Allocation
from batchops.scheduler.outcomes import Extended, LoadedAllocation
from batchops.scheduler.placement import Window


class ExtendWork:
    def __init__(self, session: AsyncSession, ctx: Context, actor: User | None, additional_minutes: int) -> None:
        self.session = session
        self.ctx = ctx
        self.actor = actor
        self.minutes = additional_minutes
        self.loaded: dict[str, LoadedAllocation] = {}
        self.extended: dict[str, datetime] = {}
        self.windows: dict[str, list[Window]] = {}
        self.book: Book | None = None
        self.now = ctx.clock()

    async def load(self, ids: Sequence[str]) -> ExtendWork:
        self.loaded = await load_allocations(self.session, ids)
        self.now = self.ctx.clock()  # once their rows are locked (expired or not is judged at that time)
        if self.loaded:
            latest = max(la.allocation.expires_at for la in self.loaded.values())
            horizon = latest + timedelta(minutes=self.minutes * len(ids))
            self.windows = await reserved_windows(
                self.session, self.now, horizon, [la.device.id for la in self.loaded.values()]
            )
            self.book = await self.ctx.holds_book(
                self.session,
                [la.allocation.user_id for la in self.loaded.values()],
                [allocation_hold(i) for i in self.loaded],
            )
        return self

    async def handle(self, allocation_id: str) -> Extended:
        loaded = check_active(self.loaded.get(allocation_id))
        allocation = loaded.allocation
        ensure_actor_may_act_for(self.actor, allocation.user_id)
        old = self.extended.get(allocation.id, allocation.expires_at)
        if old <= self.now:
            raise BadRequestError("Allocation is not active (status: expired)")
        new = old + timedelta(minutes=self.minutes)
        taken = next((w for w in self.windows.get(loaded.device.id, ()) if w.overlaps(old, new)), None)
        if taken is not None:
            raise ConflictError(f"Device {loaded.device.name} is reserved from {iso_utc(taken.start)}")
        if self.book is not None:
            self.book.add_to_hold(allocation_hold(allocation.id), self.ctx.estimate(loaded.device, self.minutes))
        self.extended[allocation.id] = new
        return Extended(loaded, old, new, self.minutes)

    async def flush(self, results: list[Extended]) -> None:
        if not results:
            return
        final = {r.id: r.new_expires_at for r in results}  # a repeated id extends twice, written once
        # ORM bulk UPDATE by primary key: one executemany; re-arms the expiry reminder
        await self.session.execute(
            update(Allocation),
            [{"id": i, "expires_at": expires, "reminder_sent_at": None} for i, expires in final.items()],
        )
        if self.book is not None:
            await self.book.flush()
        await enqueue(self.session, texts.extended_events(results, iso_utc(self.now)))
        await self.ctx.notifications.send(self.session, texts.extended_notes(results))


class Extender:
    """The extend operation, batch and single."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def batch_extend(
        self, actor: User, ids: list[str], minutes: int, mode: BatchMode
    ) -> BatchResult[str, Extended]:
        async def prepare(session: AsyncSession) -> ExtendWork:
            return await ExtendWork(session, self.ctx, actor, minutes).load(ids)

        return await self.ctx.batch.run(
            domain=DOMAIN,
            operation="extend",
            actor_id=actor.id,
            items=ids,
            prepare=prepare,
            mode=mode,
            audit_detail={"additionalMinutes": minutes},
            log_lines=LogLines(f"🔄 Batch extending {len(ids)} allocations by {minutes} minutes...", counted("extend")),
        )

    async def extend(self, actor: User, allocation_id: str, minutes: int) -> Extended:
        async def unit(session: AsyncSession) -> Extended:
            work = await ExtendWork(session, self.ctx, actor, minutes).load([allocation_id])
            result = await work.handle(allocation_id)
            await work.flush([result])
            return result

        return await self.ctx.db.run(unit)
