"""Base pydantic models: camelCase JSON, the success envelope, pagination."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StringConstraints,
)
from pydantic.alias_generators import to_camel

from batchops.core.batch import BatchMode

T = TypeVar("T")


class Schema(BaseModel):
    """Every request and response model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class StrictSchema(Schema):
    """Request bodies: unknown fields are an error, so typos do not pass silently."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BatchOptions(StrictSchema):
    """The modes every batch endpoint takes (DESIGN.md, the batch runner)."""

    continue_on_error: StrictBool = Field(True, description="false: stop at the first failure")
    atomic: StrictBool = Field(False, description="all-or-nothing: any failure commits nothing")

    def mode(self) -> BatchMode:
        return BatchMode(continue_on_error=self.continue_on_error, atomic=self.atomic)


def _iso_date_text(value: object) -> object:
    """Only ``YYYY-MM-DD`` (or a date): pydantic would read ``0`` or ``"0"`` as 1970-01-01."""
    if isinstance(value, dt.date) or (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
        return value
    raise ValueError("must be a date as YYYY-MM-DD")


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_text)]


def _iso_datetime_text(value: object) -> object:
    """Only an ISO-8601 text (or a datetime): pydantic reads ``0``, ``true`` and ``"0"`` as
    Unix timestamps (1970-01-01), which no client means."""
    if isinstance(value, dt.datetime) or (isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}[Tt ]", value)):
        return value
    raise ValueError("must be an ISO-8601 date-time string")


# with an offset (the contract's UTC ``Z``): a naive time is ambiguous
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_datetime_text)]


def _trimmed(value: str) -> str:
    """Text is limited as sent (the length the OpenAPI schema states), then kept without
    its surrounding whitespace and never blank: pydantic's ``strip_whitespace`` strips
    before it counts, accepting a string the schema calls too long."""
    trimmed = value.strip()
    if not trimmed:
        raise ValueError("must not be blank")
    return trimmed


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_trimmed)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_trimmed)]


def cents_to_decimal(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


def decimal_to_cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal("1"), rounding=ROUND_HALF_UP))


# Money is exact inside (Decimal / integer cents) and a JSON number with two decimals outside.
Money = Annotated[Decimal, PlainSerializer(lambda d: float(d.quantize(Decimal("0.01"))), return_type=float)]


class Envelope(Schema, Generic[T]):
    success: Literal[True] = True
    data: T
    message: str = "OK"


class BatchSummary(Schema):
    """The counts every batch response carries (successCount + failedCount == totalCount)."""

    success_count: int
    failed_count: int
    total_count: int
    execution_time_ms: int


class Page(Schema, Generic[T]):
    items: list[T]
    page: int
    page_size: int
    total: int
    total_pages: int

    @classmethod
    def build(cls, items: list[T], *, page: int, page_size: int, total: int) -> Page[T]:
        return cls(items=items, page=page, page_size=page_size, total=total, total_pages=math.ceil(total / page_size))


class PageParams(Schema):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=200)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


def ok(data: T, message: str = "OK") -> Envelope[T]:
    return Envelope[T](data=data, message=message)
