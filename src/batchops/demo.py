"""Demo data: 100 devices and the users of seed 000's curl scenarios 1–5.

So that the scenarios' curl commands work as written (with a token):

1. user-001…008 get a device; user-009 and user-010 fail (each already holds its
   maxDevices=1): "Batch allocation completed: 8/10 succeeded".
2. and 3. alloc-001…005 exist and are active (held by user-011…015). Scenario 2
   releases all five, scenario 3 extends alloc-001…003: replay 3 before 2, or load the
   demo into a new database again (an allocation id is never reused).
4. the 20 users user-001…020.
5. quota-exceeded-user holds its 5 devices; suspended-user is suspended.

And for the README's other examples: a canteen department ``dept-001`` whose
``dept_admin`` is ``dept-admin-001``, members ``staff-001…008``, published menus for
today and the next 7 days (in ``BATCHOPS_TIMEZONE``); a studio creator ``creator-001``
on plan ``pro`` with 1000 CREDITS.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from batchops.assembly import build_runtime
from batchops.billing.ledger import CNY, CREDITS, Book
from batchops.core.batch import BatchMode
from batchops.core.runtime import Runtime
from batchops.dining.schemas import DepartmentIn, MenuIn
from batchops.dining.service import DiningService
from batchops.identity.models import User
from batchops.identity.schemas import UserIn
from batchops.identity.service import IdentityService
from batchops.scheduler.models import ACTIVE, Allocation
from batchops.scheduler.schemas import AllocationRequest, DeviceIn
from batchops.scheduler.service import SchedulerService
from batchops.settings import Settings

# cpu / memory / storage profiles, so device preferences have something to choose from
PROFILES = [(2, 4096, 32768), (4, 8192, 65536), (8, 16384, 131072)]


DEMO_BALANCE_FEN = 100_000
# Users who start at their maxDevices (scenario 1's user-009 / user-010, scenario 5's quota-exceeded-user).
HELD = {"quota-exceeded-user": 5, "user-009": 1, "user-010": 1}
NAMED_ALLOCATIONS = [f"alloc-{i:03d}" for i in range(1, 6)]
DEPARTMENT, DEPT_ADMIN = ("dept-001", "研发部"), "dept-admin-001"
STAFF = {
    f"staff-{i:03d}": name for i, name in enumerate(("张三", "李四", "王五", "赵六", "钱七", "孙八", "周九", "吴十"), 1)
}
# the seed's example prices: lunch for 2 is 25.00, dinner for 2 30.00, breakfast for 3 15.00
MEALS = {
    "breakfast": (Decimal("5.00"), ["包子", "豆浆"]),
    "lunch": (Decimal("12.50"), ["宫保鸡丁", "米饭"]),
    "dinner": (Decimal("15.00"), ["红烧鱼", "米饭"]),
}
MENU_DAYS = 8  # today and the next 7 days
CREATOR, CREATOR_CREDITS = "creator-001", 1000
# Console sign-ins of the demo (printed by `batchops demo` and `make run`): an operator, a
# device user who holds alloc-001, the canteen's department admin and the studio's creator.
DEMO_DEVICE_USER = "user-011"
DEMO_PASSWORDS = {
    "operator": "batchops-admin",
    DEMO_DEVICE_USER: "batchops-user",
    DEPT_ADMIN: "batchops-meals",
    CREATOR: "batchops-studio",
}


def demo_user(user_id: str, **fields: Any) -> UserIn:
    """A demo user; one of ``HELD`` is allowed exactly the devices it is given."""
    if user_id in HELD:
        fields["max_devices"] = HELD[user_id]
    return UserIn(user_id=user_id, **fields)


async def set_demo_passwords(identity: IdentityService, admin_id: str) -> list[str]:
    """Console passwords for the demo's operator, device user, department admin and creator;
    the lines that say how to sign in."""
    sign_ins = [
        ("operator", admin_id, DEMO_PASSWORDS["operator"]),
        ("device user", DEMO_DEVICE_USER, DEMO_PASSWORDS[DEMO_DEVICE_USER]),
        ("department admin", DEPT_ADMIN, DEMO_PASSWORDS[DEPT_ADMIN]),
        ("creator", CREATOR, DEMO_PASSWORDS[CREATOR]),
    ]
    for _, user_id, password in sign_ins:
        await identity.set_password(user_id, password)
    return [f"console sign-in ({role}): {user_id} / {password}" for role, user_id, password in sign_ins]


async def load_demo(settings: Settings, admin_id: str) -> list[str]:
    rt = build_runtime(settings)
    identity = rt.services.get(IdentityService)
    scheduler = rt.services.get(SchedulerService)
    try:
        await identity.ensure_admin(admin_id)
        users = [demo_user(f"user-{i:03d}", name=f"User {i:03d}") for i in range(1, 21)]
        users += [demo_user(f"normal-user-{i}") for i in (1, 2, 3)]
        users += [
            demo_user("quota-exceeded-user"),
            demo_user("suspended-user", status="suspended"),
            demo_user("test-user-001"),
            demo_user("test-user-002"),
        ]
        users += [demo_user(f"tenant-{i:03d}") for i in range(1, 101)]
        await identity.upsert_users(users)
        dining_lines = await load_dining(rt)
        studio_lines = await load_studio(rt)
        async with rt.db.transaction() as session:  # 1000 CNY each, once (the reference makes it idempotent)
            book = await Book(session, CNY).load([u.user_id for u in users])
            await book.load_references([f"topup:demo:{u.user_id}" for u in users])
            for u in users:
                book.topup(u.user_id, DEMO_BALANCE_FEN, f"topup:demo:{u.user_id}")
            await book.flush()
        async with rt.db.transaction() as session:
            admin = await session.get(User, admin_id)
            active = dict(
                (
                    await session.execute(
                        select(Allocation.user_id, func.count())
                        .where(Allocation.user_id.in_(list(HELD)), Allocation.status == ACTIVE)
                        .group_by(Allocation.user_id)
                    )
                ).all()
            )
            named = await session.scalar(select(func.count()).where(Allocation.id.in_(NAMED_ALLOCATIONS)))
        assert admin is not None
        devices = [
            DeviceIn(
                id=f"device-{i:03d}",
                name=f"Device-{i:03d}",
                cpu_cores=PROFILES[i % 3][0],
                memory_mb=PROFILES[i % 3][1],
                storage_mb=PROFILES[i % 3][2],
                node_id=f"node-{(i - 1) // 25 + 1}",
            )
            for i in range(1, 101)
        ]
        registered = await scheduler.register_devices(admin, devices, BatchMode())
        lines = [
            f"admin: {admin_id}",
            f"devices: {registered.success_count} new, {registered.failed_count} already there (100 in the demo)",
            f"users: {len(users)} (user-001…020, normal-user-1…3, quota-exceeded-user, suspended-user, tenant-001…100),"
            f" {DEMO_BALANCE_FEN // 100} CNY each",
        ]
        fill = [
            AllocationRequest(user_id=user_id, duration_minutes=1440)
            for user_id, count in HELD.items()
            for _ in range(count - active.get(user_id, 0))
        ]
        if fill:
            done = await scheduler.batch_allocate(admin, fill, BatchMode())
            lines.append(
                f"{done.success_count} devices taken by quota-exceeded-user (5), user-009 and user-010 (1 each)"
            )
        if not named:
            asks = [AllocationRequest(user_id=f"user-{i:03d}", duration_minutes=120) for i in range(11, 16)]
            done = await scheduler.batch_allocate(admin, asks, BatchMode(), allocation_ids=NAMED_ALLOCATIONS)
            lines.append(f"{done.success_count} allocations named as the seed's scenarios 2 and 3: alloc-001…005")
        return lines + dining_lines + studio_lines + await set_demo_passwords(identity, admin_id)
    finally:
        await rt.stop()


async def load_dining(rt: Runtime) -> list[str]:
    """A department, its admin and members, and published menus from today on (idempotent)."""
    identity = rt.services.get(IdentityService)
    dining = rt.services.get(DiningService)
    department_id, department_name = DEPARTMENT
    await dining.upsert_departments([DepartmentIn(department_id=department_id, name=department_name)])
    await identity.upsert_users(
        [UserIn(user_id=DEPT_ADMIN, name="部门管理员", role="dept_admin", department_id=department_id)]
        + [UserIn(user_id=u, name=name, department_id=department_id) for u, name in STAFF.items()]
    )
    today = dining.today()  # what the ordering rules call "today"
    days = [today + dt.timedelta(days=n) for n in range(MENU_DAYS)]
    await dining.upsert_menus(
        [
            MenuIn(date=day, meal_type=meal, price=price, items=items, published=True)
            for day in days
            for meal, (price, items) in MEALS.items()
        ]
    )
    return [
        f"dining: department {department_id} ({department_name}), dept_admin {DEPT_ADMIN},"
        f" members staff-001…{len(STAFF):03d}; menus published {days[0]} … {days[-1]} ({rt.settings.timezone})"
    ]


async def load_studio(rt: Runtime) -> list[str]:
    """A creator on a paid plan with credits (the reference makes the top-up happen once)."""
    identity = rt.services.get(IdentityService)
    await identity.upsert_users([UserIn(user_id=CREATOR, name="Creator 001", plan="pro")])
    async with rt.db.transaction() as session:
        book = await Book(session, CREDITS).load([CREATOR])
        await book.load_references([f"topup:demo:{CREATOR}:credits"])
        book.topup(CREATOR, CREATOR_CREDITS, f"topup:demo:{CREATOR}:credits")
        await book.flush()
    return [f"studio: {CREATOR} (plan pro: 3 at once, 15 per batch), {CREATOR_CREDITS} credits"]
