"""Audit trail of batch operations: who did what, with what result."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, utcnow


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
