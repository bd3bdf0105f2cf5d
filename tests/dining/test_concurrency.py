"""Many department admins ordering at once, on SQLite and PostgreSQL: one member is
ordered at most once per date and meal, and the database itself enforces it."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from batchops.dining import ordering
from tests.conftest import auth
from tests.dining.conftest import Canteen, order
from tests.helpers import data, execute, sql

CLIENTS = 16


async def test_sixteen_admins_ordering_the_same_member_for_the_same_meal(canteen: Canteen) -> None:
    today = canteen.day(0)
    admins = ["admin-a", "admin-a2"]

    async def one(n: int) -> httpx.Response:
        headers = auth(admins[n % 2])
        if n % 3 == 0:
            meals = [{"date": today, "mealType": "lunch"}]
            return await canteen.quick({"members": [{"userId": "user1"}], "meals": meals}, headers)
        return await canteen.batch([order(today, "lunch", "user1")], headers)

    responses = await asyncio.gather(*(one(n) for n in range(CLIENTS)))
    results = [data(r) for r in responses]
    assert sum(r["successCount"] for r in results) == 1
    refused = [e["error"] for r in results for e in r["errors"]]
    assert refused == ["订单 1: 用户 张三 已经报餐"] * (CLIENTS - 1)
    rows = await sql(canteen.runtime, "SELECT count(*) AS n FROM dining_order_lines WHERE status = 'active'")
    assert rows[0].n == 1


async def test_many_clients_with_overlapping_members_and_meals(canteen: Canteen) -> None:
    members = [f"m{i:02d}" for i in range(20)]
    users = [{"userId": u, "departmentId": "dept-a"} for u in members]
    data(await canteen.client.post("/admin/users/batch", json={"users": users}, headers=canteen.admin))
    slots = [(canteen.day(0), "lunch"), (canteen.day(0), "dinner"), (canteen.day(1), "breakfast")]

    async def one(n: int) -> dict[str, Any]:
        group = [members[(n * 3 + k) % len(members)] for k in range(8)]
        headers = auth("admin-a" if n % 2 else "admin-a2")
        if n % 4 == 0:
            body = {"members": [{"userId": u} for u in group], "meals": [{"date": d, "mealType": m} for d, m in slots]}
            result: dict[str, Any] = data(await canteen.quick(body, headers))
        else:
            # one member per order: most orders race for a slot someone else wants too
            orders = [order(d, m, u) for d, m in slots for u in group[:6]]
            result = data(await canteen.batch(orders, headers))
        return result

    results = await asyncio.gather(*(one(n) for n in range(CLIENTS)))
    ordered: Counter[tuple[str, str]] = Counter()
    for result in results:
        assert result["successCount"] + result["failedCount"] == result["totalOrders"]
        for o in result["orders"]:
            ordered[(o["date"], o["mealType"])] += o["memberCount"]
        for e in result["errors"]:
            assert e["error"].endswith("已经报餐"), e
    per_slot = await sql(
        canteen.runtime,
        "SELECT user_id, date, meal_type, count(*) AS n FROM dining_order_lines"
        " WHERE status = 'active' GROUP BY user_id, date, meal_type",
    )
    assert all(row.n == 1 for row in per_slot)
    assert sum(ordered.values()) == len(per_slot)
    assert len(per_slot) == len(members) * len(slots)  # every slot someone asked for was filled, once
    counts = await sql(
        canteen.runtime,
        "SELECT count(*) AS n FROM dining_orders o WHERE o.member_count <> "
        "(SELECT count(*) FROM dining_order_lines l WHERE l.order_id = o.id)",
    )
    assert counts[0].n == 0  # every order has exactly its members


async def test_partial_unique_index_refuses_a_second_active_line(canteen: Canteen) -> None:
    result = data(await canteen.batch([order(canteen.day(1), "lunch", "user1")]))
    order_id = result["orders"][0]["orderId"]
    day = canteen.tomorrow
    insert = (
        "INSERT INTO dining_order_lines (id, order_id, user_id, date, meal_type, status)"
        " VALUES (:id, :order_id, 'user1', :day, 'lunch', :status)"
    )
    with pytest.raises(IntegrityError):
        await execute(canteen.runtime, insert, id="line-dup", order_id=order_id, day=day, status="active")
    # a cancelled line does not hold the slot
    await execute(canteen.runtime, insert, id="line-old", order_id=order_id, day=day, status="cancelled")


async def test_the_index_is_the_last_line_of_defence(canteen: Canteen, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a duplicate ever got past the locks, the index refuses it and the batch is judged
    again: the duplicate becomes a per-order error, never a 500 or a second line."""
    data(await canteen.batch([order(canteen.day(0), "lunch", "user1")]))
    load = ordering.OrderWork.load
    calls: list[int] = []

    async def forgetful_load(self: ordering.OrderWork, specs: Any) -> ordering.OrderWork:
        work = await load(self, specs)
        calls.append(1)
        if len(calls) == 1:
            work.taken.clear()  # as if the committed order had not been seen
        return work

    monkeypatch.setattr(ordering.OrderWork, "load", forgetful_load)
    orders = [order(canteen.day(0), "dinner", "user2"), order(canteen.day(0), "lunch", "user1")]
    result = data(await canteen.batch(orders))
    assert len(calls) == 2
    assert result["successCount"] == 1
    assert [e["error"] for e in result["errors"]] == ["订单 2: 用户 张三 已经报餐"]
    rows = await sql(canteen.runtime, text("SELECT count(*) AS n FROM dining_order_lines"))
    assert rows[0].n == 2
