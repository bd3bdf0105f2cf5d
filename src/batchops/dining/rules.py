"""What every dining operation judges by (seed 002): the canteen's date, the shape of an
order's fields, who may order or look, and the seed's messages."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import JsonValue

from batchops.core.errors import ForbiddenError
from batchops.core.schemas import in_years
from batchops.identity.models import User

DEPT_ADMIN = "dept_admin"
ACTIVE_USER = "active"
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# The seed's messages (常见错误类型), each prefixed with ``订单 N: `` (N is 1-based).
MISSING = "缺少必要参数"
BAD_DATE = "日期格式不正确"
BAD_MEAL = "餐次类型不正确"
PAST_DATE = "不能为过去的日期报餐"
MENU_UNPUBLISHED = "菜单尚未发布"
BAD_USERS = "部分用户不存在或状态异常"
# Ours, for cases the seed does not name:
ROLLED_BACK_MESSAGE = "同批次其他订单失败，本订单未提交"
SKIPPED_MESSAGE = "前面的订单失败，本订单未处理"


def not_in_department(name: str) -> str:
    return f"用户 {name} 不属于本部门"


def already_ordered(name: str) -> str:
    return f"用户 {name} 已经报餐"


def repeated_in_order(name: str) -> str:
    return f"用户 {name} 在本订单中重复出现"


def local_today(timezone: str, now: dt.datetime) -> dt.date:
    """Today where the canteen is (``BATCHOPS_TIMEZONE``) at ``now``: what "past" is judged by."""
    return now.astimezone(ZoneInfo(timezone)).date()


def cancellable(day: dt.date, today: dt.date) -> bool:
    """An order may be cancelled before the day of its meal."""
    return day > today


def parse_day(value: JsonValue) -> dt.date | None:
    """A ``YYYY-MM-DD`` string naming a real date in the years every input keeps to, else None."""
    if not isinstance(value, str) or not DATE_RE.match(value):
        return None
    try:
        return in_years(dt.date.fromisoformat(value))
    except ValueError:
        return None


def member_ids(members: Sequence[Any] | None) -> list[str] | None:
    """The userIds of ``[{"userId": …}, …]``; None when missing, empty or malformed."""
    if not members:
        return None
    ids: list[str] = []
    for member in members:
        if not isinstance(member, dict):
            return None
        user_id = member.get("userId")
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id.strip()) > 128:
            return None
        ids.append(user_id.strip())
    return ids


def ensure_dept_admin(caller: User) -> str:
    """Only a department admin orders, and only for their own department."""
    if caller.role != DEPT_ADMIN:
        raise ForbiddenError("只有部门管理员可以报餐")
    if not caller.department_id:
        raise ForbiddenError("部门管理员未关联部门")
    return caller.department_id


def visible_department(caller: User, department_id: str | None) -> str | None:
    """An admin sees every department; a department admin only their own."""
    if caller.is_admin:
        return department_id
    own = ensure_dept_admin(caller)
    if department_id is not None and department_id != own:
        raise ForbiddenError("只能查看本部门的订单")
    return own
