from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from batchops.core.schemas import Identifier, Integer, Schema, StrictSchema, Text

Role = Literal["admin", "dept_admin", "user"]
Status = Literal["active", "suspended", "inactive"]
Plan = Literal["free", "pro", "pro_plus", "enterprise"]


class UserIn(StrictSchema):
    user_id: Identifier
    name: Annotated[Text, Field(max_length=200)] | None = None
    role: Role | None = None
    status: Status | None = None
    department_id: Identifier | None = None
    max_devices: Annotated[int, Integer(ge=0, le=10_000)] | None = None
    plan: Plan | None = None


class UsersBatchIn(StrictSchema):
    users: list[UserIn] = Field(min_length=1, max_length=1000, description="each userId once")


class UserOut(Schema):
    user_id: str = Field(validation_alias="id")
    name: str | None
    role: str
    status: str
    department_id: str | None
    max_devices: int
    plan: str
    created_at: datetime
    updated_at: datetime


class UsersBatchOut(Schema):
    total_count: int
    created_count: int
    updated_count: int
    users: list[UserOut]
