"""Issue 16 item 3: sixteen clients mixing batch allocate / extend / release / query on a
small pool of devices, with billing holds on and the worker ingesting the usage reports
of the releases meanwhile, on PostgreSQL (where transactions really run side by side):
never a 5xx, and the ledger still adds up."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from batchops.core.runtime import Runtime
from tests.billing.conftest import topup
from tests.helpers import create_devices, create_users, sql, sql_value

CLIENTS, DEVICES, SECONDS = 16, 8, 12
USERS = [f"user-{n:02d}" for n in range(10)]


@pytest.fixture
def billing_on(runtime: Runtime) -> Iterator[None]:
    runtime.settings.billing_enforce_balance = True
    yield
    runtime.settings.billing_enforce_balance = False


@pytest.mark.postgres_only  # SQLite runs one writer at a time
async def test_sixteen_clients_mixing_every_batch_operation_get_no_5xx(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": u, "maxDevices": 4} for u in USERS])
    await create_devices(client, admin, DEVICES)
    for user in USERS:
        await topup(client, admin, user, 1000)
    known: list[str] = []  # allocation ids seen, live or released: extends and releases pick from them
    statuses: Counter[tuple[str, int]] = Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SECONDS

    async def call(operation: str, body: dict[str, object]) -> httpx.Response:
        path = "/scheduler/allocations/batch" + ("" if operation == "allocate" else f"/{operation}")
        r = await client.post(path, json=body, headers=admin)
        statuses[(operation, r.status_code)] += 1
        return r

    async def mix(n: int) -> None:
        rng = random.Random(n)
        while loop.time() < deadline:
            operation = rng.choice(["allocate", "allocate", "extend", "extend", "release", "query"])
            if operation == "allocate":
                users = rng.sample(USERS, rng.randint(1, 3))
                r = await call(operation, {"requests": [{"userId": u, "durationMinutes": 30} for u in users]})
                if r.status_code == 200:
                    known.extend(s["allocationId"] for s in r.json()["data"]["successes"])
            elif operation == "query":
                await call(operation, {"userIds": rng.sample(USERS, 4)})
            elif known:
                ids = rng.sample(known[-30:], min(len(known[-30:]), rng.randint(1, 4)))
                body = (
                    {"allocationIds": ids, "additionalMinutes": 5} if operation == "extend" else {"allocationIds": ids}
                )
                await call(operation, body)

    stop = asyncio.Event()
    worker = asyncio.create_task(runtime.worker.run_forever(stop))  # delivers usage reports meanwhile
    try:
        await asyncio.gather(*(mix(n) for n in range(CLIENTS)))
    finally:
        stop.set()
        await worker
    failed = {key: count for key, count in statuses.items() if key[1] >= 500}
    assert not failed, (failed, statuses)
    assert sum(n for (op, _), n in statuses.items() if op == "extend") > 50  # the mix did run
    await runtime.worker.run_once()  # the last reports
    # every hold is either open (counted in held) or closed, and every release was charged once
    open_holds = "coalesce(sum(h.amount) FILTER (WHERE h.status = 'open'), 0)"
    drift = await sql(
        runtime,
        f"SELECT a.user_id, a.held, {open_holds} AS open_holds FROM billing_accounts a"
        f" LEFT JOIN billing_holds h ON h.account_id = a.id GROUP BY a.id HAVING a.held <> {open_holds}",
    )
    assert not drift, drift
    released = await sql_value(runtime, "SELECT count(*) FROM allocations WHERE status = 'released'")
    assert await sql_value(runtime, "SELECT count(*) FROM billing_usage") == released
