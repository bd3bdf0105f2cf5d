"""Orders once placed: listed, cancelled before their date, summed up per day for the kitchen."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

import structlog
from sqlalchemy import func, select, update

from batchops.core.clock import Clock
from batchops.core.db import Database, paginate
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from batchops.core.events import event
from batchops.core.outbox import enqueue
from batchops.dining.models import (
    CANCELLED,
    LINE_ACTIVE,
    LINE_CANCELLED,
    MEAL_TYPES,
    PENDING,
    Department,
    Order,
    OrderLine,
)
from batchops.dining.rules import cancellable, ensure_dept_admin, local_today, visible_department
from batchops.identity.models import User

log = structlog.get_logger(__name__)


@dataclass
class DaySummaryData:
    meals: list[tuple[str, int, int, int]]  # meal type, headcount, orders, total cents
    by_department: list[tuple[str, str, str, int]]  # department, name, meal type, headcount


class PlacedOrders:
    def __init__(self, db: Database, clock: Clock, timezone: str) -> None:
        self.db = db
        self.clock = clock
        self.timezone = timezone

    async def list_orders(
        self,
        caller: User,
        *,
        day: dt.date | None,
        meal_type: str | None,
        department_id: str | None,
        status: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[tuple[Order, list[str]]], int]:
        department_id = visible_department(caller, department_id)
        conditions = []
        if day is not None:
            conditions.append(Order.date == day)
        if meal_type is not None:
            conditions.append(Order.meal_type == meal_type)
        if department_id is not None:
            conditions.append(Order.department_id == department_id)
        if status is not None:
            conditions.append(Order.status == status)
        query = select(Order).where(*conditions).order_by(Order.date, Order.meal_type, Order.created_at, Order.id)
        async with self.db.read() as session:
            orders, total = await paginate(session, query, offset=offset, limit=limit)
            members: dict[str, list[str]] = defaultdict(list)
            if orders:
                rows = await session.execute(
                    select(OrderLine.order_id, OrderLine.user_id)
                    .where(OrderLine.order_id.in_([o.id for o in orders]))
                    .order_by(OrderLine.order_id, OrderLine.user_id)
                )
                for order_id, user_id in rows:
                    members[order_id].append(user_id)
        return [(o, members[o.id]) for o in orders], total

    async def cancel_order(self, caller: User, order_id: str) -> tuple[Order, list[str]]:
        """Cancel before the meal's date: the members are free to be ordered again."""
        async with self.db.transaction() as session:
            order = await session.scalar(select(Order).where(Order.id == order_id).with_for_update())
            if order is None:
                raise NotFoundError("订单不存在")
            if not caller.is_admin and ensure_dept_admin(caller) != order.department_id:
                raise ForbiddenError("只能取消本部门的订单")
            if order.status == CANCELLED:
                raise ConflictError("订单已取消")
            now = self.clock()
            if not cancellable(order.date, local_today(self.timezone, now)):
                raise BadRequestError("只能在用餐日期之前取消订单")
            order.status, order.cancelled_at = CANCELLED, now
            await session.execute(
                update(OrderLine)
                .where(OrderLine.order_id == order.id, OrderLine.status == LINE_ACTIVE)
                .values(status=LINE_CANCELLED)
            )
            members = list(
                await session.scalars(
                    select(OrderLine.user_id).where(OrderLine.order_id == order.id).order_by(OrderLine.user_id)
                )
            )
            payload = {
                "orderId": order.id,
                "departmentId": order.department_id,
                "date": order.date.isoformat(),
                "mealType": order.meal_type,
                "userIds": members,
                "cancelledBy": caller.id,
            }
            await enqueue(session, [event("dining.order.cancelled", payload)])
        log.info("dining_order_cancelled", order_id=order_id, by=caller.id)
        return order, members

    async def day_summary(self, caller: User, day: dt.date) -> DaySummaryData:
        """Headcounts per meal of one date for the kitchen (a department admin: their own)."""
        department_id = visible_department(caller, None)
        order_filter = [Order.date == day, Order.status == PENDING]
        if department_id is not None:
            order_filter.append(Order.department_id == department_id)
        async with self.db.transaction() as session:  # both reads see the same orders
            per_meal = await session.execute(
                select(Order.meal_type, func.sum(Order.member_count), func.count(), func.sum(Order.total_cents))
                .where(*order_filter)
                .group_by(Order.meal_type)
            )
            by_meal = {m: (int(h or 0), int(n), int(t or 0)) for m, h, n, t in per_meal}
            per_department = await session.execute(
                select(Order.department_id, Department.name, Order.meal_type, func.sum(Order.member_count))
                .join(Department, Department.id == Order.department_id)
                .where(*order_filter)
                .group_by(Order.department_id, Department.name, Order.meal_type)
                .order_by(Order.department_id, Order.meal_type)
            )
            departments = [(d, name, m, int(h or 0)) for d, name, m, h in per_department]
        meals = [(m, *by_meal.get(m, (0, 0, 0))) for m in MEAL_TYPES]
        order_rank = {m: i for i, m in enumerate(MEAL_TYPES)}
        departments.sort(key=lambda r: (r[0], order_rank.get(r[2], 9)))
        return DaySummaryData(meals=meals, by_department=departments)
