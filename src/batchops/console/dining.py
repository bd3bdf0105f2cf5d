"""Meals for a department admin (seed 002): the coming days' published menus with how many
of the department's members are already ordered, and the batch order form on the same
page (meals × members, a remark, the total before sending).

A choice goes out as the seed's own requests, through the same service, batch runner and
per-minute limits as the API: quick-batch-orders when every meal has the same members and
they fit its limits, batch-orders otherwise, split into requests of the API's size, each
reported with its summary and a row per order. Failed orders come back as a form with
their members, those already ordered for that meal unticked, to be resent."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from batchops.console.web import SignedIn, render, runtime
from batchops.core.batch import BatchMode
from batchops.core.errors import BadRequestError, TooManyRequestsError
from batchops.core.runtime import Runtime
from batchops.core.schemas import IsoDate
from batchops.dining.api import BATCH_MESSAGE, QUICK_MESSAGE, batch_out, batch_specs, quick_specs
from batchops.dining.models import MEAL_TYPES
from batchops.dining.reads import MemberRow, department_members, department_name, ordered_members
from batchops.dining.rules import ensure_dept_admin, parse_day
from batchops.dining.schemas import (
    MAX_ORDERS,
    MAX_QUICK_MEALS,
    MAX_QUICK_MEMBERS,
    BatchOrdersIn,
    BatchOrdersOut,
    QuickBatchOrdersIn,
)
from batchops.dining.service import DiningService
from batchops.identity.models import User

router = APIRouter()
WEEK_DAYS = 7
ACTIVE = "active"  # a member who can be ordered for (others are listed, not chosen)
MAX_CHOICES = 1000  # meals or order lines in one form
BATCH, QUICK = "batch_orders", "quick_batch_orders"


def dining_of(request: Request) -> DiningService:
    service = runtime(request).services.get(DiningService)
    return service


@dataclass(frozen=True)
class Wanted:
    """One order as chosen in the form: a date, a meal and its members."""

    date: str
    meal: str
    members: tuple[str, ...]


@dataclass
class Sent:
    """One request as sent, and what it answered (None: not attempted)."""

    operation: str
    orders: list[Wanted]
    answer: BatchOrdersOut | None = None
    refused: str | None = None  # why it was not attempted (the rate limit)
    failed: list[tuple[Wanted, str]] = field(default_factory=list)

    @property
    def message(self) -> str:
        return QUICK_MESSAGE if self.operation == QUICK else BATCH_MESSAGE


def plan_requests(wanted: list[Wanted]) -> list[Sent]:
    """The seed's requests for a choice: quick-batch-orders (≤ 10 meals each) when every
    meal has the same ≤ 50 members, else batch-orders (≤ 20 orders each)."""
    same = {w.members for w in wanted}
    if len(same) == 1 and len(wanted[0].members) <= MAX_QUICK_MEMBERS:
        size, operation = MAX_QUICK_MEALS, QUICK
    else:
        size, operation = MAX_ORDERS, BATCH
    return [Sent(operation, wanted[i : i + size]) for i in range(0, len(wanted), size)]


def request_body(sent: Sent, remark: str | None) -> BatchOrdersIn | QuickBatchOrdersIn:
    if sent.operation == QUICK:
        return QuickBatchOrdersIn.model_validate(
            {
                "members": [{"userId": u} for u in sent.orders[0].members],
                "meals": [{"date": w.date, "mealType": w.meal} for w in sent.orders],
                "remark": remark,
            }
        )
    return BatchOrdersIn.model_validate(
        {
            "orders": [
                {"date": w.date, "mealType": w.meal, "members": [{"userId": u} for u in w.members], "remark": remark}
                for w in sent.orders
            ]
        }
    )


async def send_all(rt: Runtime, actor: User, plan: list[Sent], remark: str | None) -> None:
    """Each request admitted like an API call (one hit of its per-minute limit), then run by
    the service; a refused one and those after it are reported as not attempted. Every
    request is validated as the API would before the first is sent."""
    service = rt.services.get(DiningService)
    try:
        bodies = [request_body(sent, remark) for sent in plan]
    except ValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()[:10]]
        raise BadRequestError("Validation failed", details=details) from None
    for number, (sent, body) in enumerate(zip(plan, bodies, strict=True)):
        try:
            await rt.limiter.hit(f"dining.{sent.operation}:{actor.id}")
        except TooManyRequestsError as exc:
            for rest in plan[number:]:
                rest.refused = exc.message
            return
        specs = quick_specs(body) if isinstance(body, QuickBatchOrdersIn) else batch_specs(body)
        result = await service.place_orders(actor, specs, BatchMode(), operation=sent.operation)
        sent.answer = batch_out(result)
        sent.failed = [(sent.orders[e.order_index - 1], e.error) for e in sent.answer.errors]


def parse_choice(meals: list[str], members: list[str], lines: list[str]) -> list[Wanted]:
    """``meal`` values (``date|meal``) × ``member`` values, or ``line`` values
    (``date|meal|userId``: the resend form, members per order), in the order given."""
    chosen: dict[tuple[str, str], list[str]] = {}
    if lines:
        for line in lines:
            day, _, rest = line.partition("|")
            meal, _, user_id = rest.partition("|")
            if day and meal and user_id.strip():
                chosen.setdefault((day, meal), []).append(user_id.strip())
    else:
        people = [m.strip() for m in dict.fromkeys(members) if m.strip()]
        for value in dict.fromkeys(meals):
            day, _, meal = value.partition("|")
            if day and meal and people:
                chosen[(day, meal)] = people
    return [Wanted(day, meal, tuple(dict.fromkeys(users))) for (day, meal), users in chosen.items()]


def days_from(start: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=n) for n in range(WEEK_DAYS)]


async def ordered_names(
    rt: Runtime, department_id: str, days: list[dt.date], names: dict[str, str]
) -> tuple[dict[str, list[str]], dict[tuple[str, str], set[str]]]:
    """Who of the department is ordered, per ``date|meal`` key (names, for the week's
    cells) and per (date, meal) (ids, for the resend form)."""
    if not days:
        return {}, {}
    found = await ordered_members(rt.db, department_id, min(days), max(days))
    by_key = {
        f"{day.isoformat()}|{meal}": sorted(names.get(u, u) for u in users) for (day, meal), users in found.items()
    }
    return by_key, {(day.isoformat(), meal): users for (day, meal), users in found.items()}


@router.get("/dining")
async def week(request: Request, user: SignedIn, start: Annotated[IsoDate | None, Query()] = None) -> Response:
    rt = runtime(request)
    department_id = ensure_dept_admin(user)
    service = dining_of(request)
    today = service.today()
    days = days_from(start or today)
    menus = await service.list_menus(date_from=days[0], date_to=days[-1], meal_type=None)
    members = await department_members(rt.db, department_id)
    ordered, _ = await ordered_names(rt, department_id, days, {m.id: m.name for m in members})
    return render(
        request,
        "dining_week.html",
        days=days,
        today=today,
        meals=MEAL_TYPES,
        menus={f"{m.date.isoformat()}|{m.meal_type}": m for m in menus},
        members=members,
        active_members=active_count(members),
        ordered=ordered,
        previous=days[0] - dt.timedelta(days=WEEK_DAYS),
        following=days[0] + dt.timedelta(days=WEEK_DAYS),
        department=await department_name(rt.db, department_id),
    )


def active_count(members: list[MemberRow]) -> int:
    return sum(1 for m in members if m.status == ACTIVE)


@router.post("/dining/orders")
async def place(
    request: Request,
    actor: SignedIn,
    meal: Annotated[list[str], Form(max_length=MAX_CHOICES)] = [],  # noqa: B006 - FastAPI copies defaults
    member: Annotated[list[str], Form(max_length=MAX_CHOICES)] = [],  # noqa: B006
    line: Annotated[list[str], Form(max_length=MAX_CHOICES)] = [],  # noqa: B006
    remark: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    rt = runtime(request)
    department_id = ensure_dept_admin(actor)
    wanted = parse_choice(meal, member, line)
    if not wanted:
        raise BadRequestError("Choose at least one meal and one member")
    plan = plan_requests(wanted)
    await send_all(rt, actor, plan, remark.strip() or None)
    members = await department_members(rt.db, department_id)
    names = {m.id: m.name for m in members}
    days = sorted({day for s in plan for w in s.orders if (day := parse_day(w.date)) is not None})
    counts, held = await ordered_names(rt, department_id, days, names)
    to_fix = [(w, error) for s in plan for w, error in s.failed]
    to_fix += [(w, s.refused) for s in plan if s.refused for w in s.orders]
    fix_rows = [
        {
            "order": w,
            "error": error,
            "members": [(u, names.get(u, u), u in held.get((w.date, w.meal), set())) for u in w.members],
        }
        for w, error in to_fix
    ]
    return render(
        request,
        "_dining_result.html",
        plan=plan,
        fix_rows=fix_rows,
        counts=counts,
        # the week's cells of the meals just ordered (those on the page) show the new counts
        count_keys=list(dict.fromkeys(f"{w.date}|{w.meal}" for s in plan for w in s.orders)),
        active_members=active_count(members),
        remark=remark.strip(),
    )
