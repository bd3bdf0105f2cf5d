"""The scheduler's filtered reads for the console's tables and overview: each a page of
rows and how many match, read outside any transaction (``Database.read``), and the ids
that match a filter (what a batch "on everything that matches" acts on)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, select

from batchops.core.clock import Clock
from batchops.core.db import Database
from batchops.scheduler.models import (
    ACTIVE,
    ALLOCATED,
    AVAILABLE,
    MAINTENANCE,
    OFFLINE,
    RESERVED,
    WAITING,
    Allocation,
    Device,
    QueueEntry,
    Reservation,
)

DEVICE_STATES = (AVAILABLE, ALLOCATED, MAINTENANCE, OFFLINE)


@dataclass(frozen=True)
class DeviceFilter:
    state: str | None = None  # available | allocated | maintenance | offline
    node_id: str | None = None
    size: str | None = None  # "<cpuCores>x<memoryMB>", as device_sizes() names them

    def where(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.state == AVAILABLE:
            where += [Device.status == AVAILABLE, Device.maintenance.is_(False)]
        elif self.state == MAINTENANCE:
            where.append(Device.maintenance.is_(True) | (Device.status == MAINTENANCE))
        elif self.state in (ALLOCATED, OFFLINE):
            where.append(Device.status == self.state)
        if self.node_id:
            where.append(Device.node_id == self.node_id)
        if self.size:
            cpu, _, memory = self.size.partition("x")
            if cpu.isdigit() and memory.isdigit():
                where += [Device.cpu_cores == int(cpu), Device.memory_mb == int(memory)]
        return where


@dataclass(frozen=True)
class AllocationFilter:
    user_id: str | None = None
    device_id: str | None = None
    status: str | None = None  # allocated | released
    expiring_within_minutes: int | None = None  # active ones whose expiresAt is that close
    allocation_id: str | None = None

    def where(self, now: datetime) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.allocation_id:
            where.append(Allocation.id == self.allocation_id)
        if self.user_id:
            where.append(Allocation.user_id == self.user_id)
        if self.device_id:
            where.append(Allocation.device_id == self.device_id)
        if self.status:
            where.append(Allocation.status == self.status)
        if self.expiring_within_minutes is not None:
            where += [
                Allocation.status == ACTIVE,
                Allocation.expires_at <= now + timedelta(minutes=self.expiring_within_minutes),
            ]
        return where


ALLOCATION_COLUMNS = (
    Allocation.id,
    Allocation.device_id,
    Device.name.label("device_name"),
    Allocation.user_id,
    Allocation.status,
    Allocation.allocated_at,
    Allocation.expires_at,
    Allocation.released_at,
    Allocation.release_reason,
)


async def _page(db: Database, count: Select[Any], rows: Any) -> tuple[list[Any], int]:
    async with db.read() as session:
        total = await session.scalar(count)
        return list((await session.execute(rows)).all()), int(total or 0)


async def device_page(db: Database, f: DeviceFilter, *, offset: int, limit: int) -> tuple[list[Device], int]:
    where = f.where()
    async with db.read() as session:
        total = await session.scalar(select(func.count()).select_from(Device).where(*where))
        rows = await session.scalars(select(Device).where(*where).order_by(Device.id).offset(offset).limit(limit))
        return list(rows.all()), int(total or 0)


async def device_choices(db: Database) -> tuple[list[str], list[tuple[int, int]]]:
    """The nodes and the (cpuCores, memoryMB) sizes there are: the device filter's options."""
    async with db.read() as session:
        nodes = await session.scalars(select(Device.node_id).where(Device.node_id.is_not(None)).distinct())
        sizes = await session.execute(select(Device.cpu_cores, Device.memory_mb).distinct())
        return sorted(n for n in nodes if n), sorted((int(c), int(m)) for c, m in sizes)


async def allocation_page(
    db: Database, f: AllocationFilter, *, clock: Clock, offset: int, limit: int
) -> tuple[list[Any], int]:
    where = f.where(clock())
    count = select(func.count()).select_from(Allocation).where(*where)
    rows = (
        select(*ALLOCATION_COLUMNS)
        .join(Device, Device.id == Allocation.device_id)
        .where(*where)
        .order_by(Allocation.allocated_at.desc(), Allocation.id)
        .offset(offset)
        .limit(limit)
    )
    return await _page(db, count, rows)


