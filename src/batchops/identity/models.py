from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, utcnow

ROLES = ("admin", "dept_admin", "user")
STATUSES = ("active", "suspended", "inactive")
PLANS = ("free", "pro", "pro_plus", "enterprise")


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="user")
    status: Mapped[str] = mapped_column(String(16), default="active")
    department_id: Mapped[str | None] = mapped_column(String(128), index=True)
    max_devices: Mapped[int] = mapped_column(default=5)
    plan: Mapped[str] = mapped_column(String(16), default="free")
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2; NULL: no console sign-in
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def display_name(self) -> str:
        return self.name or self.id
