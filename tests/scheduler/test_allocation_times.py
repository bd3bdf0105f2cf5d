"""Issue 16 item 8: an allocation's period starts when its device was really taken.
Sixteen clients hand three devices round as fast as they can; on each device every
period starts at or after the end of the one before (no time billed twice)."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import httpx

from batchops.core.runtime import Runtime
from tests.conftest import auth
from tests.helpers import create_devices, create_users, sql

CLIENTS, ROUNDS = 16, 8


async def test_periods_of_a_device_never_overlap_under_concurrency(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    users = [f"user-{n:02d}" for n in range(CLIENTS)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 3)

    async def hand_round(user: str) -> int:
        taken = 0
        for _ in range(ROUNDS):
            r = await client.post("/scheduler/devices/allocate", json={"durationMinutes": 30}, headers=auth(user))
            if r.status_code == 400:  # all three busy
                continue
            assert r.status_code == 200, r.text
            allocation_id = r.json()["data"]["allocationId"]
            released = await client.post(
                "/scheduler/devices/release", json={"allocationId": allocation_id}, headers=auth(user)
            )
            assert released.status_code == 200, released.text
            taken += 1
        return taken

    taken = sum(await asyncio.gather(*(hand_round(u) for u in users)))
    rows = await sql(
        runtime, "SELECT device_id, allocated_at, released_at FROM allocations ORDER BY device_id, allocated_at"
    )
    assert len(rows) == taken > 3  # devices did change hands
    overlaps = [
        (a.device_id, b.allocated_at, a.released_at)
        for a, b in pairwise(rows)
        if a.device_id == b.device_id and b.allocated_at < a.released_at
    ]
    assert not overlaps, overlaps
    assert all(r.allocated_at <= r.released_at for r in rows)
