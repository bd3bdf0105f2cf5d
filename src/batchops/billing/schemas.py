"""Billing request and response bodies (seed 001 field names)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from batchops.core.schemas import Amount, Integer, IsoDatetime, Money, Schema, StrictSchema
from batchops.core.text import NO_NUL

Id = Field(min_length=1, max_length=128, pattern=NO_NUL)


class DeviceUsageIn(StrictSchema):
    """``POST /api/internal/metering/device-usage`` (the seed's ``DeviceUsageBilling``)."""

    device_id: str = Id
    user_id: str = Id
    tenant_id: str | None = Field(None, max_length=128, pattern=NO_NUL)
    allocation_id: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    # strict, as the scheduler's: true is not 1 s, "4" is not 4 cores, 0 is not 1970-01-01
    # (a JSON 60.0 is 60, as JSON Schema reads it)
    duration_seconds: Annotated[int, Integer(ge=0, le=10 * 365 * 86400)]
    cpu_cores: Annotated[int, Integer(ge=0, le=1024)]
    memory_mb: Annotated[int, Integer(ge=0, le=64 * 1024 * 1024)] = Field(alias="memoryMB")
    storage_mb: Annotated[int, Integer(ge=0, le=1024 * 1024 * 1024)] = Field(alias="storageMB")
    allocated_at: IsoDatetime
    released_at: IsoDatetime

    @model_validator(mode="after")
    def _ordered(self) -> DeviceUsageIn:
        if self.released_at < self.allocated_at:
            raise ValueError("releasedAt must not be before allocatedAt")
        # the seed's 数据流 validates before it prices: a duration longer than the time the
        # device was held would be charged as given (one second of slack for rounding up)
        if self.duration_seconds > (self.released_at - self.allocated_at).total_seconds() + 1:
            raise ValueError("durationSeconds exceeds the time between allocatedAt and releasedAt")
        return self


class DeviceUsageBatchIn(StrictSchema):
    events: list[DeviceUsageIn] = Field(min_length=1, max_length=100)


class UsageResult(Schema):
    allocation_id: str
    status: Literal["charged", "duplicate", "failed"]
    cost: Money | None = None
    error: str | None = Field(None, description="the failure's name, as in any error of the API")
    reason: str | None = None


class DeviceUsageBatchOut(Schema):
    """The seed's ``{success, failed, errors}``, plus one result per event in order."""

    success: int
    failed: int
    errors: list[str]
    results: list[UsageResult]


class BalanceOut(Schema):
    has_balance: bool
    balance: Money
    held: Money
    available: Money
    currency: str
    reason: str | None = None


class TopupIn(StrictSchema):
    # _whole_credits, for the published schema
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"currency": {"const": "CREDITS"}}, "required": ["currency"]},
            "then": {"properties": {"amount": {"multipleOf": 1, "pattern": r"^[^.]*(?:\.0{1,2})?$"}}},
        }
    )

    user_id: str = Id
    amount: Annotated[Decimal, Amount(le=Decimal("100000000"))] = Field(description="CREDITS: a whole number")
    currency: Literal["CNY", "CREDITS"] = "CNY"
    reference: str | None = Field(None, min_length=1, max_length=128, pattern=NO_NUL, description="idempotency key")

    @model_validator(mode="after")
    def _whole_credits(self) -> TopupIn:
        if self.currency == "CREDITS" and self.amount != self.amount.to_integral_value():
            raise ValueError("CREDITS are whole: amount must be an integer")
        return self


class TopupOut(Schema):
    user_id: str
    currency: str
    applied: bool
    balance: Money
    available: Money


class UsageItem(Schema):
    allocation_id: str
    device_id: str
    duration_seconds: int
    cpu_cores: int
    memory_mb: int = Field(serialization_alias="memoryMB")
    storage_mb: int = Field(serialization_alias="storageMB")
    allocated_at: datetime
    released_at: datetime
    cost: Money
    currency: str


class UsageTotals(Schema):
    count: int
    duration_seconds: int
    cost: Money


class UsageHistoryOut(Schema):
    user_id: str
    items: list[UsageItem]
    page: int
    page_size: int
    total: int
    total_pages: int
    totals: UsageTotals
    balance: BalanceOut


class DeadLetterOut(Schema):
    id: int
    allocation_id: str | None
    user_id: str | None
    attempts: int
    last_error: str | None
    created_at: datetime
    payload: dict[str, object]


class ReplayOut(Schema):
    requeued: int
    delivered: int
