"""Meals in the console over HTTP, on SQLite and PostgreSQL: a department admin's choice
goes out as the seed's requests within their limits, failed orders come back to be fixed
and resent, each admin sees and orders for their own department only, cancel before the
day, and the kitchen summary as CSV."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest
from sqlalchemy import insert

from batchops.console.dining import Wanted, plan_requests
from batchops.core.db import new_id, utcnow
from batchops.core.runtime import Runtime
from batchops.dining.models import Department, Menu
from batchops.dining.rules import local_today
from batchops.identity.models import User
from batchops.identity.service import IdentityService
from tests.conftest import auth
from tests.console.helpers import sign_in
from tests.helpers import data, sql

PASSWORD = "dept-admin-password"
NAMES = ["张三", "李四", "王五", "赵六", "钱七", "孙八", "周九", "吴十", "郑一", "冯二", "陈三", "褚四"]
DAYS = 7


def member(n: int) -> str:
    return f"a-{n:02d}"


@pytest.fixture
async def canteen(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> dt.date:
    """dept-a: 12 members and its admin; dept-b: one member and its admin; every meal of
    the next 7 days published (lunch 12.50). Returns today, as the service judges it."""
    today = local_today(runtime.settings.timezone, runtime.clock())
    now = utcnow()

    def person(user_id: str, name: str, department: str, role: str = "user") -> dict[str, object]:
        return {"id": user_id, "name": name, "role": role, "status": "active", "department_id": department}

    users = [person("admin-a", "管理员A", "dept-a", "dept_admin"), person("admin-b", "管理员B", "dept-b", "dept_admin")]
    users += [person(member(i), name, "dept-a") for i, name in enumerate(NAMES, start=1)]
    users += [person("b-01", "市场一", "dept-b"), {**person("plain", "Plain", "dept-a"), "department_id": None}]
    prices = {"breakfast": 500, "lunch": 1250, "dinner": 1500}
    async with runtime.db.transaction() as session:
        await session.execute(
            insert(Department), [{"id": "dept-a", "name": "研发部"}, {"id": "dept-b", "name": "市场部"}]
        )
        await session.execute(
            insert(User), [{**u, "max_devices": 5, "plan": "free", "created_at": now, "updated_at": now} for u in users]
        )
        await session.execute(
            insert(Menu),
            [
                {
                    "id": new_id("menu"),
                    "date": today + dt.timedelta(days=d),
                    "meal_type": meal,
                    "price_cents": price,
                    "items": ["米饭", "青菜"],
                    "published": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for d in range(DAYS)
                for meal, price in prices.items()
            ],
        )
    identity = runtime.services.get(IdentityService)
    for user_id in ("admin-a", "admin-b", "plain", "admin"):
        await identity.set_password(user_id, PASSWORD)
    return today


def day(today: dt.date, offset: int) -> str:
    return (today + dt.timedelta(days=offset)).isoformat()


def test_a_choice_goes_as_quick_batches_of_10_meals_or_batch_orders_of_20() -> None:
    same = [Wanted(f"2030-01-{d:02d}", "lunch", ("u1", "u2")) for d in range(1, 15)]
    assert [(s.operation, len(s.orders)) for s in plan_requests(same)] == [
        ("quick_batch_orders", 10),
        ("quick_batch_orders", 4),
    ]
    many = [Wanted("2030-01-01", "lunch", tuple(f"u{i}" for i in range(51)))]
    assert [(s.operation, len(s.orders)) for s in plan_requests(many)] == [("batch_orders", 1)]
    mixed = [Wanted(f"2030-01-{d:02d}", "dinner", (f"u{d % 3}",)) for d in range(1, 22)]
    assert [(s.operation, len(s.orders)) for s in plan_requests(mixed)] == [("batch_orders", 20), ("batch_orders", 1)]


async def test_a_week_of_lunches_for_12_the_failed_order_is_fixed_and_resent(
    client: httpx.AsyncClient, canteen: dt.date, runtime: Runtime
) -> None:
    today = canteen
    members = [member(i) for i in range(1, 13)]
    earlier = {"members": [{"userId": member(2)}], "meals": [{"date": day(today, 3), "mealType": "lunch"}]}
    data(await client.post("/api/dining/enhanced/quick-batch-orders", json=earlier, headers=auth("admin-a")))
    token = await sign_in(client, "admin-a", PASSWORD)
    page = await client.get("/console/dining")
    assert page.status_code == 200 and page.text.count('name="member"') == 13  # the admin is a member too
    assert "Meals of 研发部" in page.text
    assert "1 of 13 ordered" in page.text and "李四" in page.text
    form = {"meal": [f"{day(today, d)}|lunch" for d in range(DAYS)], "member": members, "remark": "团队午餐"}
    r = await client.post("/console/dining/orders", data={**form, "csrf_token": token})
    assert r.status_code == 200, r.text
    assert r.text.count('data-operation="quick_batch_orders"') == 1
    assert "快速批量报餐提交完成 · 6 of 7 orders placed" in r.text
    assert re.search(
        rf'data-date="{day(today, 3)}" data-meal="lunch"><th scope="row">4</th>.*?订单 4: 用户 李四 已经报餐', r.text
    )
    assert "¥150.00" in r.text  # 12 × 12.50
    resend = re.findall(r'name="line" value="([^"]+)"( checked)?', r.text)
    assert len(resend) == 12 and (f"{day(today, 3)}|lunch|{member(2)}", "") in resend  # unticked: already ordered
    lines = [value for value, ticked in resend if ticked]
    r = await client.post("/console/dining/orders", data={"line": lines, "remark": "团队午餐", "csrf_token": token})
    assert "快速批量报餐提交完成 · 1 of 1 orders placed" in r.text and 'id="resend-form"' not in r.text
    assert "12 of 13 ordered" in r.text and 'hx-swap-oob="true"' in r.text  # the week's cell, updated in place
    headcount = await sql(
        runtime,
        "SELECT date, COUNT(*) FROM dining_order_lines WHERE status = 'active' AND meal_type = 'lunch' GROUP BY date",
    )
    assert sorted(int(n) for _, n in headcount) == [12] * DAYS
    audit = await sql(runtime, "SELECT operation, total_count, success_count FROM audit_log WHERE domain = 'dining'")
    assert sorted(tuple(a) for a in audit) == [("quick_batch_orders", 1, 1)] * 2 + [("quick_batch_orders", 7, 6)]


async def test_a_larger_choice_is_sent_as_several_requests_each_reported(
    client: httpx.AsyncClient, canteen: dt.date, runtime: Runtime
) -> None:
    today = canteen
    token = await sign_in(client, "admin-a", PASSWORD)
    lines = [
        f"{day(today, d)}|{meal}|{member(1 + n % 3)}"
        for n, (d, meal) in enumerate((d, meal) for d in range(DAYS) for meal in ("breakfast", "lunch", "dinner"))
    ]
    r = await client.post("/console/dining/orders", data={"line": lines, "csrf_token": token})
    assert r.text.count('data-operation="batch_orders"') == 2 and "Request 2 of 2" in r.text
    assert "批量报餐提交完成 · 20 of 20 orders placed" in r.text and "批量报餐提交完成 · 1 of 1 orders placed" in r.text
    audit = await sql(runtime, "SELECT operation, total_count FROM audit_log WHERE domain = 'dining' ORDER BY id")
    assert [tuple(a) for a in audit] == [("batch_orders", 20), ("batch_orders", 1)]
    r = await client.post(
        "/console/dining/orders",
        data={"remark": "x" * 501, "meal": f"{day(today, 1)}|lunch", "member": member(1), "csrf_token": token},
    )
    assert r.status_code == 400
    forged = {"meal": f"{day(today, 1)}|lunch", "member": "x" * 129, "csrf_token": token}
    r = await client.post("/console/dining/orders", data=forged)  # the API's own validation, before sending
    assert r.status_code == 400 and "members.0.userId" in r.text


async def test_an_admin_orders_for_and_sees_only_their_own_department(
    client: httpx.AsyncClient, canteen: dt.date, runtime: Runtime
) -> None:
    today = canteen
    data(
        await client.post(
            "/api/dining/enhanced/quick-batch-orders",
            json={"members": [{"userId": member(1)}], "meals": [{"date": day(today, 2), "mealType": "lunch"}]},
            headers=auth("admin-a"),
        )
    )
    [order_a] = [row[0] for row in await sql(runtime, "SELECT id FROM dining_orders")]
    token = await sign_in(client, "admin-b", PASSWORD)
    assert (await client.get("/console/")).headers["location"] == "/console/dining"  # where a dept admin starts
    page = await client.get("/console/dining")
    assert "市场一" in page.text and "张三" not in page.text and member(1) not in page.text
    forged = {"meal": f"{day(today, 2)}|dinner", "member": [member(1), member(2)], "csrf_token": token}
    r = await client.post("/console/dining/orders", data=forged)
    assert "订单 1: 用户 张三 不属于本部门" in r.text and "0 of 1 orders placed" in r.text
    assert len(await sql(runtime, "SELECT id FROM dining_orders")) == 1
    assert order_a not in (await client.get("/console/dining/orders")).text
    r = await client.get("/console/dining/orders?department=dept-a")
    assert r.status_code == 403 and "只能查看本部门的订单" in r.text
    r = await client.post(f"/console/dining/orders/{order_a}/cancel", data={"csrf_token": token})
    assert r.status_code == 403 and "只能取消本部门的订单" in r.text
    assert "市场部" not in (await client.get(f"/console/dining/summary?date={day(today, 2)}")).text.split("<main")[0]
    summary = await client.get(f"/console/dining/summary.csv?date={day(today, 2)}")
    assert "dept-a" not in summary.text


async def test_who_is_not_a_department_admin_cannot_order_and_an_operator_sees_every_department(
    client: httpx.AsyncClient, canteen: dt.date
) -> None:
    token = await sign_in(client, "plain", PASSWORD)
    for path in ("/console/dining", "/console/dining/orders", "/console/dining/summary"):
        r = await client.get(path)
        assert r.status_code == 403, path
    r = await client.post(
        "/console/dining/orders", data={"meal": f"{day(canteen, 1)}|lunch", "member": member(1), "csrf_token": token}
    )
    assert r.status_code == 403 and "只有部门管理员可以报餐" in r.text
    await sign_in(client, "admin", PASSWORD)
    assert (await client.get("/console/dining")).status_code == 403  # an operator does not order
    assert (await client.get("/console/dining/orders")).status_code == 200
    assert (await client.get("/console/dining/summary")).status_code == 200


async def test_cancel_before_the_meals_day_and_the_kitchen_summary_as_csv(
    client: httpx.AsyncClient, canteen: dt.date, runtime: Runtime
) -> None:
    today = canteen
    token = await sign_in(client, "admin-a", PASSWORD)
    form = {
        "meal": [f"{day(today, 0)}|lunch", f"{day(today, 1)}|lunch", f"{day(today, 1)}|dinner"],
        "member": [member(1), member(2), member(3)],
    }
    r = await client.post("/console/dining/orders", data={**form, "csrf_token": token})
    assert "3 of 3 orders placed" in r.text
    orders = {
        (d.isoformat() if hasattr(d, "isoformat") else str(d), m): i
        for i, d, m in await sql(runtime, "SELECT id, date, meal_type FROM dining_orders")
    }
    page = await client.get(f"/console/dining/orders?date={day(today, 1)}")
    assert page.text.count("/cancel") == 2 and orders[(day(today, 0), "lunch")] not in page.text
    today_page = await client.get(f"/console/dining/orders?date={day(today, 0)}")
    assert "/cancel" not in today_page.text  # the day has come: no cancel offered
    r = await client.post(
        f"/console/dining/orders/{orders[(day(today, 0), 'lunch')]}/cancel", data={"csrf_token": token}
    )
    assert r.status_code == 400 and "只能在用餐日期之前取消订单" in r.text  # nor accepted
    r = await client.post(
        f"/console/dining/orders/{orders[(day(today, 1), 'dinner')]}/cancel", data={"csrf_token": token}
    )
    assert r.status_code == 200 and 'data-status="cancelled"' in r.text
    cancelled = await client.get("/console/dining/orders?status=cancelled")
    assert (
        orders[(day(today, 1), "dinner")] in cancelled.text and orders[(day(today, 1), "lunch")] not in cancelled.text
    )
    summary = await client.get(f"/console/dining/summary?date={day(today, 1)}")
    assert re.search(r'data-meal="lunch">.*?<td class="num headcount">3</td>', summary.text)
    assert re.search(r'data-meal="dinner">.*?<td class="num headcount">0</td>', summary.text)
    csv_text = (await client.get(f"/console/dining/summary.csv?date={day(today, 1)}")).text
    assert csv_text.splitlines() == [
        "date,departmentId,departmentName,mealType,headcount",
        f"{day(today, 1)},dept-a,研发部,lunch,3",
        f"{day(today, 1)},*,total,breakfast,0",
        f"{day(today, 1)},*,total,lunch,3",
        f"{day(today, 1)},*,total,dinner,0",
    ]


async def test_a_request_past_the_per_minute_limit_is_not_sent_and_comes_back_to_resend(
    client: httpx.AsyncClient, canteen: dt.date, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.limiter, "limit", 1)  # the API's limit per endpoint and caller
    token = await sign_in(client, "admin-a", PASSWORD)
    meals = [f"{day(canteen, d)}|{meal}" for d in range(5) for meal in ("breakfast", "lunch", "dinner")][:14]
    r = await client.post("/console/dining/orders", data={"meal": meals, "member": member(1), "csrf_token": token})
    assert r.status_code == 200 and "10 of 10 orders placed" in r.text
    assert "Not sent: Rate limit exceeded" in r.text and r.text.count('<fieldset class="fix"') == 4
    body = {"members": [{"userId": member(2)}], "meals": [{"date": day(canteen, 6), "mealType": "lunch"}]}
    r = await client.post("/api/dining/enhanced/quick-batch-orders", json=body, headers=auth("admin-a"))
    assert r.status_code == 429  # the console's requests counted against the API's limit
    assert len(await sql(runtime, "SELECT id FROM dining_orders")) == 10
