"""Issue 16 item 1: a device refused to one user for want of balance stays free for the
next user of the same pass (a batch, a wait-queue grant), on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx

from batchops.core.runtime import Runtime
from tests.billing.conftest import topup
from tests.helpers import create_devices, create_users, data


async def test_a_batch_gives_the_device_refused_to_a_poor_user_to_the_next(
    client: httpx.AsyncClient, admin: dict[str, str], billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": "poor"}, {"userId": "rich"}])
    (device,) = await create_devices(client, admin, 1)
    await topup(client, admin, "rich", 10)
    body = {"requests": [{"userId": u, "durationMinutes": 30} for u in ("poor", "rich")]}
    result = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    assert [(f["userId"], f["reason"]) for f in result["failures"]] == [("poor", "Insufficient balance")]
    assert [(s["userId"], s["deviceId"]) for s in result["successes"]] == [("rich", device)]


async def test_a_grant_refused_for_balance_leaves_the_device_to_a_lower_priority_request(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": u} for u in ("holder", "poor", "rich")])
    await create_devices(client, admin, 1)
    for user in ("holder", "rich"):
        await topup(client, admin, user, 10)
    held = data(
        await client.post(
            "/scheduler/devices/allocate", json={"userId": "holder", "durationMinutes": 60}, headers=admin
        )
    )
    ask = {"durationMinutes": 30, "queueIfUnavailable": True}
    poor = data(
        await client.post("/scheduler/devices/allocate", json={"userId": "poor", "priority": 8, **ask}, headers=admin),
        202,
    )
    rich = data(
        await client.post("/scheduler/devices/allocate", json={"userId": "rich", "priority": 5, **ask}, headers=admin),
        202,
    )
    data(await client.post("/scheduler/devices/release", json={"allocationId": held["allocationId"]}, headers=admin))
    await runtime.worker.run_once()  # the release's "devices freed" message: one grant pass
    granted = data(await client.get(f"/scheduler/queue/{rich['queueEntryId']}", headers=admin))
    waiting = data(await client.get(f"/scheduler/queue/{poor['queueEntryId']}", headers=admin))
    assert granted["status"] == "granted" and granted["allocationId"]
    assert waiting["status"] == "waiting" and waiting["position"] == 1
