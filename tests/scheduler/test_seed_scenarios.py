"""Seed 000 "🧪 测试场景" 1-5, replayed over HTTP as written, on both engines."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from batchops.core.outbox import OutboxMessage
from batchops.core.runtime import Runtime
from batchops.scheduler.models import Allocation
from tests.helpers import allocation_ids, create_devices, create_users, data, sql, sql_value


def ts(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


async def outbox_names(runtime: Runtime) -> list[tuple[str, str]]:
    return [(r.kind, r.name) for r in await sql(runtime, "SELECT kind, name FROM outbox ORDER BY id")]


async def test_scenario_1_batch_allocate_ten_users(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    users = [{"userId": f"user-{i:03d}"} for i in range(1, 10)]
    await create_users(client, admin, [*users, {"userId": "user-010", "maxDevices": 1}])
    await create_devices(client, admin, 9)
    # user-010 already holds its only allowed device, which leaves 8 free devices for 10 requests.
    first = data(
        await client.post(
            "/scheduler/devices/allocate", json={"userId": "user-010", "durationMinutes": 600}, headers=admin
        )
    )
    minutes = [60, 120, 30, 90, 60, 45, 120, 60, 30, 90]
    body = {
        "requests": [{"userId": f"user-{i:03d}", "durationMinutes": m} for i, m in enumerate(minutes, start=1)],
        "continueOnError": True,
    }
    r = await client.post("/scheduler/allocations/batch", json=body, headers=admin)
    assert r.json()["message"] == "Batch allocation completed: 8/10 succeeded"
    result = data(r)
    assert (result["successCount"], result["failedCount"], result["totalCount"]) == (8, 2, 10)
    assert isinstance(result["executionTimeMs"], int) and result["executionTimeMs"] >= 0
    assert [s["userId"] for s in result["successes"]] == [f"user-{i:03d}" for i in range(1, 9)]
    for success, wanted in zip(result["successes"], minutes, strict=False):
        assert set(success) >= {"userId", "allocationId", "deviceId", "deviceName", "expiresAt"}
        assert success["deviceName"].startswith("Device-")
        assert ts(success["expiresAt"]) - ts(success["allocatedAt"]) == timedelta(minutes=wanted)
    assert len({s["deviceId"] for s in result["successes"]}) == 8
    assert result["failures"] == [
        {"userId": "user-009", "reason": "No available devices", "error": "BadRequestException"},
        {"userId": "user-010", "reason": "Quota exceeded: maxDevices=1, current=1", "error": "ForbiddenException"},
    ]

    # notifications stored for every user served, in the same transaction
    notified = await sql(
        runtime, "SELECT user_id, title FROM notifications WHERE type = 'device.allocated' ORDER BY user_id"
    )
    assert [n.user_id for n in notified] == [f"user-{i:03d}" for i in range(1, 9)] + ["user-010"]
    # quota usage updated: every served user now holds one active allocation, user-010 still one
    active = await sql(
        runtime, "SELECT user_id, count(*) AS n FROM allocations WHERE status = 'allocated' GROUP BY user_id"
    )
    assert {r.user_id: r.n for r in active} == {f"user-{i:03d}": 1 for i in range(1, 9)} | {"user-010": 1}
    assert await sql_value(runtime, "SELECT count(*) FROM devices WHERE status = 'available'") == 0
    events = await outbox_names(runtime)
    assert events.count(("event", "device.allocated")) == 9
    assert first["userId"] == "user-010"


async def test_scenario_2_batch_release_five(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    users = [f"user-{i:03d}" for i in range(1, 6)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 5)
    ids = await allocation_ids(client, admin, users)
    r = await client.post(
        "/scheduler/allocations/batch/release",
        json={"allocationIds": ids, "reason": "批量测试释放", "continueOnError": True},
        headers=admin,
    )
    assert r.json()["message"] == "Batch release completed: 5/5 succeeded"
    result = data(r)
    assert result["successIds"] == ids
    assert (result["successCount"], result["failedCount"], result["totalCount"], result["failures"]) == (5, 0, 5, [])

    rows = await sql(runtime, "SELECT status, release_reason, released_at FROM allocations")
    assert {(r.status, r.release_reason) for r in rows} == {("released", "批量测试释放")}
    assert all(r.released_at is not None for r in rows)
    assert await sql_value(runtime, "SELECT count(*) FROM devices WHERE status = 'available'") == 5
    usage = await sql(
        runtime,
        "SELECT allocation_id, duration_seconds, cpu_cores, memory_mb, storage_mb, allocated_at, released_at"
        " FROM device_usage ORDER BY allocation_id",
    )
    assert sorted(u.allocation_id for u in usage) == sorted(ids)
    for u in usage:
        assert (u.cpu_cores, u.memory_mb, u.storage_mb) == (4, 8192, 65536)
        assert u.duration_seconds >= 0
    events = await outbox_names(runtime)
    assert events.count(("event", "device.released")) == 5
    assert events.count(("event", "scheduler.allocation.released")) == 5
    assert events.count(("billing.device_usage", "device-usage")) == 5
    released_notes = await sql(runtime, "SELECT user_id FROM notifications WHERE type = 'device.released'")
    assert sorted(n.user_id for n in released_notes) == users


async def test_scenario_3_batch_extend_thirty_minutes(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    users = [f"user-{i:03d}" for i in range(1, 4)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 3)
    ids = await allocation_ids(client, admin, users)
    before = {r.id: r.expires_at for r in await sql(runtime, select(Allocation.id, Allocation.expires_at))}
    r = await client.post(
        "/scheduler/allocations/batch/extend",
        json={"allocationIds": ids, "additionalMinutes": 30, "continueOnError": True},
        headers=admin,
    )
    assert r.json()["message"] == "Batch extend completed: 3/3 succeeded"
    result = data(r)
    assert (result["successCount"], result["failedCount"], result["totalCount"], result["failures"]) == (3, 0, 3, [])
    assert [s["allocationId"] for s in result["successes"]] == ids
    for s in result["successes"]:
        assert set(s) == {"allocationId", "oldExpiresAt", "newExpiresAt", "additionalMinutes"}
        assert s["additionalMinutes"] == 30
        assert ts(s["newExpiresAt"]) - ts(s["oldExpiresAt"]) == timedelta(minutes=30)

    after = {r.id: r.expires_at for r in await sql(runtime, select(Allocation.id, Allocation.expires_at))}
    for allocation_id in ids:
        old, new = before[allocation_id], after[allocation_id]
        assert new - old == timedelta(minutes=30)

    notes = await sql(
        runtime,
        "SELECT user_id, title, content FROM notifications WHERE type = 'scheduler.allocation.extended'"
        " ORDER BY user_id",
    )
    assert [n.user_id for n in notes] == users
    assert {n.title for n in notes} == {"⏰ 设备使用时间已延长"}
    assert notes[0].content == "设备 Device-001 使用时间已延长 30 分钟。"

    payloads = [
        row.payload
        for row in await sql(
            runtime, select(OutboxMessage.payload).where(OutboxMessage.name == "scheduler.allocation.extended")
        )
    ]
    assert len(payloads) == 3
    by_id = {s["allocationId"]: s for s in result["successes"]}
    for payload in payloads:
        assert payload["event"] == "scheduler.allocation.extended"
        event_data: dict[str, Any] = payload["data"]
        assert set(event_data) == {
            "allocationId",
            "userId",
            "deviceId",
            "oldExpiresAt",
            "newExpiresAt",
            "additionalMinutes",
        }
        success = by_id[event_data["allocationId"]]
        assert event_data["oldExpiresAt"] == success["oldExpiresAt"]
        assert event_data["newExpiresAt"] == success["newExpiresAt"]
        assert event_data["additionalMinutes"] == 30


async def test_scenario_4_batch_query_twenty_users(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, statement_counter: Any
) -> None:
    users = [f"user-{i:03d}" for i in range(1, 21)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 16)
    # 15 active allocations over 10 users (user-003 and friends hold several), 5 users hold none ...
    holders = [f"user-{i:03d}" for i in (1, 3, 3, 4, 5, 5, 5, 7, 8, 9, 10, 10, 12, 14, 15)]
    ids = await allocation_ids(client, admin, holders)
    # ... and one released allocation that activeOnly must hide.
    extra = await allocation_ids(client, admin, ["user-002"])
    data(await client.post("/scheduler/allocations/batch/release", json={"allocationIds": extra}, headers=admin))

    before = len(statement_counter())
    r = await client.post(
        "/scheduler/allocations/batch/query", json={"userIds": users, "activeOnly": True}, headers=admin
    )
    statements = statement_counter()[before:]
    assert r.json()["message"] == "Found 15 allocations for 20 users"
    result = data(r)
    assert (result["userCount"], result["totalAllocations"]) == (20, 15)
    assert list(result["allocations"]) == users
    for user in users:
        assert len(result["allocations"][user]) == holders.count(user), user
    assert result["allocations"]["user-002"] == []
    three = result["allocations"]["user-003"]
    assert len(three) == 2 and len({a["deviceId"] for a in three}) == 2
    for view in three:
        assert set(view) == {"allocationId", "deviceId", "deviceName", "status", "allocatedAt", "expiresAt"}
        assert view["status"] == "allocated" and view["allocationId"] in ids
    on_allocations = [s for s in statements if "FROM allocations" in s]
    assert len(on_allocations) == 1, on_allocations
    assert on_allocations[0].lstrip().upper().startswith("SELECT")

    every = data(
        await client.post(
            "/scheduler/allocations/batch/query", json={"userIds": ["user-002"], "activeOnly": False}, headers=admin
        )
    )
    assert [a["status"] for a in every["allocations"]["user-002"]] == ["released"]


async def test_scenario_5_partial_failure_continues(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(
        client,
        admin,
        [
            {"userId": "normal-user-1"},
            {"userId": "normal-user-2"},
            {"userId": "normal-user-3"},
            {"userId": "quota-exceeded-user", "maxDevices": 5},
            {"userId": "suspended-user", "status": "suspended"},
        ],
    )
    await create_devices(client, admin, 10)
    await allocation_ids(client, admin, ["quota-exceeded-user"] * 5)
    requests = [
        {"userId": u, "durationMinutes": 60}
        for u in ("normal-user-1", "quota-exceeded-user", "normal-user-2", "suspended-user", "normal-user-3")
    ]
    r = await client.post(
        "/scheduler/allocations/batch", json={"requests": requests, "continueOnError": True}, headers=admin
    )
    assert r.json()["message"] == "Batch allocation completed: 3/5 succeeded"
    result = data(r)
    assert (result["successCount"], result["failedCount"], result["totalCount"]) == (3, 2, 5)
    assert [s["userId"] for s in result["successes"]] == ["normal-user-1", "normal-user-2", "normal-user-3"]
    assert result["failures"] == [
        {
            "userId": "quota-exceeded-user",
            "reason": "Quota exceeded: maxDevices=5, current=5",
            "error": "ForbiddenException",
        },
        {"userId": "suspended-user", "reason": "User account is suspended", "error": "ForbiddenException"},
    ]
    assert await sql_value(runtime, "SELECT count(*) FROM allocations WHERE status = 'allocated'") == 8
