"""Many clients at once, real database (SQLite and PostgreSQL): duplicate reports
charge once; a small balance is never overspent by concurrent allocations."""

from __future__ import annotations

import asyncio

import httpx

from batchops.core.runtime import Runtime
from tests.billing.conftest import INTERNAL, balance, topup, usage
from tests.conftest import auth
from tests.helpers import create_devices, create_users, data, sql_value


async def test_concurrent_duplicate_reports_charge_once(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await topup(client, admin, "u1", 10)
    single = [client.post("/api/internal/metering/device-usage", json=usage("a1"), headers=INTERNAL) for _ in range(12)]
    batches = [
        client.post(
            "/api/internal/metering/device-usage/batch", json={"events": [usage("a1"), usage("a1")]}, headers=INTERNAL
        )
        for _ in range(4)
    ]
    responses = await asyncio.gather(*single, *batches)
    statuses = []
    for r in responses[:12]:
        statuses.append(data(r)["status"])
    for r in responses[12:]:
        statuses += [x["status"] for x in data(r)["results"]]
    assert statuses.count("charged") == 1 and statuses.count("duplicate") == len(statuses) - 1
    assert await sql_value(runtime, "SELECT count(*) FROM billing_usage") == 1
    assert await sql_value(runtime, "SELECT count(*) FROM billing_entries WHERE kind = 'charge'") == 1
    assert (await balance(client, "u1"))["balance"] == 10 - 0.93


async def test_concurrent_allocations_never_overspend(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 50}])
    await create_devices(client, admin, 40)
    await topup(client, admin, "u1", "2.00")  # room for four 30-minute holds of 0.47

    async def single() -> int:
        r = await client.post("/scheduler/devices/allocate", json={"durationMinutes": 30}, headers=auth("u1"))
        assert r.status_code in (200, 403), r.text
        return 1 if r.status_code == 200 else 0

    async def batch() -> int:
        body = {"requests": [{"userId": "u1", "durationMinutes": 30} for _ in range(3)]}
        out = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
        assert {f["error"] for f in out["failures"]} <= {"ForbiddenException"}
        return int(out["successCount"])

    served = sum(await asyncio.gather(*(single() if n % 2 else batch() for n in range(16))))
    assert served == 4
    after = await balance(client, "u1")
    assert after["held"] == 1.88 and after["available"] == 0.12
    assert await sql_value(runtime, "SELECT min(balance - held) FROM billing_accounts") >= 0
