"""Issue 6 speed: allocate, extend and grant with a crowded calendar and queue.

1,000 devices on 10 nodes, 10,000 live reservations over the next 30 days and
1,000 waiting requests, against the same operations on an empty calendar and
queue, in the same run, on a fresh PostgreSQL database (``--sqlite`` for the
embedded engine). Timed in-process through the service layer (no HTTP), medians
of ``--reps`` runs. Target: each under 10 ms median on PostgreSQL.

    python -m bench.scheduler_phase3 [--reps 40] [--sqlite] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert, select, text, update

from batchops.assembly import build_runtime
from batchops.billing.ledger import CNY, Book
from batchops.core.db import utcnow
from batchops.core.logging import configure_logging
from batchops.core.runtime import Runtime
from batchops.identity.models import User
from batchops.scheduler.models import Allocation, Device, QueueEntry, Reservation
from batchops.scheduler.schemas import AllocationRequest
from batchops.scheduler.service import SchedulerService
from batchops.settings import Settings
from bench.harness import fresh_database

PG = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Size:
    devices: int = 1000
    reservations: int = 10_000  # 10 per device, one per 3-day slot
    waiting: int = 1000

    @property
    def users(self) -> int:  # the first half reserve and allocate, the second half wait
        return 2 * self.waiting


FULL, SMOKE = Size(), Size(devices=50, reservations=500, waiting=50)


async def seed(rt: Runtime, crowded: bool, size: Size) -> None:
    now = utcnow()
    rng = random.Random(7)
    async with rt.db.transaction() as s:
        await s.execute(
            insert(User),
            [
                {
                    "id": f"u{i}",
                    "name": f"u{i}",
                    "role": "admin" if i == 0 else "user",
                    "status": "active",
                    "max_devices": 10_000,
                    "plan": "free",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(size.users)
            ],
        )
        await s.execute(
            insert(Device),
            [
                {
                    "id": f"d{i:04d}",
                    "name": f"Device-{i:04d}",
                    "cpu_cores": 4,
                    "memory_mb": 8192,
                    "storage_mb": 65536,
                    "node_id": f"node-{i % 10}",
                    "status": "available",
                    "maintenance": False,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(size.devices)
            ],
        )
        if crowded:
            rows = []
            for n in range(size.reservations):  # one per device per 3-day slot, starting from tomorrow
                device, slot = n % size.devices, n // size.devices
                start = now + timedelta(days=1 + 3 * slot, minutes=rng.randrange(0, 600))
                rows.append(
                    {
                        "id": f"r{n}",
                        "user_id": f"u{1 + n % (size.users - 1)}",
                        "device_id": f"d{device:04d}",
                        "start_at": start,
                        "end_at": start + timedelta(minutes=120),
                        "duration_minutes": 120,
                        "status": "reserved",
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            await s.execute(insert(Reservation), rows)
            await s.execute(
                insert(QueueEntry),
                [
                    {
                        "id": f"q{n:04d}",
                        "user_id": f"u{size.waiting + n}",
                        "duration_minutes": 30,
                        "min_cpu": None,
                        "min_memory_mb": None,
                        "priority": n % 10,
                        "status": "waiting",
                        "enqueued_at": now - timedelta(seconds=size.waiting - n),
                        "expires_at": now + timedelta(days=1),
                    }
                    for n in range(size.waiting)
                ],
            )


async def analyze(rt: Runtime) -> None:
    """Planner statistics after a bulk load, as a live PostgreSQL database has them."""
    if not rt.db.is_sqlite:
        async with rt.db.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))


async def measure(url: str, crowded: bool, reps: int, size: Size) -> dict[str, list[float]]:
    settings = Settings(database_url=url, embedded_worker=False, log_level="WARNING")
    rt = build_runtime(settings)
    scheduler = rt.services.get(SchedulerService)
    try:
        await seed(rt, crowded, size)
        async with rt.db.transaction() as s:
            admin = await s.get(User, "u0")
            # every user can pay: allocations and grants take their billing hold, as in production
            users = list(await s.scalars(select(User.id)))
            book = await Book(s, CNY).load(users)
            for u in users:
                book.topup(u, 10_000_000, f"topup:bench:{u}")
            await book.flush()
        await analyze(rt)
        assert admin is not None
        times: dict[str, list[float]] = {"allocate": [], "extend": [], "grant": []}
        for i in range(reps):
            request = AllocationRequest(user_id=f"u{1 + i}", duration_minutes=60)
            started = time.perf_counter()
            result = await scheduler.allocate(admin, request)
            times["allocate"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await scheduler.extend(admin, result.id, 30)
            times["extend"].append((time.perf_counter() - started) * 1000)
            await scheduler.release(admin, result.id, "bench")
        # grant: every device busy, free one, time the grant pass that hands it on
        async with rt.db.transaction() as s:
            await s.execute(update(Device).values(status="allocated"))
            await s.execute(
                insert(Allocation),
                [
                    {
                        "id": f"busy{i}",
                        "device_id": f"d{i:04d}",
                        "user_id": "u0",
                        "status": "allocated",
                        "duration_minutes": 600,
                        "allocated_at": utcnow(),
                        "expires_at": utcnow() + timedelta(hours=10),
                    }
                    for i in range(size.devices)
                ],
            )
            if not crowded:  # the same grant with nothing else waiting
                await s.execute(
                    insert(QueueEntry),
                    [
                        {
                            "id": f"q{n}",
                            "user_id": f"u{size.waiting + n}",
                            "duration_minutes": 30,
                            "priority": 0,
                            "status": "waiting",
                            "enqueued_at": utcnow(),
                            "expires_at": utcnow() + timedelta(days=1),
                        }
                        for n in range(reps)
                    ],
                )
        await analyze(rt)
        for i in range(reps):
            await scheduler.release(admin, f"busy{i}", "bench")
            started = time.perf_counter()
            await scheduler.queue.grant_waiting()
            times["grant"].append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await rt.stop()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, math.ceil(len(xs) * 0.95) - 1)]


async def run(reps: int, sqlite: bool, size: Size = FULL) -> None:
    configure_logging("WARNING")
    results = {}
    for crowded in (False, True):
        url, drop = await fresh_database(sqlite)
        try:
            results[crowded] = await measure(url, crowded, reps, size)
        finally:
            await drop()
    engine = "SQLite" if sqlite else "PostgreSQL"
    table = Table(
        title=f"Scheduler phase 3 on {engine}: {size.devices} devices, {size.reservations} reservations, "
        f"{size.waiting} waiting (service layer, {reps} reps)"
    )
    for col in (
        "operation",
        "empty median ms",
        "empty p95",
        "crowded median ms",
        "crowded p95",
        "ratio",
        "target < 10 ms",
    ):
        table.add_column(col, justify="right")
    for op in ("allocate", "extend", "grant"):
        empty, crowded = results[False][op], results[True][op]
        table.add_row(
            op,
            f"{median(empty):.2f}",
            f"{p95(empty):.2f}",
            f"{median(crowded):.2f}",
            f"{p95(crowded):.2f}",
            f"{median(crowded) / median(empty):.2f}x",
            "yes" if median(crowded) < 10 else "NO",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--sqlite", action="store_true", help="embedded engine instead of PostgreSQL")
    parser.add_argument("--smoke", action="store_true", help="a 20th of the calendar, 2 reps: runs, measures nothing")
    args = parser.parse_args(argv)
    asyncio.run(run(2 if args.smoke else args.reps, args.sqlite, SMOKE if args.smoke else FULL))


if __name__ == "__main__":
    main()
