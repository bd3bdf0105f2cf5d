"""Issue 4 speed: one batch-orders request of 20 orders × 50 members (1,000 member-meals).

A real ``batchops serve`` (``bench/harness.py``) on a fresh database; the same
20 orders and 1,000 order lines written by plain SQL (one transaction, two
statements: executemany on SQLite, ``INSERT … SELECT unnest(arrays)`` on
PostgreSQL) in the same run are the floor. Between repetitions the
orders are deleted (not timed), so every request does the full work: lock the
members, read menus and existing orders, judge 20 orders, write 1,020 rows.
Target: the API within 3x of the floor.

    python -m bench.dining [--reps 20] [--db sqlite|postgresql|both] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from rich.console import Console

from bench.harness import ENGINES, CompareTable, Server, Timing

MEMBERS, ORDERS, PRICE_CENTS = 50, 20, 1250
TARGET = 3.0
DEPARTMENT = "bench-dept"
DEPT_ADMIN = "bench-dept-admin"
MEALS = ("breakfast", "lunch", "dinner")


def slots(today: dt.date) -> list[tuple[str, str]]:
    days = [(today + dt.timedelta(days=d)).isoformat() for d in range(1, 8)]
    return [(d, m) for d in days for m in MEALS][:ORDERS]


async def setup(server: Server) -> list[tuple[str, str]]:
    c = server.client
    r = await c.post("/api/dining/departments", json={"departmentId": DEPARTMENT, "name": "压测部"})
    r.raise_for_status()
    users: list[dict[str, Any]] = [{"userId": DEPT_ADMIN, "role": "dept_admin", "departmentId": DEPARTMENT}]
    users += [{"userId": f"member-{i:02d}", "name": f"成员{i:02d}", "departmentId": DEPARTMENT} for i in range(MEMBERS)]
    (await c.post("/admin/users/batch", json={"users": users})).raise_for_status()
    wanted = slots(dt.datetime.now(ZoneInfo("Asia/Shanghai")).date())
    menus = [{"date": d, "mealType": m, "price": "12.50", "published": True} for d, m in wanted]
    r = await c.post("/api/dining/menus/batch", json={"menus": menus})
    r.raise_for_status()
    return wanted


class Floor:
    """The same rows written by plain SQL, and the reset between repetitions."""

    def __init__(self, server: Server, menu_ids: dict[tuple[str, str], str]) -> None:
        self.server = server
        self.menu_ids = menu_ids
        self.pg: asyncpg.Connection | None = None
        self.lite: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self.server.engine == "postgresql":
            self.pg = await asyncpg.connect(self.server.pg_dsn)
        else:
            self.lite = sqlite3.connect(self.server.sqlite_path, isolation_level=None, timeout=30)
            # the same durability the service runs with (core/db.py), or the floor would be slower than fair
            for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON"):
                self.lite.execute(pragma)

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        if self.lite is not None:
            self.lite.close()

    def rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        now = dt.datetime.now(dt.UTC)
        orders, lines = [], []
        for (day, meal), menu_id in self.menu_ids.items():
            order_id = f"order-{uuid.uuid4().hex}"
            date: Any = dt.date.fromisoformat(day) if self.pg else day
            created: Any = now if self.pg else now.replace(tzinfo=None).isoformat(sep=" ")
            orders.append(
                (order_id, DEPARTMENT, menu_id, date, meal, MEMBERS, PRICE_CENTS, PRICE_CENTS * MEMBERS, "pending",
                 "bench", DEPT_ADMIN, created)
            )  # fmt: skip
            lines += [
                (f"line-{uuid.uuid4().hex}", order_id, f"member-{i:02d}", date, meal, "active") for i in range(MEMBERS)
            ]
        return orders, lines

    async def write(self) -> None:
        orders, lines = self.rows()
        if self.pg is not None:
            # the fastest plain SQL PostgreSQL offers: one INSERT … SELECT unnest(arrays) per table
            async with self.pg.transaction():
                await self.pg.execute(
                    "INSERT INTO dining_orders (id, department_id, menu_id, date, meal_type, member_count, "
                    "price_cents, total_cents, status, remark, created_by, created_at) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::text[], $6::int[], "
                    "$7::int[], $8::int[], $9::text[], $10::text[], $11::text[], $12::timestamptz[])",
                    *map(list, zip(*orders, strict=True)),
                )
                await self.pg.execute(
                    "INSERT INTO dining_order_lines (id, order_id, user_id, date, meal_type, status) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::text[], $6::text[])",
                    *map(list, zip(*lines, strict=True)),
                )
            return
        assert self.lite is not None
        self.lite.execute("BEGIN IMMEDIATE")
        self.lite.executemany(
            "INSERT INTO dining_orders (id, department_id, menu_id, date, meal_type, member_count, "
            "price_cents, total_cents, status, remark, created_by, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            orders,
        )
        self.lite.executemany(
            "INSERT INTO dining_order_lines (id, order_id, user_id, date, meal_type, status) VALUES (?,?,?,?,?,?)",
            lines,
        )
        self.lite.execute("COMMIT")

    async def reset(self) -> None:
        for statement in ("DELETE FROM dining_order_lines", "DELETE FROM dining_orders"):
            if self.pg is not None:
                await self.pg.execute(statement)
            else:
                assert self.lite is not None
                self.lite.execute(statement)


async def interleaved(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    reps: int,
    *,
    reset: Callable[[], Awaitable[Any]],
    warmup: int = 2,
) -> tuple[Timing, Timing]:
    """Alternate the two (reset before each, not timed): both see the same machine load."""
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + reps):
        for work, out in ((first, samples[0]), (second, samples[1])):
            await reset()
            started = time.perf_counter()
            await work()
            if i >= warmup:
                out.append((time.perf_counter() - started) * 1000)
    return Timing(samples[0]), Timing(samples[1])


async def bench_engine(engine: str, reps: int) -> tuple[Timing, Timing, int]:
    async with Server.start(engine, worker=False) as server:
        wanted = await setup(server)
        menus = (await server.client.get("/api/dining/menus")).json()["data"]
        menu_ids = {(m["date"], m["mealType"]): m["menuId"] for m in menus}
        body = {
            "orders": [
                {"date": d, "mealType": m, "members": [{"userId": f"member-{i:02d}"} for i in range(MEMBERS)]}
                for d, m in wanted
            ]
        }
        headers = server.headers(DEPT_ADMIN)
        floor = Floor(server, {k: menu_ids[k] for k in wanted})
        await floor.open()
        lines_written = 0

        async def api() -> None:
            nonlocal lines_written
            r = await server.client.post("/api/dining/enhanced/batch-orders", json=body, headers=headers)
            r.raise_for_status()
            result = r.json()["data"]
            if result["successCount"] != ORDERS:
                raise RuntimeError(f"batch failed: {result['errors'][:3]}")
            lines_written = sum(o["memberCount"] for o in result["orders"])

        try:
            api_time, sql_time = await interleaved(api, floor.write, reps, reset=floor.reset)
        finally:
            await floor.reset()
            await floor.close()
        return api_time, sql_time, lines_written


async def run(engines: list[str], reps: int) -> CompareTable:
    table = CompareTable(
        f"dining: one batch-orders request, {ORDERS} orders × {MEMBERS} members = {ORDERS * MEMBERS} member-meals",
        ["batch API (HTTP)", "plain SQL"],
        floor="plain SQL",
        notes=[
            f"{reps} repetitions after 2 warm-ups, API and plain SQL alternating;",
            "orders deleted before each repetition (not timed)",
            "API: real `batchops serve` over HTTP (JWT, validation, locks, checks, envelope);",
            "plain SQL: the same 20 orders + 1,000 lines in one transaction, two statements",
            "(SQLite: executemany; PostgreSQL: INSERT … SELECT unnest(arrays))",
            f"target: API ≤ {TARGET:g}x plain SQL",
        ],
    )
    for engine in engines:
        api_time, sql_time, lines = await bench_engine(engine, reps)
        ratio = api_time.median / sql_time.median
        verdict = f"{'PASS' if ratio <= TARGET else 'FAIL'} ({ratio:.2f}x)"
        table.add(
            f"{engine}: 20 orders, {lines} lines",
            {"batch API (HTTP)": api_time, "plain SQL": sql_time},
            {"≤ 3x": verdict},
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--db", "--engine", dest="engine", choices=[*ENGINES, "both"], default="both")
    parser.add_argument("--smoke", action="store_true", help="one repetition: runs end to end, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps = 1
    engines = list(ENGINES) if args.engine == "both" else [args.engine]
    table = asyncio.run(run(engines, args.reps))
    table.print(Console(width=160))


if __name__ == "__main__":
    main()
