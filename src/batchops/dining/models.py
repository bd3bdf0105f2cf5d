from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Date, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, utcnow

MEAL_TYPES = ("breakfast", "lunch", "dinner")
PENDING, CANCELLED = "pending", "cancelled"
LINE_ACTIVE, LINE_CANCELLED = "active", "cancelled"


class Department(Base):
    """A department; its members are the users whose ``department_id`` names it."""

    __tablename__ = "dining_departments"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Menu(Base):
    """One menu per date and meal type; orders need it published."""

    __tablename__ = "dining_menus"
    __table_args__ = (UniqueConstraint("date", "meal_type", name="uq_dining_menus_date_meal"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date)
    meal_type: Mapped[str] = mapped_column(String(16))
    price_cents: Mapped[int]  # price per person, in fen
    items: Mapped[list[Any]]
    published: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Order(Base):
    """One order: a department's members for one date and meal (all of them or none)."""

    __tablename__ = "dining_orders"
    __table_args__ = (
        Index("ix_dining_orders_date_meal", "date", "meal_type"),
        Index("ix_dining_orders_department_date", "department_id", "date"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    department_id: Mapped[str] = mapped_column(ForeignKey("dining_departments.id"))
    menu_id: Mapped[str] = mapped_column(ForeignKey("dining_menus.id"))
    date: Mapped[dt.date] = mapped_column(Date)
    meal_type: Mapped[str] = mapped_column(String(16))
    member_count: Mapped[int]
    price_cents: Mapped[int]
    total_cents: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    remark: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[dt.datetime | None]


class OrderLine(Base):
    """One member of one order. The database refuses a second active line of one
    user for one date and meal: the rule holds under any concurrency."""

    __tablename__ = "dining_order_lines"
    __table_args__ = (
        Index(
            "uq_dining_order_lines_active",
            "user_id",
            "date",
            "meal_type",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index("ix_dining_order_lines_date_meal", "date", "meal_type", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("dining_orders.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    date: Mapped[dt.date] = mapped_column(Date)
    meal_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=LINE_ACTIVE)
