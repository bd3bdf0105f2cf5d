"""Advance reservations (seed 000 phase 3, "设备预约功能").

A reservation holds a concrete device for ``[startAt, startAt + durationMinutes)``.
It is placed like an allocation (best fit, then node spread) on a device whose
window is free: no other live reservation overlaps it, and no running allocation
reaches into it. The database refuses overlapping live reservations of one device
(an exclusion constraint on PostgreSQL, a trigger on SQLite), and allocations and
extensions never enter a reserved window (checked under the allocation lock).
At ``startAt`` the worker turns it into an allocation through the same
``AllocateWork`` as every allocation (quota, holds, event, notification).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CNY, InsufficientBalance
from batchops.core.batch import BatchMode, BatchResult
from batchops.core.clock import iso_utc
from batchops.core.db import advisory_lock, new_id
from batchops.core.errors import AppError, BadRequestError, ConflictError, NotFoundError
from batchops.core.outbox import enqueue
from batchops.identity.models import User
from batchops.identity.service import ensure_active, load_users
from batchops.scheduler import texts
from batchops.scheduler.allocate import AllocateWork
from batchops.scheduler.context import ALLOCATE_LOCK, DOMAIN, Context, ensure_actor_may_act_for
from batchops.scheduler.loading import node_loads, reserved_windows
from batchops.scheduler.models import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FULFILLED,
    OFFLINE,
    RESERVED,
    Allocation,
    Device,
    Reservation,
)
from batchops.scheduler.outcomes import Allocated, Ask
from batchops.scheduler.placement import Candidate, Placement, Window
from batchops.scheduler.release import Releaser
from batchops.scheduler.schemas import ReservationIn

log = structlog.get_logger(__name__)


class ReserveWork:
    def __init__(self, session: AsyncSession, ctx: Context, actor: User) -> None:
        self.session = session
        self.ctx = ctx
        self.actor = actor
        self.users: dict[str, User] = {}
        self.placement = Placement([], {}, {})
        self.available: dict[str, int] | None = None  # CNY each user may still reserve against
        self.now = ctx.clock()

    async def load(self, requests: Sequence[ReservationIn]) -> ReserveWork:
        session = self.session
        await advisory_lock(session, ALLOCATE_LOCK)
        self.users = await load_users(session, [r.user_id for r in requests])
        if self.ctx.settings.billing_enforce_balance:
            # seed 001 P1 #4 余额预检查: no device window for a user who could not pay for it
            # (the hold itself is taken when the reservation starts)
            self.available = await self.ctx.billing.available_balances(session, list(self.users))
        starts = [r.start_at for r in requests]
        ends = [r.start_at + timedelta(minutes=r.duration_minutes) for r in requests]
        start, end = min(starts), max(ends)
        rows = await session.execute(
            select(Device.id, Device.name, Device.cpu_cores, Device.memory_mb, Device.storage_mb, Device.node_id)
            .where(Device.status != OFFLINE, Device.maintenance.is_(False))
            .order_by(Device.id)
        )
        windows: dict[str, list[Window]] = defaultdict(list, await reserved_windows(session, start, end))
        running = await session.execute(
            select(Allocation.device_id, Allocation.allocated_at, Allocation.expires_at, Allocation.id).where(
                Allocation.status == ACTIVE, Allocation.expires_at > start
            )
        )
        for device_id, a_start, a_end, owner in running:
            windows[device_id].append(Window(a_start, a_end, owner))
        self.placement = Placement([Candidate(*r) for r in rows], await node_loads(session), dict(windows))
        return self

    async def handle(self, request: ReservationIn) -> dict[str, Any]:
        ensure_actor_may_act_for(self.actor, request.user_id)
        user = ensure_active(self.users.get(request.user_id))
        start = request.start_at
        if start <= self.now:
            raise BadRequestError("startAt must be in the future")
        max_days = self.ctx.settings.reservation_max_days_ahead
        if start > self.now + timedelta(days=max_days):
            raise BadRequestError(f"startAt may be at most {max_days} days ahead")
        end = start + timedelta(minutes=request.duration_minutes)
        prefs = request.device_preferences
        device = self.placement.choose(
            min_cpu=prefs.cpu if prefs else None,
            min_memory=prefs.memory if prefs else None,
            start=start,
            end=end,
            take=False,
        )
        if device is None:
            raise BadRequestError("No device available for the requested window")
        if self.available is not None:
            cost, left = self.ctx.estimate(device, request.duration_minutes), self.available[user.id]
            if cost > left:
                raise InsufficientBalance(CNY, cost, left)
            self.available[user.id] = left - cost  # the batch's next reservations of this user
        reservation_id = new_id("resv")
        self.placement.add_window(device.id, Window(start, end, reservation_id))
        return {
            "id": reservation_id,
            "user_id": user.id,
            "device_id": device.id,
            "start_at": start,
            "end_at": end,
            "duration_minutes": request.duration_minutes,
            "status": RESERVED,
            "created_at": self.now,
            "updated_at": self.now,
        }

    async def flush(self, results: list[dict[str, Any]]) -> None:
        if not results:
            return
        session = self.session
        try:
            async with session.begin_nested():
                await session.execute(insert(Reservation), results)
        except IntegrityError as exc:  # the constraint: another process reserved the window first
            raise ConflictError("The device is already reserved for an overlapping window") from exc
        await enqueue(session, texts.reservation_created_events(results, iso_utc(self.now)))
        await self.ctx.notifications.send(session, texts.reservation_created_notes(results))


class ReservationService:
    def __init__(self, ctx: Context, releaser: Releaser) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.releaser = releaser

    async def create(self, actor: User, request: ReservationIn) -> dict[str, Any]:
        async def unit(session: AsyncSession) -> dict[str, Any]:
            work = await ReserveWork(session, self.ctx, actor).load([request])
            row = await work.handle(request)
            await work.flush([row])
            return row

        return await self.db.run(unit)

    async def batch_create(
        self, actor: User, requests: list[ReservationIn], mode: BatchMode
    ) -> BatchResult[ReservationIn, dict[str, Any]]:
        async def prepare(session: AsyncSession) -> ReserveWork:
            return await ReserveWork(session, self.ctx, actor).load(requests)

        return await self.ctx.batch.run(
            domain=DOMAIN, operation="reserve", actor_id=actor.id, items=requests, prepare=prepare, mode=mode
        )

    async def get(self, actor: User, reservation_id: str) -> Reservation:
        async with self.db.read() as session:
            reservation = await session.get(Reservation, reservation_id)
        if reservation is None:
            raise NotFoundError("Reservation not found")
        ensure_actor_may_act_for(actor, reservation.user_id)
        return reservation

    async def list_reservations(
        self, *, user_id: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[Reservation], int]:
        where = []
        if user_id:
            where.append(Reservation.user_id == user_id)
        if status:
            where.append(Reservation.status == status)
        async with self.db.read() as session:
            total = await session.scalar(select(func.count()).select_from(Reservation).where(*where))
            rows = await session.scalars(
                select(Reservation)
                .where(*where)
                .order_by(Reservation.start_at, Reservation.id)
                .offset(offset)
                .limit(limit)
            )
            return list(rows.all()), int(total or 0)

    async def cancel(self, actor: User, reservation_id: str) -> Reservation:
        async with self.db.transaction() as session:
            reservation = await session.get(Reservation, reservation_id, with_for_update=True)
            if reservation is None:
                raise NotFoundError("Reservation not found")
            ensure_actor_may_act_for(actor, reservation.user_id)
            if reservation.status != RESERVED:
                raise ConflictError(f"Reservation is not active (status: {reservation.status})")
            reservation.status = CANCELLED
            row = {k: getattr(reservation, k) for k in ("id", "user_id", "device_id", "start_at", "end_at", "status")}
            await enqueue(session, [texts.reservation_cancelled_event(row, iso_utc(self.ctx.clock()))])
        return reservation

    async def start_due(self, limit: int = 200) -> int:
        """Turn reservations whose ``startAt`` has come into allocations."""
        await self.releaser.expire_due()  # free the devices whose allocations have ended first

        started, failed = await self.db.run(lambda session: self._start_due(session, limit))
        if started or failed:
            log.info("reservations_started", started=started, failed=failed)
        return started

    async def _start_due(self, session: AsyncSession, limit: int) -> tuple[int, int]:
        now = self.ctx.clock()
        is_due = (Reservation.status == RESERVED, Reservation.start_at <= now)
        # the allocate lock first (core.transactions' order), and only if a reservation is due
        if not await advisory_lock(session, ALLOCATE_LOCK, only_if=select(Reservation.id).where(*is_due).limit(1)):
            return 0, 0
        due = list(
            (
                await session.scalars(
                    select(Reservation)
                    .where(*is_due)
                    .order_by(Reservation.start_at, Reservation.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        if not due:
            return 0, 0
        work = await AllocateWork(session, self.ctx, None).load_devices(locked=True)
        await work.load_users([r.user_id for r in due])
        started: list[tuple[Reservation, Allocated]] = []
        failed: list[tuple[Reservation, str]] = []
        for r in due:
            if r.end_at <= now:
                failed.append((r, "Reservation window has passed"))
                continue
            ask = Ask(
                user_id=r.user_id,
                duration_minutes=max(1, int((r.end_at - now).total_seconds() // 60)),
                device_id=r.device_id,
                reservation_id=r.id,
                expires_at=r.end_at,
            )
            try:
                result = await work.allocate(ask)
            except AppError as exc:
                failed.append((r, exc.message))
                continue
            assert isinstance(result, Allocated)
            started.append((r, result))
        await work.flush([a for _, a in started])
        changes = [{"id": r.id, "status": FULFILLED, "allocation_id": a.id} for r, a in started]
        changes += [{"id": r.id, "status": FAILED, "failure_reason": reason} for r, reason in failed]
        await session.execute(update(Reservation), changes)
        await self.ctx.notifications.send(
            session,
            [
                texts.reservation_failed_note(
                    user_id=r.user_id, reservation_id=r.id, start_at=r.start_at, reason=reason
                )
                for r, reason in failed
            ],
        )
        return len(started), len(failed)
