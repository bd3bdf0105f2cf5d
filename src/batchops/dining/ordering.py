"""Batch meal orders by department admins (seed 002 §批量报餐).

An order is one item of the batch runner (``core/batch.py``): ``OrderWork.load``
reads the caller's department, the menus, the members (locked) and their
existing orders in a constant number of queries; ``handle`` judges one order in
memory against the seed's rules, in the seed's order, and stages it only when
every member passes (an order is all its members or none); ``flush`` writes the
orders and their lines in two bulk INSERTs. A batch is therefore a constant
number of statements and one commit.

No member is ever ordered twice for one date and meal: the members' rows are
locked (PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` serialises writers) before
their existing lines are read, and a partial unique index on active lines
``(user_id, date, meal_type)`` refuses a duplicate whatever happens. Should the
index fire anyway, the whole batch is judged again and the duplicate becomes a
per-order error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import JsonValue
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.batch import ROLLED_BACK, SKIPPED, BatchMode, BatchResult, BatchRunner, ItemFailure
from batchops.core.clock import Clock
from batchops.core.db import new_id, table_of
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError
from batchops.core.events import event
from batchops.core.metrics import batch_metrics
from batchops.core.outbox import enqueue
from batchops.core.schemas import cents_to_decimal
from batchops.dining.models import LINE_ACTIVE, MEAL_TYPES, PENDING, Department, Menu, Order, OrderLine
from batchops.dining.rules import (
    ACTIVE_USER,
    BAD_DATE,
    BAD_MEAL,
    BAD_USERS,
    MENU_UNPUBLISHED,
    MISSING,
    PAST_DATE,
    ROLLED_BACK_MESSAGE,
    SKIPPED_MESSAGE,
    already_ordered,
    ensure_dept_admin,
    local_today,
    member_ids,
    not_in_department,
    parse_day,
    repeated_in_order,
)
from batchops.identity.models import User

log = structlog.get_logger(__name__)

DOMAIN = "dining"
batch_metrics(DOMAIN).declare(("batch_orders", "quick_batch_orders"))  # the two ordering endpoints
INDEX_RETRIES = 3
ORDERS, LINES = table_of(Order), table_of(OrderLine)


@dataclass(frozen=True, slots=True)
class Member:
    """What the rules need of a member, read once (plain values, not ORM objects)."""

    id: str
    name: str
    status: str
    department_id: str | None


@dataclass(frozen=True)
class OrderSpec:
    """One order as asked: ``index`` is 1-based (the seed's ``orderIndex``)."""

    index: int
    date: JsonValue
    meal_type: JsonValue
    members: Sequence[Any] | None
    remark: str | None = None


@dataclass
class Placed:
    """An order that passed every rule: its row and its lines' rows, as they are inserted."""

    index: int
    order: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.order["id"])


def failure_message(failure: ItemFailure[OrderSpec]) -> str:
    """The per-order error text; the runner's own skip / roll-back reasons in Chinese."""
    if (failure.error, failure.reason) == ROLLED_BACK:
        return f"订单 {failure.item.index}: {ROLLED_BACK_MESSAGE}"
    if (failure.error, failure.reason) == SKIPPED:
        return f"订单 {failure.item.index}: {SKIPPED_MESSAGE}"
    return failure.reason


