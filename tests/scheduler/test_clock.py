"""The scheduler's rules read the time from the runtime's clock: a test moves it
instead of waiting, and every instant the scheduler writes is the clock's."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from batchops.core.clock import ManualClock
from batchops.core.runtime import Runtime
from batchops.scheduler.service import SchedulerService
from tests.helpers import create_devices, create_users, data


async def test_allocate_extend_and_expiry_follow_the_runtime_clock(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = runtime.services.get(SchedulerService)
    clock = ManualClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    monkeypatch.setattr(scheduler.ctx, "clock", clock)  # the runtime is shared: restored after the test
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)

    body = {"userId": "u1", "durationMinutes": 30}
    a = data(await client.post("/scheduler/devices/allocate", json=body, headers=admin))
    assert (a["allocatedAt"], a["expiresAt"]) == ("2026-03-02T08:00:00Z", "2026-03-02T08:30:00Z")

    clock.advance(minutes=29)
    assert await scheduler.expire_due() == 0
    path = f"/scheduler/allocations/{a['allocationId']}/extend"
    extended = data(await client.post(path, json={"additionalMinutes": 10}, headers=admin))
    assert extended["newExpiresAt"] == "2026-03-02T08:40:00Z"

    clock.advance(minutes=10)  # 08:39: a minute left
    assert await scheduler.expire_due() == 0
    clock.advance(minutes=1)
    assert await scheduler.expire_due() == 1
    page = data(await client.get("/scheduler/allocations", params={"status": "released"}, headers=admin))
    assert [(r["releasedAt"], r["releaseReason"]) for r in page["items"]] == [("2026-03-02T08:40:00Z", "expired")]
