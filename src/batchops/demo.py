"""Demo data: 100 devices and the users of seed 000's curl scenarios 1–5."""

from __future__ import annotations

from sqlalchemy import func, select

from batchops.assembly import build_runtime
from batchops.billing.ledger import CNY, Book
from batchops.core.batch import BatchMode
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


async def load_demo(settings: Settings, admin_id: str) -> list[str]:
    rt = build_runtime(settings)
    identity: IdentityService = rt.services["identity"]
    scheduler: SchedulerService = rt.services["scheduler"]
    try:
        await identity.ensure_admin(admin_id)
        users = [UserIn(user_id=f"user-{i:03d}", name=f"User {i:03d}") for i in range(1, 21)]
        users += [UserIn(user_id=f"normal-user-{i}") for i in (1, 2, 3)]
        users += [
            UserIn(user_id="quota-exceeded-user", max_devices=5),
            UserIn(user_id="suspended-user", status="suspended"),
            UserIn(user_id="test-user-001"),
            UserIn(user_id="test-user-002"),
        ]
        users += [UserIn(user_id=f"tenant-{i:03d}") for i in range(1, 101)]
        await identity.upsert_users(users)
        async with rt.db.transaction() as session:  # 1000 CNY each, once (the reference makes it idempotent)
            book = await Book(session, CNY).load([u.user_id for u in users])
            await book.load_references([f"topup:demo:{u.user_id}" for u in users])
            for u in users:
                book.topup(u.user_id, DEMO_BALANCE_FEN, f"topup:demo:{u.user_id}")
            await book.flush()
        async with rt.db.transaction() as session:
            admin = await session.get(User, admin_id)
            busy = await session.scalar(
                select(func.count()).where(Allocation.user_id == "quota-exceeded-user", Allocation.status == ACTIVE)
            )
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
        if not busy:
            fill = [AllocationRequest(user_id="quota-exceeded-user", duration_minutes=1440) for _ in range(5)]
            done = await scheduler.batch_allocate(admin, fill, BatchMode())
            lines.append(f"quota-exceeded-user now holds {done.success_count} devices (maxDevices=5)")
        return lines
    finally:
        await rt.stop()
