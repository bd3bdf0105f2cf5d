"""Dining reads the time from the clock it is given (the runtime's): which date is past,
which order may still be cancelled, and what the rows are stamped with. A ManualClock is
moved across the canteen's midnight instead of waiting for one; temp-file SQLite."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, update

from batchops.core.batch import BatchMode, BatchRunner
from batchops.core.clock import ManualClock
from batchops.core.db import Database
from batchops.core.errors import BadRequestError
from batchops.dining.canteen import CanteenSetup
from batchops.dining.models import Menu, Order
from batchops.dining.ordering import Ordering, OrderSpec
from batchops.dining.orders import PlacedOrders
from batchops.dining.schemas import DepartmentIn, MenuIn
from batchops.identity.models import User
from tests.unit.sqlite_db import add_users, temp_database

ZONE = "Asia/Shanghai"
# 23:30 on the 10th in Shanghai: half an hour before the canteen's midnight
LATE_ON_THE_10TH = dt.datetime(2030, 6, 10, 15, 30, tzinfo=dt.UTC)
THE_10TH, THE_11TH = dt.date(2030, 6, 10), dt.date(2030, 6, 11)
BOSS = User(id="boss", name="Boss", role="dept_admin", status="active", department_id="rd")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with temp_database(tmp_path) as database:
        await add_users(database, ["boss", "li", "wang"])
        async with database.transaction() as session:
            await session.execute(update(User).values(department_id="rd"))
        yield database


async def order(ordering: Ordering, day: dt.date, *members: str) -> list[str]:
    """The errors of one order for ``members`` (none: it was placed)."""
    spec = OrderSpec(1, day.isoformat(), "lunch", [{"userId": m} for m in members])
    result = await ordering.place_orders(BOSS, [spec], BatchMode(), operation="batch_orders")
    return [f.reason for f in result.failures]


async def test_the_past_and_cancelling_follow_the_clock_across_midnight(db: Database) -> None:
    clock = ManualClock(LATE_ON_THE_10TH)
    canteen, orders = CanteenSetup(db, clock), PlacedOrders(db, clock, ZONE)
    ordering = Ordering(BatchRunner(db), clock, ZONE)
    await canteen.upsert_departments([DepartmentIn(department_id="rd", name="研发部")])
    await canteen.upsert_menus(
        [MenuIn(date=day, meal_type="lunch", price=Decimal("12.50"), published=True) for day in (THE_10TH, THE_11TH)]
    )
    assert await order(ordering, THE_10TH, "li") == []  # still the 10th in Shanghai
    assert await order(ordering, THE_11TH, "wang") == []
    async with db.read() as session:
        placed = {o.date: o for o in await session.scalars(select(Order))}
    assert {o.created_at for o in placed.values()} == {LATE_ON_THE_10TH}
    with pytest.raises(BadRequestError, match="只能在用餐日期之前取消订单"):
        await orders.cancel_order(BOSS, placed[THE_10TH].id)

    clock.advance(minutes=31)  # past the canteen's midnight: the 11th
    assert await order(ordering, THE_10TH, "wang") == ["订单 1: 不能为过去的日期报餐"]
    with pytest.raises(BadRequestError, match="只能在用餐日期之前取消订单"):  # the 11th is today now
        await orders.cancel_order(BOSS, placed[THE_11TH].id)

    clock.set(LATE_ON_THE_10TH)
    cancelled, members = await orders.cancel_order(BOSS, placed[THE_11TH].id)
    assert (cancelled.cancelled_at, members) == (LATE_ON_THE_10TH, ["wang"])


async def test_setup_stamps_the_clocks_time(db: Database) -> None:
    clock = ManualClock(LATE_ON_THE_10TH)
    canteen = CanteenSetup(db, clock)
    (department,) = await canteen.upsert_departments([DepartmentIn(department_id="rd", name="研发部")])
    (menu,) = await canteen.upsert_menus([MenuIn(date=THE_11TH, meal_type="lunch", price=Decimal("9.90"))])
    assert department.created_at == department.updated_at == menu.updated_at == LATE_ON_THE_10TH
    clock.advance(hours=1)
    (renamed,) = await canteen.upsert_departments([DepartmentIn(department_id="rd", name="研发中心")])
    (published,) = await canteen.publish_menus([menu.id], True)
    assert (renamed.name, renamed.created_at, renamed.updated_at) == ("研发中心", LATE_ON_THE_10TH, clock())
    async with db.read() as session:
        stored = await session.scalar(select(Menu).where(Menu.id == published.id))
    assert stored is not None and (stored.published, stored.updated_at) == (True, clock())
