"""Issue 16 item 3, deterministically, on PostgreSQL: paths take their locks in
core.transactions' order (allocations, ledger accounts, holds) or skip what is taken, so
a transaction holding an earlier lock is never waited for by one holding a later lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from batchops.core.runtime import Runtime
from batchops.scheduler.service import SchedulerService
from tests.billing.conftest import INTERNAL, topup, usage
from tests.helpers import create_devices, create_users, data

# row locks are PostgreSQL's (SQLite runs one writer at a time)
pytestmark = pytest.mark.postgres_only


@pytest.fixture
def billing_on(runtime: Runtime) -> Iterator[None]:
    runtime.settings.billing_enforce_balance = True
    yield
    runtime.settings.billing_enforce_balance = False


@pytest.fixture
async def other(runtime: Runtime) -> AsyncIterator[asyncpg.Connection]:
    """A connection for another transaction, straight to the test database."""
    conn = await asyncpg.connect(runtime.settings.database_url)
    yield conn
    await conn.close()


async def until_someone_waits_for_a_lock(conn: asyncpg.Connection, within: float = 10.0) -> None:
    """Bounded poll of an observable condition (the server's own view of who waits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    while loop.time() < deadline:
        if await conn.fetchval(query):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody waited for a lock")


async def test_usage_ingestion_locks_the_account_before_the_hold(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    billing_on: None,
    other: asyncpg.Connection,
) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    await topup(client, admin, "u1", 10)
    body = {"userId": "u1", "durationMinutes": 30}
    allocation_id = data(await client.post("/scheduler/devices/allocate", json=body, headers=admin))["allocationId"]
    async with other.transaction():  # as an extend of u1 does: the account first
        await other.execute("SELECT 1 FROM billing_accounts WHERE user_id = 'u1' FOR NO KEY UPDATE")
        report = asyncio.create_task(
            client.post("/api/internal/metering/device-usage", json=usage(allocation_id, seconds=60), headers=INTERNAL)
        )
        await until_someone_waits_for_a_lock(other)  # the report waits for the account...
        probe = await asyncpg.connect(runtime.settings.database_url)
        try:  # ...holding nothing after it: the extend could take the hold next without a deadlock
            async with probe.transaction():
                held = await probe.fetch(
                    "SELECT reference FROM billing_holds WHERE reference = $1 FOR UPDATE NOWAIT",
                    f"alloc:{allocation_id}",
                )
        finally:
            await probe.close()
        assert len(held) == 1
    assert data(await report)["status"] == "charged"


async def test_expiry_reminders_skip_an_allocation_another_transaction_holds(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, other: asyncpg.Connection
) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    body = {"userId": "u1", "durationMinutes": 5}  # due for its reminder (10 minutes before)
    allocation_id = data(await client.post("/scheduler/devices/allocate", json=body, headers=admin))["allocationId"]
    jobs = runtime.services.get(SchedulerService).policies
    async with other.transaction():  # as an extend or a release does
        await other.execute("SELECT 1 FROM allocations WHERE id = $1 FOR UPDATE", allocation_id)
        async with asyncio.timeout(10):  # never waits for it
            assert await jobs.send_expiry_reminders() == 0
    assert await jobs.send_expiry_reminders() == 1
