"""Every rule and every error of the seed's table (exact text, 1-based orderIndex),
order atomicity, allOrNone, duplicates inside a request, permissions, limits."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.dining.rules import local_today
from tests.conftest import auth, make_settings
from tests.dining.conftest import Canteen, order
from tests.helpers import data, error, sql


async def errors_of(canteen: Canteen, orders: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    result = data(await canteen.batch(orders, **extra))
    assert result["successCount"] + result["failedCount"] == result["totalOrders"] == len(orders)
    errors: list[dict[str, Any]] = result["errors"]
    return errors


async def active_lines(canteen: Canteen) -> int:
    rows = await sql(canteen.runtime, "SELECT count(*) AS n FROM dining_order_lines WHERE status = 'active'")
    return int(rows[0].n)


ERROR_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"mealType": "lunch", "members": [{"userId": "user1"}]}, "缺少必要参数", "BadRequestException"),
    ({"date": "D0", "members": [{"userId": "user1"}]}, "缺少必要参数", "BadRequestException"),
    ({"date": "D0", "mealType": "lunch"}, "缺少必要参数", "BadRequestException"),
    ({"date": "D0", "mealType": "lunch", "members": []}, "缺少必要参数", "BadRequestException"),
    ({"date": "D0", "mealType": "lunch", "members": [{"name": "x"}]}, "缺少必要参数", "BadRequestException"),
    ({"date": "D0", "mealType": "lunch", "members": ["user1"]}, "缺少必要参数", "BadRequestException"),
    ({"date": "2025/09/06", "mealType": "lunch", "members": [{"userId": "user1"}]}, "日期格式不正确", ""),
    ({"date": "2025-02-30", "mealType": "lunch", "members": [{"userId": "user1"}]}, "日期格式不正确", ""),
    ({"date": 20250906, "mealType": "lunch", "members": [{"userId": "user1"}]}, "日期格式不正确", ""),
    ({"date": "D0", "mealType": "supper", "members": [{"userId": "user1"}]}, "餐次类型不正确", ""),
    ({"date": "D0", "mealType": "LUNCH", "members": [{"userId": "user1"}]}, "餐次类型不正确", ""),
    ({"date": "D-1", "mealType": "lunch", "members": [{"userId": "user1"}]}, "不能为过去的日期报餐", ""),
    ({"date": "D2", "mealType": "lunch", "members": [{"userId": "user1"}]}, "菜单尚未发布", ""),
    ({"date": "D2", "mealType": "dinner", "members": [{"userId": "user1"}]}, "菜单尚未发布", ""),
    (
        {"date": "D0", "mealType": "lunch", "members": [{"userId": "user1"}, {"userId": "ghost"}]},
        "部分用户不存在或状态异常",
        "",
    ),
    ({"date": "D0", "mealType": "lunch", "members": [{"userId": "user6"}]}, "部分用户不存在或状态异常", ""),
    ({"date": "D0", "mealType": "lunch", "members": [{"userId": "user7"}]}, "部分用户不存在或状态异常", ""),
    (
        {"date": "D0", "mealType": "lunch", "members": [{"userId": "user1"}, {"userId": "user5"}]},
        "用户 孙七 不属于本部门",
        "ForbiddenException",
    ),
    ({"date": "D0", "mealType": "lunch", "members": [{"userId": "user8"}]}, "用户 郑十 不属于本部门", ""),
    (
        {"date": "D0", "mealType": "lunch", "members": [{"userId": "user2"}, {"userId": "user2"}]},
        "用户 李四 在本订单中重复出现",
        "",
    ),
]


def dated(canteen: Canteen, bad: dict[str, Any]) -> dict[str, Any]:
    """``"D-1"`` / ``"D0"`` / ``"D2"`` stand for yesterday / today / the day after tomorrow."""
    value = bad.get("date")
    if isinstance(value, str) and value.startswith("D"):
        return {**bad, "date": canteen.day(int(value[1:]))}
    return bad


async def test_each_error_of_the_table_names_its_order(canteen: Canteen) -> None:
    good = order(canteen.day(1), "dinner", "user3")
    for chunk in (ERROR_CASES[:10], ERROR_CASES[10:]):
        bad_orders = [dated(canteen, bad) for bad, _, _ in chunk]
        result = data(await canteen.batch([*bad_orders, good]))
        assert (result["successCount"], result["failedCount"]) == (1, len(chunk)), result
        good = order(canteen.day(1), "lunch", "user3")
        for index, ((bad, message, code), err) in enumerate(zip(chunk, result["errors"], strict=True), start=1):
            assert err["orderIndex"] == index
            assert err["error"] == f"订单 {index}: {message}"
            assert err["date"] == bad_orders[index - 1].get("date")
            assert err["mealType"] == bad.get("mealType")
            if code:
                assert err["code"] == code
        assert result["orders"][0]["orderIndex"] == len(chunk) + 1
    assert await active_lines(canteen) == 2  # the failed orders left nothing


async def test_already_ordered_in_an_earlier_request_and_in_the_same_request(canteen: Canteen) -> None:
    today = canteen.day(0)
    assert data(await canteen.batch([order(today, "lunch", "user2")]))["successCount"] == 1
    errors = await errors_of(canteen, [order(today, "lunch", "user1", "user2")])
    assert [e["error"] for e in errors] == ["订单 1: 用户 李四 已经报餐"]
    assert errors[0]["code"] == "ConflictException"

    # inside one request: the second order for the same member and meal is refused
    errors = await errors_of(canteen, [order(today, "dinner", "user1", "user3"), order(today, "dinner", "user3")])
    assert [(e["orderIndex"], e["error"]) for e in errors] == [(2, "订单 2: 用户 王五 已经报餐")]
    # the same member for another meal or date is fine
    other_slots = [order(today, "breakfast", "user3"), order(canteen.day(1), "dinner", "user3")]
    assert await errors_of(canteen, other_slots) == []
    assert await active_lines(canteen) == 1 + 2 + 2


async def test_an_order_is_all_its_members_or_none(canteen: Canteen) -> None:
    today = canteen.day(0)
    data(await canteen.batch([order(today, "lunch", "user4")]))
    errors = await errors_of(canteen, [order(today, "lunch", "user1", "user2", "user3", "user4")])
    assert [e["error"] for e in errors] == ["订单 1: 用户 赵六 已经报餐"]
    assert await active_lines(canteen) == 1  # user1..3 were not ordered on their own


async def test_checks_run_in_the_seed_order(canteen: Canteen) -> None:
    # past date wins over the menu; unknown users win over the department; department over duplicates
    errors = await errors_of(
        canteen,
        [
            order(canteen.day(-1), "supper", "user1"),
            order(canteen.day(-3), "lunch", "ghost"),
            order(canteen.day(0), "lunch", "ghost", "user5"),
            order(canteen.day(0), "lunch", "user5", "user1"),
        ],
    )
    assert [e["error"] for e in errors] == [
        "订单 1: 餐次类型不正确",
        "订单 2: 不能为过去的日期报餐",
        "订单 3: 部分用户不存在或状态异常",
        "订单 4: 用户 孙七 不属于本部门",
    ]


async def test_all_or_none_commits_nothing_when_one_order_fails(canteen: Canteen) -> None:
    today = canteen.day(0)
    orders = [order(today, "lunch", "user1"), order(today, "dinner", "user1"), order(canteen.day(2), "lunch", "user1")]
    result = data(await canteen.batch(orders, allOrNone=True))
    assert (result["totalOrders"], result["successCount"], result["failedCount"]) == (3, 0, 3)
    assert result["orders"] == []
    assert [(e["orderIndex"], e["error"], e["code"]) for e in result["errors"]] == [
        (1, "订单 1: 同批次其他订单失败，本订单未提交", "RolledBackException"),
        (2, "订单 2: 同批次其他订单失败，本订单未提交", "RolledBackException"),
        (3, "订单 3: 菜单尚未发布", "BadRequestException"),
    ]
    assert await active_lines(canteen) == 0
    result = data(await canteen.batch(orders[:2], allOrNone=True))
    assert result["successCount"] == 2 and await active_lines(canteen) == 2


@pytest.mark.parametrize("mode", [{"atomic": True}, {"allOrNone": True}, {"atomic": True, "continueOnError": False}])
async def test_atomic_is_all_or_none(canteen: Canteen, mode: dict[str, bool]) -> None:
    """The shared batch modes (DESIGN.md): ``atomic`` is what ``allOrNone`` always was."""
    today = canteen.day(0)
    orders = [order(today, "lunch", "user1"), order(canteen.day(2), "lunch", "user1")]
    result = data(await canteen.batch(orders, **mode))
    assert [(e["orderIndex"], e["code"]) for e in result["errors"]] == [
        (1, "RolledBackException"),
        (2, "BadRequestException"),
    ]
    assert await active_lines(canteen) == 0


async def test_continue_on_error_false_stops_at_the_first_failed_order(canteen: Canteen) -> None:
    today = canteen.day(0)
    orders = [order(today, "lunch", "user1"), order(canteen.day(2), "lunch", "user1"), order(today, "dinner", "user1")]
    result = data(await canteen.batch(orders, continueOnError=False))
    assert (result["totalOrders"], result["successCount"], result["failedCount"]) == (3, 1, 2)
    assert [o["orderIndex"] for o in result["orders"]] == [1]
    assert [(e["orderIndex"], e["error"], e["code"]) for e in result["errors"]] == [
        (2, "订单 2: 菜单尚未发布", "BadRequestException"),
        (3, "订单 3: 前面的订单失败，本订单未处理", "SkippedException"),
    ]
    assert await active_lines(canteen) == 1  # the order before the failure stays


async def test_quick_batch_reports_each_meal_as_an_order(canteen: Canteen) -> None:
    today = canteen.day(0)
    data(await canteen.batch([order(today, "dinner", "user2")]))
    body = {
        "members": [{"userId": "user1"}, {"userId": "user2"}],
        "meals": [
            {"date": today, "mealType": "lunch"},
            {"date": today, "mealType": "dinner"},
            {"date": canteen.day(2), "mealType": "lunch"},
            {"date": "tomorrow", "mealType": "lunch"},
            {"mealType": "lunch"},
            {"date": today, "mealType": "lunch"},
        ],
    }
    result = data(await canteen.quick(body))
    assert (result["successCount"], result["failedCount"]) == (1, 5)
    assert [e["error"] for e in result["errors"]] == [
        "订单 2: 用户 李四 已经报餐",
        "订单 3: 菜单尚未发布",
        "订单 4: 日期格式不正确",
        "订单 5: 缺少必要参数",
        "订单 6: 用户 张三 已经报餐",
    ]
    body = {"members": [{"userId": "user5"}], "meals": [{"date": today, "mealType": "lunch"}]}
    result = data(await canteen.quick(body))
    assert result["errors"][0]["error"] == "订单 1: 用户 孙七 不属于本部门"


async def test_today_is_judged_in_the_configured_timezone() -> None:
    # 2025-09-06 17:30 UTC is already the 7th in Shanghai, still the 6th in New York
    now = dt.datetime(2025, 9, 6, 17, 30, tzinfo=dt.UTC)
    assert local_today("Asia/Shanghai", now) == dt.date(2025, 9, 7)
    assert local_today("America/New_York", now) == dt.date(2025, 9, 6)
    assert local_today("UTC", now) == dt.date(2025, 9, 6)


# --- permissions -----------------------------------------------------------------------------
async def test_only_a_department_admin_orders(canteen: Canteen) -> None:
    orders = [order(canteen.day(0), "lunch", "user1")]
    error(await canteen.batch(orders, headers=auth("user1")), 403, "ForbiddenException")
    r = await canteen.batch(orders, headers=canteen.admin)  # a global admin has no department to order for
    assert error(r, 403, "ForbiddenException")["message"] == "只有部门管理员可以报餐"
    error(await canteen.batch(orders, headers={}), 401, "UnauthorizedException")
    quick = {"members": [{"userId": "user1"}], "meals": [{"date": canteen.day(0), "mealType": "lunch"}]}
    error(await canteen.quick(quick, headers={}), 401, "UnauthorizedException")


async def test_department_admin_without_a_registered_department(canteen: Canteen) -> None:
    users = [
        {"userId": "admin-x", "role": "dept_admin"},
        {"userId": "admin-y", "role": "dept_admin", "departmentId": "dept-unregistered"},
    ]
    data(await canteen.client.post("/admin/users/batch", json={"users": users}, headers=canteen.admin))
    orders = [order(canteen.day(0), "lunch", "user1")]
    assert error(await canteen.batch(orders, headers=auth("admin-x")), 403, "ForbiddenException")["message"] == (
        "部门管理员未关联部门"
    )
    r = await canteen.batch(orders, headers=auth("admin-y"))
    assert error(r, 403, "ForbiddenException")["message"] == "本部门尚未登记，请联系管理员"


async def test_admins_of_two_departments_only_order_their_own_members(canteen: Canteen) -> None:
    today = canteen.day(0)
    r_b = await canteen.batch([order(today, "lunch", "user5"), order(today, "lunch", "user1")], headers=auth("admin-b"))
    result = data(r_b)
    assert result["successCount"] == 1
    assert result["errors"][0]["error"] == "订单 2: 用户 张三 不属于本部门"
    result = data(await canteen.batch([order(today, "lunch", "user1", "user5")]))
    assert result["errors"][0]["error"] == "订单 1: 用户 孙七 不属于本部门"
    # a member who moves department can no longer be ordered by the old admin
    await canteen.client.post(
        "/admin/users/batch", json={"users": [{"userId": "user1", "departmentId": "dept-b"}]}, headers=canteen.admin
    )
    result = data(await canteen.batch([order(today, "lunch", "user1")]))
    assert result["errors"][0]["error"] == "订单 1: 用户 张三 不属于本部门"
    assert data(await canteen.batch([order(today, "lunch", "user1")], headers=auth("admin-b")))["successCount"] == 1


async def test_a_suspended_department_admin_is_refused(canteen: Canteen) -> None:
    await canteen.client.post(
        "/admin/users/batch", json={"users": [{"userId": "admin-a", "status": "suspended"}]}, headers=canteen.admin
    )
    error(await canteen.batch([order(canteen.day(0), "lunch", "user1")]), 403, "ForbiddenException")


# --- limits and malformed requests ---------------------------------------------------------------
def many_orders(canteen: Canteen, n: int) -> list[dict[str, Any]]:
    slots = [(d, m) for d in (0, 1) for m in ("breakfast", "lunch", "dinner")]
    users = ["user1", "user2", "user3", "user4"]
    # distinct (member, date, meal) for up to 24 orders
    return [order(canteen.day(slots[i % 6][0]), slots[i % 6][1], users[i // 6]) for i in range(n)]


async def test_order_count_limits_0_1_20_21(canteen: Canteen) -> None:
    for n in (0, 21):
        body = error(await canteen.batch(many_orders(canteen, n)), 400, "BadRequestException")
        assert body["details"][0]["field"] == "orders"
    assert await active_lines(canteen) == 0
    twenty_one = many_orders(canteen, 21)
    assert data(await canteen.batch(twenty_one[20:]))["successCount"] == 1
    result = data(await canteen.batch(twenty_one[:20]))
    assert (result["totalOrders"], result["successCount"]) == (20, 20), result["errors"]
    assert await active_lines(canteen) == 21


async def test_quick_batch_limits_at_their_edges(canteen: Canteen) -> None:
    extra = [{"userId": f"m{i:02d}", "departmentId": "dept-a"} for i in range(51)]
    data(await canteen.client.post("/admin/users/batch", json={"users": extra}, headers=canteen.admin))
    menus = [
        {"date": canteen.day(d), "mealType": m, "price": "10.00", "published": True}
        for d in range(4)
        for m in ("breakfast", "lunch", "dinner")
    ]
    await canteen.menus(menus)
    meals = [{"date": mm["date"], "mealType": mm["mealType"]} for mm in menus]
    members = [{"userId": f"m{i:02d}"} for i in range(51)]
    for bad in ((0, 1), (1, 0), (51, 1), (1, 11)):
        r = await canteen.quick({"members": members[: bad[0]], "meals": meals[: bad[1]]})
        error(r, 400, "BadRequestException")
    assert await active_lines(canteen) == 0
    for n_members, meal_slice in ((1, slice(11, 12)), (50, slice(0, 10))):
        result = data(await canteen.quick({"members": members[-n_members:], "meals": meals[meal_slice]}))
        n_meals = meal_slice.stop - meal_slice.start
        assert (result["successCount"], result["failedCount"]) == (n_meals, 0), result["errors"]
        assert all(o["memberCount"] == n_members for o in result["orders"])
        assert all(o["totalAmount"] == 10 * n_members for o in result["orders"])
    assert await active_lines(canteen) == 1 + 500


async def test_remark_length_0_500_501(canteen: Canteen) -> None:
    for length, status, member in ((0, 200, "user1"), (500, 200, "user2"), (501, 400, "user3")):
        r = await canteen.batch([order(canteen.day(0), "lunch", member, remark="备" * length)])
        assert r.status_code == status, r.text
        meals = [{"date": canteen.day(0), "mealType": "dinner"}]
        r = await canteen.quick({"members": [{"userId": member}], "meals": meals, "remark": "注" * length})
        assert r.status_code == status, r.text
    assert await active_lines(canteen) == 4


MALFORMED_BATCH: list[dict[str, Any]] = [
    {},
    {"orders": "all"},
    {"orders": [1, 2]},
    {"orders": [{"date": "2025-09-06", "mealType": "lunch", "members": [], "colour": "red"}]},
    {"orders": [{"date": "2025-09-06", "mealType": "lunch", "members": {"userId": "user1"}}]},
    {"orders": [], "allOrNone": True},
    {"orders": [{"date": "2025-09-06"}], "allOrNone": "yes"},
]
MEAL = [{"date": "2025-09-06", "mealType": "lunch"}]
MALFORMED_QUICK: list[dict[str, Any]] = [
    {"members": [{"userId": "user1"}]},
    {"meals": MEAL},
    {"members": [{"userId": "user1"}, {"userId": "user1"}], "meals": MEAL},
    {"members": [{"user": "user1"}], "meals": MEAL},
    {"members": [{"userId": ""}], "meals": MEAL},
    {"members": [{"userId": "user1"}], "meals": MEAL, "remark": 5},
]


async def test_malformed_requests_are_a_400(canteen: Canteen) -> None:
    for body in MALFORMED_BATCH:
        r = await canteen.client.post("/api/dining/enhanced/batch-orders", json=body, headers=canteen.dept_a)
        error(r, 400, "BadRequestException")
    for body in MALFORMED_QUICK:
        error(await canteen.quick(body), 400, "BadRequestException")
    r = await canteen.client.post(
        "/api/dining/enhanced/batch-orders",
        content=b"{orders:",
        headers={**canteen.dept_a, "content-type": "application/json"},
    )
    assert error(r, 400, "BadRequestException")["message"] == "Malformed JSON body"


async def test_ordering_is_rate_limited_per_admin(canteen: Canteen, database_url: str) -> None:
    rt = build_runtime(make_settings(database_url, batch_rate_limit_per_minute=2))
    try:
        transport = httpx.ASGITransport(app=create_app(rt.settings, rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://batchops.test") as client:
            body = {"orders": [order(canteen.day(1), "lunch", "user1")]}
            answers = [
                await client.post("/api/dining/enhanced/batch-orders", json=body, headers=canteen.dept_a)
                for _ in range(3)
            ]
            assert [r.status_code for r in answers] == [200, 200, 429]
            assert answers[2].headers["Retry-After"]
            error(answers[2], 429, "TooManyRequestsException")
            # another admin has their own allowance
            r = await client.post("/api/dining/enhanced/batch-orders", json=body, headers=auth("admin-a2"))
            assert r.status_code == 200
            # and each endpoint its own: quick batches are still allowed to the first admin
            quick = {"members": [{"userId": "user1"}], "meals": [{"date": canteen.day(1), "mealType": "dinner"}]}
            r = await client.post("/api/dining/enhanced/quick-batch-orders", json=quick, headers=canteen.dept_a)
            assert r.status_code == 200
    finally:
        await rt.stop()
