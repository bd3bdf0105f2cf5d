"""Allocate: place asks on free devices (``placement.Placement``: best fit, then spread
over nodes, never into a reserved window), hold their cost, or queue an ask that opts in.

``AllocateWork`` is the one place an allocation is made: batch and single requests,
grants from the wait queue and reservations that start all go through it. It is a
work for the batch runner (``core/batch.py``): ``load`` reads what every ask needs
in a constant number of queries, ``allocate`` decides one ask in memory, ``flush``
writes all of them in bulk."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import Book, InsufficientBalance
from batchops.billing.service import allocation_hold
from batchops.core.batch import BatchMode, BatchResult, LogLines, counted
from batchops.core.clock import iso_utc
from batchops.core.db import advisory_lock, is_postgres, new_id
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError
from batchops.core.outbox import enqueue
from batchops.identity.models import User
from batchops.identity.service import ensure_active
from batchops.notifications.service import NewNotification
from batchops.scheduler import texts
from batchops.scheduler.context import ALLOCATE_LOCK, DOMAIN, MAX_MINUTES, Context, ensure_actor_may_act_for
from batchops.scheduler.loading import (
    ALLOCATIONS,
    DEVICES,
    FIRST_FREE_DEVICES,
    FIRST_FREE_DEVICES_PG,
    FREE_DEVICES,
    users_with_active_counts,
)
from batchops.scheduler.models import ACTIVE, ALLOCATED, AVAILABLE, WAITING, QueueEntry
from batchops.scheduler.outcomes import Allocated, Ask, Queued
from batchops.scheduler.placement import Bucket, Candidate, Placement, PlacementIncomplete, Window
from batchops.scheduler.schemas import AllocationRequest

NO_DEVICE = "No available devices"
# Built once (hot): the chosen devices, if still free; fewer rows than chosen is a conflict.
CLAIM_DEVICES = (
    update(DEVICES)
    .where(DEVICES.c.id.in_(bindparam("ids", expanding=True)), DEVICES.c.status == AVAILABLE)
    .values(status=ALLOCATED, updated_at=bindparam("now"))
)


def check_user_can_allocate(user: User | None, active: int) -> User:
    """The admission rules every allocation path shares (seed 000 scenario 5)."""
    user = ensure_active(user)
    if active >= user.max_devices:
        raise ForbiddenError(f"Quota exceeded: maxDevices={user.max_devices}, current={active}")
    return user


class AllocateWork:
    def __init__(
        self,
        session: AsyncSession,
        ctx: Context,
        actor: User | None,
        allocation_ids: Iterator[str] | None = None,
    ) -> None:
        self.session = session
        self.ctx = ctx
        self.actor = actor
        self.allocation_ids = allocation_ids  # given ids, taken in order by the asks that get a device
        self.users: dict[str, User] = {}
        self.active: dict[str, int] = {}
        self.placement = Placement([], {}, {})
        self.book: Book | None = None
        self.chosen: list[Candidate] = []
        self.now = ctx.clock()

    async def load(self, user_ids: Sequence[str], per_bucket: int | None = None) -> AllocateWork:
        await self.load_devices(per_bucket)
        return await self.load_users(user_ids)

    async def load_users(self, user_ids: Sequence[str]) -> AllocateWork:
        self.users, self.active = await users_with_active_counts(self.session, user_ids)
        self.book = await self.ctx.holds_book(self.session, list(self.users))
        return self

    async def load_devices(self, per_bucket: int | None = None, *, locked: bool = False) -> AllocateWork:
        """Take the allocation lock and load the free devices and the windows they must keep.

        ``per_bucket``: a batch of n asks takes at most n devices of one (size, node)
        bucket, so only the first n of each are read; ``Placement`` asks for the rest
        if a bucket runs dry. ``locked``: the caller holds the lock already.
        """
        if not locked:
            await advisory_lock(self.session, ALLOCATE_LOCK)
        await self._read_devices(per_bucket)
        return self

    async def _read_devices(self, per_bucket: int | None) -> None:
        """Free devices, their node's load and their reserved windows: one SELECT
        (one row per device and window). The batch's clock starts when it returns."""
        now = self.ctx.clock()
        # a minute beyond the longest ask: its end is timed from the (later) clock below
        horizon = now + timedelta(minutes=MAX_MINUTES + 1)
        if per_bucket is None:
            stmt = FREE_DEVICES
        else:
            stmt = FIRST_FREE_DEVICES_PG if is_postgres(self.session) else FIRST_FREE_DEVICES
        params = {"now": now, "horizon": horizon, "rank": (per_bucket or 0) + 1}
        devices: dict[str, Candidate] = {}
        node_load: dict[str | None, int] = {}
        windows: dict[str, list[Window]] = defaultdict(list)
        partial: set[Bucket] = set()
        for *fields, rank, load, w_start, w_end, owner in await self.session.execute(stmt, params):
            device = devices.get(fields[0]) or devices.setdefault(fields[0], Candidate(*fields))
            node_load[device.node_id] = int(load)
            if owner is not None:
                windows[device.id].append(Window(w_start, w_end, owner))
            if per_bucket is not None and rank > per_bucket:  # the bucket has more than was read
                partial.add((device.size, device.node_id))
        self.placement = Placement(list(devices.values()), node_load, dict(windows), partial)
        # Allocations start now, not when this work was built: it has waited for the allocate
        # lock since, and a device read as free here may have been released meanwhile, at a
        # time its usage record ends; a period must not start before it (billed twice).
        self.now = self.ctx.clock()

    def _choose(self, ask: Ask, expires_at: datetime) -> Candidate | None:
        return self.placement.choose(
            min_cpu=ask.min_cpu,
            min_memory=ask.min_memory,
            start=self.now,
            end=expires_at,
            pinned=ask.device_id,
            ignore=ask.reservation_id,
        )

    async def _choose_from_all(self, ask: Ask, expires_at: datetime) -> Candidate | None:
        """Place with the partly loaded fleet; if that is not enough, with all of it."""
        try:
            return self._choose(ask, expires_at)
        except PlacementIncomplete:
            await self._read_devices(None)
            for device in self.chosen:  # still free in the database until flush
                self.placement.take(device.id)
            return self._choose(ask, expires_at)

    async def handle(self, request: AllocationRequest) -> Allocated | Queued:
        return await self.allocate(Ask.of(request))

    async def allocate(self, ask: Ask) -> Allocated | Queued:
        ensure_actor_may_act_for(self.actor, ask.user_id)
        user = check_user_can_allocate(self.users.get(ask.user_id), self.active.get(ask.user_id, 0))
        expires_at = ask.expires_at or self.now + timedelta(minutes=ask.duration_minutes)
        device = await self._choose_from_all(ask, expires_at)
        if device is None:
            if ask.queue is None:
                raise BadRequestError(NO_DEVICE)
            return self._queue(ask)
        allocation_id = next(self.allocation_ids) if self.allocation_ids is not None else new_id("alloc")
        if self.book is not None:
            minutes = max(1, math.ceil((expires_at - self.now).total_seconds() / 60))
            try:
                self.book.hold(user.id, self.ctx.estimate(device, minutes), allocation_hold(allocation_id))
            except InsufficientBalance:
                self.placement.give_back(device)
                raise
        self.chosen.append(device)
        self.active[user.id] = self.active.get(user.id, 0) + 1
        return Allocated(
            allocation={
                "id": allocation_id,
                "device_id": device.id,
                "user_id": user.id,
                "status": ACTIVE,
                "duration_minutes": ask.duration_minutes,
                "allocated_at": self.now,
                "expires_at": expires_at,
                "reservation_id": ask.reservation_id,
            },
            device=device,
        )

    def _queue(self, ask: Ask) -> Queued:
        assert ask.queue is not None
        return Queued(
            entry={
                "id": new_id("queue"),
                "user_id": ask.user_id,
                "duration_minutes": ask.duration_minutes,
                "min_cpu": ask.min_cpu,
                "min_memory_mb": ask.min_memory,
                "priority": ask.queue.priority,
                "status": WAITING,
                "enqueued_at": self.now,
                "expires_at": self.now + timedelta(minutes=ask.queue.max_wait_minutes),
            }
        )

    async def flush(self, results: Sequence[Allocated | Queued], also_notify: Sequence[NewNotification] = ()) -> None:
        """Write the batch; ``also_notify``: the caller's own notifications, sent in the same INSERT."""
        allocated = [r for r in results if isinstance(r, Allocated)]
        queued = [r for r in results if isinstance(r, Queued)]
        if allocated:
            await self._write_allocations(allocated, also_notify)
        if queued:
            await self._write_queue_entries(queued)

    async def _write_allocations(self, results: list[Allocated], also_notify: Sequence[NewNotification]) -> None:
        """Claim the devices, insert the allocations, hold their cost, announce them."""
        claimed = await self.session.execute(CLAIM_DEVICES, {"ids": [r.device.id for r in results], "now": self.now})
        if claimed.rowcount != len(results):  # type: ignore[attr-defined]
            raise ConflictError("A chosen device was taken concurrently; retry the request")
        await self.session.execute(insert(ALLOCATIONS), [r.allocation for r in results])
        if self.book is not None:
            await self.book.flush()
        await enqueue(self.session, texts.allocated_events(results, iso_utc(self.now)))
        await self.ctx.notifications.send(self.session, texts.allocated_notes(results) + list(also_notify))

    async def _write_queue_entries(self, queued: list[Queued]) -> None:
        """Insert new entries and give each its position (two statements for any number)."""
        waiting = Counter(
            {
                int(p): int(n)
                for p, n in await self.session.execute(
                    select(QueueEntry.priority, func.count())
                    .where(QueueEntry.status == WAITING)
                    .group_by(QueueEntry.priority)
                )
            }
        )
        for q in queued:  # the batch's entries are younger than every waiting one, in batch order
            priority = q.entry["priority"]
            q.position = sum(n for p, n in waiting.items() if p >= priority) + 1
            waiting[priority] += 1
        await self.session.execute(insert(QueueEntry), [q.entry for q in queued])
        await enqueue(self.session, texts.queued_events(queued, iso_utc(self.now)))
        await self.ctx.notifications.send(self.session, texts.queued_notes(queued))


