"""Transactional outbox: side effects written in the same transaction as the
change that causes them, delivered afterwards by the worker.

A row is claimed with a lease (so a long delivery holds no transaction and a
killed worker's rows come back after the lease), delivered by the handler
registered for its ``kind``, then marked delivered. A failed delivery is retried
with exponential backoff; after ``max_attempts`` the row is dead-lettered and
retried on a slower schedule, or on demand. Delivery is at-least-once, so every
handler must be idempotent (events carry the outbox id; billing is keyed on the
allocation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Index, String, Text, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, Database, table_of, utcnow
from batchops.core.metrics import OUTBOX_DEAD, OUTBOX_DELIVERED, OUTBOX_FAILED, declare_outbox_kind

log = structlog.get_logger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "kind", "available_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]]
    dedup_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


OUTBOX = table_of(OutboxMessage)


@dataclass(frozen=True)
class OutboxItem:
    kind: str
    name: str
    payload: dict[str, Any]
    dedup_key: str | None = None


@dataclass(frozen=True)
class Delivery:
    id: int
    kind: str
    name: str
    payload: dict[str, Any]
    attempts: int


# A handler gets a batch of one kind and returns, per delivery id, the error of
# the ones that failed (a delivery not named succeeded).
Handler = Callable[[list[Delivery]], Awaitable[dict[int, str]]]


async def enqueue(session: AsyncSession, items: Sequence[OutboxItem]) -> None:
    """Add messages to the outbox in the caller's transaction: one executemany INSERT."""
    if not items:
        return
    now = utcnow()
    rows = [
        {
            "kind": i.kind,
            "name": i.name,
            "payload": i.payload,
            "dedup_key": i.dedup_key,
            "status": PENDING,
            "attempts": 0,
            "available_at": now,
            "created_at": now,
        }
        for i in items
    ]
    # Core, not the ORM bulk path: that would split rows with and without a dedup_key
    # into separate INSERTs, and analyse each row's keys.
    await session.execute(insert(OUTBOX), rows)


def backoff_seconds(attempts: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """``base`` doubled per attempt, at most ``cap``. The exponent is bounded: past 1,024
    attempts (a large ``BATCHOPS_OUTBOX_MAX_ATTEMPTS``) ``2 ** n`` no longer fits a float."""
    return float(min(cap, base * 2.0 ** min(max(0, attempts - 1), 64)))


class Outbox:
    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 200,
        lease_seconds: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler
        declare_outbox_kind(kind)

    async def dispatch_once(self) -> int:
        """Claim one batch of due rows, deliver them, record the outcome. Returns rows handled."""
        if not self.handlers:
            return 0
        claimed = await self._claim()
        if not claimed:
            return 0
        by_kind: dict[str, list[Delivery]] = defaultdict(list)
        for d in claimed:
            by_kind[d.kind].append(d)
        errors: dict[int, str] = {}
        for kind, deliveries in by_kind.items():
            try:
                errors.update(await self.handlers[kind](deliveries))
            except Exception as exc:  # the whole batch failed: every row is retried
                log.warning("outbox_handler_failed", kind=kind, error=str(exc))
                errors.update({d.id: f"{type(exc).__name__}: {exc}" for d in deliveries})
        await self._record(claimed, errors)
        return len(claimed)

    async def drain(self, max_rounds: int = 1000) -> int:
        """Dispatch until nothing is due (tests and the CLI)."""
        total = 0
        for _ in range(max_rounds):
            n = await self.dispatch_once()
            if n == 0:
                break
            total += n
        return total

    async def _claim(self) -> list[Delivery]:
        now = utcnow()
        due = (
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == PENDING,
                OutboxMessage.kind.in_(list(self.handlers)),
                OutboxMessage.available_at <= now,
                (OutboxMessage.lease_until.is_(None)) | (OutboxMessage.lease_until < now),
            )
            .order_by(OutboxMessage.id)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(due))
            .values(lease_until=now + self.lease, attempts=OutboxMessage.attempts + 1)
            .returning(
                OutboxMessage.id, OutboxMessage.kind, OutboxMessage.name, OutboxMessage.payload, OutboxMessage.attempts
            )
        )
        async with self.db.transaction() as session:
            rows = (await session.execute(stmt)).all()
        return sorted((Delivery(*row) for row in rows), key=lambda d: d.id)

    async def _record(self, claimed: list[Delivery], errors: dict[int, str]) -> None:
        now = utcnow()
        delivered = [d.id for d in claimed if d.id not in errors]
        async with self.db.transaction() as session:
            if delivered:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(delivered))
                    .values(status=DELIVERED, delivered_at=now, lease_until=None, last_error=None)
                )
            failed = [d for d in claimed if d.id in errors]
            if failed:
                await session.execute(
                    update(OutboxMessage),
                    [self._failure_values(d, errors[d.id], now) for d in failed],
                )
        for d in claimed:
            if d.id in errors:
                OUTBOX_FAILED.labels(kind=d.kind).inc()
                if d.attempts >= self.max_attempts:
                    OUTBOX_DEAD.labels(kind=d.kind).inc()
                    log.error("outbox_dead_lettered", id=d.id, kind=d.kind, name=d.name, error=errors[d.id])
            else:
                OUTBOX_DELIVERED.labels(kind=d.kind).inc()

    def _failure_values(self, d: Delivery, error: str, now: datetime) -> dict[str, Any]:
        dead = d.attempts >= self.max_attempts
        return {
            "id": d.id,
            "status": DEAD if dead else PENDING,
            "last_error": error[:2000],
            "lease_until": None,
            "available_at": now + timedelta(seconds=backoff_seconds(d.attempts)),
        }

    async def requeue_dead(self, kind: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Give dead-lettered rows (all of ``kind``, or only ``ids``) a fresh set of attempts, due now."""
        stmt = update(OutboxMessage).where(OutboxMessage.status == DEAD)
        if kind:
            stmt = stmt.where(OutboxMessage.kind == kind)
        if ids is not None:
            stmt = stmt.where(OutboxMessage.id.in_(list(ids)))
        stmt = stmt.values(status=PENDING, attempts=0, available_at=utcnow(), lease_until=None)
        async with self.db.transaction() as session:
            result = await session.execute(stmt)
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            log.info("outbox_dead_requeued", kind=kind, count=count)
        return count

    async def list_dead(self, kind: str | None, *, offset: int, limit: int) -> tuple[list[OutboxMessage], int]:
        where = [OutboxMessage.status == DEAD]
        if kind:
            where.append(OutboxMessage.kind == kind)
        async with self.db.transaction() as session:
            total = await session.scalar(select(func.count()).select_from(OutboxMessage).where(*where))
            rows = (
                await session.scalars(
                    select(OutboxMessage).where(*where).order_by(OutboxMessage.id).offset(offset).limit(limit)
                )
            ).all()
        return list(rows), int(total or 0)

    async def lag(self) -> tuple[int, float, int]:
        """(pending rows, age in seconds of the oldest pending one, dead letters): how far
        delivery is behind, read outside any transaction."""
        async with self.db.read() as session:
            pending, oldest = (
                await session.execute(
                    select(func.count(), func.min(OutboxMessage.created_at)).where(OutboxMessage.status == PENDING)
                )
            ).one()
            dead = await session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == DEAD)
            )
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        return int(pending or 0), max(0.0, age), int(dead or 0)

    async def purge_delivered(self, older_than: timedelta) -> int:
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.status == DELIVERED, OutboxMessage.delivered_at < utcnow() - older_than
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)
