"""A canteen to order in: two departments, their admins and members, and menus for
today and tomorrow (dates judged in ``BATCHOPS_TIMEZONE``, as the service does)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from batchops.core.runtime import Runtime
from batchops.dining.service import local_today
from tests.conftest import auth
from tests.helpers import create_users, data

PRICES = {"breakfast": "7.50", "lunch": "12.50", "dinner": "15.00"}
# dept-a members: the seed's user1..user4, named so the error texts read like the seed's
MEMBERS = {"user1": "张三", "user2": "李四", "user3": "王五", "user4": "赵六"}


@dataclass
class Canteen:
    client: httpx.AsyncClient
    admin: dict[str, str]
    runtime: Runtime
    today: dt.date

    @property
    def tomorrow(self) -> dt.date:
        return self.today + dt.timedelta(days=1)

    def day(self, offset: int) -> str:
        return (self.today + dt.timedelta(days=offset)).isoformat()

    @property
    def dept_a(self) -> dict[str, str]:
        return auth("admin-a")

    async def batch(self, orders: list[dict[str, Any]], headers: dict[str, str] | None = None, **extra: Any) -> Any:
        headers = self.dept_a if headers is None else headers
        body = {"orders": orders, **extra}
        return await self.client.post("/api/dining/enhanced/batch-orders", json=body, headers=headers)

    async def quick(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        headers = self.dept_a if headers is None else headers
        return await self.client.post("/api/dining/enhanced/quick-batch-orders", json=body, headers=headers)

    async def menus(self, menus: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = data(
            await self.client.post("/api/dining/menus/batch", json={"menus": menus}, headers=self.admin)
        )
        return result


def order(date: str, meal: str, *users: str, remark: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"date": date, "mealType": meal, "members": [{"userId": u} for u in users]}
    if remark is not None:
        body["remark"] = remark
    return body


@pytest.fixture
async def canteen(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> Canteen:
    c = Canteen(client, admin, runtime, local_today(runtime.settings.timezone))
    departments = [{"departmentId": "dept-a", "name": "研发部"}, {"departmentId": "dept-b", "name": "市场部"}]
    r = await client.post("/api/dining/departments/batch", json={"departments": departments}, headers=admin)
    data(r)
    users: list[dict[str, Any]] = [
        {"userId": "admin-a", "name": "部门管理员A", "role": "dept_admin", "departmentId": "dept-a"},
        {"userId": "admin-a2", "name": "部门管理员A2", "role": "dept_admin", "departmentId": "dept-a"},
        {"userId": "admin-b", "name": "部门管理员B", "role": "dept_admin", "departmentId": "dept-b"},
        *({"userId": u, "name": n, "departmentId": "dept-a"} for u, n in MEMBERS.items()),
        {"userId": "user5", "name": "孙七", "departmentId": "dept-b"},
        {"userId": "user6", "name": "周八", "departmentId": "dept-a", "status": "suspended"},
        {"userId": "user7", "name": "吴九", "departmentId": "dept-a", "status": "inactive"},
        {"userId": "user8", "name": "郑十"},  # no department
    ]
    await create_users(client, admin, users)
    await c.menus(
        [
            {"date": c.day(d), "mealType": m, "price": p, "items": ["米饭", "青菜"], "published": True}
            for d in (0, 1)
            for m, p in PRICES.items()
        ]
        + [{"date": c.day(2), "mealType": "lunch", "price": "12.50", "published": False}]
    )
    return c
