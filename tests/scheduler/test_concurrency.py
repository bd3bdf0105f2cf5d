"""Many clients at once against a real database (SQLite and PostgreSQL): the database's
locks and its partial unique index keep every device to one active allocation."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from batchops.core.runtime import Runtime
from tests.conftest import auth
from tests.helpers import allocation_ids, create_devices, create_users, data, error, sql, sql_value

CLIENTS = 16
DEVICES = 20
MAX_DEVICES = 3


async def test_sixteen_clients_allocating_at_once(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    users = [f"user-{i:02d}" for i in range(12)]
    await create_users(client, admin, [{"userId": u, "maxDevices": MAX_DEVICES} for u in users])
    await create_devices(client, admin, DEVICES)

    async def batch_client(n: int) -> list[httpx.Response]:
        # overlapping users: several batches compete for the same quotas as well as for devices
        wanted = [users[(n + k) % len(users)] for k in range(6)]
        body = {"requests": [{"userId": u, "durationMinutes": 30} for u in wanted]}
        return [await client.post("/scheduler/allocations/batch", json=body, headers=admin)]

    async def single_client(n: int) -> list[httpx.Response]:
        me = users[n % len(users)]
        return [
            await client.post("/scheduler/devices/allocate", json={"durationMinutes": 30}, headers=auth(me))
            for _ in range(2)
        ]

    answers = await asyncio.gather(*(batch_client(n) if n % 2 else single_client(n) for n in range(CLIENTS)))
    responses = [r for group in answers for r in group]

    assert len(responses) == CLIENTS // 2 * 3  # every request answered
    served = 0
    for r in responses:
        assert r.status_code in (200, 400, 403), r.text  # never a 500, never a conflict left to the caller
        body = r.json()
        if r.url.path.endswith("/batch"):
            result = data(r)
            assert result["successCount"] + result["failedCount"] == result["totalCount"] == 6
            served += result["successCount"]
            reasons = {f["reason"] for f in result["failures"]}
            assert reasons <= {"No available devices", f"Quota exceeded: maxDevices={MAX_DEVICES}, current=3"}
        elif r.status_code == 200:
            served += 1
        else:
            assert body["message"] in ("No available devices", f"Quota exceeded: maxDevices={MAX_DEVICES}, current=3")
    assert served == DEVICES  # more requests than devices: every device was handed out, once

    per_device = await sql(
        runtime, "SELECT device_id, count(*) AS n FROM allocations WHERE status = 'allocated' GROUP BY device_id"
    )
    assert all(row.n == 1 for row in per_device)
    assert len(per_device) == served
    per_user = await sql(
        runtime, "SELECT user_id, count(*) AS n FROM allocations WHERE status = 'allocated' GROUP BY user_id"
    )
    assert all(row.n <= MAX_DEVICES for row in per_user), per_user
    allocated_devices = await sql_value(runtime, "SELECT count(*) FROM devices WHERE status = 'allocated'")
    assert allocated_devices == served
    mismatched = await sql_value(
        runtime,
        "SELECT count(*) FROM allocations a JOIN devices d ON d.id = a.device_id"
        " WHERE a.status = 'allocated' AND d.status <> 'allocated'",
    )
    assert mismatched == 0


async def test_partial_unique_index_refuses_a_second_active_allocation(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 1)
    await allocation_ids(client, admin, ["u1"])
    insert = text(
        "INSERT INTO allocations (id, device_id, user_id, status, duration_minutes, allocated_at, expires_at)"
        " SELECT :id, device_id, :user, :status, 5, allocated_at, expires_at FROM allocations"
    )
    async with runtime.db.engine.begin() as conn:  # a released row for the same device is allowed
        await conn.execute(insert, {"id": "alloc-old", "user": "u2", "status": "released"})
    with pytest.raises(IntegrityError):
        async with runtime.db.engine.begin() as conn:
            await conn.execute(insert, {"id": "alloc-dup", "user": "u2", "status": "allocated"})
    rows = await sql(runtime, "SELECT status, count(*) AS n FROM allocations GROUP BY status ORDER BY status")
    assert [(r.status, r.n) for r in rows] == [("allocated", 1), ("released", 1)]


async def test_concurrent_releases_of_one_allocation_succeed_once(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    (allocation,) = await allocation_ids(client, admin, ["u1"])

    async def release(n: int) -> httpx.Response:
        if n % 2:
            return await client.post("/scheduler/devices/release", json={"allocationId": allocation}, headers=admin)
        return await client.post(
            "/scheduler/allocations/batch/release", json={"allocationIds": [allocation]}, headers=admin
        )

    responses = await asyncio.gather(*(release(n) for n in range(10)))
    outcomes: Counter[str] = Counter()
    for r in responses:
        if r.url.path.endswith("/batch/release"):
            result: dict[str, Any] = data(r)
            if result["successIds"] == [allocation]:
                outcomes["released"] += 1
            else:
                assert result["failures"][0]["reason"] == "Allocation is not active (status: released)"
                outcomes["refused"] += 1
        elif r.status_code == 200:
            outcomes["released"] += 1
        else:
            body = error(r, 400, "BadRequestException")
            assert body["message"] == "Allocation is not active (status: released)"
            outcomes["refused"] += 1
    assert outcomes == {"released": 1, "refused": 9}
    assert await sql_value(runtime, "SELECT count(*) FROM device_usage") == 1
    assert await sql_value(runtime, "SELECT count(*) FROM outbox WHERE name = 'device.released'") == 1
