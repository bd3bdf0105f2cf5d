"""Request and response bodies of the dining API (field names are the seed's).

Per-order problems (a missing field, a bad date or meal type) are reported per
order with the seed's Chinese messages, so ``date``, ``mealType`` and
``members`` of an order are taken as any JSON value here and judged by the
service. Only a malformed request as a whole (not an object, too many orders,
an unknown field, a remark over 500 characters) is a 400.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, StrictBool, model_validator

from batchops.core.batch import BatchMode
from batchops.core.schemas import (
    Amount,
    AnyJson,
    BatchOptions,
    DisplayName,
    Identifier,
    IsoDate,
    Money,
    Schema,
    StrictSchema,
    Text,
)

Remark = Annotated[Text, Field(max_length=500)]
MealType = Literal["breakfast", "lunch", "dinner"]
Price = Annotated[Decimal, Amount(le=Decimal("100000"))]


MAX_ORDERS = 20
MAX_QUICK_MEMBERS = 50
MAX_QUICK_MEALS = 10
MAX_ORDER_MEMBERS = 1000  # not in the seed; a guard against absurd bodies


# --- batch orders ---------------------------------------------------------------------------
class OrderIn(StrictSchema):
    date: AnyJson = None
    meal_type: AnyJson = None
    # each member is judged by the service (a bad one is the order's 缺少必要参数, not a 400)
    members: list[AnyJson] | None = Field(None, max_length=MAX_ORDER_MEMBERS)
    remark: Remark | None = None


class OrderingOptions(BatchOptions):
    """The shared batch modes, and ``allOrNone``: this API's first name for ``atomic``."""

    all_or_none: StrictBool = Field(False, description="the same as atomic: any failed order commits nothing")

    def mode(self) -> BatchMode:
        return BatchMode(continue_on_error=self.continue_on_error, atomic=self.atomic or self.all_or_none)


class BatchOrdersIn(OrderingOptions):
    orders: list[OrderIn] = Field(min_length=1, max_length=MAX_ORDERS)


class MemberIn(StrictSchema):
    user_id: Identifier


class MealIn(StrictSchema):
    date: AnyJson = None
    meal_type: AnyJson = None


class QuickBatchOrdersIn(OrderingOptions):
    members: list[MemberIn] = Field(min_length=1, max_length=MAX_QUICK_MEMBERS)
    meals: list[MealIn] = Field(min_length=1, max_length=MAX_QUICK_MEALS)
    remark: Remark | None = None

    @model_validator(mode="after")
    def _members_once(self) -> QuickBatchOrdersIn:
        ids = [m.user_id for m in self.members]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate userId in members: {', '.join(duplicates[:10])}")
        return self


class OrderOut(Schema):
    order_id: str
    order_index: int
    date: str
    meal_type: str
    member_count: int
    total_amount: Money
    status: str


class OrderError(Schema):
    order_index: int
    date: JsonValue
    meal_type: JsonValue
    error: str
    code: str


class BatchOrdersOut(Schema):
    total_orders: int
    success_count: int
    failed_count: int
    orders: list[OrderOut]
    errors: list[OrderError]
    execution_time_ms: int


# --- departments and menus ---------------------------------------------------------------------
class DepartmentIn(StrictSchema):
    department_id: Identifier
    name: DisplayName


class DepartmentsBatchIn(StrictSchema):
    departments: list[DepartmentIn] = Field(min_length=1, max_length=100, description="each departmentId once")


class DepartmentOut(Schema):
    department_id: str = Field(validation_alias="id")
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime


class MenuIn(StrictSchema):
    date: IsoDate
    meal_type: MealType
    price: Price = Field(description="price per person, CNY, two decimals at most")
    items: list[Annotated[Text, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=100)
    published: StrictBool = False


class MenusBatchIn(StrictSchema):
    menus: list[MenuIn] = Field(min_length=1, max_length=100, description="each date + mealType once")


class MenuOut(Schema):
    menu_id: str
    date: dt.date
    meal_type: str
    price: Money
    items: list[Any]
    published: bool
    updated_at: dt.datetime


class PublishIn(StrictSchema):
    menu_ids: list[Identifier] = Field(min_length=1, max_length=100)
    published: StrictBool = True


class PublishOut(Schema):
    updated_count: int
    menus: list[MenuOut]


# --- orders, cancel, summary -------------------------------------------------------------------
class OrderView(Schema):
    order_id: str
    department_id: str
    date: dt.date
    meal_type: str
    member_count: int
    price_per_person: Money
    total_amount: Money
    status: str
    remark: str | None
    created_by: str
    created_at: dt.datetime
    cancelled_at: dt.datetime | None
    member_ids: list[str]


class MealSummary(Schema):
    meal_type: str
    headcount: int
    order_count: int
    total_amount: Money


class DepartmentMealSummary(Schema):
    department_id: str
    department_name: str
    meal_type: str
    headcount: int


class DaySummary(Schema):
    date: dt.date
    meals: list[MealSummary]
    by_department: list[DepartmentMealSummary]
