"""Dining business rules (seed 002): batch meal orders by department admins.

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
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import structlog
from pydantic import JsonValue
from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.batch import ROLLED_BACK, SKIPPED, BatchMode, BatchResult, ItemFailure
from batchops.core.db import is_postgres, new_id, utcnow
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from batchops.core.events import event
from batchops.core.metrics import batch_metrics
from batchops.core.outbox import enqueue
from batchops.core.runtime import Runtime
from batchops.core.schemas import cents_to_decimal, decimal_to_cents, in_years
from batchops.dining.models import (
    CANCELLED,
    LINE_ACTIVE,
    LINE_CANCELLED,
    MEAL_TYPES,
    PENDING,
    Department,
    Menu,
    Order,
    OrderLine,
)
from batchops.dining.schemas import DepartmentIn, MenuIn
from batchops.identity.models import User

log = structlog.get_logger(__name__)

DOMAIN = "dining"
batch_metrics(DOMAIN).declare(("batch_orders", "quick_batch_orders"))  # the two ordering endpoints
DEPT_ADMIN = "dept_admin"
INDEX_RETRIES = 3
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# The seed's messages (常见错误类型), each prefixed with ``订单 N: `` (N is 1-based).
MISSING = "缺少必要参数"
BAD_DATE = "日期格式不正确"
BAD_MEAL = "餐次类型不正确"
PAST_DATE = "不能为过去的日期报餐"
MENU_UNPUBLISHED = "菜单尚未发布"
BAD_USERS = "部分用户不存在或状态异常"
# Ours, for cases the seed does not name:
ROLLED_BACK_MESSAGE = "同批次其他订单失败，本订单未提交"
SKIPPED_MESSAGE = "前面的订单失败，本订单未处理"


def not_in_department(name: str) -> str:
    return f"用户 {name} 不属于本部门"


def already_ordered(name: str) -> str:
    return f"用户 {name} 已经报餐"


def repeated_in_order(name: str) -> str:
    return f"用户 {name} 在本订单中重复出现"


def local_today(timezone: str, now: dt.datetime | None = None) -> dt.date:
    """Today where the canteen is (``BATCHOPS_TIMEZONE``): what "past" is judged by."""
    return (now or utcnow()).astimezone(ZoneInfo(timezone)).date()


def parse_day(value: JsonValue) -> dt.date | None:
    """A ``YYYY-MM-DD`` string naming a real date in the years every input keeps to, else None."""
    if not isinstance(value, str) or not DATE_RE.match(value):
        return None
    try:
        return in_years(dt.date.fromisoformat(value))
    except ValueError:
        return None


def member_ids(members: Sequence[Any] | None) -> list[str] | None:
    """The userIds of ``[{"userId": …}, …]``; None when missing, empty or malformed."""
    if not members:
        return None
    ids: list[str] = []
    for member in members:
        if not isinstance(member, dict):
            return None
        user_id = member.get("userId")
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id.strip()) > 128:
            return None
        ids.append(user_id.strip())
    return ids


def cents(amount: Decimal) -> int:
    return decimal_to_cents(amount)


ACTIVE_USER = "active"


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
    index: int
    order: dict[str, Any]
    # (id, order_id, user_id, date as YYYY-MM-DD, meal_type, status): LINE_COLUMNS, ready for executemany
    lines: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)

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


def ensure_dept_admin(caller: User) -> str:
    """Only a department admin orders, and only for their own department."""
    if caller.role != DEPT_ADMIN:
        raise ForbiddenError("只有部门管理员可以报餐")
    if not caller.department_id:
        raise ForbiddenError("部门管理员未关联部门")
    return caller.department_id


LINE_COLUMNS = ("id", "order_id", "user_id", "date", "meal_type", "status")
INSERT_LINES_UNNEST = text(
    "INSERT INTO dining_order_lines (id, order_id, user_id, date, meal_type, status) "
    "SELECT * FROM unnest(CAST(:id AS text[]), CAST(:order_id AS text[]), CAST(:user_id AS text[]), "
    "CAST(CAST(:date AS text[]) AS date[]), CAST(:meal_type AS text[]), CAST(:status AS text[]))"
)

INSERT_LINES_SQLITE = (
    "INSERT INTO dining_order_lines (id, order_id, user_id, date, meal_type, status) VALUES (?, ?, ?, ?, ?, ?)"
)


class OrderWork:
    """The orders of one request, judged against one consistent read of the database."""

    def __init__(self, session: AsyncSession, caller: User, department_id: str, today: dt.date) -> None:
        self.session = session
        self.caller = caller
        self.department_id = department_id
        self.today = today
        self.now = utcnow()
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
        prefix, day_iso = f"line-{order_id.removeprefix('order-')}-", day.isoformat()
        lines = [(f"{prefix}{n}", order_id, u.id, day_iso, meal, LINE_ACTIVE) for n, u in enumerate(members, start=1)]
        return Placed(spec.index, order, lines)

    async def flush(self, results: list[Placed]) -> None:
        if not results:
            return
        # Core executemany on the tables: no ORM bookkeeping for a thousand plain rows.
        lines = [line for r in results for line in r.lines]
        await self.session.execute(insert(cast(Table, Order.__table__)), [r.order for r in results])
        if is_postgres(self.session):
            # one statement with six arrays: a thousand-row executemany is ~10x slower on asyncpg
            columns = {key: list(values) for key, values in zip(LINE_COLUMNS, zip(*lines, strict=True), strict=True)}
            await self.session.execute(INSERT_LINES_UNNEST, columns)
        else:
            # straight to the driver's executemany: no per-row parameter processing
            connection = await self.session.connection()
            await connection.exec_driver_sql(INSERT_LINES_SQLITE, lines)
        await enqueue(self.session, [event("dining.order.created", order_payload(r.order, r.lines)) for r in results])


def order_payload(order: dict[str, Any], lines: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    return {
        "orderId": order["id"],
        "departmentId": order["department_id"],
        "date": order["date"].isoformat(),
        "mealType": order["meal_type"],
        "memberCount": order["member_count"],
        "totalAmount": str(cents_to_decimal(order["total_cents"])),
        "userIds": [line[2] for line in lines],
        "createdBy": order["created_by"],
    }


@dataclass
class DaySummaryData:
    meals: list[tuple[str, int, int, int]]  # meal type, headcount, orders, total cents
    by_department: list[tuple[str, str, str, int]]  # department, name, meal type, headcount


class DiningService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.db = rt.db

    def today(self) -> dt.date:
        return local_today(self.rt.settings.timezone)

    # --- batch orders -----------------------------------------------------------------------
    async def place_orders(
        self, caller: User, specs: Sequence[OrderSpec], mode: BatchMode, *, operation: str
    ) -> BatchResult[OrderSpec, Placed]:
        department_id = ensure_dept_admin(caller)
        for attempt in range(1, INDEX_RETRIES + 1):
            today = self.today()

            async def prepare(session: AsyncSession, today: dt.date = today) -> OrderWork:
                return await OrderWork(session, caller, department_id, today).load(specs)

            try:
                return await self.rt.batch.run(
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

    # --- departments and menus ----------------------------------------------------------------
    async def upsert_departments(self, items: Sequence[DepartmentIn]) -> list[Department]:
        ids = [i.department_id for i in items]
        if len(set(ids)) != len(ids):
            raise BadRequestError("Duplicate departmentId in one request")
        now = utcnow()
        rows = [{"id": i.department_id, "name": i.name, "created_at": now, "updated_at": now} for i in items]
        async with self.db.transaction() as session:
            insert_ = pg_insert if is_postgres(session) else sqlite_insert
            stmt = insert_(Department).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=[Department.id], set_={"name": stmt.excluded.name, "updated_at": now}
            )
            await session.execute(stmt)
            found = await session.scalars(select(Department).where(Department.id.in_(ids)))
            by_id = {d.id: d for d in found}
        return [by_id[i] for i in ids]

    async def list_departments(self) -> list[Department]:
        async with self.db.read() as session:
            return list(await session.scalars(select(Department).order_by(Department.id)))

    async def upsert_menus(self, items: Sequence[MenuIn]) -> list[Menu]:
        keys = [(i.date, i.meal_type) for i in items]
        if len(set(keys)) != len(keys):
            raise BadRequestError("Duplicate date + mealType in one request")
        now = utcnow()
        rows = [
            {
                "id": new_id("menu"),
                "date": i.date,
                "meal_type": i.meal_type,
                "price_cents": cents(i.price),
                "items": list(i.items),
                "published": i.published,
                "created_at": now,
                "updated_at": now,
            }
            for i in items
        ]
        async with self.db.transaction() as session:
            insert_ = pg_insert if is_postgres(session) else sqlite_insert
            stmt = insert_(Menu).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=[Menu.date, Menu.meal_type],
                set_={
                    "price_cents": stmt.excluded.price_cents,
                    "items": stmt.excluded["items"],
                    "published": stmt.excluded.published,
                    "updated_at": now,
                },
            )
            await session.execute(stmt)
            found = await session.scalars(select(Menu).where(Menu.date.in_(sorted({d for d, _ in keys}))))
            by_key = {(m.date, m.meal_type): m for m in found}
        return [by_key[k] for k in keys]

    async def publish_menus(self, menu_ids: Sequence[str], published: bool) -> list[Menu]:
        ids = sorted(set(menu_ids))
        async with self.db.transaction() as session:
            found = {m.id: m for m in await session.scalars(select(Menu).where(Menu.id.in_(ids)).with_for_update())}
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFoundError("Menu not found", details=[{"field": "menuIds", "menuIds": missing[:20]}])
            await session.execute(update(Menu).where(Menu.id.in_(ids)).values(published=published, updated_at=utcnow()))
            for menu in found.values():
                menu.published = published
        return [found[i] for i in ids]

    async def list_menus(
        self, *, date_from: dt.date | None, date_to: dt.date | None, meal_type: str | None
    ) -> list[Menu]:
        stmt = select(Menu).order_by(Menu.date, Menu.meal_type)
        if date_from is not None:
            stmt = stmt.where(Menu.date >= date_from)
        if date_to is not None:
            stmt = stmt.where(Menu.date <= date_to)
        if meal_type is not None:
            stmt = stmt.where(Menu.meal_type == meal_type)
        async with self.db.read() as session:
            return list(await session.scalars(stmt.limit(1000)))

    # --- reading and cancelling orders ---------------------------------------------------------
    @staticmethod
    def visible_department(caller: User, department_id: str | None) -> str | None:
        """An admin sees every department; a department admin only their own."""
        if caller.is_admin:
            return department_id
        own = ensure_dept_admin(caller)
        if department_id is not None and department_id != own:
            raise ForbiddenError("只能查看本部门的订单")
        return own

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
        department_id = self.visible_department(caller, department_id)
        conditions = []
        if day is not None:
            conditions.append(Order.date == day)
        if meal_type is not None:
            conditions.append(Order.meal_type == meal_type)
        if department_id is not None:
            conditions.append(Order.department_id == department_id)
        if status is not None:
            conditions.append(Order.status == status)
        async with self.db.read() as session:
            total = int(await session.scalar(select(func.count()).select_from(Order).where(*conditions)) or 0)
            orders = list(
                await session.scalars(
                    select(Order)
                    .where(*conditions)
                    .order_by(Order.date, Order.meal_type, Order.created_at, Order.id)
                    .offset(offset)
                    .limit(limit)
                )
            )
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
            if order.date <= self.today():
                raise BadRequestError("只能在用餐日期之前取消订单")
            now = utcnow()
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
        department_id = self.visible_department(caller, None)
        order_filter = [Order.date == day, Order.status == PENDING]
        if department_id is not None:
            order_filter.append(Order.department_id == department_id)
        async with self.db.transaction() as session:
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