async def allocation_ids(db: Database, f: AllocationFilter, *, clock: Clock, limit: int) -> tuple[list[str], int]:
    """The ids of the allocations that match (at most ``limit``, oldest first) and how many match."""
    where = f.where(clock())
    async with db.read() as session:
        total = await session.scalar(select(func.count()).select_from(Allocation).where(*where))
        ids = await session.scalars(
            select(Allocation.id).where(*where).order_by(Allocation.allocated_at, Allocation.id).limit(limit)
        )
        return list(ids.all()), int(total or 0)


async def device_states(db: Database) -> list[dict[str, Any]]:
    """Devices per node and state (maintenance counted apart from the status it has)."""
    in_maintenance = Device.maintenance.is_(True) | (Device.status == MAINTENANCE)
    async with db.read() as session:
        rows = await session.execute(
            select(
                Device.node_id,
                func.count(),
                func.sum(case((and_(Device.status == AVAILABLE, ~in_maintenance), 1), else_=0)),
                func.sum(case((Device.status == ALLOCATED, 1), else_=0)),
                func.sum(case((in_maintenance, 1), else_=0)),
                func.sum(case((Device.status == OFFLINE, 1), else_=0)),
            )
            .group_by(Device.node_id)
            .order_by(Device.node_id)
        )
        return [
            {
                "node_id": node or "–",
                "devices": int(total),
                AVAILABLE: int(free or 0),
                ALLOCATED: int(taken or 0),
                MAINTENANCE: int(kept or 0),
                OFFLINE: int(off or 0),
            }
            for node, total, free, taken, kept, off in rows
        ]


async def scheduler_overview(db: Database, *, clock: Clock, soon_minutes: int = 60, hours: int = 12) -> dict[str, Any]:
    """Active allocations, waiting requests, the reservations starting soon and the
    allocations made per hour over the last ``hours`` (oldest first)."""
    now = clock()
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    async with db.read() as session:
        active = await session.scalar(select(func.count()).select_from(Allocation).where(Allocation.status == ACTIVE))
        waiting = await session.scalar(select(func.count()).select_from(QueueEntry).where(QueueEntry.status == WAITING))
        soon = (
            await session.scalars(
                select(Reservation)
                .where(Reservation.status == RESERVED, Reservation.start_at <= now + timedelta(minutes=soon_minutes))
                .order_by(Reservation.start_at, Reservation.id)
                .limit(10)
            )
        ).all()
        made = await session.scalars(select(Allocation.allocated_at).where(Allocation.allocated_at >= since))
        per_hour = [0] * hours
        for at in made:
            per_hour[min(hours - 1, int((at - since).total_seconds() // 3600))] += 1
    return {
        "active_allocations": int(active or 0),
        "waiting": int(waiting or 0),
        "starting_soon": list(soon),
        "hours": [since + timedelta(hours=i) for i in range(hours)],
        "allocations_per_hour": per_hour,
    }


async def reservation_timeline(
    db: Database, *, start: datetime, end: datetime, user_id: str | None, offset: int, limit: int
) -> tuple[list[tuple[str, list[Reservation]]], int]:
    """Devices with a live or fulfilled reservation overlapping ``[start, end)``, each with
    those reservations in time order: a page of devices and how many there are."""
    where = [Reservation.start_at < end, Reservation.end_at > start, Reservation.status.in_((RESERVED, "fulfilled"))]
    if user_id:
        where.append(Reservation.user_id == user_id)
    async with db.read() as session:
        total = await session.scalar(select(func.count(func.distinct(Reservation.device_id))).where(*where))
        devices = list(
            (
                await session.scalars(
                    select(Reservation.device_id)
                    .where(*where)
                    .distinct()
                    .order_by(Reservation.device_id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        )
        rows = (
            (
                await session.scalars(
                    select(Reservation).where(*where, Reservation.device_id.in_(devices)).order_by(Reservation.start_at)
                )
            ).all()
            if devices
            else []
        )
    by_device: dict[str, list[Reservation]] = {d: [] for d in devices}
    for r in rows:
        by_device[r.device_id].append(r)
    return list(by_device.items()), int(total or 0)
