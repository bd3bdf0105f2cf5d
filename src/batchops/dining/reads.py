"""Dining's reads for the console: a department's members, and which of them already
have a meal ordered on some days (read outside any transaction, ``Database.read``)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from batchops.core.db import Database
from batchops.dining.models import LINE_ACTIVE, Department, OrderLine
from batchops.identity.models import User

MAX_MEMBERS = 2000  # a department larger than this is not listed on one page


@dataclass(frozen=True)
class MemberRow:
    id: str
    name: str
    status: str


async def department_name(db: Database, department_id: str) -> str:
    """The department's name (its id when it has none on record)."""
    async with db.read() as session:
        name = await session.scalar(select(Department.name).where(Department.id == department_id))
    return name or department_id


async def department_members(db: Database, department_id: str) -> list[MemberRow]:
    """The users whose ``departmentId`` names the department, by name then id."""
    async with db.read() as session:
        rows = await session.execute(
            select(User.id, User.name, User.status)
            .where(User.department_id == department_id)
            .order_by(User.name, User.id)
            .limit(MAX_MEMBERS)
        )
        return [MemberRow(r.id, r.name or r.id, r.status) for r in rows]


async def ordered_members(
    db: Database, department_id: str, first: dt.date, last: dt.date
) -> dict[tuple[dt.date, str], set[str]]:
    """For each (date, meal) from ``first`` to ``last``: the department's members who hold
    an active order line (whoever ordered it)."""
    members = select(User.id).where(User.department_id == department_id).scalar_subquery()
    async with db.read() as session:
        rows = await session.execute(
            select(OrderLine.date, OrderLine.meal_type, OrderLine.user_id).where(
                OrderLine.status == LINE_ACTIVE,
                OrderLine.date >= first,
                OrderLine.date <= last,
                OrderLine.user_id.in_(members),
            )
        )
        found: dict[tuple[dt.date, str], set[str]] = defaultdict(set)
        for day, meal, user_id in rows:
            found[(day, meal)].add(user_id)
    return dict(found)
