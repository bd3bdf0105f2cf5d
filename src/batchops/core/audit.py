"""Audit trail of batch operations: who did what, with what result."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, Database, utcnow


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_domain_created", "domain", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    actor_id: Mapped[str | None] = mapped_column(String(128), index=True)
    domain: Mapped[str] = mapped_column(String(32))
    operation: Mapped[str] = mapped_column(String(64))
    total_count: Mapped[int]
    success_count: Mapped[int]
    failed_count: Mapped[int]
    committed: Mapped[bool]
    execution_time_ms: Mapped[int]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


async def list_audit(
    db: Database,
    *,
    actor_id: str | None = None,
    domain: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 25,
) -> tuple[list[AuditLog], int]:
    """A page of the audit trail, newest first, and how many entries match."""
    where: list[Any] = []
    if actor_id:
        where.append(AuditLog.actor_id == actor_id)
    if domain:
        where.append(AuditLog.domain == domain)
    if since is not None:
        where.append(AuditLog.created_at >= since)
    if until is not None:
        where.append(AuditLog.created_at < until)
    async with db.read() as session:
        total = await session.scalar(select(func.count()).select_from(AuditLog).where(*where))
        rows = await session.scalars(
            select(AuditLog)
            .where(*where)
            .order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
            .offset(offset)
            .limit(limit)
        )
        return list(rows.all()), int(total or 0)


async def audit_domains(db: Database) -> list[str]:
    async with db.read() as session:
        return sorted((await session.scalars(select(AuditLog.domain).distinct())).all())
