"""Batch modes, per-item rules and the single-item forms of the scheduler API."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from batchops.core import batch as core_batch
from batchops.core.db import utcnow
from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from batchops.scheduler.models import Allocation
from batchops.scheduler.service import SchedulerService
from tests.conftest import auth, empty_tables
from tests.helpers import (
    LogRecorder,
    allocation_ids,
    batch_allocate,
    create_devices,
    create_users,
    data,
    error,
    execute,
    sql,
    sql_value,
)

SKIPPED = {"error": "SkippedException", "reason": "Not attempted: an earlier item failed"}
ROLLED_BACK = "RolledBackException"


async def count(runtime: Runtime, table: str, where: str = "1 = 1") -> int:
    return int(await sql_value(runtime, f"SELECT count(*) FROM {table} WHERE {where}"))


# --- modes -------------------------------------------------------------------------------------------
async def test_stop_on_first_failure_commits_earlier_and_skips_later(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u3"}])
    await create_devices(client, admin, 5)
    result = await batch_allocate(client, admin, ["u1", "ghost", "u3"], continueOnError=False)
    assert (result["successCount"], result["failedCount"], result["totalCount"]) == (1, 2, 3)
    assert [s["userId"] for s in result["successes"]] == ["u1"]
    assert result["failures"] == [
        {"userId": "ghost", "reason": "User not found", "error": "NotFoundException"},
        {"userId": "u3", **SKIPPED},
    ]
    assert await count(runtime, "allocations") == 1
    assert await count(runtime, "outbox", "name = 'device.allocated'") == 1


async def test_release_stop_on_failure_reports_skipped_ids(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 2)
    ids = await allocation_ids(client, admin, ["u1", "u2"])
    r = await client.post(
        "/scheduler/allocations/batch/release",
        json={"allocationIds": [ids[0], "alloc-missing", ids[1]], "continueOnError": False},
        headers=admin,
    )
    result = data(r)
    assert result["successIds"] == [ids[0]]
    assert result["failures"] == [
        {"allocationId": "alloc-missing", "reason": "Allocation not found", "error": "NotFoundException"},
        {"allocationId": ids[1], **SKIPPED},
    ]


async def test_atomic_batch_commits_nothing_when_one_item_fails(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}, {"userId": "off", "status": "suspended"}])
    await create_devices(client, admin, 5)
    tables = ("allocations", "outbox", "notifications", "device_usage")
    before = {table: await count(runtime, table) for table in tables}
    result = await batch_allocate(client, admin, ["u1", "off", "u2"], atomic=True)
    assert (result["successCount"], result["failedCount"], result["totalCount"]) == (0, 3, 3)
    assert result["successes"] == []
    assert [f["userId"] for f in result["failures"]] == ["u1", "off", "u2"]
    assert result["failures"][1] == {
        "userId": "off",
        "reason": "User account is suspended",
        "error": "ForbiddenException",
    }
    assert {f["error"] for f in (result["failures"][0], result["failures"][2])} == {ROLLED_BACK}
    for table in tables:
        assert await count(runtime, table) == before[table], table
    assert await count(runtime, "devices", "status = 'available'") == 5
    audit = await sql(runtime, "SELECT operation, committed, failed_count FROM audit_log WHERE operation = 'allocate'")
    assert [(a.operation, bool(a.committed), a.failed_count) for a in audit] == [("allocate", False, 3)]


async def test_atomic_batch_commits_everything_when_all_succeed(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 2)
    result = await batch_allocate(client, admin, ["u1", "u2"], atomic=True)
    assert result["successCount"] == 2 and result["failures"] == []
    assert await count(runtime, "allocations", "status = 'allocated'") == 2


async def test_atomic_release_rolls_back(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    ids = await allocation_ids(client, admin, ["u1"])
    r = await client.post(
        "/scheduler/allocations/batch/release",
        json={"allocationIds": [ids[0], "alloc-nope"], "atomic": True},
        headers=admin,
    )
    result = data(r)
    assert result["successIds"] == []
    assert result["failures"] == [
        {"allocationId": ids[0], "reason": result["failures"][0]["reason"], "error": ROLLED_BACK},
        {"allocationId": "alloc-nope", "reason": "Allocation not found", "error": "NotFoundException"},
    ]
    assert await count(runtime, "allocations", "status = 'allocated'") == 1
    assert await count(runtime, "device_usage") == 0


# --- the invariant successCount + failedCount == totalCount, over random mixes ------------------------------
USER_KINDS = {
    "ok": {},
    "suspended": {"status": "suspended"},
    "full": {"maxDevices": 0},
}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(["ok", "suspended", "full", "ghost"]), min_size=1, max_size=12),
    devices=st.integers(min_value=0, max_value=6),
    mode=st.sampled_from([{}, {"continueOnError": False}, {"atomic": True}]),
)
async def test_counts_always_add_up(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    kinds: list[str],
    devices: int,
    mode: dict[str, Any],
) -> None:
    await empty_tables(runtime)
    await runtime.services.get(IdentityService).ensure_admin("admin")
    users = [{"userId": f"{kind}-{i}", **USER_KINDS[kind]} for i, kind in enumerate(kinds) if kind != "ghost"]
    if users:
        await create_users(client, admin, users)
    if devices:
        await create_devices(client, admin, devices)
    result = await batch_allocate(client, admin, [f"{kind}-{i}" for i, kind in enumerate(kinds)], **mode)
    assert result["successCount"] + result["failedCount"] == result["totalCount"] == len(kinds)
    assert len(result["successes"]) == result["successCount"]
    assert len(result["failures"]) == result["failedCount"]
    assert await count(runtime, "allocations") == result["successCount"]
    assert await count(runtime, "devices", "status = 'allocated'") == result["successCount"]
    if mode.get("atomic") and result["failedCount"]:
        assert result["successCount"] == 0
    served = [s["userId"] for s in result["successes"]]
    assert all(u.startswith("ok-") for u in served)
    assert len(served) == min(devices, kinds.count("ok")) or mode


# --- per-item rules -----------------------------------------------------------------------------------
async def test_duplicate_ids_in_one_batch(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 1}, {"userId": "u2"}])
    await create_devices(client, admin, 4)
    # the same user twice: the second request sees the quota the first one used
    result = await batch_allocate(client, admin, ["u1", "u1", "u2", "u2"])
    assert [s["userId"] for s in result["successes"]] == ["u1", "u2", "u2"]
    assert result["failures"] == [
        {"userId": "u1", "reason": "Quota exceeded: maxDevices=1, current=1", "error": "ForbiddenException"}
    ]
    ids = [s["allocationId"] for s in result["successes"]]

    # the same allocation twice in a release: released once, then "not active"
    r = await client.post(
        "/scheduler/allocations/batch/release", json={"allocationIds": [ids[0], ids[0]]}, headers=admin
    )
    released = data(r)
    assert released["successIds"] == [ids[0]]
    assert released["failures"] == [
        {
            "allocationId": ids[0],
            "reason": "Allocation is not active (status: released)",
            "error": "BadRequestException",
        }
    ]
    assert await count(runtime, "device_usage") == 1

    # the same allocation twice in an extend: both extensions apply, one after the other
    before = await sql_value(runtime, select(Allocation.expires_at).where(Allocation.id == ids[1]))
    r = await client.post(
        "/scheduler/allocations/batch/extend",
        json={"allocationIds": [ids[1], ids[1]], "additionalMinutes": 10},
        headers=admin,
    )
    extended = data(r)
    assert extended["successCount"] == 2
    first, second = extended["successes"]
    assert second["oldExpiresAt"] == first["newExpiresAt"]
    after = await sql_value(runtime, select(Allocation.expires_at).where(Allocation.id == ids[1]))
    assert after - before == timedelta(minutes=20)


async def test_unknown_ids_are_item_failures(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    result = await batch_allocate(client, admin, ["nobody"])
    assert result["failures"] == [{"userId": "nobody", "reason": "User not found", "error": "NotFoundException"}]
    for path, extra in (("release", {}), ("extend", {"additionalMinutes": 5})):
        r = await client.post(
            f"/scheduler/allocations/batch/{path}", json={"allocationIds": ["alloc-x"], **extra}, headers=admin
        )
        assert data(r)["failures"] == [
            {"allocationId": "alloc-x", "reason": "Allocation not found", "error": "NotFoundException"}
        ]
    query = data(await client.post("/scheduler/allocations/batch/query", json={"userIds": ["nobody"]}, headers=admin))
    assert query["allocations"] == {"nobody": []}


async def test_extend_of_released_and_expired(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 2)
    released, expired = await allocation_ids(client, admin, ["u1", "u2"])
    data(await client.post("/scheduler/allocations/batch/release", json={"allocationIds": [released]}, headers=admin))
    await execute(
        runtime,
        "UPDATE allocations SET expires_at = :past WHERE id = :id",
        past=(utcnow() - timedelta(minutes=1)).replace(tzinfo=None) if runtime.db.is_sqlite else utcnow(),
        id=expired,
    )
    r = await client.post(
        "/scheduler/allocations/batch/extend",
        json={"allocationIds": [released, expired], "additionalMinutes": 30},
        headers=admin,
    )
    assert data(r)["failures"] == [
        {
            "allocationId": released,
            "reason": "Allocation is not active (status: released)",
            "error": "BadRequestException",
        },
        {
            "allocationId": expired,
            "reason": "Allocation is not active (status: expired)",
            "error": "BadRequestException",
        },
    ]


# --- single-item endpoints ------------------------------------------------------------------------------
async def test_single_allocate_release_extend(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "alice"}, {"userId": "bob"}])
    await create_devices(client, admin, 3)
    alice, bob = auth("alice"), auth("bob")

    mine = data(await client.post("/scheduler/devices/allocate", json={"durationMinutes": 30}, headers=alice))
    assert mine["userId"] == "alice"
    error(
        await client.post("/scheduler/devices/allocate", json={"userId": "alice", "durationMinutes": 30}, headers=bob),
        403,
        "ForbiddenException",
    )
    for_bob = data(
        await client.post("/scheduler/devices/allocate", json={"userId": "bob", "durationMinutes": 30}, headers=admin)
    )
    assert for_bob["userId"] == "bob"

    # extend: own yes, someone else's no
    extended = data(
        await client.post(
            f"/scheduler/allocations/{mine['allocationId']}/extend", json={"additionalMinutes": 15}, headers=alice
        )
    )
    assert extended["additionalMinutes"] == 15
    error(
        await client.post(
            f"/scheduler/allocations/{mine['allocationId']}/extend", json={"additionalMinutes": 15}, headers=bob
        ),
        403,
        "ForbiddenException",
    )
    error(
        await client.post("/scheduler/allocations/alloc-nope/extend", json={"additionalMinutes": 15}, headers=admin),
        404,
        "NotFoundException",
    )

    # release by allocationId, and by deviceId + userId; not someone else's
    error(
        await client.post("/scheduler/devices/release", json={"allocationId": mine["allocationId"]}, headers=bob),
        403,
        "ForbiddenException",
    )
    error(
        await client.post(
            "/scheduler/devices/release", json={"deviceId": mine["deviceId"], "userId": "alice"}, headers=bob
        ),
        403,
        "ForbiddenException",
    )
    out = data(
        await client.post("/scheduler/devices/release", json={"allocationId": mine["allocationId"]}, headers=alice)
    )
    assert out["allocationId"] == mine["allocationId"] and out["durationSeconds"] >= 0
    out = data(
        await client.post(
            "/scheduler/devices/release", json={"deviceId": for_bob["deviceId"], "userId": "bob"}, headers=admin
        )
    )
    assert out["allocationId"] == for_bob["allocationId"]
    body = error(
        await client.post("/scheduler/devices/release", json={"allocationId": mine["allocationId"]}, headers=alice),
        400,
        "BadRequestException",
    )
    assert body["message"] == "Allocation is not active (status: released)"
    error(
        await client.post(
            "/scheduler/devices/release", json={"deviceId": mine["deviceId"], "userId": "alice"}, headers=alice
        ),
        404,
        "NotFoundException",
    )
    error(await client.post("/scheduler/devices/release", json={}, headers=alice), 400, "BadRequestException")
    assert await count(runtime, "device_usage") == 2


async def test_single_allocate_failures_are_http_errors(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "alice", "maxDevices": 1}])
    body = error(
        await client.post("/scheduler/devices/allocate", json={"durationMinutes": 5}, headers=auth("alice")),
        400,
        "BadRequestException",
    )
    assert body["message"] == "No available devices"
    await create_devices(client, admin, 2)
    data(await client.post("/scheduler/devices/allocate", json={"durationMinutes": 5}, headers=auth("alice")))
    body = error(
        await client.post("/scheduler/devices/allocate", json={"durationMinutes": 5}, headers=auth("alice")),
        403,
        "ForbiddenException",
    )
    assert body["message"] == "Quota exceeded: maxDevices=1, current=1"
    body = error(
        await client.post("/scheduler/devices/allocate", json={"userId": "ghost", "durationMinutes": 5}, headers=admin),
        404,
        "NotFoundException",
    )
    assert body["message"] == "User not found"


async def test_list_allocations_paginates_and_scopes_to_the_caller(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_users(client, admin, [{"userId": "alice", "maxDevices": 10}, {"userId": "bob"}])
    await create_devices(client, admin, 8)
    await allocation_ids(client, admin, ["alice"] * 5 + ["bob"] * 2)

    page = data(await client.get("/scheduler/allocations?page=1&pageSize=2", headers=auth("alice")))
    assert (page["total"], page["page"], page["pageSize"], page["totalPages"]) == (5, 1, 2, 3)
    assert len(page["items"]) == 2 and {i["userId"] for i in page["items"]} == {"alice"}
    last = data(await client.get("/scheduler/allocations?page=3&pageSize=2", headers=auth("alice")))
    assert len(last["items"]) == 1
    seen = {
        i["allocationId"]
        for p in (1, 2, 3)
        for i in data(await client.get(f"/scheduler/allocations?page={p}&pageSize=2", headers=auth("alice")))["items"]
    }
    assert len(seen) == 5
    everything = data(await client.get("/scheduler/allocations?pageSize=10", headers=auth("alice")))["items"]
    newest_first = sorted(everything, key=lambda i: (i["allocatedAt"], i["allocationId"]), reverse=True)
    assert [i["allocatedAt"] for i in everything] == [i["allocatedAt"] for i in newest_first]
    assert set(everything[0]) == {
        "allocationId", "deviceId", "deviceName", "status", "allocatedAt", "expiresAt",
        "userId", "durationMinutes", "releasedAt", "releaseReason",
    }  # fmt: skip
    assert everything[0]["status"] == "allocated" and everything[0]["releasedAt"] is None
    assert everything[0]["durationMinutes"] == 60 and everything[0]["deviceName"].startswith("Device-")

    error(await client.get("/scheduler/allocations?userId=alice", headers=auth("bob")), 403, "ForbiddenException")
    assert data(await client.get("/scheduler/allocations", headers=auth("bob")))["total"] == 2
    assert data(await client.get("/scheduler/allocations", headers=admin))["total"] == 7
    assert data(await client.get("/scheduler/allocations?userId=bob", headers=admin))["total"] == 2
    assert data(await client.get("/scheduler/allocations?status=released", headers=admin))["total"] == 0
    error(await client.get("/scheduler/allocations?status=bogus", headers=admin), 400, "BadRequestException")
    error(await client.get("/scheduler/allocations?pageSize=0", headers=admin), 400, "BadRequestException")


async def test_device_preferences_pick_the_smallest_device_that_fits(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 10}])
    await create_devices(client, admin, 1, cpu=8, memory=16384, prefix="big", start=1)
    await create_devices(client, admin, 1, cpu=2, memory=4096, prefix="small", start=1)
    await create_devices(client, admin, 1, cpu=4, memory=8192, prefix="medium", start=1)

    async def allocate(prefs: dict[str, int] | None) -> Any:
        request: dict[str, Any] = {"userId": "u1", "durationMinutes": 10}
        if prefs is not None:
            request["devicePreferences"] = prefs
        r = await client.post("/scheduler/allocations/batch", json={"requests": [request]}, headers=admin)
        return data(r)

    assert (await allocate({"cpu": 3}))["successes"][0]["deviceId"] == "medium-001"
    assert (await allocate({"cpu": 16}))["failures"][0]["reason"] == "No available devices"
    assert (await allocate({"memory": 10000}))["successes"][0]["deviceId"] == "big-001"
    assert (await allocate(None))["successes"][0]["deviceId"] == "small-001"


async def test_expiry_sweep_releases_with_reason_expired(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 2)
    due, not_due = await allocation_ids(client, admin, ["u1", "u2"])
    past = utcnow() - timedelta(seconds=5)
    await execute(
        runtime,
        "UPDATE allocations SET expires_at = :past WHERE id = :id",
        past=past.replace(tzinfo=None) if runtime.db.is_sqlite else past,
        id=due,
    )
    assert await runtime.services.get(SchedulerService).expire_due() == 1
    rows = {r.id: r for r in await sql(runtime, "SELECT id, status, release_reason FROM allocations")}
    assert (rows[due].status, rows[due].release_reason) == ("released", "expired")
    assert rows[not_due].status == "allocated"
    assert await count(runtime, "devices", "status = 'available'") == 1
    assert await count(runtime, "device_usage") == 1
    assert await runtime.services.get(SchedulerService).expire_due() == 0


async def test_worker_publishes_outbox_events_to_subscribers(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    received: list[dict[str, Any]] = []

    async def subscriber(message: dict[str, Any]) -> None:
        received.append(message)

    runtime.bus.subscribe("*", subscriber)
    try:
        await create_users(client, admin, [{"userId": "u1"}])
        await create_devices(client, admin, 1)
        (allocation,) = await allocation_ids(client, admin, ["u1"])
        await runtime.worker.run_once()
        assert [m["event"] for m in received] == ["device.allocated"]
        assert received[0]["data"]["allocationId"] == allocation
        data(
            await client.post(
                "/scheduler/allocations/batch/release", json={"allocationIds": [allocation]}, headers=admin
            )
        )
        await runtime.worker.run_once()
        assert [m["event"] for m in received[1:]] == ["device.released", "scheduler.allocation.released"]
        await runtime.worker.run_once()
        assert len(received) == 3  # delivered once, not again
    finally:
        runtime.bus.unsubscribe("*", subscriber)
    assert await count(runtime, "outbox", "kind = 'event' AND status <> 'delivered'") == 0


# --- progress push (seed 000 §5: 长时间批量操作返回进度) ----------------------------------------------------
async def test_a_long_batch_pushes_its_progress_then_its_outcome(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(
        client, admin, [{"userId": f"u{i}"} for i in range(4)] + [{"userId": "off", "status": "suspended"}]
    )
    await create_devices(client, admin, 4)
    pushed = runtime.push.subscribe("admin")
    runtime.batch.progress_every_seconds = 0  # every item is "long": each one reports
    try:
        await batch_allocate(client, admin, ["u0", "u1", "u2", "u3"])
        first = drain(pushed)
        await batch_allocate(client, admin, ["u0", "off"], atomic=True)
        second = drain(pushed)
    finally:
        runtime.batch.progress_every_seconds = 1.0
        runtime.push.unsubscribe("admin", pushed)
    assert [(m["operation"], m["progress"], m["completed"], m["total"]) for m in first] == [
        ("batch_allocate", 25, 1, 4),
        ("batch_allocate", 50, 2, 4),
        ("batch_allocate", 75, 3, 4),
        ("batch_allocate", 100, 4, 4),
    ]
    assert {m["type"] for m in first} == {"batch.progress"}
    assert (first[-1]["succeeded"], first[-1]["failed"], first[-1]["committed"]) == (4, 0, True)
    assert "succeeded" not in first[0]  # a progress report, not an outcome
    assert second[-1]["progress"] == 100 and second[-1]["committed"] is False and second[-1]["failed"] == 2


def drain(queue: Any) -> list[dict[str, Any]]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_batches_log_the_seeds_key_lines(
    client: httpx.AsyncClient, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 000 日志监控: the start and end of each batch, in the seed's words."""
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 1)
    recorder = LogRecorder()
    monkeypatch.setattr(core_batch, "log", recorder)
    logs = recorder.events
    ids = [s["allocationId"] for s in (await batch_allocate(client, admin, ["u1", "u2"]))["successes"]]
    body = {"allocationIds": ids, "additionalMinutes": 30}
    data(await client.post("/scheduler/allocations/batch/extend", json=body, headers=admin))
    data(await client.post("/scheduler/allocations/batch/query", json={"userIds": ["u1", "u2"]}, headers=admin))
    data(await client.post("/scheduler/allocations/batch/release", json={"allocationIds": ids}, headers=admin))
    lines = [re.sub(r"\d+ms$", "<ms>", e["event"]) for e in logs if e.get("domain") == "scheduler"]
    assert lines == [
        "🔄 Batch allocating 2 devices...",
        "✅ Batch allocation completed: 1 success, 1 failed, <ms>",
        "🔄 Batch extending 1 allocations by 30 minutes...",
        "✅ Batch extend completed: 1 success, 0 failed, <ms>",
        "🔍 Batch querying allocations for 2 users...",
        "✅ Batch query completed: 2 users, 1 allocations",
        "🔄 Batch releasing 1 allocations...",
        "✅ Batch release completed: 1 success, 0 failed, <ms>",
    ]
    assert {e["operation"] for e in logs if e.get("domain") == "scheduler"} == {
        "allocate",
        "extend",
        "query",
        "release",
    }
