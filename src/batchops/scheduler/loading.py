"""What the operations read before they decide: the free fleet with its reserved
windows, node loads, users with their active counts, allocations with their devices.
Each is one SELECT for any number of items; the hot statements are built once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Subquery,
    and_,
    bindparam,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.db import table_of
from batchops.core.errors import BadRequestError, NotFoundError
from batchops.identity.models import User
from batchops.scheduler.models import ACTIVE, ALLOCATED, AVAILABLE, RESERVED, Allocation, Device, Reservation
from batchops.scheduler.outcomes import LoadedAllocation, LoadedDevice, LoadedRow
from batchops.scheduler.placement import Window

DEVICES, RESERVATIONS, ALLOCATIONS = table_of(Device), table_of(Reservation), table_of(Allocation)


# --- the free fleet -----------------------------------------------------------------------------
def _free_devices_statement(free: Subquery) -> Select[Any]:
    """``free`` devices with their node's load and the reserved windows in ``[:now, :horizon)``."""
    d, r = DEVICES.c, RESERVATIONS.c
    loads = (
        select(d.node_id, func.count().label("load")).where(d.status == ALLOCATED).group_by(d.node_id).subquery("loads")
    )
    window = and_(
        r.device_id == free.c.id,
        r.status == RESERVED,
        r.start_at < bindparam("horizon", type_=r.start_at.type),
        r.end_at > bindparam("now", type_=r.end_at.type),
    )
    return select(free, func.coalesce(loads.c.load, 0), r.start_at, r.end_at, r.id).select_from(
        free.outerjoin(loads, free.c.node_id.is_not_distinct_from(loads.c.node_id)).outerjoin(RESERVATIONS, window)
    )


def _free(devices: FromClause) -> ColumnElement[bool]:
    return and_(devices.c.status == AVAILABLE, devices.c.maintenance.is_(False))


def _node(devices: FromClause) -> ColumnElement[str]:
    """The node as ``ix_devices_bucket`` indexes it (a literal, not a parameter: the
    index's own expression)."""
    return func.coalesce(devices.c.node_id, literal_column("''"))


def _ranked_free(first_only: bool) -> Subquery:
    """Every free device with its rank (by id) in its (size, node) bucket; ``first_only``:
    only the first ``:rank`` of each. For SQLite (no LATERAL) and the whole fleet."""
    d = DEVICES.c
    bucket = (d.cpu_cores, d.memory_mb, d.storage_mb, d.node_id)
    ranked = (
        select(
            d.id,
            d.name,
            d.cpu_cores,
            d.memory_mb,
            d.storage_mb,
            d.node_id,
            func.row_number().over(partition_by=bucket, order_by=d.id).label("rank"),
        )
        .where(_free(DEVICES))
        .subquery("ranked")
    )
    if not first_only:
        return ranked
    return select(ranked).where(ranked.c.rank <= bindparam("rank")).subquery("free")


def _first_free_per_bucket() -> Subquery:
    """PostgreSQL: the first ``:rank`` free devices of each (size, node) bucket, read per
    bucket from ``ix_devices_bucket`` (``ORDER BY id LIMIT k`` in a LATERAL join), so a
    large free fleet is not sorted as a whole for a small batch."""
    d, one = DEVICES.c, DEVICES.alias("d")
    buckets = (
        select(d.cpu_cores, d.memory_mb, d.storage_mb, _node(DEVICES).label("node")).where(_free(DEVICES)).distinct()
    ).subquery("buckets")
    first = (
        select(
            one.c.id,
            one.c.name,
            one.c.cpu_cores,
            one.c.memory_mb,
            one.c.storage_mb,
            one.c.node_id,
            func.row_number().over(order_by=one.c.id).label("rank"),
        )
        .where(
            _free(one),
            one.c.cpu_cores == buckets.c.cpu_cores,
            one.c.memory_mb == buckets.c.memory_mb,
            one.c.storage_mb == buckets.c.storage_mb,
            _node(one) == buckets.c.node,
        )
        .order_by(one.c.id)
        .limit(bindparam("rank"))
        .lateral("head")
    )
    return select(*first.c).select_from(buckets.join(first, true())).subquery("free")