class OrderWork:
    """The orders of one request, judged against one consistent read of the database."""

    def __init__(
        self, session: AsyncSession, caller: User, department_id: str, today: dt.date, now: dt.datetime
    ) -> None:
        self.session = session
        self.caller = caller
        self.department_id = department_id
        self.today = today
        self.now = now
        self.menus: dict[tuple[dt.date, str], Menu] = {}
        self.users: dict[str, Member] = {}
        self.member_ids: dict[int, list[str] | None] = {}
        self.taken: set[tuple[str, dt.date, str]] = set()

    async def load(self, specs: Sequence[OrderSpec]) -> OrderWork:
        session = self.session
        if await session.get(Department, self.department_id) is None:
            raise ForbiddenError("本部门尚未登记，请联系管理员")
        days = sorted({d for s in specs if (d := parse_day(s.date)) is not None})
        if days:
            menus = await session.scalars(select(Menu).where(Menu.date.in_(days)))
            self.menus = {(m.date, m.meal_type): m for m in menus}
        self.member_ids = {s.index: member_ids(s.members) for s in specs}
        ids = sorted({u for found in self.member_ids.values() for u in found or ()})
        # Lock the members first, then read their orders: a concurrent batch for the
        # same members waits here and then sees what the other one committed.
        if ids:
            found = await session.execute(
                select(User.id, User.name, User.status, User.department_id)
                .where(User.id.in_(ids))
                .order_by(User.id)
                .with_for_update()
            )
            self.users = {r.id: Member(r.id, r.name or r.id, r.status, r.department_id) for r in found}
        if ids and days:
            rows = await session.execute(
                select(OrderLine.user_id, OrderLine.date, OrderLine.meal_type).where(
                    OrderLine.status == LINE_ACTIVE, OrderLine.user_id.in_(ids), OrderLine.date.in_(days)
                )
            )
            self.taken = {(u, d, m) for u, d, m in rows}
        return self

    async def handle(self, spec: OrderSpec) -> Placed:
        def fail(error: type[BadRequestError | ForbiddenError | ConflictError], message: str) -> Exception:
            return error(f"订单 {spec.index}: {message}")

        ids = self.member_ids[spec.index] if spec.index in self.member_ids else member_ids(spec.members)
        if spec.date is None or spec.meal_type is None or ids is None:
            raise fail(BadRequestError, MISSING)
        day = parse_day(spec.date)
        if day is None:
            raise fail(BadRequestError, BAD_DATE)
        meal = spec.meal_type
        if not isinstance(meal, str) or meal not in MEAL_TYPES:
            raise fail(BadRequestError, BAD_MEAL)
        if day < self.today:
            raise fail(BadRequestError, PAST_DATE)
        menu = self.menus.get((day, meal))
        if menu is None or not menu.published:
            raise fail(BadRequestError, MENU_UNPUBLISHED)
        users = [self.users.get(i) for i in ids]
        if any(u is None or u.status != ACTIVE_USER for u in users):
            raise fail(BadRequestError, BAD_USERS)
        members = [u for u in users if u is not None]
        for user in members:
            if user.department_id != self.department_id:
                raise fail(ForbiddenError, not_in_department(user.name))
        seen: set[str] = set()
        for user in members:
            if user.id in seen:
                raise fail(BadRequestError, repeated_in_order(user.name))
            seen.add(user.id)
        for user in members:
            if (user.id, day, meal) in self.taken:
                raise fail(ConflictError, already_ordered(user.name))
        # Every check passed: stage the order (later orders of this batch see it).
        self.taken.update((u.id, day, meal) for u in members)
        order_id = new_id("order")
        order = {
            "id": order_id,
            "department_id": self.department_id,
            "menu_id": menu.id,
            "date": day,
            "meal_type": meal,
            "member_count": len(members),
            "price_cents": menu.price_cents,
            "total_cents": menu.price_cents * len(members),
            "status": PENDING,
            "remark": spec.remark,
            "created_by": self.caller.id,
            "created_at": self.now,
        }
        prefix = f"line-{order_id.removeprefix('order-')}-"
        lines = [
            {
                "id": f"{prefix}{n}",
                "order_id": order_id,
                "user_id": u.id,
                "date": day,
                "meal_type": meal,
                "status": LINE_ACTIVE,
            }
            for n, u in enumerate(members, start=1)
        ]
        return Placed(spec.index, order, lines)

    async def flush(self, results: list[Placed]) -> None:
        if not results:
            return
        # Core executemany on the tables: one statement per table whatever the batch's size,
        # without the ORM's per-row bookkeeping for a thousand plain rows.
        await self.session.execute(insert(ORDERS), [r.order for r in results])
        await self.session.execute(insert(LINES), [line for r in results for line in r.lines])
        await enqueue(self.session, [event("dining.order.created", order_payload(r.order, r.lines)) for r in results])


def order_payload(order: dict[str, Any], lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "orderId": order["id"],
        "departmentId": order["department_id"],
        "date": order["date"].isoformat(),
        "mealType": order["meal_type"],
        "memberCount": order["member_count"],
        "totalAmount": str(cents_to_decimal(order["total_cents"])),
        "userIds": [line["user_id"] for line in lines],
        "createdBy": order["created_by"],
    }


class Ordering:
    """Places a department admin's batch of orders through the batch runner."""

    def __init__(self, batch: BatchRunner, clock: Clock, timezone: str) -> None:
        self.batch = batch
        self.clock = clock
        self.timezone = timezone

    async def place_orders(
        self, caller: User, specs: Sequence[OrderSpec], mode: BatchMode, *, operation: str
    ) -> BatchResult[OrderSpec, Placed]:
        department_id = ensure_dept_admin(caller)
        for attempt in range(1, INDEX_RETRIES + 1):
            now = self.clock()
            today = local_today(self.timezone, now)

            async def prepare(session: AsyncSession, today: dt.date = today, now: dt.datetime = now) -> OrderWork:
                return await OrderWork(session, caller, department_id, today, now).load(specs)

            try:
                return await self.batch.run(
                    domain=DOMAIN,
                    operation=operation,
                    actor_id=caller.id,
                    items=specs,
                    prepare=prepare,
                    mode=mode,
                    audit_detail={"departmentId": department_id},
                )
            except IntegrityError as exc:
                # Only reachable if a duplicate slipped past the locks: the unique index
                # refused it, nothing was written; judge the batch again.
                log.warning("dining_order_index_conflict", attempt=attempt, error=str(exc.orig))
        raise ConflictError("报餐冲突，请重试")
