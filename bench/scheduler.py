"""Seed 000 batch operations over real HTTP: batch API vs N single calls vs the plain-SQL floor.

A real ``batchops serve`` (embedded worker on, as ``make run``) on a fresh database;
200 users, 200 devices. Each row is timed over ``--reps`` repetitions with the state
reset between them (allocations released after an allocate, made before a release),
and the outbox left to drain before the next repetition. The floor writes the same
rows (devices, allocations, billing holds, outbox events, notifications, usage, audit) with
sqlite3 / asyncpg ``executemany`` in one transaction, on the same database file.

    python -m bench.scheduler [--db sqlite|postgresql] [--reps 30] [--single-reps 8] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.harness import CompareTable, KeepAlive, Reply, Server, Timing, timed

USERS, DEVICES = 200, 200
SEED_MS = {("allocate", 50): 5500.0, ("release", 100): 6800.0, ("query", 100): 380.0}
# Targets on SQLite (median ms) for the largest size of each operation; and within 3x of the floor.
TARGET_MS = {("allocate", 50): 20.0, ("release", 100): 25.0, ("query", 100): 8.0}
FLOOR_FACTOR = 3.0
HOLD_AMOUNT = 100  # the floor's pre-authorisation per allocation (the API's depends on the price)
SIZES = {"allocate": (10, 25, 50), "release": (10, 50, 100), "query": (10, 50, 100)}
SMOKE_SIZES = {op: sizes[:1] for op, sizes in SIZES.items()}  # --smoke: does it still run end to end


def user(i: int) -> str:
    return f"bench-u{i:03d}"


def ok(r: httpx.Response | Reply) -> Any:
    if r.status_code >= 300:
        where = f"{r.method} {r.path}" if isinstance(r, Reply) else f"{r.request.method} {r.request.url}"
        raise RuntimeError(f"{where}: {r.status_code} {r.text[:500]}")
    return r.json()["data"]


# --- the plain-SQL floor ---------------------------------------------------------------------------
class Floor:
    """The same rows as the API, written by the driver itself in one transaction."""

    def __init__(self, server: Server) -> None:
        self.sqlite = server.engine == "sqlite"
        self.path = server.sqlite_path
        self.dsn = server.pg_dsn
        self.lite: sqlite3.Connection | None = None
        self.pg: asyncpg.Connection | None = None

    async def open(self) -> Floor:
        if self.sqlite:
            self.lite = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.lite.execute("PRAGMA synchronous=NORMAL")
        else:
            self.pg = await asyncpg.connect(self.dsn)
        return self

    async def close(self) -> None:
        if self.lite is not None:
            self.lite.close()
        if self.pg is not None:
            await self.pg.close()

    def ts(self, value: datetime) -> Any:
        # SQLite keeps naive UTC text (as SQLAlchemy writes it); PostgreSQL takes the datetime.
        return value.replace(tzinfo=None).isoformat(sep=" ") if self.sqlite else value

    @staticmethod
    def pg_sql(sql: str) -> str:
        parts = sql.split("?")
        return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))

    async def tx(self, steps: Callable[[Floor], Awaitable[Any]]) -> Any:
        if self.lite is not None:
            self.lite.execute("BEGIN IMMEDIATE")
            try:
                out = await steps(self)
            except BaseException:
                self.lite.execute("ROLLBACK")
                raise
            self.lite.execute("COMMIT")
            return out
        assert self.pg is not None
        async with self.pg.transaction():
            return await steps(self)

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.lite is not None:
            self.lite.executemany(sql, rows)
        else:
            assert self.pg is not None
            await self.pg.executemany(self.pg_sql(sql), rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        if self.lite is not None:
            return self.lite.execute(sql, args).fetchall()
        assert self.pg is not None
        return list(await self.pg.fetch(self.pg_sql(sql), *args))

    async def outbox(self, items: list[tuple[str, str, dict[str, Any], str | None]], now: datetime) -> None:
        """(kind, name, payload, dedup key) rows, as the API enqueues them."""
        await self.many(
            "INSERT INTO outbox (kind, name, payload, dedup_key, status, attempts, available_at, created_at) "
            "VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
            [(kind, name, json.dumps(payload), key, self.ts(now), self.ts(now)) for kind, name, payload, key in items],
        )

    async def notify(self, rows: list[tuple[str, str, str, dict[str, Any]]], now: datetime) -> None:
        await self.many(
            "INSERT INTO notifications (user_id, type, title, content, channel, data, created_at) "
            "VALUES (?, ?, ?, ?, 'websocket', ?, ?)",
            [(u, t, title, f"{title} {data}", json.dumps(data), self.ts(now)) for u, t, title, data in rows],
        )

    async def audit(self, operation: str, n: int, now: datetime) -> None:
        await self.many(
            "INSERT INTO audit_log (actor_id, domain, operation, total_count, success_count, failed_count, "
            "committed, execution_time_ms, detail, created_at) VALUES (?, 'scheduler', ?, ?, ?, 0, ?, 0, '{}', ?)",
            [("bench-admin", operation, n, n, True, self.ts(now))],
        )

    async def allocate(self, users: list[str]) -> list[str]:
        async def steps(db: Floor) -> list[str]:
            now = datetime.now(UTC)
            devices = await db.fetch(
                "SELECT id, name FROM devices WHERE status = 'available' AND NOT maintenance ORDER BY id LIMIT ?",
                [len(users)],
            )
            await db.many(
                "UPDATE devices SET status = 'allocated', updated_at = ? WHERE id = ? AND status = 'available'",
                [(db.ts(now), d[0]) for d in devices],
            )
            ids = [f"alloc-{uuid.uuid4().hex}" for _ in users]
            expires = now + timedelta(minutes=60)
            # the pre-authorisation the API writes with each allocation: hold, ledger entry, account held
            marks = ",".join("?" * len(users))
            accounts = dict(
                await db.fetch(
                    f"SELECT user_id, id FROM billing_accounts WHERE user_id IN ({marks}) AND currency = 'CNY'",
                    users,
                )
            )
            holds = [(f"alloc:{i}", accounts[u], HOLD_AMOUNT) for i, u in zip(ids, users, strict=True)]
            await db.many(
                "INSERT INTO billing_holds (reference, account_id, amount, status, captured, created_at)"
                " VALUES (?, ?, ?, 'open', 0, ?)",
                [(*h, db.ts(now)) for h in holds],
            )
            await db.many(
                "INSERT INTO billing_entries (account_id, kind, amount, reference, memo, created_at)"
                " VALUES (?, 'hold', ?, ?, ?, ?)",
                [(a, n, f"hold:{r}", json.dumps({"allocationId": r[6:]}), db.ts(now)) for r, a, n in holds],
            )
            await db.many(
                "UPDATE billing_accounts SET balance = balance + ?, held = held + ?, updated_at = ? WHERE id = ?",
                [(0, n, db.ts(now), a) for _, a, n in holds],
            )
            await db.many(
                "INSERT INTO allocations (id, device_id, user_id, status, duration_minutes, allocated_at, "
                "expires_at) VALUES (?, ?, ?, 'allocated', 60, ?, ?)",
                [(i, d[0], u, db.ts(now), db.ts(expires)) for i, d, u in zip(ids, devices, users, strict=True)],
            )
            picked = zip(ids, devices, users, strict=True)
            payloads = [{"allocationId": i, "userId": u, "deviceId": d[0]} for i, d, u in picked]
            event = "device.allocated"
            await db.outbox([("event", event, {"event": event, "data": p}, None) for p in payloads], now)
            await db.notify([(p["userId"], "device.allocated", "📱 设备已分配", p) for p in payloads], now)
            await db.audit("allocate", len(users), now)
            return ids

        ids: list[str] = await self.tx(steps)
        return ids

    async def release(self, ids: list[str]) -> None:
        async def steps(db: Floor) -> None:
            now = datetime.now(UTC)
            marks = ",".join("?" * len(ids))
            rows = await db.fetch(
                "SELECT a.id, a.user_id, a.device_id, d.cpu_cores, d.memory_mb, d.storage_mb, a.allocated_at "
                f"FROM allocations a JOIN devices d ON d.id = a.device_id WHERE a.id IN ({marks})",
                ids,
            )
            await db.many(
                "UPDATE allocations SET status = 'released', released_at = ?, release_reason = ? WHERE id = ?",
                [(db.ts(now), "bench", r[0]) for r in rows],
            )
            await db.many(
                "UPDATE devices SET status = 'available', updated_at = ? WHERE id = ? AND status = 'allocated'",
                [(db.ts(now), r[2]) for r in rows],
            )
            await db.many(
                "INSERT INTO device_usage (allocation_id, device_id, user_id, duration_seconds, cpu_cores, "
                "memory_mb, storage_mb, allocated_at, released_at, created_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                [(r[0], r[2], r[1], r[3], r[4], r[5], r[6], db.ts(now), db.ts(now)) for r in rows],
            )
            messages: list[tuple[str, str, dict[str, Any], str | None]] = []
            at = now.isoformat().replace("+00:00", "Z")
            for r in rows:
                data = {"allocationId": r[0], "userId": r[1], "deviceId": r[2], "releasedAt": at}
                for name in ("device.released", "scheduler.allocation.released"):
                    messages.append(("event", name, {"event": name, "data": data, "occurredAt": at}, None))
                # the seed 001 usage report, valid, so the worker bills it rather than retrying a bad one
                usage = {
                    **data,
                    "durationSeconds": 0,
                    "cpuCores": r[3],
                    "memoryMB": r[4],
                    "storageMB": r[5],
                    "allocatedAt": at,
                }
                messages.append(("billing.device_usage", "device-usage", usage, f"usage:{r[0]}"))
            messages.append(("scheduler.devices_freed", "devices-freed", {}, None))
            await db.outbox(messages, now)
            await db.notify([(r[1], "device.released", "🔓 设备已释放", {"allocationId": r[0]}) for r in rows], now)
            await db.audit("release", len(ids), now)

        await self.tx(steps)

    async def query(self, users: list[str]) -> list[Any]:
        async def steps(db: Floor) -> list[Any]:
            marks = ",".join("?" * len(users))
            rows = await db.fetch(
                "SELECT a.id, a.device_id, d.name, a.status, a.allocated_at, a.expires_at, a.user_id "
                "FROM allocations a JOIN devices d ON d.id = a.device_id "
                f"WHERE a.user_id IN ({marks}) AND a.status = 'allocated' ORDER BY a.user_id, a.allocated_at, a.id",
                users,
            )
            await db.audit("query", len(users), datetime.now(UTC))
            return rows

        rows: list[Any] = await self.tx(steps)
        return rows

    async def pending_outbox(self) -> int:
        # every kind, usage reports (billing) included: the worker must not compete with the next repetition
        rows = await self.fetch("SELECT count(*) FROM outbox WHERE status = 'pending'")
        return int(rows[0][0])

    async def settle(self, limit: float = 10.0) -> None:
        """Wait until the server's worker has delivered what the last repetition enqueued."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not await self.pending_outbox():
                return
            await asyncio.sleep(0.005)


