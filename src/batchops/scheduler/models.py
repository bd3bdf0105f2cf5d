from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from batchops.core.db import Base, utcnow

AVAILABLE, ALLOCATED, MAINTENANCE, OFFLINE = "available", "allocated", "maintenance", "offline"
ACTIVE, RELEASED = "allocated", "released"


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        # the first free devices of a (size, node) bucket, in id order (placement)
        Index(
            "ix_devices_bucket", "status", "cpu_cores", "memory_mb", "storage_mb", text("coalesce(node_id, '')"), "id"
        ),
        Index("ix_devices_status_node", "status", "node_id"),  # node loads
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cpu_cores: Mapped[int]
    memory_mb: Mapped[int]
    storage_mb: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=AVAILABLE)
    node_id: Mapped[str | None] = mapped_column(String(128), index=True)
    # In maintenance a device takes no new allocation or reservation; a running
    # allocation runs to its end.
    maintenance: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Allocation(Base):
    __tablename__ = "allocations"
    __table_args__ = (
        # The database itself refuses a second active allocation of one device.
        Index(
            "uq_allocations_active_device",
            "device_id",
            unique=True,
            postgresql_where=text("status = 'allocated'"),
            sqlite_where=text("status = 'allocated'"),
        ),
        Index("ix_allocations_user_status", "user_id", "status"),
        Index("ix_allocations_status_expires", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    duration_minutes: Mapped[int]
    allocated_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    released_at: Mapped[datetime | None]
    release_reason: Mapped[str | None] = mapped_column(String(500))
    reminder_sent_at: Mapped[datetime | None]
    reservation_id: Mapped[str | None] = mapped_column(String(64))

    device: Mapped[Device] = relationship(lazy="raise")


RESERVED, FULFILLED, CANCELLED, FAILED = "reserved", "fulfilled", "cancelled", "failed"
WAITING, GRANTED, EXPIRED = "waiting", "granted", "expired"


class Reservation(Base):
    """A concrete device held for a future window ``[start_at, end_at)``.

    Two live reservations of one device never overlap: PostgreSQL enforces it with
    an exclusion constraint, SQLite with a trigger (see migration 0005).
    """

    __tablename__ = "reservations"
    __table_args__ = (
        Index("ix_reservations_device_window", "device_id", "status", "start_at", "end_at"),
        Index("ix_reservations_status_start", "status", "start_at"),
        Index("ix_reservations_user", "user_id", "start_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    duration_minutes: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=RESERVED)
    allocation_id: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class QueueEntry(Base):
    """A waiting allocation request: granted by priority (9 first), then age."""

    __tablename__ = "allocation_queue"
    __table_args__ = (
        # the grant order itself (priority DESC, then age): LIMIT k reads k rows, no sort
        Index("ix_allocation_queue_grant_order", "status", text("priority DESC"), "enqueued_at", "id"),
        Index("ix_allocation_queue_expiry", "status", "expires_at"),
        # a user's waiting entries (the grant pass counts those served before each candidate)
        Index("ix_allocation_queue_user_status", "user_id", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    duration_minutes: Mapped[int]
    min_cpu: Mapped[int | None]
    min_memory_mb: Mapped[int | None]
    priority: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default=WAITING)
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    granted_at: Mapped[datetime | None]
    allocation_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(500))
