"""Usage ingestion throughput (issue 3): events per second through
``POST /api/internal/metering/device-usage/batch`` (100 events a call, several
clients at once, real HTTP to a billing-only server on PostgreSQL), beside the
same usage rows inserted by plain SQL in the same run (the floor), and beside
Lago's reported ~10,000 events/s for its REST batch ingestion.

    python -m bench billing [--db postgresql|sqlite] [--events 20000] [--clients 16] [--processes 2] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from batchops.settings import Settings
from bench.harness import KeepAlive, Server

LAGO_EVENTS_PER_SECOND = 10_000
BATCH = 100
USERS = [f"meter-{i:04d}" for i in range(1000)]
SERVICE_TOKEN = "bench-service-token"


ALLOCATED_AT = datetime(2026, 11, 23, 8, tzinfo=UTC)


def duration(i: int) -> int:
    return 60 + i % 3600


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def events(count: int, run: str) -> list[dict[str, Any]]:
    """Valid seed 001 reports: each held its device exactly ``durationSeconds`` (the service
    refuses a duration longer than ``releasedAt - allocatedAt``)."""
    return [
        {
            "deviceId": f"device-{i % 500:03d}",
            "userId": USERS[i // 10 % len(USERS)],
            "allocationId": f"{run}-{i:06d}",
            "durationSeconds": duration(i),
            "cpuCores": 2 + i % 4,
            "memoryMB": 4096,
            "storageMB": 32768,
            "allocatedAt": iso(ALLOCATED_AT),
            "releasedAt": iso(ALLOCATED_AT + timedelta(seconds=duration(i))),
        }
        for i in range(count)
    ]


async def through_api(server: Server, count: int, clients: int) -> float:
    """Events per second over HTTP, ``clients`` concurrent callers of 100-event batches."""
    # Bodies are encoded before the clock starts: JSON encoding is the caller's work.
    bodies = [json.dumps({"events": b}).encode() for b in _chunks(events(count, uuid.uuid4().hex[:8]), BATCH)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    headers = {"X-Service-Token": SERVICE_TOKEN}
    connections = [await KeepAlive.open(server, headers) for _ in range(clients)]

    async def caller(http: KeepAlive) -> None:
        while not queue.empty():
            reply = await http.post("/api/internal/metering/device-usage/batch", body=queue.get_nowait())
            assert reply.status_code == 200 and reply.json()["data"]["failed"] == 0, reply.text

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in connections))
    elapsed = time.perf_counter() - started
    for c in connections:
        await c.close()
    return count / elapsed


def _rows(count: int, run: str) -> list[tuple[Any, ...]]:
    at = ALLOCATED_AT
    return [
        (
            f"{run}-{i:06d}",
            USERS[i % len(USERS)],
            f"dev-{i % 500}",
            duration(i),
            2 + i % 4,
            4096,
            32768,
            at,
            at + timedelta(seconds=duration(i)),
        )
        for i in range(count)
    ]


INSERT = (
    "INSERT INTO billing_usage (allocation_id, user_id, device_id, duration_seconds, cpu_cores, memory_mb,"
    " storage_mb, allocated_at, released_at, cost, currency, created_at)"
    " VALUES ({}, 1, 'CNY', {})"
)


async def floor_postgres(dsn: str, count: int, clients: int) -> float:
    """The same rows by plain SQL: one INSERT … per 100-row transaction, same concurrency."""
    rows = _rows(count, "floor-" + uuid.uuid4().hex[:8])
    sql = INSERT.format(", ".join(f"${i}" for i in range(1, 10)), "now()")
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)
    chunks = list(_chunks(rows, BATCH))
    queue: asyncio.Queue[list[tuple[Any, ...]]] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def caller() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                chunk = queue.get_nowait()
                async with conn.transaction():
                    await conn.executemany(sql, chunk)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return count / elapsed


def floor_sqlite(path: str, count: int) -> float:
    rows = [(*r[:7], r[7].isoformat(), r[8].isoformat()) for r in _rows(count, "floor-" + uuid.uuid4().hex[:8])]
    sql = INSERT.format(", ".join("?" * 9), "CURRENT_TIMESTAMP")
    conn = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    for chunk in _chunks(rows, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, chunk)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def _chunks(items: list[Any], size: int) -> Any:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def run(engine: str, count: int, clients: int, rounds: int, processes: int) -> None:
    env = {"BATCHOPS_SERVICE_TOKEN": SERVICE_TOKEN, "BATCHOPS_BILLING_ROLE": "billing"}
    serve_args = ["--processes", str(processes)]
    async with Server.start(engine, worker=False, env=env, serve_args=serve_args) as server:
        r = await server.client.post("/admin/users/batch", json={"users": [{"userId": u} for u in USERS]})
        r.raise_for_status()
        await through_api(server, min(2000, count), clients)  # warm-up: connections, accounts, caches
        api, floor = [], []
        for _ in range(rounds):
            api.append(await through_api(server, count, clients))
            if engine == "postgresql":
                floor.append(await floor_postgres(server.pg_dsn, count, clients))
            else:
                floor.append(floor_sqlite(server.sqlite_path, count))
    api_median, floor_median = statistics.median(api), statistics.median(floor)
    table = Table(
        title=f"Usage ingestion, {count:,} events × {rounds} rounds, {clients} clients, {BATCH}/call,"
        f" {processes} server process(es), {engine}",
        caption=f"pricing: {Settings().price_cpu_core_hour} CNY/core-h; every event charged (ledger entry + balance)",
    )
    for column in ("path", "events/s (median)", "rounds", "÷ SQL floor", "vs Lago ~10k/s"):
        table.add_column(column, justify="right")
    table.add_row(
        "batch API over HTTP",
        f"{api_median:,.0f}",
        " ".join(f"{x:,.0f}" for x in api),
        f"{api_median / floor_median:.2f}x",
        ("PASS " if api_median >= LAGO_EVENTS_PER_SECOND else "FAIL ") + f"{api_median / LAGO_EVENTS_PER_SECOND:.2f}x",
    )
    table.add_row("plain SQL INSERT (floor)", f"{floor_median:,.0f}", " ".join(f"{x:,.0f}" for x in floor), "1.00x", "")
    table.add_row("Lago REST batch (reported)", f"{LAGO_EVENTS_PER_SECOND:,}", "", "", "")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench billing")
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16, help="concurrent callers (latency hides behind them)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="server processes (the machine has 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="200 events, one round: runs end to end, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.rounds, args.clients, args.processes = 2 * BATCH, 1, 2, 1
    asyncio.run(run(args.db, args.events, args.clients, args.rounds, args.processes))


if __name__ == "__main__":
    main()