# --- the API ----------------------------------------------------------------------------------------
class Api:
    """The timed calls, one at a time on one keep-alive connection (see ``KeepAlive``)."""

    def __init__(self, http: KeepAlive) -> None:
        self.c = http

    async def batch_allocate(self, users: list[str]) -> list[str]:
        ids: list[str] = []
        for chunk in range(0, len(users), 50):
            body = {"requests": [{"userId": u, "durationMinutes": 60} for u in users[chunk : chunk + 50]]}
            out = ok(await self.c.post("/scheduler/allocations/batch", json=body))
            if out["failedCount"]:
                raise RuntimeError(f"allocate failed: {out['failures'][:3]}")
            ids += [s["allocationId"] for s in out["successes"]]
        return ids

    async def batch_release(self, ids: list[str]) -> None:
        for chunk in range(0, len(ids), 100):
            body = {"allocationIds": ids[chunk : chunk + 100], "reason": "bench"}
            out = ok(await self.c.post("/scheduler/allocations/batch/release", json=body))
            if out["failedCount"]:
                raise RuntimeError(f"release failed: {out['failures'][:3]}")

    async def batch_query(self, users: list[str]) -> int:
        out = ok(await self.c.post("/scheduler/allocations/batch/query", json={"userIds": users}))
        return int(out["totalAllocations"])

    async def single_allocate(self, users: list[str]) -> list[str]:
        ids = []
        for u in users:
            out = ok(await self.c.post("/scheduler/devices/allocate", json={"userId": u, "durationMinutes": 60}))
            ids.append(out["allocationId"])
        return ids

    async def single_release(self, ids: list[str]) -> None:
        for i in ids:
            ok(await self.c.post("/scheduler/devices/release", json={"allocationId": i, "reason": "bench"}))

    async def single_query(self, users: list[str]) -> int:
        total = 0
        for u in users:
            out = ok(await self.c.get("/scheduler/allocations", params={"userId": u, "status": "allocated"}))
            total += len(out["items"])
        return total


