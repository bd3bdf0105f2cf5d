"""Billing's reads for the console: balances page by page, and the charges made per hour."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select

from batchops.billing.ledger import CNY
from batchops.billing.models import Account, LedgerEntry
from batchops.core.clock import Clock
from batchops.core.db import Database
from batchops.identity.models import User


async def balances_page(
    db: Database, *, search: str | None, currency: str = CNY, offset: int, limit: int
) -> tuple[list[Any], int]:
    """Users (id order) with their balance and held amount in ``currency`` (0 without an
    account): rows of ``user_id, name, balance, held``."""
    where = []
    if search:
        pattern = f"%{search.lower()}%"
        where.append(or_(func.lower(User.id).like(pattern), func.lower(User.name).like(pattern)))
    joined = and_(Account.user_id == User.id, Account.currency == currency)
    async with db.read() as session:
        total = await session.scalar(select(func.count()).select_from(User).where(*where))
        rows = await session.execute(
            select(
                User.id.label("user_id"),
                User.name,
                func.coalesce(Account.balance, 0).label("balance"),
                func.coalesce(Account.held, 0).label("held"),
            )
            .outerjoin(Account, joined)
            .where(*where)
            .order_by(User.id)
            .offset(offset)
            .limit(limit)
        )
        return list(rows.all()), int(total or 0)


async def charges_per_hour(db: Database, *, clock: Clock, hours: int = 12, currency: str = CNY) -> list[int]:
    """What was charged (captures and direct charges, in minor units) in each of the last
    ``hours`` hours by ``clock``, oldest first."""
    since = clock().replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    async with db.read() as session:
        rows = await session.execute(
            select(LedgerEntry.created_at, LedgerEntry.amount)
            .join(Account, Account.id == LedgerEntry.account_id)
            .where(
                Account.currency == currency,
                LedgerEntry.kind.in_(("capture", "charge")),
                LedgerEntry.created_at >= since,
            )
        )
        per_hour = [0] * hours
        for at, amount in rows:
            per_hour[min(hours - 1, int((at - since).total_seconds() // 3600))] += -int(amount)
    return per_hour
