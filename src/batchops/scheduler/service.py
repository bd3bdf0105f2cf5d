"""Scheduler business rules: allocate, release, extend, query, expire.

Each operation is a *work* object for the batch runner (see ``core/batch.py``):
``prepare`` loads and locks what every item needs in a constant number of
queries, ``handle`` decides one item in memory, ``flush`` writes all successes
in bulk. The single-item endpoints use the very same work objects with one item,
so a rule lives in exactly one place.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Subquery,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CNY, Book, InsufficientBalance
from batchops.billing.service import BillingService, allocation_hold
from batchops.billing.usage import UsageFact
from batchops.core.batch import BatchMode, BatchResult, LogLines, counted
from batchops.core.db import advisory_lock, fetch_rows, in_list, is_postgres, new_id, table_of, utcnow
from batchops.core.errors import (
    AppError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
)
from batchops.core.events import event, occurred_at
from batchops.core.metrics import batch_metrics
from batchops.core.outbox import OutboxItem, enqueue
from batchops.core.runtime import Runtime
from batchops.core.writes import WriteSet, joining
from batchops.identity.models import User
from batchops.identity.service import ensure_active
from batchops.notifications.service import NewNotification, NotificationService
from batchops.scheduler.models import (
    ACTIVE,
    ALLOCATED,
    AVAILABLE,
    MAINTENANCE,
    OFFLINE,
    RELEASED,
    RESERVED,
    WAITING,
    Allocation,
    Device,
    Reservation,
)
from batchops.scheduler.placement import Bucket, Candidate, Placement, PlacementIncomplete, Window
from batchops.scheduler.schemas import AllocationRequest, DeviceIn

if TYPE_CHECKING:
    from batchops.scheduler.reservations import ReservationService
    from batchops.scheduler.waitqueue import WaitQueue

log = structlog.get_logger(__name__)

DOMAIN = "scheduler"
# every batch operation of the domain (reservations.py's "reserve" included), for its metrics
BATCH_OPERATIONS = ("allocate", "release", "extend", "query", "register_devices", "expire", "daily_release", "reserve")
batch_metrics(DOMAIN).declare(BATCH_OPERATIONS)
# GET /scheduler/devices?status=: maintenance is a flag beside the status (a device in
# maintenance may still run its last allocation), so "available" means free to take.
DEVICE_FILTERS: dict[str, list[ColumnElement[bool]]] = {
    AVAILABLE: [Device.status == AVAILABLE, Device.maintenance.is_(False)],
    ALLOCATED: [Device.status == ALLOCATED],
    MAINTENANCE: [or_(Device.maintenance.is_(True), Device.status == MAINTENANCE)],
    OFFLINE: [Device.status == OFFLINE],
}
ALLOCATE_LOCK = "scheduler.allocate"
DEVICES_FREED_KIND = "scheduler.devices_freed"
# One message per transaction that frees devices: the worker then grants waiting requests.
DEVICES_FREED = OutboxItem(kind=DEVICES_FREED_KIND, name="devices-freed", payload={})


def _iso_text(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


# A batch writes the same instants (its "now", each allocation's times) into several
# payloads (event, notification, usage report and record): a release of 100 formatted
# ~600, the largest single cost of its Python. Only ours (utcnow, UTCDateTime: tzinfo
# UTC) are cached, where the same instant is always the same text.
_iso_utc = lru_cache(maxsize=4096)(_iso_text)


def iso(ts: datetime) -> str:
    return _iso_utc(ts) if ts.tzinfo is UTC else _iso_text(ts)


# --- allocate ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """One allocation to make: from an API request, a queue entry or a reservation."""

    user_id: str
    duration_minutes: int
    min_cpu: int | None = None
    min_memory: int | None = None
    queue: QueueOptions | None = None
    device_id: str | None = None  # pinned (a reservation's device)
    reservation_id: str | None = None
    expires_at: datetime | None = None  # fixed end (a reservation's end)

    @classmethod
    def of(cls, request: AllocationRequest) -> Ask:
        prefs = request.device_preferences
        queue = QueueOptions(request.priority, request.max_wait_minutes) if request.queue_if_unavailable else None
        return cls(
            user_id=request.user_id,
            duration_minutes=request.duration_minutes,
            min_cpu=prefs.cpu if prefs else None,
            min_memory=prefs.memory if prefs else None,
            queue=queue,
        )


@dataclass(frozen=True)
class QueueOptions:
    priority: int
    max_wait_minutes: int


@dataclass
class Allocated:
    allocation: dict[str, Any]
    device: Candidate

    @property
    def id(self) -> str:
        return str(self.allocation["id"])


@dataclass
class Queued:
    entry: dict[str, Any]
    position: int = 0

    @property
    def id(self) -> str:
        return str(self.entry["id"])


def quota_exceeded(user: User, current: int) -> ForbiddenError:
    return ForbiddenError(f"Quota exceeded: maxDevices={user.max_devices}, current={current}")


def check_user_can_allocate(user: User | None, active: int) -> User:
    """The admission rules every allocation path shares (seed 000 scenario 5)."""
    user = ensure_active(user)
    if active >= user.max_devices:
        raise quota_exceeded(user, active)
    return user


NO_DEVICE = "No available devices"


class AllocateWork:
    """Allocations for a batch of asks, placed by ``placement.Placement`` (best fit,
    then spread over nodes, never into a reserved window). An ask that opts in is
    queued instead of failing when nothing fits."""

    def __init__(
        self,
        session: AsyncSession,
        service: SchedulerService,
        actor: User | None,
        allocation_ids: Iterator[str] | None = None,
    ) -> None:
        self.session = session
        self.service = service
        self.actor = actor
        self.allocation_ids = allocation_ids  # given ids, taken in order by the asks that get a device
        self.users: dict[str, User] = {}
        self.active: dict[str, int] = {}
        self.placement = Placement([], {}, {})
        self.book: Book | None = None
        self.chosen: list[Candidate] = []
        self.now = utcnow()

    async def load(self, user_ids: Sequence[str], per_bucket: int | None = None) -> AllocateWork:
        await self.load_devices(per_bucket)
        return await self.load_users(user_ids)

    async def load_users(self, user_ids: Sequence[str]) -> AllocateWork:
        self.users, self.active = await users_with_active_counts(self.session, user_ids)
        self.book = await self.service.holds_book(self.session, list(self.users))
        return self

    async def load_devices(self, per_bucket: int | None = None, *, locked: bool = False) -> AllocateWork:
        """Take the allocation lock and load the free devices and the windows they must keep.

        ``per_bucket``: a batch of n asks takes at most n devices of one (size, node)
        bucket, so only the first n of each are read (1,000 free devices, 1 ask: 10
        rows, not 1,000); ``Placement`` asks for the rest if a bucket runs dry.
        """
        if not locked:  # ``locked``: the caller took it already
            await advisory_lock(self.session, ALLOCATE_LOCK)
        await self._read_devices(per_bucket)
        return self

    async def _read_devices(self, per_bucket: int | None) -> None:
        """Free devices, their node's load and their reserved windows: one SELECT
        (one row per device and window). The batch's clock starts when it returns."""
        now = utcnow()
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
        self.now = utcnow()

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
        self.service.ensure_actor_may_act_for(self.actor, ask.user_id)
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
                self.book.hold(user.id, self.service.estimate(device, minutes), allocation_hold(allocation_id))
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

    async def flush(
        self,
        results: list[Allocated | Queued],
        also_notify: Sequence[NewNotification] = (),
        writes: WriteSet | None = None,
    ) -> None:
        """Write the batch; ``also_notify``: the caller's own notifications, sent in the same
        INSERT; ``writes``: the caller's, to send the allocations with (else they go at once)."""
        allocated = [r for r in results if isinstance(r, Allocated)]
        queued = [r for r in results if isinstance(r, Queued)]
        async with joining(self.session, writes) as w:
            if allocated:
                await self._write_allocations(allocated, also_notify, w)
            if queued:
                await self.service.queue.write_entries(self.session, queued)

    async def _write_allocations(
        self, results: list[Allocated], also_notify: Sequence[NewNotification], writes: WriteSet
    ) -> None:
        """Claim the devices, insert the allocations, hold their cost, announce them: one
        round trip on PostgreSQL."""
        writes.update(
            DEVICES,
            [{"id": r.device.id} for r in results],
            values={"status": ALLOCATED, "updated_at": self.now},
            where={"status": AVAILABLE},
            unless_all=ConflictError("A chosen device was taken concurrently; retry the request"),
        )
        writes.insert(table_of(Allocation), [r.allocation for r in results])
        if self.book is not None:
            await self.book.flush(writes)
        at = occurred_at()
        await enqueue(self.session, [event("device.allocated", allocated_payload(r), at) for r in results], writes)
        await self.service.notifications.send(
            self.session,
            [
                NewNotification(
                    user_id=r.allocation["user_id"],
                    type="device.allocated",
                    title="📱 设备已分配",
                    content=f"设备 {r.device.name} 已分配给您，使用时长 {r.allocation['duration_minutes']} 分钟。",
                    data={
                        "allocationId": r.id,
                        "deviceId": r.device.id,
                        "expiresAt": iso(r.allocation["expires_at"]),
                    },
                )
                for r in results
            ]
            + list(also_notify),
            writes,
        )


