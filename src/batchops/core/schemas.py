"""Base pydantic models (camelCase JSON, the success envelope, pagination) and the shared
input types every request schema uses, so that each limit the server enforces is also in
the OpenAPI schema it publishes: text without NUL, JSON integers, money with two
decimals, dates within the years 0001–9998."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    JsonValue,
    PlainSerializer,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from batchops.core.batch import BatchMode
from batchops.core.text import NO_NUL, NOT_BLANK, has_nul

T = TypeVar("T")
DateT = TypeVar("DateT", bound=dt.date)


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


# --- text --------------------------------------------------------------------------------
# Any text: no NUL (core/text.py says why). Limit it at the field: Annotated[Text, Field(max_length=500)].
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]


def _trimmed(value: str) -> str:
    """Text is limited as sent (the length the OpenAPI schema states), then kept without
    its surrounding whitespace; the pattern already refused a blank one. pydantic's
    ``strip_whitespace`` strips before it counts, accepting a string the schema calls too long."""
    trimmed = value.strip()
    if not trimmed:
        raise ValueError("must not be blank")
    return trimmed


Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=NOT_BLANK), AfterValidator(_trimmed)
]
DisplayName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK), AfterValidator(_trimmed)
]


def _without_nul(value: JsonValue) -> JsonValue:
    """Any JSON value whose strings (keys too) hold no NUL: for fields a service judges itself."""
    if isinstance(value, str):
        if has_nul(value):
            raise ValueError("must not contain a NUL character (\\u0000)")
    elif isinstance(value, list):
        for item in value:
            _without_nul(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _without_nul(key)
            _without_nul(item)
    return value


AnyJson = Annotated[JsonValue, AfterValidator(_without_nul)]


# --- numbers -------------------------------------------------------------------------------
def _whole_float_as_int(value: object) -> object:
    # JSON has one number type, and JSON Schema calls 104.0 an integer: so do we.
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(frozen=True)
class Integer:
    """``Annotated[int, Integer(ge=1, le=1440)]``: a JSON integer (``60`` or ``60.0``) within the
    bounds; never ``"60"`` or ``true`` (no lax coercion). The bounds live here, not in a
    ``Field``: pydantic cannot publish a Field's bounds placed after a validator."""

    ge: int | None = None
    le: int | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(
            _whole_float_as_int, core_schema.int_schema(strict=True, ge=self.ge, le=self.le)
        )


@dataclass(frozen=True)
class Amount:
    """``Annotated[Decimal, Amount(le=Decimal("100000"))]``: money in a request, above zero and
    at most ``le`` (a power of ten), with at most two decimals: a JSON number (``multipleOf:
    0.01`` in the schema) or the same written as a string (``"12.50"``)."""

    le: Decimal

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.decimal_schema(gt=Decimal(0), le=self.le, decimal_places=2)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        digits = len(str(int(self.le))) - 1
        if self.le != 10**digits or digits < 1:
            raise ValueError("Amount(le=…) must be a power of ten: its string pattern is written for one")
        below = rf"[1-9]\d{{0,{digits - 1}}}(?:\.\d{{1,2}})?"  # 1 .. le - 0.01
        top = rf"10{{{digits}}}(?:\.0{{1,2}})?"  # le itself
        fraction = r"0?\.(?:[1-9]\d?|0[1-9])"  # 0.01 .. 0.99
        return {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": float(self.le), "multipleOf": 0.01},
                {"type": "string", "pattern": f"^(?:{below}|{top}|{fraction})$"},
            ]
        }


# --- dates ---------------------------------------------------------------------------------
# Inputs stay a year away from datetime's limits (0001-01-01 .. 9999-12-31), so adding a
# window or converting to UTC never overflows (it was a 500): years 0001–9998.
MIN_YEAR, MAX_YEAR = 1, 9998
_YEAR = r"(?:000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-8]\d{3}|9[0-8]\d\d|99[0-8]\d|999[0-8])"
DATE_PATTERN = rf"^{_YEAR}-\d{{2}}-\d{{2}}$"
DATETIME_PATTERN = rf"^{_YEAR}-"  # with format date-time, which says the rest


def within_years(value: dt.date) -> bool:
    """Whether a date (or a date-time, also once in UTC) lies in the years 0001–9998."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        return False
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        try:
            value.astimezone(dt.UTC)
        except OverflowError:  # 0001-01-01T00:00+05:00 is in the year 0 in UTC
            return False
    return True


def in_years(value: DateT) -> DateT:
    """``value``, or ValueError outside the years 0001–9998 (see :func:`within_years`)."""
    if not within_years(value):
        raise ValueError(f"must be within the years {MIN_YEAR:04d}–{MAX_YEAR:04d}")
    return value


def _iso_date_text(value: object) -> object:
    """Only ``YYYY-MM-DD`` (or a date): pydantic would read ``0`` or ``"0"`` as 1970-01-01."""
    if isinstance(value, dt.date) or (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
        return value
    raise ValueError("must be a date as YYYY-MM-DD")


def _iso_datetime_text(value: object) -> object:
    """Only an ISO-8601 text (or a datetime): pydantic reads ``0``, ``true`` and ``"0"`` as
    Unix timestamps (1970-01-01), which no client means."""
    if isinstance(value, dt.datetime) or (isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}[Tt ]", value)):
        return value
    raise ValueError("must be an ISO-8601 date-time string")


IsoDate = Annotated[
    dt.date,
    BeforeValidator(_iso_date_text),
    AfterValidator(in_years),
    WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN}),
]
# With a zone (the contract's ``Z``): a naive time is ambiguous.
IsoDatetime = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_datetime_text),
    AfterValidator(in_years),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": DATETIME_PATTERN}),
]


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
