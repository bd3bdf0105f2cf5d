from __future__ import annotations

import httpx

from tests.helpers import create_devices, create_users, data


async def test_allocate_and_release_round_trip(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "user-001"}])
    await create_devices(client, admin, 2)
    r = await client.post(
        "/scheduler/allocations/batch",
        json={"requests": [{"userId": "user-001", "durationMinutes": 60}]},
        headers=admin,
    )
    body = data(r)
    assert body["successCount"] == 1, body
    alloc = body["successes"][0]["allocationId"]
    r = await client.post("/scheduler/allocations/batch/release", json={"allocationIds": [alloc]}, headers=admin)
    assert data(r)["successIds"] == [alloc]
