"""A canteen to order in: two departments, their admins and members, and menus for
today and tomorrow (dates judged in ``BATCHOPS_TIMEZONE``, as the service does)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from batchops.core.db import new_id, utcnow
from batchops.core.runtime import Runtime
from batchops.dining.models import Department, Menu
from batchops.dining.service import DiningService
from batchops.identity.models import User
from tests.conftest import auth
from tests.helpers import data

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


def cents(price: str) -> int:
    return int(Decimal(price) * 100)


def _user(
    user_id: str, name: str, department: str | None, role: str = "user", status: str = "active"
) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": user_id,
        "name": name,
        "role": role,
        "status": status,
        "department_id": department,
        "max_devices": 5,
        "plan": "free",
        "created_at": now,
        "updated_at": now,
    }


@pytest.fixture
async def canteen(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> Canteen:
    """Seeded in one transaction (fast); the admin endpoints that do the same are tested on their own."""
    c = Canteen(client, admin, runtime, runtime.services.get(DiningService).today())
    now = utcnow()
    users = [
        _user("admin-a", "部门管理员A", "dept-a", role="dept_admin"),
        _user("admin-a2", "部门管理员A2", "dept-a", role="dept_admin"),
        _user("admin-b", "部门管理员B", "dept-b", role="dept_admin"),
        *(_user(u, n, "dept-a") for u, n in MEMBERS.items()),
        _user("user5", "孙七", "dept-b"),
        _user("user6", "周八", "dept-a", status="suspended"),
        _user("user7", "吴九", "dept-a", status="inactive"),
        _user("user8", "郑十", None),  # no department
    ]
    menus = [
        {"date": c.today + dt.timedelta(days=d), "meal_type": m, "price_cents": cents(p), "published": True}
        for d in (0, 1)
        for m, p in PRICES.items()
    ] + [{"date": c.today + dt.timedelta(days=2), "meal_type": "lunch", "price_cents": 1250, "published": False}]
    async with runtime.db.transaction() as session:
        await session.execute(
            insert(Department),
            [{"id": "dept-a", "name": "研发部"}, {"id": "dept-b", "name": "市场部"}],
        )
        await session.execute(insert(User), users)
        await session.execute(
            insert(Menu),
            [
                {**m, "id": new_id("menu"), "items": ["米饭", "青菜"], "created_at": now, "updated_at": now}
                for m in menus
            ],
        )
    return c
