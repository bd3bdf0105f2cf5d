"""Queries: the batch query (seed 000's one SELECT for any number of users) and the
listings of allocations, devices and nodes behind the API's GET routes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.batch import BatchResult, LogLines
from batchops.core.db import paginate
from batchops.identity.models import User
from batchops.scheduler.context import DOMAIN, Context
from batchops.scheduler.loading import ALLOCATIONS, DEVICES
from batchops.scheduler.models import ACTIVE, ALLOCATED, AVAILABLE, MAINTENANCE, OFFLINE, Allocation, Device
from batchops.scheduler.schemas import AllocationView, NodeOut

# GET /scheduler/devices?status=: maintenance is a flag beside the status (a device in
# maintenance may still run its last allocation), so "available" means free to take.
DEVICE_FILTERS: dict[str, list[ColumnElement[bool]]] = {
    AVAILABLE: [Device.status == AVAILABLE, Device.maintenance.is_(False)],
    ALLOCATED: [Device.status == ALLOCATED],
    MAINTENANCE: [or_(Device.maintenance.is_(True), Device.status == MAINTENANCE)],
    OFFLINE: [Device.status == OFFLINE],
}

_A = ALLOCATIONS.c
# The users are one expanding list parameter: one statement for 1 or 100 of them.
QUERY_ALLOCATIONS = (
    select(_A.id, _A.device_id, _A.user_id, _A.status, _A.allocated_at, _A.expires_at, DEVICES.c.name)
    .join(DEVICES, DEVICES.c.id == _A.device_id)
    .where(_A.user_id.in_(bindparam("users", expanding=True)))
    .order_by(_A.user_id, _A.allocated_at, _A.id)
)
QUERY_ACTIVE_ALLOCATIONS = QUERY_ALLOCATIONS.where(_A.status == ACTIVE)

UserAllocations = tuple[str, list[AllocationView]]


class QueryWork:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.by_user: dict[str, list[AllocationView]] = {}

    async def load(self, user_ids: Sequence[str], active_only: bool) -> QueryWork:
        """The allocations of every user at once, as the response shows them."""
        stmt = QUERY_ACTIVE_ALLOCATIONS if active_only else QUERY_ALLOCATIONS
        grouped: dict[str, list[AllocationView]] = defaultdict(list)
        rows = await self.session.execute(stmt, {"users": sorted(set(user_ids))})
        for allocation_id, device_id, user_id, status, allocated_at, expires_at, device_name in rows:
            grouped[user_id].append(
                AllocationView(
                    allocation_id=allocation_id,
                    device_id=device_id,
                    device_name=device_name,
                    status=status,
                    allocated_at=allocated_at,
                    expires_at=expires_at,
                )
            )
        self.by_user = dict(grouped)
        return self

    async def handle(self, user_id: str) -> UserAllocations:
        return user_id, self.by_user.get(user_id, [])

    async def flush(self, results: list[UserAllocations]) -> None:
        return None


ALLOCATION_PAGE: Select[*tuple[Any, ...]] = (
    select(
        Allocation.id,
        Allocation.device_id,
        Device.name.label("device_name"),
        Allocation.status,
        Allocation.allocated_at,
        Allocation.expires_at,
        Allocation.user_id,
        Allocation.duration_minutes,
        Allocation.released_at,
        Allocation.release_reason,
    )
    .join(Device, Device.id == Allocation.device_id)
    .order_by(Allocation.allocated_at.desc(), Allocation.id)
)


class Queries:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def batch_query(
        self, actor: User, user_ids: list[str], active_only: bool
    ) -> BatchResult[str, UserAllocations]:
        unique = list(dict.fromkeys(user_ids))

        async def prepare(session: AsyncSession) -> QueryWork:
            return await QueryWork(session).load(unique, active_only)

        def completed(result: BatchResult[str, UserAllocations]) -> str:
            found = sum(len(rows) for _, rows in result.results)
            return f"✅ Batch query completed: {result.success_count} users, {found} allocations"

        return await self.ctx.batch.run(
            domain=DOMAIN,
            operation="query",
            actor_id=actor.id,
            items=unique,
            prepare=prepare,
            log_lines=LogLines(f"🔍 Batch querying allocations for {len(unique)} users...", completed),
        )

    async def list_allocations(
        self, *, user_id: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[Any], int]:
        """A page of allocations (rows with ``ALLOCATION_PAGE``'s columns), newest first,
        and how many match."""
        query = ALLOCATION_PAGE
        if user_id is not None:
            query = query.where(Allocation.user_id == user_id)
        if status is not None:
            query = query.where(Allocation.status == status)
        async with self.ctx.db.read() as session:
            return await paginate(session, query, offset=offset, limit=limit)

    async def list_devices(self, *, status: str | None, offset: int, limit: int) -> tuple[list[Device], int]:
        """A page of devices in id order, and how many match."""
        query = select(Device).where(*(DEVICE_FILTERS[status] if status else [])).order_by(Device.id)
        async with self.ctx.db.read() as session:
            return await paginate(session, query, offset=offset, limit=limit)

    async def list_nodes(self) -> list[NodeOut]:
        async with self.ctx.db.read() as session:
            rows = await session.execute(
                select(
                    Device.node_id,
                    func.count(),
                    func.sum(case((and_(Device.status == AVAILABLE, Device.maintenance.is_(False)), 1), else_=0)),
                    func.sum(case((Device.status == ALLOCATED, 1), else_=0)),
                    func.sum(case((Device.maintenance.is_(True), 1), else_=0)),
                )
                .group_by(Device.node_id)
                .order_by(Device.node_id)
            )
            return [
                NodeOut(
                    node_id=n,
                    devices=int(t),
                    available=int(a or 0),
                    allocated=int(b or 0),
                    maintenance=int(m or 0),
                )
                for n, t, a, b, m in rows
            ]