MAX_MINUTES = 1440
DEVICES, RESERVATIONS = table_of(Device), table_of(Reservation)
_A = table_of(Allocation)


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
    bucket from ``ix_devices_bucket`` (``ORDER BY id LIMIT k`` in a LATERAL join) instead
    of ranking the whole free fleet, which sorts every free device (1,000: ~3 ms)."""
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


# Built once: a hot path. The first n+1 of each bucket tell whether a bucket has more.
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


def allocated_result(r: Allocated) -> dict[str, Any]:
    """An allocation as the batch response shows it (``AllocationSuccess``, in its field order)."""
    a = r.allocation
    return {
        "userId": a["user_id"],
        "allocationId": a["id"],
        "deviceId": r.device.id,
        "deviceName": r.device.name,
        "allocatedAt": iso(a["allocated_at"]),
        "expiresAt": iso(a["expires_at"]),
    }


def allocated_payload(r: Allocated) -> dict[str, Any]:
    """The ``device.allocated`` event: the response's view and the duration."""
    return {**allocated_result(r), "durationMinutes": r.allocation["duration_minutes"]}


async def users_with_active_counts(
    session: AsyncSession, user_ids: Sequence[str]
) -> tuple[dict[str, User], dict[str, int]]:
    """The named users and how many active allocations each holds: one SELECT."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}, {}
    rows = (await session.execute(USERS_WITH_ACTIVE, {"ids": ids})).all()
    return {u.id: u for u, _ in rows}, {u.id: int(n) for u, n in rows}


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


# --- release & extend share the loading of allocations -------------------------------------------
@dataclass(slots=True)
class LoadedRow:
    """What release and extend read of an allocation: plain objects from a Core row,
    not ORM ``Allocation``/``Device`` instances (their identity-map bookkeeping was
    the largest cost of a 100-item release)."""

    id: str
    device_id: str
    user_id: str
    status: str
    allocated_at: datetime
    expires_at: datetime


@dataclass(slots=True)
class LoadedDevice:
    id: str
    name: str
    cpu_cores: int
    memory_mb: int
    storage_mb: int


@dataclass(slots=True)
class LoadedAllocation:
    allocation: LoadedRow
    device: LoadedDevice


_D = DEVICES.c
LOAD_ALLOCATIONS = (
    select(
        _A.c.id,
        _A.c.device_id,
        _A.c.user_id,
        _A.c.status,
        _A.c.allocated_at,
        _A.c.expires_at,
        _D.name,
        _D.cpu_cores,
        _D.memory_mb,
        _D.storage_mb,
    )
    .join(DEVICES, _D.id == _A.c.device_id)
    .where(_A.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_A.c.id)
    .with_for_update(of=_A)
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


@dataclass
class Released:
    loaded: LoadedAllocation
    released_at: datetime
    duration_seconds: int
    reason: str | None

    @property
    def id(self) -> str:
        return self.loaded.allocation.id


class ReleaseWork:
    def __init__(
        self, session: AsyncSession, service: SchedulerService, actor: User | None, reason: str | None
    ) -> None:
        self.session = session
        self.service = service
        self.actor = actor
        self.reason = reason
        self.loaded: dict[str, LoadedAllocation] = {}
        self.released: set[str] = set()
        self.now = utcnow()

    async def load(self, ids: Sequence[str]) -> ReleaseWork:
        self.loaded = await load_allocations(self.session, ids)
        self.now = utcnow()  # once their rows are locked: a period never ends before it starts
        return self

    async def handle(self, allocation_id: str) -> Released:
        loaded = check_active(self.loaded.get(allocation_id), RELEASED if allocation_id in self.released else None)
        self.service.ensure_actor_may_act_for(self.actor, loaded.allocation.user_id)
        self.released.add(allocation_id)  # a repeated id in the same batch sees "released"
        seconds = max(0, int((self.now - loaded.allocation.allocated_at).total_seconds()))
        return Released(loaded, self.now, seconds, self.reason)

    async def flush(self, results: list[Released]) -> None:
        await self.service.write_releases(self.session, results)


@dataclass
class Extended:
    loaded: LoadedAllocation
    old_expires_at: datetime
    new_expires_at: datetime
    additional_minutes: int

    @property
    def id(self) -> str:
        return self.loaded.allocation.id


class ExtendWork:
    def __init__(
        self, session: AsyncSession, service: SchedulerService, actor: User | None, additional_minutes: int
    ) -> None:
        self.session = session
        self.service = service
        self.actor = actor
        self.minutes = additional_minutes
        self.loaded: dict[str, LoadedAllocation] = {}
        self.extended: dict[str, datetime] = {}
        self.windows: dict[str, list[Window]] = {}
        self.book: Book | None = None
        self.now = utcnow()

    async def load(self, ids: Sequence[str]) -> ExtendWork:
        self.loaded = await load_allocations(self.session, ids)
        self.now = utcnow()  # once their rows are locked (expired or not is judged at that time)
        if self.loaded:
            latest = max(la.allocation.expires_at for la in self.loaded.values())
            horizon = latest + timedelta(minutes=self.minutes * len(ids))
            self.windows = await reserved_windows(
                self.session, self.now, horizon, [la.device.id for la in self.loaded.values()]
            )
            self.book = await self.service.holds_book(
                self.session,
                [la.allocation.user_id for la in self.loaded.values()],
                [allocation_hold(i) for i in self.loaded],
            )
        return self

    async def handle(self, allocation_id: str) -> Extended:
        loaded = check_active(self.loaded.get(allocation_id))
        allocation = loaded.allocation
        self.service.ensure_actor_may_act_for(self.actor, allocation.user_id)
        old = self.extended.get(allocation.id, allocation.expires_at)
        if old <= self.now:
            raise BadRequestError("Allocation is not active (status: expired)")
        new = old + timedelta(minutes=self.minutes)
        taken = next((w for w in self.windows.get(loaded.device.id, ()) if w.overlaps(old, new)), None)
        if taken is not None:
            raise ConflictError(f"Device {loaded.device.name} is reserved from {iso(taken.start)}")
        if self.book is not None:
            self.book.add_to_hold(allocation_hold(allocation.id), self.service.estimate(loaded.device, self.minutes))
        self.extended[allocation.id] = new
        return Extended(loaded, old, new, self.minutes)

    async def flush(self, results: list[Extended]) -> None:
        if not results:
            return
        final = {r.id: r.new_expires_at for r in results}  # a repeated id extends twice, written once
        w = WriteSet(self.session)
        w.update(
            table_of(Allocation),
            [{"id": i, "expires_at": expires} for i, expires in final.items()],
            values={"reminder_sent_at": None},
        )
        if self.book is not None:
            await self.book.flush(w)
        await enqueue(
            self.session,
            [
                event(
                    "scheduler.allocation.extended",
                    {
                        "allocationId": r.id,
                        "userId": r.loaded.allocation.user_id,
                        "deviceId": r.loaded.device.id,
                        "oldExpiresAt": iso(r.old_expires_at),
                        "newExpiresAt": iso(r.new_expires_at),
                        "additionalMinutes": r.additional_minutes,
                    },
                )
                for r in results
            ],
            w,
        )
        await self.service.notifications.send(
            self.session,
            [
                NewNotification(
                    user_id=r.loaded.allocation.user_id,
                    type="scheduler.allocation.extended",
                    title="⏰ 设备使用时间已延长",
                    content=f"设备 {r.loaded.device.name} 使用时间已延长 {r.additional_minutes} 分钟。",
                    data={"allocationId": r.id, "newExpiresAt": iso(r.new_expires_at)},
                )
                for r in results
            ],
            w,
        )
        await w.execute()


# --- query -----------------------------------------------------------------------------------
# What a batch query shows of an allocation: rows read by ``fetch_rows`` (attributes ``id``,
# ``device_id``, ``user_id``, ``status``, ``allocated_at``, ``expires_at``, ``name``), not
# ORM objects, whose bookkeeping cost more than the rest of a 100-user query. The users
# are one list parameter: the same SQL for 1 or 100 of them.
QueriedAllocation = Any
QUERY_ALLOCATIONS = (
    select(_A.c.id, _A.c.device_id, _A.c.user_id, _A.c.status, _A.c.allocated_at, _A.c.expires_at, DEVICES.c.name)
    .join(DEVICES, DEVICES.c.id == _A.c.device_id)
    .where(in_list(_A.c.user_id, "users"))
    .order_by(_A.c.user_id, _A.c.allocated_at, _A.c.id)
)
QUERY_ACTIVE_ALLOCATIONS = QUERY_ALLOCATIONS.where(_A.c.status == ACTIVE)


@dataclass
class QueryWork:
    session: AsyncSession
    by_user: dict[str, list[tuple[QueriedAllocation, str]]] = field(default_factory=dict)

    async def load(self, user_ids: Sequence[str], active_only: bool) -> QueryWork:
        """The seed's single SELECT … WHERE userId IN (…) for every user at once."""
        stmt = QUERY_ACTIVE_ALLOCATIONS if active_only else QUERY_ALLOCATIONS
        grouped: dict[str, list[tuple[QueriedAllocation, str]]] = defaultdict(list)
        for row in await fetch_rows(self.session, stmt, {"users": sorted(set(user_ids))}):
            grouped[row.user_id].append((row, row.name))
        self.by_user = dict(grouped)
        return self

    async def handle(self, user_id: str) -> tuple[str, list[tuple[QueriedAllocation, str]]]:
        return user_id, self.by_user.get(user_id, [])

    async def flush(self, results: list[tuple[str, list[tuple[QueriedAllocation, str]]]]) -> None:
        return None


