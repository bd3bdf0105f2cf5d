"""Meal orders and the kitchen summary: a department admin's orders (an operator's: every
department's) filtered by date, meal and state, with cancel; the headcount per meal and
per department of a day, as a printable page and as CSV. The service decides what each
caller may see and cancel."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from batchops.console.web import PagingParams, SignedIn, render, runtime
from batchops.core.schemas import IsoDate
from batchops.dining.models import MEAL_TYPES
from batchops.dining.reads import department_members
from batchops.dining.rules import cancellable
from batchops.dining.service import DiningService
from batchops.identity.models import User

router = APIRouter()
STATES = ("pending", "cancelled")


def dining_of(request: Request) -> DiningService:
    service = runtime(request).services.get(DiningService)
    return service


async def member_names(request: Request, caller: User) -> dict[str, str]:
    """Names of the caller's department's members (orders list their members by id)."""
    if not caller.department_id:
        return {}
    return {m.id: m.name for m in await department_members(runtime(request).db, caller.department_id)}


@router.get("/dining/orders")
async def orders(
    request: Request,
    user: SignedIn,
    paging: PagingParams,
    date: Annotated[IsoDate | None, Query()] = None,
    meal: Annotated[Literal["", "breakfast", "lunch", "dinner"], Query()] = "",
    status: Annotated[Literal["", "pending", "cancelled"], Query()] = "",
    department: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    service = dining_of(request)
    rows, total = await service.list_orders(
        user,
        day=date,
        meal_type=meal or None,
        department_id=(department or "").strip() or None,
        status=status or None,
        offset=paging.offset,
        limit=paging.size,
    )
    today = service.today()
    return render(
        request,
        "dining_orders.html",
        orders=[(order, members, cancellable(order.date, today)) for order, members in rows],
        names=await member_names(request, user),
        total=total,
        paging=paging,
        pages=paging.pages(total),
        chosen={"date": date, "meal": meal, "status": status, "department": department or ""},
        meals=MEAL_TYPES,
        states=STATES,
    )


@router.post("/dining/orders/{order_id}/cancel")
async def cancel(request: Request, order_id: str, user: SignedIn) -> Response:
    service = dining_of(request)
    order, members = await service.cancel_order(user, order_id)
    return render(
        request,
        "_dining_order_row.html",
        order=order,
        members=members,
        can_cancel=False,
        names=await member_names(request, user),
    )


@router.get("/dining/summary")
async def summary(request: Request, user: SignedIn, date: Annotated[IsoDate | None, Query()] = None) -> Response:
    service = dining_of(request)
    day = date or service.today()
    data = await service.day_summary(user, day)
    departments: dict[tuple[str, str], dict[str, int]] = {}
    for department_id, name, meal, headcount in data.by_department:
        departments.setdefault((department_id, name), dict.fromkeys(MEAL_TYPES, 0))[meal] = headcount
    return render(
        request,
        "dining_summary.html",
        day=day,
        previous=day - dt.timedelta(days=1),
        following=day + dt.timedelta(days=1),
        meals=data.meals,
        meal_types=MEAL_TYPES,
        departments=departments,
    )


@router.get("/dining/summary.csv")
async def summary_csv(request: Request, user: SignedIn, date: Annotated[IsoDate | None, Query()] = None) -> Response:
    service = dining_of(request)
    day = date or service.today()
    data = await service.day_summary(user, day)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", "departmentId", "departmentName", "mealType", "headcount"])
    for department_id, name, meal, headcount in data.by_department:
        writer.writerow([day.isoformat(), department_id, name, meal, headcount])
    for meal, headcount, _orders, _cents in data.meals:  # the kitchen's totals
        writer.writerow([day.isoformat(), "*", "total", meal, headcount])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="kitchen-{day.isoformat()}.csv"'},
    )
