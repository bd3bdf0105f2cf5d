"""Departments and menus (admin), listing and cancelling orders, the kitchen's day summary."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from batchops.core.outbox import OutboxMessage
from tests.conftest import auth
from tests.dining.conftest import Canteen, order
from tests.helpers import data, error, sql


class API:
    """Short calls under /api/dining."""

    def __init__(self, canteen: Canteen) -> None:
        self.client = canteen.client

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(f"/api/dining/{path}", **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(f"/api/dining/{path}", **kwargs)


async def cancel(canteen: Canteen, order_id: str, headers: dict[str, str]) -> httpx.Response:
    return await canteen.client.post(f"/api/dining/orders/{order_id}/cancel", headers=headers)


async def place(canteen: Canteen, orders: list[dict[str, Any]], headers: dict[str, str] | None = None) -> list[str]:
    result = data(await canteen.batch(orders, headers))
    assert result["failedCount"] == 0, result["errors"]
    return [o["orderId"] for o in result["orders"]]


async def test_cancel_before_the_date_frees_the_members(canteen: Canteen) -> None:
    tomorrow = canteen.day(1)
    (order_id,) = await place(canteen, [order(tomorrow, "lunch", "user1", "user2", remark="明日午餐")])
    r = await cancel(canteen, order_id, canteen.dept_a)
    view = data(r)
    assert r.json()["message"] == "订单已取消"
    assert view["status"] == "cancelled" and view["cancelledAt"] and view["memberIds"] == ["user1", "user2"]
    error(await cancel(canteen, order_id, canteen.dept_a), 409, "ConflictException")
    # the members may be ordered again for the same meal
    await place(canteen, [order(tomorrow, "lunch", "user1", "user2")])


async def test_cancel_rules(canteen: Canteen) -> None:
    today_id, tomorrow_id = await place(
        canteen, [order(canteen.day(0), "lunch", "user1"), order(canteen.day(1), "lunch", "user1")]
    )
    r = await cancel(canteen, today_id, canteen.dept_a)
    assert error(r, 400, "BadRequestException")["message"] == "只能在用餐日期之前取消订单"
    r = await cancel(canteen, tomorrow_id, auth("admin-b"))
    assert error(r, 403, "ForbiddenException")["message"] == "只能取消本部门的订单"
    error(await cancel(canteen, tomorrow_id, auth("user1")), 403, "ForbiddenException")
    error(await cancel(canteen, "order-nope", canteen.dept_a), 404, "NotFoundException")
    # another admin of the same department, and the global admin, may cancel
    assert data(await cancel(canteen, tomorrow_id, auth("admin-a2")))
    (again,) = await place(canteen, [order(canteen.day(1), "lunch", "user1")])
    assert data(await cancel(canteen, again, canteen.admin))["status"] == ("cancelled")


async def test_list_orders_by_date_meal_department_paginated(canteen: Canteen) -> None:
    today, tomorrow = canteen.day(0), canteen.day(1)
    await place(
        canteen,
        [order(today, "lunch", "user1"), order(today, "dinner", "user1", "user2"), order(tomorrow, "lunch", "user3")],
    )
    await place(canteen, [order(today, "lunch", "user5")], auth("admin-b"))

    page = data(await API(canteen).get("orders", params={"pageSize": 2}, headers=canteen.admin))
    assert (page["total"], page["totalPages"], len(page["items"])) == (4, 2, 2)
    page2 = data(await API(canteen).get("orders", params={"page": 2, "pageSize": 2}, headers=canteen.admin))
    assert {o["orderId"] for o in page["items"]}.isdisjoint(o["orderId"] for o in page2["items"])

    params = {"date": today, "mealType": "lunch"}
    lunch = data(await API(canteen).get("orders", params=params, headers=canteen.admin))
    assert sorted(o["departmentId"] for o in lunch["items"]) == ["dept-a", "dept-b"]
    only_b = data(await API(canteen).get("orders", params={**params, "departmentId": "dept-b"}, headers=canteen.admin))
    assert [o["memberIds"] for o in only_b["items"]] == [["user5"]]

    # a department admin sees their own department only
    mine = data(await API(canteen).get("orders", headers=canteen.dept_a))
    assert mine["total"] == 3 and {o["departmentId"] for o in mine["items"]} == {"dept-a"}
    dinner = next(o for o in mine["items"] if o["mealType"] == "dinner")
    assert (dinner["memberCount"], dinner["pricePerPerson"], dinner["totalAmount"]) == (2, 15.0, 30.0)
    r = await API(canteen).get("orders", params={"departmentId": "dept-b"}, headers=canteen.dept_a)
    error(r, 403, "ForbiddenException")
    error(await API(canteen).get("orders", headers=auth("user1")), 403, "ForbiddenException")
    r = await API(canteen).get("orders", params={"mealType": "supper"}, headers=canteen.admin)
    error(r, 400, "BadRequestException")


async def test_day_summary_for_the_kitchen(canteen: Canteen) -> None:
    today, tomorrow = canteen.day(0), canteen.day(1)
    await place(canteen, [order(today, "lunch", "user1", "user2"), order(today, "dinner", "user1")])
    await place(canteen, [order(today, "lunch", "user5")], auth("admin-b"))
    (cancelled,) = await place(canteen, [order(tomorrow, "lunch", "user3")])
    await place(canteen, [order(tomorrow, "dinner", "user3")])
    data(await cancel(canteen, cancelled, canteen.dept_a))

    summary = data(await API(canteen).get("summary", params={"date": today}, headers=canteen.admin))
    assert summary["date"] == today
    assert summary["meals"] == [
        {"mealType": "breakfast", "headcount": 0, "orderCount": 0, "totalAmount": 0.0},
        {"mealType": "lunch", "headcount": 3, "orderCount": 2, "totalAmount": 37.5},
        {"mealType": "dinner", "headcount": 1, "orderCount": 1, "totalAmount": 15.0},
    ]
    assert summary["byDepartment"] == [
        {"departmentId": "dept-a", "departmentName": "研发部", "mealType": "lunch", "headcount": 2},
        {"departmentId": "dept-a", "departmentName": "研发部", "mealType": "dinner", "headcount": 1},
        {"departmentId": "dept-b", "departmentName": "市场部", "mealType": "lunch", "headcount": 1},
    ]
    tomorrow_summary = data(await API(canteen).get("summary", params={"date": tomorrow}, headers=canteen.admin))
    assert [m["headcount"] for m in tomorrow_summary["meals"]] == [0, 0, 1]  # the cancelled lunch is not cooked
    own = data(await API(canteen).get("summary", params={"date": today}, headers=auth("admin-b")))
    assert [m["headcount"] for m in own["meals"]] == [0, 1, 0]
    error(await API(canteen).get("summary", params={"date": today}, headers=auth("user1")), 403, "ForbiddenException")
    error(await API(canteen).get("summary", params={"date": "soon"}, headers=canteen.admin), 400, "BadRequestException")


async def test_menus_upsert_publish_and_list(canteen: Canteen) -> None:
    day = canteen.day(5)
    menu = data(
        await canteen.client.post(
            "/api/dining/menus",
            json={"date": day, "mealType": "lunch", "price": 18.8, "items": ["红烧肉"], "published": False},
            headers=canteen.admin,
        )
    )
    assert (menu["price"], menu["published"], menu["items"]) == (18.8, False, ["红烧肉"])
    result = data(await canteen.batch([order(day, "lunch", "user1")]))
    assert result["errors"][0]["error"] == "订单 1: 菜单尚未发布"

    published = data(
        await API(canteen).post("menus/publish", json={"menuIds": [menu["menuId"]]}, headers=canteen.admin)
    )
    assert published["updatedCount"] == 1 and published["menus"][0]["published"] is True
    result = data(await canteen.batch([order(day, "lunch", "user1", "user2")]))
    assert result["orders"][0]["totalAmount"] == 37.6  # 2 × 18.80, exact

    # upsert on (date, mealType): same id, new price; orders keep the price they were made at
    body = {"date": day, "mealType": "lunch", "price": "20", "published": True}
    again = data(await API(canteen).post("menus", json=body, headers=canteen.admin))
    assert again["menuId"] == menu["menuId"] and again["price"] == 20.0
    listed = data(await API(canteen).get("orders", params={"date": day}, headers=canteen.admin))
    assert listed["items"][0]["totalAmount"] == 37.6

    menus = data(await API(canteen).get("menus", params={"dateFrom": day, "dateTo": day}, headers=canteen.dept_a))
    assert [m["menuId"] for m in menus] == [menu["menuId"]]
    r = await API(canteen).post("menus/publish", json={"menuIds": ["menu-nope"]}, headers=canteen.admin)
    error(r, 404, "NotFoundException")
    unpublished = data(
        await canteen.client.post(
            "/api/dining/menus/publish", json={"menuIds": [menu["menuId"]], "published": False}, headers=canteen.admin
        )
    )
    assert unpublished["menus"][0]["published"] is False


async def test_menu_and_department_validation_and_permissions(canteen: Canteen) -> None:
    day = canteen.day(5)
    for bad in (
        {"date": day, "mealType": "lunch", "price": 0},
        {"date": day, "mealType": "lunch", "price": "1.234"},
        {"date": day, "mealType": "supper", "price": 10},
        {"date": "2025/09/06", "mealType": "lunch", "price": 10},
        {"date": day, "mealType": "lunch"},
    ):
        error(await API(canteen).post("menus", json=bad, headers=canteen.admin), 400, "BadRequestException")
    dup = {"menus": [{"date": day, "mealType": "lunch", "price": 10}] * 2}
    error(await API(canteen).post("menus/batch", json=dup, headers=canteen.admin), 400, "BadRequestException")
    good = {"date": day, "mealType": "lunch", "price": 10}
    error(await API(canteen).post("menus", json=good, headers=canteen.dept_a), 403, "ForbiddenException")
    department = {"departmentId": "dept-c", "name": "财务部"}
    error(await API(canteen).post("departments", json=department, headers=canteen.dept_a), 403, "ForbiddenException")

    created = data(await API(canteen).post("departments", json=department, headers=canteen.admin))
    assert (created["departmentId"], created["name"]) == ("dept-c", "财务部")
    renamed = data(
        await canteen.client.post(
            "/api/dining/departments", json={"departmentId": "dept-c", "name": "财务中心"}, headers=canteen.admin
        )
    )
    assert renamed["name"] == "财务中心"
    listed = data(await API(canteen).get("departments", headers=canteen.dept_a))
    assert [d["departmentId"] for d in listed] == ["dept-a", "dept-b", "dept-c"]


async def test_placed_and_cancelled_orders_are_events_in_the_outbox(canteen: Canteen) -> None:
    (order_id,) = await place(canteen, [order(canteen.day(1), "lunch", "user1", "user2")])
    data(await cancel(canteen, order_id, canteen.dept_a))
    rows = await sql(
        canteen.runtime, select(OutboxMessage.name, OutboxMessage.payload).order_by(OutboxMessage.created_at)
    )
    events = [(name, payload["data"]) for name, payload in rows if name.startswith("dining.")]
    assert [name for name, _ in events] == ["dining.order.created", "dining.order.cancelled"]
    created = events[0][1]
    assert (created["orderId"], created["userIds"], created["totalAmount"]) == (order_id, ["user1", "user2"], "25.00")
    assert events[1][1]["cancelledBy"] == "admin-a"