# --- devices ---------------------------------------------------------------------------------
class RegisterDevicesWork:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.taken: set[str] = set()
        self.now = utcnow()

    async def load(self, devices: Sequence[DeviceIn]) -> RegisterDevicesWork:
        ids = [d.id for d in devices if d.id]
        if ids:
            self.taken = set((await self.session.scalars(select(Device.id).where(Device.id.in_(ids)))).all())
        return self

    async def handle(self, item: DeviceIn) -> dict[str, Any]:
        device_id = item.id or new_id("device")
        if device_id in self.taken:
            raise ConflictError(f"Device {device_id} already exists")
        self.taken.add(device_id)
        return {
            "id": device_id,
            "name": item.name,
            "cpu_cores": item.cpu_cores,
            "memory_mb": item.memory_mb,
            "storage_mb": item.storage_mb,
            "node_id": item.node_id,
            "status": AVAILABLE,
            "maintenance": False,
            "created_at": self.now,
            "updated_at": self.now,
        }

    async def flush(self, results: list[dict[str, Any]]) -> None:
        if results:
            await self.session.execute(insert(Device), results)
            await enqueue(self.session, [DEVICES_FREED])


@lru_cache(maxsize=8)
def device_listing(status: str | None) -> tuple[Select[int], Select[*tuple[Any, ...]]]:
    """GET /scheduler/devices: (count, page) statements for a status filter, built once each."""
    where = DEVICE_FILTERS[status] if status else []
    count = select(func.count().label("total")).select_from(Device).where(*where)
    page = select(DEVICES).where(*where).order_by(Device.id).offset(bindparam("offset")).limit(bindparam("limit"))
    return count, page


