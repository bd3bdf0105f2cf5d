"""Ledger tables. Amounts are integers in minor units (fen for CNY, whole credits
for CREDITS); nothing here is ever a float."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, utcnow

OPEN, CAPTURED, RELEASED = "open", "captured", "released"


class Account(Base):
    """One per user and currency. ``available = balance - held``."""

    __tablename__ = "billing_accounts"
    __table_args__ = (UniqueConstraint("user_id", "currency"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    currency: Mapped[str] = mapped_column(String(16))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Hold(Base):
    """Money set aside for something not yet settled (an allocation, a video)."""

    __tablename__ = "billing_holds"
    __table_args__ = (Index("ix_billing_holds_account_status", "account_id", "status"),)

    reference: Mapped[str] = mapped_column(String(200), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("billing_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=OPEN)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]


class LedgerEntry(Base):
    """Append-only history. ``reference`` is unique: replaying an operation is a no-op."""

    __tablename__ = "billing_entries"
    __table_args__ = (Index("ix_billing_entries_account", "account_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("billing_accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))  # topup | hold | capture | release | charge
    amount: Mapped[int] = mapped_column(BigInteger)  # effect on balance (hold/release: effect on held)
    reference: Mapped[str] = mapped_column(String(220), unique=True)
    memo: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageRecord(Base):
    """One charged device usage report; the primary key makes a report idempotent."""

    __tablename__ = "billing_usage"
    __table_args__ = (Index("ix_billing_usage_user", "user_id", "released_at"),)

    allocation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(128))
    tenant_id: Mapped[str | None] = mapped_column(String(128))
    duration_seconds: Mapped[int]
    cpu_cores: Mapped[int]
    memory_mb: Mapped[int]
    storage_mb: Mapped[int]
    allocated_at: Mapped[datetime]
    released_at: Mapped[datetime]
    cost: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceUsage(Base):
    """One row per released allocation: the usage fact the metering domain reported
    (``billing.usage.record_usage``), which reconciliation compares with the charges.

    The table (migration 0001) keeps its foreign key to the scheduler's allocations: a
    table name in the schema, not an import of the scheduler."""

    __tablename__ = "device_usage"

    allocation_id: Mapped[str] = mapped_column(ForeignKey("allocations.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    duration_seconds: Mapped[int]
    cpu_cores: Mapped[int]
    memory_mb: Mapped[int]
    storage_mb: Mapped[int]
    allocated_at: Mapped[datetime]
    released_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
