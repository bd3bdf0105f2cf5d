"""HTTP routes of the scheduler. No rules here: they live in the operation modules
behind ``service.SchedulerService``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from batchops.core.batch import BatchResult
from batchops.core.runtime import service_of
from batchops.core.schemas import Envelope, Page, PageParams, ok
from batchops.identity.api import AdminUser, CurrentUser, ensure_self_or_admin, rate_limited_admin
from batchops.identity.models import User
from batchops.scheduler.models import QueueEntry, Reservation
from batchops.scheduler.outcomes import Allocated, Extended, Queued, Released
from batchops.scheduler.schemas import (
    AllocateIn,
    AllocationDetail,
    AllocationFailure,
    AllocationRequest,
    AllocationStatus,
    AllocationSuccess,
    BatchAllocateIn,
    BatchAllocateOut,
    BatchExtendIn,
    BatchExtendOut,
    BatchQueryIn,
    BatchQueryOut,
    BatchReleaseIn,
    BatchReleaseOut,
    DeviceFailure,
    DeviceOut,
    DevicesBatchIn,
    DevicesBatchOut,
    ExtendIn,
    ExtendSuccess,
    MaintenanceIn,
    NodeOut,
    QueuedOut,
    QueueEntryOut,
    QueueStatus,
    ReleaseIn,
    ReleaseOut,
    ReservationFailure,
    ReservationIn,
    ReservationOut,
    ReservationsBatchIn,
    ReservationsBatchOut,
    ReservationStatus,
    UserFailure,
)
from batchops.scheduler.service import SchedulerService

router = APIRouter(prefix="/scheduler", tags=["scheduler"])


Service = Annotated[SchedulerService, Depends(service_of(SchedulerService))]


def completed(what: str, result: BatchResult[Any, Any]) -> str:
    return f"Batch {what} completed: {result.success_count}/{result.total_count} succeeded"


def allocation_success(r: Allocated) -> AllocationSuccess:
    a = r.allocation
    return AllocationSuccess(
        user_id=a["user_id"],
        allocation_id=a["id"],
        device_id=r.device.id,
        device_name=r.device.name,
        allocated_at=a["allocated_at"],
        expires_at=a["expires_at"],
    )


def queued_out(r: Queued) -> QueuedOut:
    return QueuedOut(user_id=r.entry["user_id"], queue_entry_id=r.id, position=r.position)


def reservation_out(r: Reservation | dict[str, Any]) -> ReservationOut:
    row = r if isinstance(r, dict) else vars(r)
    return ReservationOut(
        reservation_id=row["id"],
        user_id=row["user_id"],
        device_id=row["device_id"],
        start_at=row["start_at"],
        end_at=row["end_at"],
        status=row["status"],
        allocation_id=row.get("allocation_id"),
        failure_reason=row.get("failure_reason"),
    )


def queue_entry_out(e: QueueEntry, position: int | None) -> QueueEntryOut:
    return QueueEntryOut(
        queue_entry_id=e.id,
        user_id=e.user_id,
        status=e.status,
        priority=e.priority,
        position=position,
        duration_minutes=e.duration_minutes,
        enqueued_at=e.enqueued_at,
        expires_at=e.expires_at,
        granted_at=e.granted_at,
        allocation_id=e.allocation_id,
        reason=e.reason,
    )


def extend_success(r: Extended) -> ExtendSuccess:
    return ExtendSuccess(
        allocation_id=r.id,
        old_expires_at=r.old_expires_at,
        new_expires_at=r.new_expires_at,
        additional_minutes=r.additional_minutes,
    )


def allocation_failures(result: BatchResult[str, Any]) -> list[AllocationFailure]:
    return [AllocationFailure(allocation_id=f.item, reason=f.reason, error=f.error) for f in result.failures]


# --- devices -------------------------------------------------------------------------------------
@router.post("/devices/batch", response_model=Envelope[DevicesBatchOut])
async def register_devices(
    body: DevicesBatchIn, service: Service, actor: User = rate_limited_admin("scheduler.devices")
) -> Envelope[DevicesBatchOut]:
    result = await service.register_devices(actor, body.devices, body.mode())
    out = DevicesBatchOut(
        **result.summary(),
        devices=[DeviceOut.model_validate(d) for d in result.results],
        failures=[
            DeviceFailure(name=f.item.name, id=f.item.id, reason=f.reason, error=f.error) for f in result.failures
        ],
    )
    return ok(out, completed("device registration", result))


@router.get("/devices", response_model=Envelope[Page[DeviceOut]])
async def list_devices(
    _: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Query()],
    status: Annotated[str | None, Query(pattern="^(available|allocated|maintenance|offline)$")] = None,
) -> Envelope[Page[DeviceOut]]:
    rows, total = await service.list_devices(status=status, offset=paging.offset, limit=paging.page_size)
    items = [DeviceOut.model_validate(d) for d in rows]
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


# --- batch operations --------------------------------------------------------------------------------
@router.post("/allocations/batch", response_model=Envelope[BatchAllocateOut])
async def batch_allocate(
    body: BatchAllocateIn, service: Service, actor: User = rate_limited_admin("scheduler.allocate")
) -> Envelope[BatchAllocateOut]:
    result = await service.batch_allocate(actor, body.requests, body.mode())
    out = BatchAllocateOut(
        **result.summary(),
        successes=[allocation_success(r) for r in result.results if isinstance(r, Allocated)],
        queued=[queued_out(r) for r in result.results if isinstance(r, Queued)],
        failures=[UserFailure(user_id=f.item.user_id, reason=f.reason, error=f.error) for f in result.failures],
    )
    return ok(out, completed("allocation", result))


@router.post("/allocations/batch/release", response_model=Envelope[BatchReleaseOut])
async def batch_release(
    body: BatchReleaseIn, service: Service, actor: User = rate_limited_admin("scheduler.release")
) -> Envelope[BatchReleaseOut]:
    result = await service.batch_release(actor, body.allocation_ids, body.reason, body.mode())
    out = BatchReleaseOut(
        **result.summary(), success_ids=[r.id for r in result.results], failures=allocation_failures(result)
    )
    return ok(out, completed("release", result))


@router.post("/allocations/batch/extend", response_model=Envelope[BatchExtendOut])
async def batch_extend(
    body: BatchExtendIn, service: Service, actor: User = rate_limited_admin("scheduler.extend")
) -> Envelope[BatchExtendOut]:
    result = await service.batch_extend(actor, body.allocation_ids, body.additional_minutes, body.mode())
    out = BatchExtendOut(
        **result.summary(),
        successes=[extend_success(r) for r in result.results],
        failures=allocation_failures(result),
    )
    return ok(out, completed("extend", result))


@router.post("/allocations/batch/query", response_model=Envelope[BatchQueryOut])
async def batch_query(
    body: BatchQueryIn, service: Service, actor: User = rate_limited_admin("scheduler.query")
) -> Envelope[BatchQueryOut]:
    result = await service.batch_query(actor, body.user_ids, body.active_only)
    allocations = dict(result.results)
    total = sum(len(v) for v in allocations.values())
    out = BatchQueryOut(allocations=allocations, user_count=len(allocations), total_allocations=total)
    return ok(out, f"Found {total} allocations for {len(allocations)} users")


# --- single-item forms ------------------------------------------------------------------------------
@router.post(
    "/devices/allocate",
    response_model=Envelope[AllocationSuccess] | Envelope[QueuedOut],
    responses={202: {"model": Envelope[QueuedOut], "description": "queued: no device fits now"}},
)
async def allocate(
    body: AllocateIn, user: CurrentUser, service: Service, response: Response
) -> Envelope[AllocationSuccess] | Envelope[QueuedOut]:
    request = AllocationRequest(**body.model_dump(exclude={"user_id"}), user_id=body.user_id or user.id)
    result = await service.allocate(user, request)
    if isinstance(result, Queued):
        response.status_code = 202
        return ok(queued_out(result), "No device available now: request queued")
    return ok(allocation_success(result), "Device allocated")


@router.post("/devices/release", response_model=Envelope[ReleaseOut])
async def release(body: ReleaseIn, user: CurrentUser, service: Service) -> Envelope[ReleaseOut]:
    allocation_id = body.allocation_id
    if allocation_id is None:
        assert body.device_id is not None and body.user_id is not None
        ensure_self_or_admin(user, body.user_id)
        allocation_id = await service.find_active_allocation_id(body.device_id, body.user_id)
    result: Released = await service.release(user, allocation_id, body.reason)
    out = ReleaseOut(
        allocation_id=result.id,
        device_id=result.loaded.device.id,
        user_id=result.loaded.allocation.user_id,
        released_at=result.released_at,
        duration_seconds=result.duration_seconds,
    )
    return ok(out, "Device released")


@router.post("/allocations/{allocation_id}/extend", response_model=Envelope[ExtendSuccess])
async def extend(allocation_id: str, body: ExtendIn, user: CurrentUser, service: Service) -> Envelope[ExtendSuccess]:
    result = await service.extend(user, allocation_id, body.additional_minutes)
    return ok(extend_success(result), "Allocation extended")


@router.get("/allocations", response_model=Envelope[Page[AllocationDetail]])
async def list_allocations(
    user: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Query()],
    user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None,
    status: Annotated[AllocationStatus | None, Query()] = None,
) -> Envelope[Page[AllocationDetail]]:
    if not user.is_admin:
        ensure_self_or_admin(user, user_id or user.id)
        user_id = user.id
    rows, total = await service.list_allocations(
        user_id=user_id, status=status, offset=paging.offset, limit=paging.page_size
    )
    items = [AllocationDetail(allocation_id=a.id, **a._asdict()) for a in rows]
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


# --- devices: maintenance and nodes (phase 3/4) ------------------------------------------------------
@router.post("/devices/{device_id}/maintenance", response_model=Envelope[DeviceOut])
async def set_maintenance(device_id: str, body: MaintenanceIn, _: AdminUser, service: Service) -> Envelope[DeviceOut]:
    device = await service.set_maintenance(device_id, body.maintenance)
    return ok(DeviceOut.model_validate(device), "Maintenance " + ("on" if body.maintenance else "off"))


@router.get("/nodes", response_model=Envelope[list[NodeOut]])
async def list_nodes(_: CurrentUser, service: Service) -> Envelope[list[NodeOut]]:
    return ok(await service.list_nodes())


# --- reservations -------------------------------------------------------------------------------------
@router.post("/reservations", response_model=Envelope[ReservationOut], status_code=201)
async def create_reservation(body: ReservationIn, user: CurrentUser, service: Service) -> Envelope[ReservationOut]:
    row = await service.reservations.create(user, body)
    return ok(reservation_out(row), "Reservation created")


@router.post("/reservations/batch", response_model=Envelope[ReservationsBatchOut])
async def batch_reservations(
    body: ReservationsBatchIn, service: Service, actor: User = rate_limited_admin("scheduler.reserve")
) -> Envelope[ReservationsBatchOut]:
    result = await service.reservations.batch_create(actor, body.reservations, body.mode())
    out = ReservationsBatchOut(
        **result.summary(),
        successes=[reservation_out(r) for r in result.results],
        failures=[
            ReservationFailure(user_id=f.item.user_id, start_at=f.item.start_at, reason=f.reason, error=f.error)
            for f in result.failures
        ],
    )
    return ok(out, completed("reservation", result))


@router.get("/reservations", response_model=Envelope[Page[ReservationOut]])
async def list_reservations(
    user: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Query()],
    user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None,
    status: Annotated[ReservationStatus | None, Query()] = None,
) -> Envelope[Page[ReservationOut]]:
    if not user.is_admin:
        ensure_self_or_admin(user, user_id or user.id)
        user_id = user.id
    rows, total = await service.reservations.list_reservations(
        user_id=user_id, status=status, offset=paging.offset, limit=paging.page_size
    )
    items = [reservation_out(r) for r in rows]
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


@router.get("/reservations/{reservation_id}", response_model=Envelope[ReservationOut])
async def get_reservation(reservation_id: str, user: CurrentUser, service: Service) -> Envelope[ReservationOut]:
    return ok(reservation_out(await service.reservations.get(user, reservation_id)))


@router.post("/reservations/{reservation_id}/cancel", response_model=Envelope[ReservationOut])
async def cancel_reservation(reservation_id: str, user: CurrentUser, service: Service) -> Envelope[ReservationOut]:
    return ok(reservation_out(await service.reservations.cancel(user, reservation_id)), "Reservation cancelled")


# --- the wait queue -----------------------------------------------------------------------------------
@router.get("/queue", response_model=Envelope[Page[QueueEntryOut]])
async def list_queue(
    user: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Query()],
    user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None,
    status: Annotated[QueueStatus | None, Query()] = "waiting",
) -> Envelope[Page[QueueEntryOut]]:
    """Waiting requests in service order (position 1 is served next)."""
    if not user.is_admin:
        ensure_self_or_admin(user, user_id or user.id)
        user_id = user.id
    rows, total = await service.queue.list_entries(
        user_id=user_id, status=status, offset=paging.offset, limit=paging.page_size
    )
    items = [queue_entry_out(e, p) for e, p in rows]
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


@router.get("/queue/{entry_id}", response_model=Envelope[QueueEntryOut])
async def get_queue_entry(entry_id: str, user: CurrentUser, service: Service) -> Envelope[QueueEntryOut]:
    entry, position = await service.queue.get(user, entry_id)
    return ok(queue_entry_out(entry, position))


@router.post("/queue/{entry_id}/cancel", response_model=Envelope[QueueEntryOut])
async def cancel_queue_entry(entry_id: str, user: CurrentUser, service: Service) -> Envelope[QueueEntryOut]:
    return ok(queue_entry_out(await service.queue.cancel(user, entry_id), None), "Queue entry cancelled")
