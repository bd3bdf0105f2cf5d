"""Dining's order rules (seed 002 §常见错误类型) judged in memory: an ``OrderWork`` given its
menus, members and existing orders directly, and "today" as the canteen's date."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.core.batch import ROLLED_BACK, SKIPPED, ItemFailure
from batchops.core.errors import AppError, BadRequestError, ConflictError, ForbiddenError
from batchops.dining.models import LINE_ACTIVE, PENDING, Menu
from batchops.dining.ordering import Member, OrderSpec, OrderWork, failure_message
from batchops.dining.rules import ensure_dept_admin, local_today, member_ids, parse_day, visible_department
from batchops.identity.models import User

TODAY = dt.date(2030, 6, 10)
NOW = dt.datetime(2030, 6, 10, 1, 0, tzinfo=dt.UTC)  # 09:00 on the 10th in Shanghai
TOMORROW = "2030-06-11"
ADMIN = User(id="boss", name="Boss", role="dept_admin", status="active", department_id="rd")


def work(*, taken: set[tuple[str, dt.date, str]] = frozenset(), published: bool = True) -> OrderWork:  # type: ignore[assignment]
    w = OrderWork(None, ADMIN, "rd", TODAY, NOW)  # type: ignore[arg-type]  # handle() reads nothing
    for day in (TODAY, dt.date(2030, 6, 11)):
        for meal in ("breakfast", "lunch", "dinner"):
            w.menus[(day, meal)] = Menu(
                id=f"menu-{day}-{meal}", date=day, meal_type=meal, price_cents=1550, items=[], published=published
            )
    w.menus.pop((dt.date(2030, 6, 11), "dinner"))  # no menu at all
    w.users = {
        "zhang": Member("zhang", "张三", "active", "sales"),
        "li": Member("li", "李四", "active", "rd"),
        "wang": Member("wang", "王五", "active", "rd"),
        "zhao": Member("zhao", "赵六", "suspended", "rd"),
    }
    w.taken = set(taken)
    return w


def spec(index: int = 1, date: Any = TOMORROW, meal: Any = "lunch", members: Any = ("li", "wang")) -> OrderSpec:
    listed = [{"userId": m} for m in members] if isinstance(members, tuple) else members
    return OrderSpec(index, date, meal, listed)


async def judged(w: OrderWork, s: OrderSpec) -> tuple[type[AppError], str]:
    with pytest.raises(AppError) as raised:
        await w.handle(s)
    return type(raised.value), raised.value.message


# --- the seed's messages, in the seed's order --------------------------------------------------------
@pytest.mark.parametrize(
    ("order", "error", "message"),
    [
        (spec(date=None), BadRequestError, "订单 1: 缺少必要参数"),
        (spec(meal=None), BadRequestError, "订单 1: 缺少必要参数"),
        (spec(members=()), BadRequestError, "订单 1: 缺少必要参数"),
        (spec(members=[{"id": "li"}]), BadRequestError, "订单 1: 缺少必要参数"),
        (spec(date="2030/06/11"), BadRequestError, "订单 1: 日期格式不正确"),
        (spec(date="2030-02-30"), BadRequestError, "订单 1: 日期格式不正确"),
        (spec(date=20300611), BadRequestError, "订单 1: 日期格式不正确"),
        (spec(meal="brunch"), BadRequestError, "订单 1: 餐次类型不正确"),
        (spec(date="2030-06-09"), BadRequestError, "订单 1: 不能为过去的日期报餐"),
        (spec(meal="dinner"), BadRequestError, "订单 1: 菜单尚未发布"),
        (spec(members=("li", "ghost")), BadRequestError, "订单 1: 部分用户不存在或状态异常"),
        (spec(members=("li", "zhao")), BadRequestError, "订单 1: 部分用户不存在或状态异常"),
        (spec(members=("li", "zhang")), ForbiddenError, "订单 1: 用户 张三 不属于本部门"),
        (spec(members=("li", "li")), BadRequestError, "订单 1: 用户 李四 在本订单中重复出现"),
        (spec(index=7, date="2030-06-09", meal="brunch"), BadRequestError, "订单 7: 餐次类型不正确"),  # first rule wins
        (spec(date="2030-06-09", meal="dinner"), BadRequestError, "订单 1: 不能为过去的日期报餐"),
    ],
)
async def test_each_rule_fails_the_order_with_the_seeds_message(
    order: OrderSpec, error: type[AppError], message: str
) -> None:
    assert await judged(work(), order) == (error, message)


async def test_an_unpublished_menu_is_refused_like_a_missing_one() -> None:
    assert await judged(work(published=False), spec()) == (BadRequestError, "订单 1: 菜单尚未发布")


async def test_a_member_already_ordered_is_a_conflict_naming_them() -> None:
    w = work(taken={("wang", dt.date(2030, 6, 11), "lunch")})
    assert await judged(w, spec()) == (ConflictError, "订单 1: 用户 王五 已经报餐")
    placed = await w.handle(spec(meal="breakfast"))  # another meal of that day is fine
    assert placed.order["meal_type"] == "breakfast"


async def test_today_is_not_past_and_an_order_is_all_its_members() -> None:
    w = work()
    placed = await w.handle(spec(index=3, date=TODAY.isoformat(), members=("li", "wang")))
    order = placed.order
    assert (placed.index, order["date"], order["member_count"], order["price_cents"], order["total_cents"]) == (
        3,
        TODAY,
        2,
        1550,
        3100,
    )
    assert (order["status"], order["department_id"], order["created_by"]) == (PENDING, "rd", "boss")
    assert order["created_at"] == NOW
    assert [{k: v for k, v in line.items() if k != "id"} for line in placed.lines] == [
        {"order_id": placed.id, "user_id": "li", "date": TODAY, "meal_type": "lunch", "status": LINE_ACTIVE},
        {"order_id": placed.id, "user_id": "wang", "date": TODAY, "meal_type": "lunch", "status": LINE_ACTIVE},
    ]
    assert len({line["id"] for line in placed.lines}) == 2


async def test_a_later_order_of_the_batch_sees_the_earlier_ones() -> None:
    w = work()
    await w.handle(spec(index=1, members=("li",)))
    assert await judged(w, spec(index=2, members=("wang", "li"))) == (ConflictError, "订单 2: 用户 李四 已经报餐")
    await w.handle(spec(index=3, members=("wang",)))  # a failed order staged nothing: wang is free


# --- dates in the canteen's time zone ---------------------------------------------------------------------
def test_today_is_the_canteens_date_not_utcs() -> None:
    late_utc = dt.datetime(2030, 6, 10, 16, 30, tzinfo=dt.UTC)  # 00:30 on the 11th in Shanghai
    assert local_today("Asia/Shanghai", late_utc) == dt.date(2030, 6, 11)
    assert local_today("UTC", late_utc) == dt.date(2030, 6, 10)
    assert local_today("Asia/Shanghai", dt.datetime(2030, 6, 10, 15, 59, 59, tzinfo=dt.UTC)) == dt.date(2030, 6, 10)
    assert local_today("America/Los_Angeles", dt.datetime(2030, 6, 10, 6, 0, tzinfo=dt.UTC)) == dt.date(2030, 6, 9)


@settings(max_examples=50)
@given(day=st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)))
def test_any_real_date_in_the_seeds_format_parses_and_nothing_else(day: dt.date) -> None:
    assert parse_day(day.isoformat()) == day
    assert parse_day(day.strftime("%Y/%m/%d")) is None
    assert parse_day(day.isoformat() + "T00:00") is None


def test_dates_that_do_not_exist_are_refused() -> None:
    assert [parse_day(v) for v in ("2030-02-29", "2028-02-29", "2030-13-01", "", None, 20300101)] == [
        None,
        dt.date(2028, 2, 29),
        None,
        None,
        None,
        None,
    ]


def test_member_lists() -> None:
    assert member_ids([{"userId": " li "}, {"userId": "wang"}]) == ["li", "wang"]
    for bad in (None, [], [{"userId": ""}], [{"userId": "  "}], [{"userId": 7}], ["li"], [{"userId": "x" * 129}]):
        assert member_ids(bad) is None, bad


def test_only_a_department_admin_orders_and_for_their_own_department() -> None:
    assert ensure_dept_admin(ADMIN) == "rd"
    with pytest.raises(ForbiddenError, match="只有部门管理员可以报餐"):
        ensure_dept_admin(User(id="u", role="user", department_id="rd"))
    with pytest.raises(ForbiddenError, match="部门管理员未关联部门"):
        ensure_dept_admin(User(id="u", role="dept_admin", department_id=None))
    with pytest.raises(ForbiddenError, match="只能查看本部门的订单"):
        visible_department(ADMIN, "sales")
    assert visible_department(User(id="a", role="admin"), "sales") == "sales"


def test_skipped_and_rolled_back_orders_are_explained_in_chinese() -> None:
    order = spec(index=4)
    assert failure_message(ItemFailure(3, order, *ROLLED_BACK)) == "订单 4: 同批次其他订单失败，本订单未提交"
    assert failure_message(ItemFailure(3, order, *SKIPPED)) == "订单 4: 前面的订单失败，本订单未处理"
    assert (
        failure_message(ItemFailure(3, order, "BadRequestException", "订单 4: 菜单尚未发布")) == "订单 4: 菜单尚未发布"
    )