@lru_cache(maxsize=4)
def allocation_listing(by_user: bool, by_status: bool) -> tuple[Select[int], Select[*tuple[Any, ...]]]:
    """GET /scheduler/allocations: (count, page) statements for the filters given, built
    once each so their compiled plans are reused."""
    where = []
    if by_user:
        where.append(Allocation.user_id == bindparam("user_id"))
    if by_status:
        where.append(Allocation.status == bindparam("status"))
    count = select(func.count().label("total")).select_from(Allocation).where(*where)
    page = (
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
        .where(*where)
        .order_by(Allocation.allocated_at.desc(), Allocation.id)
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )
    return count, page


# --- the service -------------------------------------------------------------------------------
class SchedulerService:
    # Set by assembly.py: the wait queue and reservations build on this service.
    queue: WaitQueue
    reservations: ReservationService
    billing: BillingService

    def __init__(self, rt: Runtime, notifications: NotificationService) -> None:
        self.rt = rt
        self.db = rt.db
        self.notifications = notifications

    @staticmethod
    def ensure_actor_may_act_for(actor: User | None, user_id: str) -> None:
        """A user acts on their own allocations; an admin (or the system: None) on any."""
        if actor is not None and not actor.is_admin and actor.id != user_id:
            raise ForbiddenError("You may only act on your own allocations")

    async def holds_book(self, session: AsyncSession, user_ids: Sequence[str], refs: Sequence[str] = ()) -> Book | None:
        """The locked ledger accounts allocations and extensions hold against (None: billing not enforced)."""
        if not self.rt.settings.billing_enforce_balance:
            return None
        return await Book(session, CNY).load(user_ids, hold_references=refs)

    def estimate(self, device: Candidate | LoadedDevice, minutes: int) -> int:
        """The pre-authorised cost of ``minutes`` on ``device`` (seed 001 P2)."""
        return self.billing.pricing.cost(minutes * 60, device.cpu_cores, device.memory_mb, device.storage_mb)

    # batch operations ----------------------------------------------------------------------
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
        await self.billing.check_remote_balances({r.user_id for r in requests})

        async def prepare(session: AsyncSession) -> AllocateWork:
            given = iter(allocation_ids) if allocation_ids is not None else None  # per run: a retry starts over
            return await AllocateWork(session, self, actor, given).load(
                [r.user_id for r in requests], per_bucket=len(requests)
            )

        return await self.rt.batch.run(
            domain=DOMAIN,
            operation="allocate",
            actor_id=actor.id,
            items=requests,
            prepare=prepare,
            mode=mode,
            log_lines=LogLines(f"🔄 Batch allocating {len(requests)} devices...", counted("allocation")),
        )

    async def batch_release(
        self, actor: User | None, ids: list[str], reason: str | None, mode: BatchMode, *, operation: str = "release"
    ) -> BatchResult[str, Released]:
        async def prepare(session: AsyncSession) -> ReleaseWork:
            return await ReleaseWork(session, self, actor, reason).load(ids)

        return await self.rt.batch.run(
            domain=DOMAIN,
            operation=operation,
            actor_id=actor.id if actor else None,
            items=ids,
            prepare=prepare,
            mode=mode,
            audit_detail={"reason": reason} if reason else None,
            log_lines=LogLines(f"🔄 Batch releasing {len(ids)} allocations...", counted("release")),
        )

    async def batch_extend(
        self, actor: User, ids: list[str], minutes: int, mode: BatchMode
    ) -> BatchResult[str, Extended]:
        async def prepare(session: AsyncSession) -> ExtendWork:
            return await ExtendWork(session, self, actor, minutes).load(ids)

        return await self.rt.batch.run(
            domain=DOMAIN,
            operation="extend",
            actor_id=actor.id,
            items=ids,
            prepare=prepare,
            mode=mode,
            audit_detail={"additionalMinutes": minutes},
            log_lines=LogLines(f"🔄 Batch extending {len(ids)} allocations by {minutes} minutes...", counted("extend")),
        )

    async def batch_query(
        self, actor: User, user_ids: list[str], active_only: bool
    ) -> BatchResult[str, tuple[str, list[tuple[QueriedAllocation, str]]]]:
        unique = list(dict.fromkeys(user_ids))

        async def prepare(session: AsyncSession) -> QueryWork:
            return await QueryWork(session).load(unique, active_only)

        def completed(result: BatchResult[str, tuple[str, list[Any]]]) -> str:
            found = sum(len(rows) for _, rows in result.results)
            return f"✅ Batch query completed: {result.success_count} users, {found} allocations"

        return await self.rt.batch.run(
            domain=DOMAIN,
            operation="query",
            actor_id=actor.id,
            items=unique,
            prepare=prepare,
            log_lines=LogLines(f"🔍 Batch querying allocations for {len(unique)} users...", completed),
        )

    async def register_devices(
        self, actor: User, devices: list[DeviceIn], mode: BatchMode
    ) -> BatchResult[DeviceIn, dict[str, Any]]:
        async def prepare(session: AsyncSession) -> RegisterDevicesWork:
            return await RegisterDevicesWork(session).load(devices)

        return await self.rt.batch.run(
            domain=DOMAIN,
            operation="register_devices",
            actor_id=actor.id,
            items=devices,
            prepare=prepare,
            mode=mode,
        )

    # single-item forms: the same work objects, one item, errors raised as HTTP errors ------------
    async def allocate(self, actor: User, request: AllocationRequest) -> Allocated | Queued:
        await self.billing.check_remote_balances({request.user_id})

        async def unit(session: AsyncSession) -> Allocated | Queued:
            work = await AllocateWork(session, self, actor).load([request.user_id], per_bucket=1)
            result = await work.handle(request)
            await work.flush([result])
            return result

        return await self.db.run(unit)

    async def release(self, actor: User, allocation_id: str, reason: str | None) -> Released:
        async def unit(session: AsyncSession) -> Released:
            work = await ReleaseWork(session, self, actor, reason).load([allocation_id])
            result = await work.handle(allocation_id)
            await work.flush([result])
            return result

        return await self.db.run(unit)

    async def find_active_allocation_id(self, device_id: str, user_id: str) -> str:
        async with self.db.transaction() as session:
            found = await session.scalar(
                select(Allocation.id).where(
                    Allocation.device_id == device_id, Allocation.user_id == user_id, Allocation.status == ACTIVE
                )
            )
        if found is None:
            raise NotFoundError("Allocation not found")
        return found

    async def extend(self, actor: User, allocation_id: str, minutes: int) -> Extended:
        async def unit(session: AsyncSession) -> Extended:
            work = await ExtendWork(session, self, actor, minutes).load([allocation_id])
            result = await work.handle(allocation_id)
            await work.flush([result])
            return result

        return await self.db.run(unit)

    # reads ------------------------------------------------------------------------------
    async def list_allocations(
        self, *, user_id: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[Any], int]:
        """A page of allocations (rows with ``ALLOCATION_PAGE``'s columns), newest first,
        and how many match: two raw reads outside any transaction (no write lock on SQLite)."""
        count, page = allocation_listing(user_id is not None, status is not None)
        params: dict[str, Any] = {"user_id": user_id, "status": status}
        totals, rows = await self.db.read_rows((count, params), (page, {**params, "offset": offset, "limit": limit}))
        return rows, int(totals[0].total)

    async def list_devices(self, *, status: str | None, offset: int, limit: int) -> tuple[list[Any], int]:
        """A page of devices (rows of the devices table) in id order, and how many match:
        two raw reads outside any transaction, as ``list_allocations``."""
        count, page = device_listing(status)
        totals, rows = await self.db.read_rows((count, {}), (page, {"offset": offset, "limit": limit}))
        return rows, int(totals[0].total)

    async def set_maintenance(self, device_id: str, maintenance: bool) -> Device:
        """A device in maintenance takes nothing new; a running allocation runs to its end."""
        async with self.db.transaction() as session:
            device = await session.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFoundError("Device not found")
            device.maintenance = maintenance
            if not maintenance and device.status == AVAILABLE:
                await enqueue(session, [DEVICES_FREED])
        return device

    async def list_nodes(self) -> list[dict[str, Any]]:
        async with self.db.read() as session:
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
                {
                    "node_id": n,
                    "devices": int(t),
                    "available": int(a or 0),
                    "allocated": int(b or 0),
                    "maintenance": int(m or 0),
                }
                for n, t, a, b, m in rows
            ]

    # release side effects, shared by release, batch release and expiry -------------------------
    async def write_releases(self, session: AsyncSession, results: list[Released]) -> None:
        """Every write of the releases as one WriteSet (one round trip / one driver call):
        the allocations, their devices, the usage records, the events and notifications."""
        if not results:
            return
        w = WriteSet(session)
        now = results[0].released_at
        w.update(  # each row carries its own release time and reason
            _A,
            [{"id": r.id, "released_at": r.released_at, "release_reason": r.reason} for r in results],
            values={"status": RELEASED},
        )
        w.update(
            DEVICES,
            [{"id": r.loaded.device.id} for r in results],
            values={"status": AVAILABLE, "updated_at": now},
            where={"status": ALLOCATED},
        )
        await self.billing.record_usage(session, [usage_fact(r) for r in results])
        messages: list[OutboxItem] = []
        at = occurred_at()
        for r in results:
            payload = released_payload(r)
            messages.append(event("device.released", payload, at))
            messages.append(event("scheduler.allocation.released", payload, at))
        messages.append(DEVICES_FREED)
        await enqueue(session, messages, w)
        await self.notifications.send(
            session,
            [
                NewNotification(
                    user_id=r.loaded.allocation.user_id,
                    type="device.released",
                    title="🔓 设备已释放",
                    content=f"设备 {r.loaded.device.name} 已释放，使用时长 {r.duration_seconds} 秒。"
                    + (f"原因：{r.reason}" if r.reason else ""),
                    data={"allocationId": r.id, "deviceId": r.loaded.device.id, "reason": r.reason},
                )
                for r in results
            ],
            w,
        )
        await w.execute()

    async def expire_due(self, limit: int = 500) -> int:
        """Release every allocation past its ``expiresAt`` (reason ``expired``)."""
        async with self.db.transaction() as session:
            ids = list(
                (
                    await session.scalars(
                        select(Allocation.id)
                        .where(Allocation.status == ACTIVE, Allocation.expires_at <= utcnow())
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


class PolicyJobs:
    """Release policies (seed 000 scenario 2 and reminders) and the scheduler tick."""

    def __init__(self, scheduler: SchedulerService) -> None:
        self.scheduler = scheduler
        self.db = scheduler.db
        self.settings = scheduler.rt.settings

    async def tick(self) -> None:
        """Every few seconds: start due reservations, grant/expire waiting requests,
        remind users of expiries, and run the daily release when its time has come."""
        await self.scheduler.reservations.start_due()
        await self.scheduler.queue.expire_overdue()
        await self.scheduler.queue.grant_waiting()
        await self.send_expiry_reminders()
        await self.daily_release()

    def daily_cutoff(self, now: datetime) -> datetime | None:
        """Today's release time (BATCHOPS_DAILY_RELEASE_TIME in BATCHOPS_TIMEZONE), if passed."""
        at = self.settings.daily_release_time
        if not at:
            return None
        zone = ZoneInfo(self.settings.timezone)
        local = now.astimezone(zone)
        hour, minute = (int(p) for p in at.split(":"))
        cutoff = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return cutoff.astimezone(UTC) if local >= cutoff else None

    async def daily_release(self, now: datetime | None = None) -> int:
        """Release every allocation made before today's cutoff (reason 每日自动释放).

        Idempotent by construction, so any number of workers may run it: an allocation
        made before the cutoff is released once (row locks), one made after it waits
        for tomorrow's cutoff.
        """
        cutoff = self.daily_cutoff(now or utcnow())
        if cutoff is None:
            return 0
        released = 0
        while True:
            async with self.db.transaction() as session:
                ids = list(
                    (
                        await session.scalars(
                            select(Allocation.id)
                            .where(Allocation.status == ACTIVE, Allocation.allocated_at < cutoff)
                            .order_by(Allocation.id)
                            .limit(100)
                        )
                    ).all()
                )
            if not ids:
                break
            result = await self.scheduler.batch_release(
                None, ids, DAILY_RELEASE_REASON, BatchMode(), operation="daily_release"
            )
            released += result.success_count
            if result.success_count == 0:
                break
        if released:
            log.info("daily_release_done", released=released)
        return released

    async def send_expiry_reminders(self) -> int:
        """Notify once per expiry, N minutes before it (an extension re-arms it)."""
        minutes = self.settings.expiry_reminder_minutes
        if not minutes:
            return 0
        now = utcnow()
        # Rows another transaction holds (an extend, a release) are skipped, never waited
        # for: this pass would lock them out of core.transactions' order. The next tick sees them.
        due = (
            select(Allocation.id)
            .where(
                Allocation.status == ACTIVE,
                Allocation.reminder_sent_at.is_(None),
                Allocation.expires_at <= now + timedelta(minutes=minutes),
                Allocation.expires_at > now,
            )
            .with_for_update(skip_locked=True)
        )
        async with self.db.transaction() as session:
            claimed = (
                await session.execute(
                    update(Allocation)
                    .where(Allocation.id.in_(due.scalar_subquery()))
                    .values(reminder_sent_at=now)
                    .returning(Allocation.id, Allocation.user_id, Allocation.device_id, Allocation.expires_at)
                )
            ).all()
            if not claimed:
                return 0
            names = dict(
                (
                    await session.execute(
                        select(Device.id, Device.name).where(Device.id.in_([c.device_id for c in claimed]))
                    )
                ).all()
            )
            await self.scheduler.notifications.send(
                session,
                [
                    NewNotification(
                        user_id=c.user_id,
                        type="scheduler.allocation.expiring",
                        title="⏳ 设备即将到期",
                        content=f"设备 {names.get(c.device_id, c.device_id)} 将于 "
                        f"{max(1, round((c.expires_at - now).total_seconds() / 60))} 分钟后到期，如需继续使用请续期。",
                        data={"allocationId": c.id, "expiresAt": iso(c.expires_at)},
                    )
                    for c in claimed
                ],
            )
        return len(claimed)


DAILY_RELEASE_REASON = "每日自动释放"


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


def released_payload(r: Released) -> dict[str, Any]:
    a = r.loaded.allocation
    return {
        "allocationId": a.id,
        "userId": a.user_id,
        "deviceId": r.loaded.device.id,
        "deviceName": r.loaded.device.name,
        "allocatedAt": iso(a.allocated_at),
        "releasedAt": iso(r.released_at),
        "durationSeconds": r.duration_seconds,
        "reason": r.reason,
    }


__all__ = ["AppError", "SchedulerService"]