async def setup(client: httpx.AsyncClient, population: int = USERS, devices: int = DEVICES) -> None:
    """``population`` users (each able to pay) and ``devices`` devices."""
    users = [{"userId": user(i), "name": user(i), "maxDevices": 100} for i in range(population)]
    ok(await client.post("/admin/users/batch", json={"users": users}))
    # allocations pre-authorise their cost (billing holds are part of the measured path)
    await asyncio.gather(
        *(client.post("/admin/billing/topup", json={"userId": user(i), "amount": 1_000_000}) for i in range(population))
    )
    rows = [
        {"id": f"bench-d{i:03d}", "name": f"Device-{i:03d}", "cpuCores": 4, "memoryMB": 8192, "storageMB": 65536}
        for i in range(devices)
    ]
    ok(await client.post("/scheduler/devices/batch", json={"devices": rows}))


Cells = dict[str, Timing | float | None]
Make = Callable[[list[str]], Awaitable[list[str]]]


async def bench_allocate(api: Api, floor: Floor, users: list[str], reps: int, single_reps: int) -> Cells:
    held: list[str] = []

    async def alloc(make: Make) -> None:
        held.extend(await make(users))

    async def release_held(release: Callable[[list[str]], Awaitable[None]]) -> None:
        await release(held)
        held.clear()
        await floor.settle()

    return {
        "batch API": await timed(
            lambda: alloc(api.batch_allocate), reps, after=lambda: release_held(api.batch_release)
        ),
        "N single calls": await timed(
            lambda: alloc(api.single_allocate), single_reps, after=lambda: release_held(api.batch_release), warmup=1
        ),
        "SQL floor": await timed(lambda: alloc(floor.allocate), reps, after=lambda: release_held(floor.release)),
    }


