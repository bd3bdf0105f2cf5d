"""My devices: a device user's allocations (time left, extend, release), reservations,
queue entries and notifications, which arrive live. Every action is the single-item
API's: the service checks that the allocation is the caller's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from batchops.console.web import PagingParams, SignedIn, gettext_for, render, runtime
from batchops.notifications.service import NotificationService
from batchops.scheduler.reads import AllocationFilter, allocation_page
from batchops.scheduler.service import SchedulerService

router = APIRouter()
RELEASE_REASON = "released in the console"


def scheduler_of(request: Request) -> SchedulerService:
    service = runtime(request).services.get(SchedulerService)
    return service


@router.get("/mine")
async def mine(request: Request, user: SignedIn, paging: PagingParams) -> Response:
    rt = runtime(request)
    scheduler = scheduler_of(request)
    allocations, total = await allocation_page(
        rt.db,
        AllocationFilter(user_id=user.id, status="allocated"),
        clock=rt.clock,
        offset=paging.offset,
        limit=paging.size,
    )
    reservations, _ = await scheduler.reservations.list_reservations(
        user_id=user.id, status="reserved", offset=0, limit=50
    )
    queue, _ = await scheduler.queue.list_entries(user_id=user.id, status="waiting", offset=0, limit=50)
    notifications = rt.services.get(NotificationService)
    notes, _ = await notifications.list_for_user(user.id, unread_only=False, offset=0, limit=10)
    return render(
        request,
        "mine.html",
        allocations=allocations,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        reservations=reservations,
        queue=queue,
        notes=notes,
    )


async def _row(request: Request, user_id: str, allocation_id: str) -> Response:
    chosen = AllocationFilter(user_id=user_id, allocation_id=allocation_id)
    rt = runtime(request)
    rows, _ = await allocation_page(rt.db, chosen, clock=rt.clock, offset=0, limit=1)
    return render(request, "_my_allocation_row.html", a=rows[0] if rows else None)


@router.post("/mine/allocations/{allocation_id}/extend")
async def extend(
    request: Request, allocation_id: str, user: SignedIn, minutes: Annotated[int, Form(ge=1, le=1440)] = 30
) -> Response:
    await scheduler_of(request).extend(user, allocation_id, minutes)
    return await _row(request, user.id, allocation_id)


@router.post("/mine/allocations/{allocation_id}/release")
async def release(request: Request, allocation_id: str, user: SignedIn) -> Response:
    await scheduler_of(request).release(user, allocation_id, RELEASE_REASON)
    return await _row(request, user.id, allocation_id)


@router.post("/mine/reservations/{reservation_id}/cancel")
async def cancel_reservation(request: Request, reservation_id: str, user: SignedIn) -> Response:
    await scheduler_of(request).reservations.cancel(user, reservation_id)
    _ = gettext_for(request)
    return render(request, "_flash.html", message=_("Reservation %(id)s cancelled") % {"id": reservation_id})


@router.post("/mine/queue/{entry_id}/cancel")
async def cancel_queue_entry(request: Request, entry_id: str, user: SignedIn) -> Response:
    await scheduler_of(request).queue.cancel(user, entry_id)
    _ = gettext_for(request)
    return render(request, "_flash.html", message=_("Queue entry %(id)s cancelled") % {"id": entry_id})