class Allocator:
    """The allocate operation, batch and single."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def batch_allocate(
        self,
        actor: User,
        requests: list[AllocationRequest],
        mode: BatchMode,
        *,
        allocation_ids: list[str] | None = None,
    ) -> BatchResult[AllocationRequest, Allocated | Queued]:
        """``allocation_ids``: ids for the new allocations instead of generated ones (the
        demo's alloc-001…, which seed 000's curl scenarios name); not part of the API."""
        await self.ctx.billing.check_remote_balances({r.user_id for r in requests})

        async def prepare(session: AsyncSession) -> AllocateWork:
            given = iter(allocation_ids) if allocation_ids is not None else None  # per run: a retry starts over
            return await AllocateWork(session, self.ctx, actor, given).load(
                [r.user_id for r in requests], per_bucket=len(requests)
            )

        return await self.ctx.batch.run(
            domain=DOMAIN,
            operation="allocate",
            actor_id=actor.id,
            items=requests,
            prepare=prepare,
            mode=mode,
            log_lines=LogLines(f"🔄 Batch allocating {len(requests)} devices...", counted("allocation")),
        )

    async def allocate(self, actor: User, request: AllocationRequest) -> Allocated | Queued:
        await self.ctx.billing.check_remote_balances({request.user_id})

        async def unit(session: AsyncSession) -> Allocated | Queued:
            work = await AllocateWork(session, self.ctx, actor).load([request.user_id], per_bucket=1)
            result = await work.handle(request)
            await work.flush([result])
            return result

        return await self.ctx.db.run(unit)