async def bench_release(api: Api, floor: Floor, users: list[str], reps: int, single_reps: int) -> Cells:
    held: list[str] = []

    async def hold(make: Make) -> None:
        held.clear()
        held.extend(await make(users))
        await floor.settle()

    async def after() -> None:
        held.clear()
        await floor.settle()

    return {
        "batch API": await timed(
            lambda: api.batch_release(held), reps, before=lambda: hold(api.batch_allocate), after=after
        ),
        "N single calls": await timed(
            lambda: api.single_release(held),
            single_reps,
            before=lambda: hold(api.batch_allocate),
            after=after,
            warmup=1,
        ),
        "SQL floor": await timed(lambda: floor.release(held), reps, before=lambda: hold(floor.allocate), after=after),
    }


async def bench_query(api: Api, floor: Floor, users: list[str], reps: int, single_reps: int) -> Cells:
    held = await api.batch_allocate(users)  # one active allocation per user, beside the released history
    await floor.settle()
    cells: Cells = {
        "batch API": await timed(lambda: api.batch_query(users), reps),
        "N single calls": await timed(lambda: api.single_query(users), single_reps, warmup=1),
        "SQL floor": await timed(lambda: floor.query(users), reps),
    }
    await api.batch_release(held)
    await floor.settle()
    return cells


BENCHES = {"allocate": bench_allocate, "release": bench_release, "query": bench_query}


