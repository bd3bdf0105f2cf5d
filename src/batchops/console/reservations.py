"""Reservations as a timeline per device, and the wait queue (position, priority, age)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from batchops.console.web import Admin, PagingParams, gettext_for, render, runtime
from batchops.scheduler.reads import reservation_timeline
from batchops.scheduler.service import SchedulerService

router = APIRouter()


def bar(start: datetime, end: datetime, day_start: datetime) -> tuple[float, float]:
    """(left, width) of a window on the day's 24-hour axis, in percent, clipped to the day."""
    day = 24 * 3600
    left = max(0.0, (start - day_start).total_seconds() / day)
    right = min(1.0, (end - day_start).total_seconds() / day)
    return round(left * 100, 2), round(max(0.5, (right - left) * 100), 2)


@router.get("/reservations")
async def reservations(
    request: Request,
    _admin: Admin,
    paging: PagingParams,
    day: Annotated[date | None, Query()] = None,
    user: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    rt = runtime(request)
    zone = ZoneInfo(rt.settings.timezone)
    day = day or rt.clock().astimezone(zone).date()
    day = min(day, date(9998, 12, 30))
    day_start = datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC)
    devices, total = await reservation_timeline(
        rt.db,
        start=day_start,
        end=day_start + timedelta(days=1),
        user_id=(user or "").strip() or None,
        offset=paging.offset,
        limit=paging.size,
    )
    timeline = [(device, [(r, *bar(r.start_at, r.end_at, day_start)) for r in rows]) for device, rows in devices]
    scheduler = rt.services.get(SchedulerService)
    queue, waiting = await scheduler.queue.list_entries(user_id=None, status="waiting", offset=0, limit=50)
    return render(
        request,
        "reservations.html",
        timeline=timeline,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        day=day,
        previous_day=day - timedelta(days=1),
        next_day=day + timedelta(days=1),
        user_filter=user or "",
        queue=queue,
        waiting=waiting,
    )


@router.post("/reservations/{reservation_id}/cancel")
async def cancel_reservation(request: Request, reservation_id: str, actor: Admin) -> Response:
    scheduler = runtime(request).services.get(SchedulerService)
    reservation = await scheduler.reservations.cancel(actor, reservation_id)
    _ = gettext_for(request)
    return render(request, "_flash.html", message=_("Reservation %(id)s cancelled") % {"id": reservation.id})


@router.post("/queue/{entry_id}/cancel")
async def cancel_queue_entry(request: Request, entry_id: str, actor: Admin) -> Response:
    scheduler = runtime(request).services.get(SchedulerService)
    entry = await scheduler.queue.cancel(actor, entry_id)
    return render(request, "_queue_row.html", entry=entry, position=None)
