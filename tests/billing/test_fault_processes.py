"""The seed's weak point, over real processes on PostgreSQL: the billing service is
down while 200 allocations are released and the worker is killed with SIGKILL in
the middle. After billing and a worker come back, every allocation is charged
exactly once and every balance is right to the fen.

Processes: a scheduler API (`batchops serve --no-worker`, BATCHOPS_BILLING_URL set),
a billing-only API (`BATCHOPS_BILLING_ROLE=billing`), and `batchops worker`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from batchops.billing.pricing import Pricing
from batchops.core.auth import create_token
from batchops.settings import Settings
from tests.conftest import JWT_SECRET, SERVICE_TOKEN, fresh_postgres_database

BIN = Path(sys.executable).parent / "batchops"
USERS = [f"fault-user-{i:02d}" for i in range(20)]
TOPUP_YUAN = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    async with fresh_postgres_database("batchops_fault") as url:
        yield url


class Processes:
    def __init__(self, database_url: str, tmp: Path) -> None:
        self.billing_port, self.api_port = free_port(), free_port()
        self.tmp = tmp
        self.env = {
            **os.environ,
            "BATCHOPS_DATABASE_URL": database_url,
            "BATCHOPS_JWT_SECRET": JWT_SECRET,
            "BATCHOPS_SERVICE_TOKEN": SERVICE_TOKEN,
            "BATCHOPS_BOOTSTRAP_ADMIN": "admin",
            "BATCHOPS_BATCH_RATE_LIMIT_PER_MINUTE": "0",
            "BATCHOPS_BILLING_URL": f"http://127.0.0.1:{self.billing_port}",
            "BATCHOPS_HTTP_TIMEOUT": "2000",
            "BATCHOPS_HTTP_RETRIES": "1",
            "BATCHOPS_HTTP_RETRY_BASE_SECONDS": "0.1",
            "BATCHOPS_CIRCUIT_BREAKER_RESET_SECONDS": "1",
            "BATCHOPS_OUTBOX_LEASE_SECONDS": "3",
            "BATCHOPS_OUTBOX_MAX_ATTEMPTS": "3",
            "BATCHOPS_OUTBOX_POLL_SECONDS": "0.1",
            "BATCHOPS_OUTBOX_BATCH_SIZE": "50",
            "BATCHOPS_DEAD_LETTER_RETRY_SECONDS": "2",
            "BATCHOPS_LOG_LEVEL": "WARNING",
        }
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], **env: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            [str(BIN), *args], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )

    def start_billing(self) -> None:
        args = ["serve", "--no-worker", "--port", str(self.billing_port)]
        self.start("billing", args, BATCHOPS_BILLING_ROLE="billing")

    def start_worker(self) -> None:
        self.start("worker", ["worker"])

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.running.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=20)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name, signal.SIGKILL)


async def wait_for(condition: Callable[[], Any], what: str, within: float = 60) -> Any:
    """Poll an observable condition (not a sleep standing in for one)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def healthy(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{port}/health", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_no_charge_lost_or_doubled_when_billing_and_worker_die(pg_database: str, tmp_path: Path) -> None:
    procs = Processes(pg_database, tmp_path)
    db = await asyncpg.connect(pg_database)
    admin = {"Authorization": f"Bearer {create_token('admin', JWT_SECRET)}"}
    try:
        procs.start("api", ["serve", "--no-worker", "--port", str(procs.api_port)])
        procs.start_billing()
        procs.start_worker()
        await wait_for(lambda: healthy(procs.api_port), "api")
        await wait_for(lambda: healthy(procs.billing_port), "billing")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{procs.api_port}", headers=admin, timeout=30) as api:
            users = [{"userId": u, "maxDevices": 10} for u in USERS]
            assert (await api.post("/admin/users/batch", json={"users": users})).status_code == 200
            devices = [
                {"id": f"d{i:03d}", "name": f"D{i:03d}", "cpuCores": 2 + i % 3, "memoryMB": 4096, "storageMB": 32768}
                for i in range(200)
            ]
            assert (await api.post("/scheduler/devices/batch", json={"devices": devices})).status_code == 200
            for u in USERS:
                r = await api.post("/admin/billing/topup", json={"userId": u, "amount": TOPUP_YUAN})
                assert r.status_code == 200, r.text
            ids: list[str] = []
            for chunk in range(4):
                asks = [{"userId": USERS[(chunk * 50 + k) % 20], "durationMinutes": 120} for k in range(50)]
                r = await api.post("/scheduler/allocations/batch", json={"requests": asks})
                body = r.json()["data"]
                assert body["successCount"] == 50, body["failures"][:3]
                ids += [s["allocationId"] for s in body["successes"]]
            assert len(ids) == 200
            # Give each allocation a different, real-looking usage time (1..100 minutes).
            await db.executemany(
                "UPDATE allocations SET allocated_at = allocated_at - make_interval(secs => $2) WHERE id = $1",
                [(a, 60 * (1 + n % 100) + n) for n, a in enumerate(ids)],
            )

            procs.stop("billing")  # billing goes down
            for chunk in (ids[:100], ids[100:]):
                r = await api.post("/scheduler/allocations/batch/release", json={"allocationIds": chunk})
                assert r.json()["data"]["successCount"] == 100  # releases never wait for billing

            # the worker is trying (and failing) to deliver: kill it in the middle of that
            await wait_for(
                lambda: db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'billing.device_usage' AND attempts > 0"),
                "delivery attempts",
            )
            procs.stop("worker", signal.SIGKILL)
            assert await db.fetchval("SELECT count(*) FROM billing_usage") == 0

            procs.start_billing()
            await wait_for(lambda: healthy(procs.billing_port), "billing back")
            procs.start_worker()

            async def all_charged() -> bool:
                delivered = await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE kind = 'billing.device_usage' AND status = 'delivered'"
                )
                return bool(delivered == 200)

            await wait_for(all_charged, "every usage report delivered", within=90)

        # exactly once
        assert await db.fetchval("SELECT count(*) FROM billing_usage") == 200
        captures = await db.fetch("SELECT reference FROM billing_entries WHERE kind IN ('capture', 'charge')")
        assert len(captures) == 200 and len({r["reference"] for r in captures}) == 200
        assert await db.fetchval("SELECT count(*) FROM billing_holds WHERE status = 'open'") == 0
        # right to the fen: balance = top-up - price of the seconds the scheduler recorded
        pricing = Pricing.from_settings(Settings())
        spent: dict[str, int] = defaultdict(int)
        usage = await db.fetch("SELECT user_id, duration_seconds, cpu_cores, memory_mb, storage_mb FROM device_usage")
        for row in usage:
            spent[row["user_id"]] += pricing.cost(
                row["duration_seconds"], row["cpu_cores"], row["memory_mb"], row["storage_mb"]
            )
        accounts = {
            r["user_id"]: (r["balance"], r["held"])
            for r in await db.fetch("SELECT user_id, balance, held FROM billing_accounts WHERE currency = 'CNY'")
        }
        assert len(spent) == 20 and sum(spent.values()) > 200  # real amounts, not one fen each
        for user in USERS:
            assert accounts[user] == (TOPUP_YUAN * 100 - spent[user], 0), user
    finally:
        procs.stop_all()
        await db.close()