async def bench_noop(api: Api, floor: Floor, reps: int) -> Cells:
    """What any request costs before its work: GET /health (HTTP, routing, one SELECT 1)
    beside the same SELECT 1 through the driver (a reference row, no target)."""

    async def select_one(db: Floor) -> Any:
        return await db.fetch("SELECT 1")

    return {
        "batch API": await timed(lambda: api.c.get("/health"), reps),
        "SQL floor": await timed(lambda: floor.tx(select_one), reps),
    }


async def measure(
    server: Server, reps: int, single_reps: int, sizes: dict[str, tuple[int, ...]] = SIZES
) -> CompareTable:
    http = await KeepAlive.open(server)
    api, floor = Api(http), await Floor(server).open()
    engine = "SQLite" if server.engine == "sqlite" else "PostgreSQL"
    table = CompareTable(
        f"Scheduler batch operations over HTTP on {engine} ({reps} reps; N single calls: {single_reps} reps)",
        ["batch API", "N single calls", "SQL floor", "seed"],
        floor="SQL floor",
        notes=[
            "batch API: one POST /scheduler/allocations/batch (/release, /query) to a real `batchops serve`,"
            " on a keep-alive connection (bench.harness.KeepAlive)",
            "N single calls: POST /scheduler/devices/allocate, /devices/release or GET /scheduler/allocations, N times",
            "SQL floor: the same rows written/read with the driver's executemany in one transaction",
            "no-op: GET /health (HTTP, routing, one SELECT 1) beside SELECT 1 alone: the fixed cost of any request",
            "targets (SQLite): allocate 50 < 20 ms, release 100 < 25 ms, query 100 < 8 ms; "
            f"each <= {FLOOR_FACTOR:g}x its floor",
        ],
    )
    try:
        if sizes is SIZES:
            await setup(server.client)
        else:  # as many users and devices as the largest batch needs
            largest = max(n for ns in sizes.values() for n in ns)
            await setup(server.client, largest, largest)
        for op, ns in sizes.items():
            for n in ns:
                cells = await BENCHES[op](api, floor, [user(i) for i in range(n)], reps, single_reps)
                cells["seed"] = SEED_MS.get((op, n))
                table.add(f"{op} {n}", cells, verdict(server.engine, table, op, n, cells))
        table.add("no-op (GET /health)", await bench_noop(api, floor, reps))
    finally:
        await floor.close()
        await http.close()
    return table


def verdict(engine: str, table: CompareTable, op: str, n: int, cells: Cells) -> dict[str, str]:
    batch = cells["batch API"]
    assert isinstance(batch, Timing)
    ratio = table.ratio(cells, "batch API") or 0.0
    floor_ok = ratio <= FLOOR_FACTOR
    target = TARGET_MS.get((op, n))
    parts = [f"≤{FLOOR_FACTOR:g}x floor" if floor_ok else f">{FLOOR_FACTOR:g}x floor"]
    passed = floor_ok
    if target is not None:
        if engine == "sqlite":
            passed = passed and batch.median < target
        mark = f"{'<' if batch.median < target else '≥'}{target:g} ms"
        parts.insert(0, mark if engine == "sqlite" else f"({mark}: a SQLite target)")
    seed = SEED_MS.get((op, n))
    faster = f"{seed / batch.median:.0f}x faster" if seed else ""
    return {"batch API vs seed": faster, "target": ("PASS " if passed else "FAIL ") + ", ".join(parts)}


async def run(engine: str, reps: int, single_reps: int, smoke: bool = False) -> CompareTable:
    # a smoke run waits for the outbox between repetitions: poll it often rather than wait out the idle poll
    env = {"BATCHOPS_OUTBOX_POLL_SECONDS": "0.02"} if smoke else {}
    async with Server.start(engine, env=env) as server:
        table = await measure(server, reps, single_reps, SMOKE_SIZES if smoke else SIZES)
    if smoke:
        table.notes.append("--smoke: one repetition of the smallest sizes; the verdicts mean nothing")
    table.print()
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--single-reps", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="smallest size, one repetition: runs, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.single_reps = 1, 1
    asyncio.run(run(args.db, args.reps, args.single_reps, args.smoke))


if __name__ == "__main__":
    main()
