"""The canteen's setup (admin): departments, and the menus orders are placed against."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, update

from batchops.core.clock import Clock
from batchops.core.db import Database, new_id, upsert
from batchops.core.errors import BadRequestError, NotFoundError
from batchops.core.schemas import decimal_to_cents
from batchops.dining.models import Department, Menu
from batchops.dining.schemas import DepartmentIn, MenuIn

MENU_LIST_LIMIT = 1000


class CanteenSetup:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def upsert_departments(self, items: Sequence[DepartmentIn]) -> list[Department]:
        ids = [i.department_id for i in items]
        if len(set(ids)) != len(ids):
            raise BadRequestError("Duplicate departmentId in one request")
        now = self.clock()
        rows = [{"id": i.department_id, "name": i.name, "created_at": now, "updated_at": now} for i in items]
        async with self.db.transaction() as session:
            await upsert(session, Department, rows, key=["id"], update=["name", "updated_at"])
            by_id = {d.id: d for d in await session.scalars(select(Department).where(Department.id.in_(ids)))}
        return [by_id[i] for i in ids]

    async def list_departments(self) -> list[Department]:
        async with self.db.read() as session:
            return list(await session.scalars(select(Department).order_by(Department.id)))

    async def upsert_menus(self, items: Sequence[MenuIn]) -> list[Menu]:
        """A menu per date and meal: a new one is created, an existing one (its id kept) updated."""
        keys = [(i.date, i.meal_type) for i in items]
        if len(set(keys)) != len(keys):
            raise BadRequestError("Duplicate date + mealType in one request")
        now = self.clock()
        rows = [
            {
                "id": new_id("menu"),
                "date": i.date,
                "meal_type": i.meal_type,
                "price_cents": decimal_to_cents(i.price),
                "items": list(i.items),
                "published": i.published,
                "created_at": now,
                "updated_at": now,
            }
            for i in items
        ]
        async with self.db.transaction() as session:
            await upsert(
                session,
                Menu,
                rows,
                key=["date", "meal_type"],
                update=["price_cents", "items", "published", "updated_at"],
            )
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
            await session.execute(
                update(Menu).where(Menu.id.in_(ids)).values(published=published, updated_at=self.clock())
            )
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
            return list(await session.scalars(stmt.limit(MENU_LIST_LIMIT)))
