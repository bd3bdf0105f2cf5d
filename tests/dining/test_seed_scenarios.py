"""The seed's three usage scenarios and its response examples, over HTTP."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tests.dining.conftest import Canteen, order
from tests.helpers import data, sql

ORDER_KEYS = {"orderId", "orderIndex", "date", "mealType", "memberCount", "totalAmount", "status"}


def assert_shape(body: dict[str, Any]) -> None:
    assert body["success"] is True
    result = body["data"]
    assert {"totalOrders", "successCount", "failedCount", "orders", "errors"} <= set(result)
    assert result["successCount"] + result["failedCount"] == result["totalOrders"]
    for o in result["orders"]:
        assert set(o) == ORDER_KEYS
        assert o["status"] == "pending" and o["orderId"].startswith("order-")


async def test_scenario_1_lunch_dinner_today_and_breakfast_tomorrow(canteen: Canteen) -> None:
    today, tomorrow = canteen.day(0), canteen.day(1)
    r = await canteen.batch(
        [
            order(today, "lunch", "user1", "user2", remark="今日午餐"),
            order(today, "dinner", "user1", "user3", remark="今日晚餐"),
            order(tomorrow, "breakfast", "user1", "user2", "user3", remark="明日早餐"),
        ]
    )
    body = r.json()
    assert r.status_code == 200 and body["message"] == "批量报餐提交完成"
    assert_shape(body)
    result = body["data"]
    assert (result["totalOrders"], result["successCount"], result["failedCount"]) == (3, 3, 0)
    assert result["errors"] == []
    got = [(o["orderIndex"], o["date"], o["mealType"], o["memberCount"], o["totalAmount"]) for o in result["orders"]]
    assert got == [
        (1, today, "lunch", 2, 25.00),
        (2, today, "dinner", 2, 30.00),
        (3, tomorrow, "breakfast", 3, 22.50),
    ]
    lines = await sql(
        canteen.runtime,
        "SELECT o.remark, count(*) AS n FROM dining_order_lines l JOIN dining_orders o ON o.id = l.order_id"
        " WHERE l.status = 'active' GROUP BY o.remark ORDER BY o.remark",
    )
    assert sorted((row.remark, row.n) for row in lines) == sorted([("今日午餐", 2), ("今日晚餐", 2), ("明日早餐", 3)])


async def test_scenario_2_quick_batch_for_a_fixed_team(canteen: Canteen) -> None:
    today, tomorrow = canteen.day(0), canteen.day(1)
    meals = [
        {"date": today, "mealType": "lunch"},
        {"date": today, "mealType": "dinner"},
        {"date": tomorrow, "mealType": "breakfast"},
        {"date": tomorrow, "mealType": "lunch"},
    ]
    members = [{"userId": "user1"}, {"userId": "user2"}, {"userId": "user3"}]
    r = await canteen.quick({"members": members, "meals": meals, "remark": "团队批量报餐"})
    body = r.json()
    assert r.status_code == 200 and body["message"] == "快速批量报餐提交完成"
    assert_shape(body)
    result = body["data"]
    assert (result["totalOrders"], result["successCount"], result["failedCount"]) == (4, 4, 0)
    # the seed's own figures: 3 × 12.50 = 37.50, 3 × 15.00 = 45.00, 3 × 7.50 = 22.50
    assert [o["totalAmount"] for o in result["orders"]] == [37.50, 45.00, 22.50, 37.50]
    assert all(o["memberCount"] == 3 for o in result["orders"])
    assert '"totalAmount":37.5' in r.text  # a JSON number, exact to the cent
    n = await sql(canteen.runtime, "SELECT count(*) AS n FROM dining_order_lines WHERE status = 'active'")
    assert n[0].n == 12


async def test_scenario_3_different_groups_per_meal(canteen: Canteen) -> None:
    today, tomorrow = canteen.day(0), canteen.day(1)
    r = await canteen.batch(
        [
            order(today, "lunch", "user1", "user2", remark="A组今日午餐"),
            order(today, "dinner", "user3", "user4", remark="B组今日晚餐"),
            order(tomorrow, "breakfast", "user1", "user2", "user3", "user4", remark="全员明日早餐"),
        ]
    )
    result = data(r)
    assert result["successCount"] == 3
    assert [o["memberCount"] for o in result["orders"]] == [2, 2, 4]
    assert [o["totalAmount"] for o in result["orders"]] == [25.00, 30.00, 30.00]


async def test_partial_success_example_of_the_seed(canteen: Canteen) -> None:
    today, later = canteen.day(0), canteen.day(2)  # day 2: lunch menu not published, no breakfast menu
    r = await canteen.batch(
        [
            order(today, "lunch", "user1", "user2"),
            order(today, "dinner", "user1", "user2"),
            order(later, "breakfast", "user1", "user2", "user3"),
        ]
    )
    body = r.json()
    assert r.status_code == 200 and body["success"] is True and body["message"] == "批量报餐提交完成"
    result = body["data"]
    assert (result["totalOrders"], result["successCount"], result["failedCount"]) == (3, 2, 1)
    assert [o["totalAmount"] for o in result["orders"]] == [25.00, 30.00]
    assert result["errors"] == [
        {
            "orderIndex": 3,
            "date": later,
            "mealType": "breakfast",
            "error": "订单 3: 菜单尚未发布",
            "code": "BadRequestException",
        }
    ]
    orders = await sql(canteen.runtime, text("SELECT count(*) AS n FROM dining_orders"))
    assert orders[0].n == 2