# The first n+1 of each bucket tell whether a bucket has more than was read.
FREE_DEVICES = _free_devices_statement(_ranked_free(first_only=False))
FIRST_FREE_DEVICES = _free_devices_statement(_ranked_free(first_only=True))
FIRST_FREE_DEVICES_PG = _free_devices_statement(_first_free_per_bucket())


async def node_loads(session: AsyncSession) -> dict[str | None, int]:
    rows = await session.execute(
        select(Device.node_id, func.count()).where(Device.status == ALLOCATED).group_by(Device.node_id)
    )
    return {node: int(n) for node, n in rows}


async def reserved_windows(
    session: AsyncSession, start: datetime, end: datetime, device_ids: Sequence[str] | None = None
) -> dict[str, list[Window]]:
    """Live reservation windows overlapping ``[start, end)``, by device: one SELECT."""
    stmt = select(Reservation.device_id, Reservation.start_at, Reservation.end_at, Reservation.id).where(
        Reservation.status == RESERVED, Reservation.start_at < end, Reservation.end_at > start
    )
    if device_ids is not None:
        stmt = stmt.where(Reservation.device_id.in_(sorted(set(device_ids))))
    windows: dict[str, list[Window]] = defaultdict(list)
    for device_id, w_start, w_end, owner in await session.execute(stmt):
        windows[device_id].append(Window(w_start, w_end, owner))
    return dict(windows)


# --- users --------------------------------------------------------------------------------------
USERS_WITH_ACTIVE = (
    select(
        User,
        select(func.count())
        .where(Allocation.user_id == User.id, Allocation.status == ACTIVE)
        .correlate(User)
        .scalar_subquery(),
    )
    .where(User.id.in_(bindparam("ids", expanding=True)))
    .order_by(User.id)
)


async def users_with_active_counts(
    session: AsyncSession, user_ids: Sequence[str]
) -> tuple[dict[str, User], dict[str, int]]:
    """The named users and how many active allocations each holds: one SELECT."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}, {}
    rows = (await session.execute(USERS_WITH_ACTIVE, {"ids": ids})).all()
    return {u.id: u for u, _ in rows}, {u.id: int(n) for u, n in rows}


# --- allocations (release and extend) -----------------------------------------------------------
_A, _D = ALLOCATIONS.c, DEVICES.c
LOAD_ALLOCATIONS = (
    select(
        _A.id,
        _A.device_id,
        _A.user_id,
        _A.status,
        _A.allocated_at,
        _A.expires_at,
        _D.name,
        _D.cpu_cores,
        _D.memory_mb,
        _D.storage_mb,
    )
    .join(DEVICES, _D.id == _A.device_id)
    .where(_A.id.in_(bindparam("ids", expanding=True)))
    .order_by(_A.id)
    .with_for_update(of=ALLOCATIONS)
)


async def load_allocations(session: AsyncSession, ids: Sequence[str]) -> dict[str, LoadedAllocation]:
    """Allocations with their devices in one SELECT, locked for the transaction."""
    if not ids:
        return {}
    rows = await session.execute(LOAD_ALLOCATIONS, {"ids": sorted(set(ids))})
    return {
        i: LoadedAllocation(
            LoadedRow(i, device_id, user_id, status, allocated_at, expires_at),
            LoadedDevice(device_id, name, cpu, memory, storage),
        )
        for i, device_id, user_id, status, allocated_at, expires_at, name, cpu, memory, storage in rows
    }


def check_active(loaded: LoadedAllocation | None, staged_status: str | None = None) -> LoadedAllocation:
    """``staged_status``: what an earlier item of this batch already did to it."""
    if loaded is None:
        raise NotFoundError("Allocation not found")
    status = staged_status or loaded.allocation.status
    if status != ACTIVE:
        raise BadRequestError(f"Allocation is not active (status: {status})")
    return loaded
