"""The priority wait queue (seed 000 phase 3, "优先级队列").

An allocation that opts in (``queueIfUnavailable``) waits here when nothing fits.
Whenever devices free up (release, expiry, new devices: one outbox message per
transaction) and on every scheduler tick, the worker grants waiting requests in
order of priority (9 first), then age; a request that does not fit (size, quota,
balance) is passed over, not blocked on, and expires after ``maxWaitMinutes``.
Grants use the same ``AllocateWork`` as every other allocation, so quota, holds,
events and notifications are the same.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import ColumnElement, FromClause, Integer, Select, and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CNY, available_balance
from batchops.core.db import advisory_lock, table_of
from batchops.core.errors import AppError, ConflictError, NotFoundError
from batchops.core.outbox import Delivery
from batchops.identity.models import User
from batchops.identity.service import may_act
from batchops.scheduler import texts
from batchops.scheduler.allocate import AllocateWork
from batchops.scheduler.context import ALLOCATE_LOCK, Context, ensure_actor_may_act_for
from batchops.scheduler.models import ACTIVE, CANCELLED, EXPIRED, GRANTED, WAITING, Allocation, QueueEntry
from batchops.scheduler.outcomes import Allocated, Ask

log = structlog.get_logger(__name__)

GRANT_BATCH = 200
LOOKAHEAD = 4  # grantable entries considered per free device in one pass (see ``grantable``)


def served_before(a: Any, b: Any) -> ColumnElement[bool]:
    """Entry ``a`` is served before ``b`` (columns or values of each): higher priority, or
    the same and older (ties: lower id)."""
    return or_(
        a.priority > b.priority,
        and_(
            a.priority == b.priority,
            or_(a.enqueued_at < b.enqueued_at, and_(a.enqueued_at == b.enqueued_at, a.id < b.id)),
        ),
    )


def ahead_clause(entry: QueueEntry) -> ColumnElement[bool]:
    """Waiting entries served before ``entry``."""
    return and_(QueueEntry.status == WAITING, served_before(QueueEntry, entry))


# A free size an entry may take: (cpu cores, memory MB, hourly price in millifen, or
# None when billing is not enforced).
Offers = tuple[tuple[int, int, int | None], ...]


def servable(e: FromClause, offers: Offers) -> ColumnElement[bool]:
    """Whether an entry fits one of the free sizes (and, billing enforced, its user can
    pay for it there: the cost is at least minutes x hourly price / 60)."""
    available = available_balance(e.c.user_id, CNY)
    fits_one = []
    for cpu, memory, millifen in offers:
        fits = and_(
            or_(e.c.min_cpu.is_(None), e.c.min_cpu <= cpu),
            or_(e.c.min_memory_mb.is_(None), e.c.min_memory_mb <= memory),
        )
        if millifen is not None:
            fits = and_(fits, e.c.duration_minutes * millifen <= available * 60_000)
        fits_one.append(fits)
    return or_(*fits_one)


@lru_cache(maxsize=64)
def grantable(offers: Offers) -> Select[QueueEntry]:
    """The first ``:limit`` entries waiting at ``:now``, in service order, that one of the
    free sizes could serve (one SELECT, locked). Built once per set of free sizes: the
    fleet has few, and a pass runs after every release.

    What can be judged per entry is judged here, so requests that cannot be served
    (no free device is big enough, the user is suspended or at quota, or cannot pay
    on any free size) never crowd out one that can, however many wait ahead of it: a
    user with room for r more devices offers only their first r servable entries. The
    grant-order index is read in order and filtered, so the usual pass reads ``limit``
    rows. What is left to ``AllocateWork`` (a device taken by an earlier grant of the
    pass, a reserved window) is why a pass looks ``LOOKAHEAD`` entries per free device."""
    entries, users, allocations = table_of(QueueEntry), table_of(User), table_of(Allocation)
    earlier = entries.alias("earlier")
    now = bindparam("now", type_=entries.c.expires_at.type)
    active = (
        select(func.count())
        .select_from(allocations)
        .where(allocations.c.user_id == entries.c.user_id, allocations.c.status == ACTIVE)
        .scalar_subquery()
    )
    servable_ahead = (
        select(func.count())
        .select_from(earlier)
        .where(
            earlier.c.user_id == entries.c.user_id,
            earlier.c.status == WAITING,
            earlier.c.expires_at > now,
            served_before(earlier.c, entries.c),
            servable(earlier, offers),
        )
        .scalar_subquery()
    )
    return (
        select(QueueEntry)
        .join(users, users.c.id == QueueEntry.user_id)
        .where(
            QueueEntry.status == WAITING,
            QueueEntry.expires_at > now,
            may_act(users),
            servable(entries, offers),
            users.c.max_devices - active > servable_ahead,  # quota room for this one too
        )
        .order_by(QueueEntry.priority.desc(), QueueEntry.enqueued_at, QueueEntry.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(of=QueueEntry, skip_locked=True)
    )


class WaitQueue:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    async def position(self, session: AsyncSession, entry: QueueEntry) -> int | None:
        if entry.status != WAITING:
            return None
        ahead = await session.scalar(select(func.count()).select_from(QueueEntry).where(ahead_clause(entry)))
        return int(ahead or 0) + 1

    async def list_entries(
        self, *, user_id: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[tuple[QueueEntry, int | None]], int]:
        """In service order (position 1 first) for waiting entries."""
        where = []
        if user_id:
            where.append(QueueEntry.user_id == user_id)
        if status:
            where.append(QueueEntry.status == status)
        async with self.db.transaction() as session:
            total = await session.scalar(select(func.count()).select_from(QueueEntry).where(*where))
            entries = (
                await session.scalars(
                    select(QueueEntry)
                    .where(*where)
                    .order_by(
                        QueueEntry.status != WAITING, QueueEntry.priority.desc(), QueueEntry.enqueued_at, QueueEntry.id
                    )
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
            rows = [(e, await self.position(session, e)) for e in entries]
        return rows, int(total or 0)

    async def get(self, actor: User, entry_id: str) -> tuple[QueueEntry, int | None]:
        async with self.db.transaction() as session:
            entry = await session.get(QueueEntry, entry_id)
            if entry is None:
                raise NotFoundError("Queue entry not found")
            ensure_actor_may_act_for(actor, entry.user_id)
            return entry, await self.position(session, entry)

    async def cancel(self, actor: User, entry_id: str) -> QueueEntry:
        async with self.db.transaction() as session:
            entry = await session.get(QueueEntry, entry_id, with_for_update=True)
            if entry is None:
                raise NotFoundError("Queue entry not found")
            ensure_actor_may_act_for(actor, entry.user_id)
            if entry.status != WAITING:
                raise ConflictError(f"Queue entry is not waiting (status: {entry.status})")
            entry.status, entry.reason = CANCELLED, "cancelled by user"
        return entry

    async def on_devices_freed(self, deliveries: list[Delivery]) -> dict[int, str]:
        """Outbox handler: any number of 'devices freed' messages → one grant pass."""
        await self.grant_waiting()
        return {}

    async def expire_overdue(self) -> None:
        """Entries past their wait become expired (the worker's tick; a grant skips them anyway)."""
        async with self.db.transaction() as session:
            await self._expire(session, self.ctx.clock())

    async def grant_waiting(self) -> int:
        """Grant what fits, by priority then age; entries past their wait are left to expire."""
        granted = await self.db.run(self._grant)
        if granted:
            log.info("queue_granted", count=granted)
        return granted

    async def _grant(self, session: AsyncSession) -> int:
        live = (QueueEntry.status == WAITING, QueueEntry.expires_at > self.ctx.clock())
        # The allocation lock, only if someone waits (usually no one): one round trip.
        if not await advisory_lock(session, ALLOCATE_LOCK, only_if=select(QueueEntry.id).where(*live).limit(1)):
            return 0
        work = await AllocateWork(session, self.ctx, None).load_devices(locked=True)
        free = len(work.placement.by_id)
        if not free:
            return 0
        params = {"now": work.now, "limit": min(GRANT_BATCH, LOOKAHEAD * free)}
        entries = list((await session.scalars(grantable(self.offers(work)), params)).all())
        await work.load_users([e.user_id for e in entries])
        granted: list[tuple[QueueEntry, Allocated]] = []
        for entry in entries:
            if not work.placement.has_free:
                break
            ask = Ask(entry.user_id, entry.duration_minutes, entry.min_cpu, entry.min_memory_mb)
            try:
                result = await work.allocate(ask)
            except AppError:  # does not fit after all (taken by an earlier grant, a reserved window): waits
                continue
            assert isinstance(result, Allocated)
            granted.append((entry, result))
        if not granted:
            return 0
        await work.flush(
            [r for _, r in granted],
            also_notify=[
                texts.granted_note(user_id=e.user_id, entry_id=e.id, duration_minutes=e.duration_minutes, allocated=r)
                for e, r in granted
            ],
        )
        await session.execute(
            update(QueueEntry),
            [{"id": e.id, "allocation_id": r.id, "status": GRANTED, "granted_at": work.now} for e, r in granted],
        )
        return len(granted)

    def offers(self, work: AllocateWork) -> Offers:
        """The free sizes, each with its hourly price when billing is enforced."""
        enforce = self.ctx.settings.billing_enforce_balance
        pricing = self.ctx.billing.pricing
        return tuple(
            (cpu, memory, pricing.hourly_millifen(cpu, memory, storage) if enforce else None)
            for cpu, memory, storage in work.placement.free_sizes()
        )

    async def _expire(self, session: AsyncSession, now: datetime) -> None:
        expired = (
            await session.execute(
                update(QueueEntry)
                .where(QueueEntry.status == WAITING, QueueEntry.expires_at <= now)
                .values(status=EXPIRED, reason="Max wait exceeded")
                .returning(QueueEntry.id, QueueEntry.user_id)
            )
        ).all()
        if expired:
            await self.ctx.notifications.send(
                session, [texts.queue_expired_note(user_id=user_id, entry_id=entry_id) for entry_id, user_id in expired]
            )
