"""Issue 16 item 2: a waiting request that fits a free device is granted in the next
pass, however many requests that cannot be served (too big, user at quota, suspended,
no balance) wait ahead of it; and the pass stays one read of the queue whatever their
number. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batchops.core.runtime import Runtime
from batchops.scheduler.service import SchedulerService
from tests.billing.conftest import topup
from tests.helpers import create_devices, create_users, data


@pytest.fixture
def billing_on(runtime: Runtime) -> Iterator[None]:
    runtime.settings.billing_enforce_balance = True
    yield
    runtime.settings.billing_enforce_balance = False


async def enqueue(
    client: httpx.AsyncClient, admin: dict[str, str], user: str, count: int, priority: int, **extra: Any
) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 50):
        ask = {"userId": user, "durationMinutes": 30, "queueIfUnavailable": True, "priority": priority, **extra}
        body = {"requests": [ask] * min(50, count - start)}
        result = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
        assert result["successCount"] == len(result["queued"]) == len(body["requests"]), result
        ids += [q["queueEntryId"] for q in result["queued"]]
    return ids


async def allocate(client: httpx.AsyncClient, admin: dict[str, str], user: str) -> str:
    body = {"userId": user, "durationMinutes": 60}
    return str(data(await client.post("/scheduler/devices/allocate", json=body, headers=admin))["allocationId"])


async def release(client: httpx.AsyncClient, admin: dict[str, str], allocation_id: str) -> None:
    data(await client.post("/scheduler/devices/release", json={"allocationId": allocation_id}, headers=admin))


async def status(client: httpx.AsyncClient, admin: dict[str, str], entry_id: str) -> str:
    return str(data(await client.get(f"/scheduler/queue/{entry_id}", headers=admin))["status"])


async def test_a_fitting_request_behind_many_that_cannot_be_served_is_granted_in_one_pass(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    users = [{"userId": "holder"}, {"userId": "full", "maxDevices": 2}, {"userId": "big"}, {"userId": "gone"}]
    await create_users(client, admin, [*users, {"userId": "fits"}])
    await create_devices(client, admin, 2)  # 4 cores each
    held = await allocate(client, admin, "holder")
    await allocate(client, admin, "full")
    ahead = await enqueue(client, admin, "big", 6, 9, devicePreferences={"cpu": 16})  # no device is that big
    ahead += await enqueue(client, admin, "full", 6, 9)
    ahead += await enqueue(client, admin, "gone", 6, 9)
    (fits,) = await enqueue(client, admin, "fits", 1, 0)
    # "full" is now at its quota, "gone" suspended: their requests wait, they cannot be served
    await create_users(client, admin, [{"userId": "full", "maxDevices": 1}, {"userId": "gone", "status": "suspended"}])
    await release(client, admin, held)
    assert await runtime.services.get(SchedulerService).queue.grant_waiting() == 1
    assert await status(client, admin, fits) == "granted"
    assert {await status(client, admin, e) for e in ahead} == {"waiting"}


async def test_requests_of_users_without_balance_do_not_starve_one_that_can_pay(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    poor = [f"poor-{i}" for i in range(8)]
    await create_users(client, admin, [{"userId": u} for u in ["holder", "rich", *poor]])
    await create_devices(client, admin, 1)
    for user in ("holder", "rich"):
        await topup(client, admin, user, 10)
    held = await allocate(client, admin, "holder")
    for user in poor:
        await enqueue(client, admin, user, 1, 9)
    (rich,) = await enqueue(client, admin, "rich", 1, 0)
    await release(client, admin, held)
    assert await runtime.services.get(SchedulerService).queue.grant_waiting() == 1
    assert await status(client, admin, rich) == "granted"


async def test_a_grant_pass_reads_the_queue_once_however_many_wait_ahead(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    statement_counter: Callable[[], list[str]],
) -> None:
    await create_users(client, admin, [{"userId": u} for u in ("holder", "big", "first", "second")])
    await create_devices(client, admin, 2)
    held = [await allocate(client, admin, "holder") for _ in range(2)]
    queue = runtime.services.get(SchedulerService).queue
    counts = []
    for user, unfittable in (("first", 0), ("second", 300)):
        await enqueue(client, admin, "big", unfittable, 9, devicePreferences={"cpu": 16})
        (entry,) = await enqueue(client, admin, user, 1, 0)
        await release(client, admin, held.pop())
        before = len(statement_counter())
        assert await queue.grant_waiting() == 1
        counts.append(len(statement_counter()) - before)
        assert await status(client, admin, entry) == "granted"
    assert counts[0] == counts[1], counts


async def test_a_user_with_room_for_one_more_device_holds_back_no_one_with_many_requests(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "holder", "maxDevices": 2}, {"userId": "eager"}, {"userId": "last"}])
    await create_devices(client, admin, 2)
    held = [await allocate(client, admin, "holder") for _ in range(2)]
    await enqueue(client, admin, "eager", 10, 9)
    await create_users(client, admin, [{"userId": "eager", "maxDevices": 1}])  # room for one of its ten
    (last,) = await enqueue(client, admin, "last", 1, 0)
    for allocation_id in held:
        await release(client, admin, allocation_id)
    assert await runtime.services.get(SchedulerService).queue.grant_waiting() == 2
    assert await status(client, admin, last) == "granted"
