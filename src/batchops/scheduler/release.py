"""Release: end allocations (on request, at expiry, by the daily policy), free their
devices and hand billing the usage facts of each, all in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.usage import UsageFact
from batchops.core.batch import BatchMode, BatchResult, LogLines, counted
from batchops.core.clock import iso_utc
from batchops.core.errors import NotFoundError
from batchops.core.outbox import enqueue
from batchops.identity.models import User
from batchops.scheduler import texts
from batchops.scheduler.context import DEVICES_FREED, DOMAIN, Context, ensure_actor_may_act_for
from batchops.scheduler.loading import ALLOCATIONS, DEVICES, check_active, load_allocations
from batchops.scheduler.models import ACTIVE, ALLOCATED, AVAILABLE, RELEASED, Allocation
from batchops.scheduler.outcomes import LoadedAllocation, Released

log = structlog.get_logger(__name__)

# Built once (hot): every release of a batch ends at one instant, for one reason.
RELEASE_ALLOCATIONS = (
    update(ALLOCATIONS)
    .where(ALLOCATIONS.c.id.in_(bindparam("ids", expanding=True)))
    .values(status=RELEASED, released_at=bindparam("now"), release_reason=bindparam("reason"))
)
FREE_DEVICES = (
    update(DEVICES)
    .where(DEVICES.c.id.in_(bindparam("ids", expanding=True)), DEVICES.c.status == ALLOCATED)
    .values(status=AVAILABLE, updated_at=bindparam("now"))
)


def usage_fact(r: Released) -> UsageFact:
    a, d = r.loaded.allocation, r.loaded.device
    return UsageFact(
        allocation_id=a.id,
        user_id=a.user_id,
        device_id=d.id,
        cpu_cores=d.cpu_cores,
        memory_mb=d.memory_mb,
        storage_mb=d.storage_mb,
        allocated_at=a.allocated_at,
        released_at=r.released_at,
        duration_seconds=r.duration_seconds,
    )


class ReleaseWork:
    """One batch's releases: all at one instant, for one reason."""

    def __init__(self, session: AsyncSession, ctx: Context, actor: User | None, reason: str | None) -> None:
        self.session = session
        self.ctx = ctx
        self.actor = actor
        self.reason = reason
        self.loaded: dict[str, LoadedAllocation] = {}
        self.released: set[str] = set()
        self.now = ctx.clock()

    async def load(self, ids: Sequence[str]) -> ReleaseWork:
        self.loaded = await load_allocations(self.session, ids)
        self.now = self.ctx.clock()  # once their rows are locked: a period never ends before it starts
        return self

    async def handle(self, allocation_id: str) -> Released:
        loaded = check_active(self.loaded.get(allocation_id), RELEASED if allocation_id in self.released else None)
        ensure_actor_may_act_for(self.actor, loaded.allocation.user_id)
        self.released.add(allocation_id)  # a repeated id in the same batch sees "released"
        seconds = max(0, int((self.now - loaded.allocation.allocated_at).total_seconds()))
        return Released(loaded, self.now, seconds, self.reason)

    async def flush(self, results: list[Released]) -> None:
        """The allocations, their devices, the usage facts, the events and notifications:
        one statement each, whatever the number of releases."""
        if not results:
            return
        session = self.session
        ids = [r.id for r in results]
        await session.execute(RELEASE_ALLOCATIONS, {"ids": ids, "now": self.now, "reason": self.reason})
        await session.execute(FREE_DEVICES, {"ids": [r.loaded.device.id for r in results], "now": self.now})
        await self.ctx.billing.record_usage(session, [usage_fact(r) for r in results])
        await enqueue(session, [*texts.released_events(results, iso_utc(self.now)), DEVICES_FREED])
        await self.ctx.notifications.send(session, texts.released_notes(results))


class Releaser:
    """The release operation: batch, single, and the expiry of allocations past their end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def batch_release(
        self, actor: User | None, ids: list[str], reason: str | None, mode: BatchMode, *, operation: str = "release"
    ) -> BatchResult[str, Released]:
        async def prepare(session: AsyncSession) -> ReleaseWork:
            return await ReleaseWork(session, self.ctx, actor, reason).load(ids)

        return await self.ctx.batch.run(
            domain=DOMAIN,
            operation=operation,
            actor_id=actor.id if actor else None,
            items=ids,
            prepare=prepare,
            mode=mode,
            audit_detail={"reason": reason} if reason else None,
            log_lines=LogLines(f"🔄 Batch releasing {len(ids)} allocations...", counted("release")),
        )

    async def release(self, actor: User, allocation_id: str, reason: str | None) -> Released:
        async def unit(session: AsyncSession) -> Released:
            work = await ReleaseWork(session, self.ctx, actor, reason).load([allocation_id])
            result = await work.handle(allocation_id)
            await work.flush([result])
            return result

        return await self.ctx.db.run(unit)

    async def find_active_allocation_id(self, device_id: str, user_id: str) -> str:
        async with self.ctx.db.read() as session:
            found = await session.scalar(
                select(Allocation.id).where(
                    Allocation.device_id == device_id, Allocation.user_id == user_id, Allocation.status == ACTIVE
                )
            )
        if found is None:
            raise NotFoundError("Allocation not found")
        return found

    async def expire_due(self, limit: int = 500) -> int:
        """Release every allocation past its ``expiresAt`` (reason ``expired``)."""
        async with self.ctx.db.read() as session:
            ids = list(
                (
                    await session.scalars(
                        select(Allocation.id)
                        .where(Allocation.status == ACTIVE, Allocation.expires_at <= self.ctx.clock())
                        .order_by(Allocation.expires_at)
                        .limit(limit)
                    )
                ).all()
            )
        if not ids:
            return 0
        result = await self.batch_release(None, ids, "expired", BatchMode(), operation="expire")
        log.info("allocations_expired", count=result.success_count)
        return result.success_count
