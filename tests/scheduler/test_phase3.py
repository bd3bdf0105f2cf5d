"""Scheduler phase 3 (issue 6): reservations, the wait queue, release policies, placement."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from batchops.assembly import build_runtime
from batchops.core.db import utcnow
from batchops.core.runtime import Runtime
from batchops.notifications.models import Notification
from batchops.scheduler.models import Allocation, QueueEntry, Reservation
from batchops.scheduler.policies import PolicyJobs
from batchops.scheduler.service import SchedulerService
from batchops.settings import Settings
from tests.conftest import auth, make_settings
from tests.helpers import create_devices, create_users, data, error


def with_settings(scheduler: SchedulerService, settings: Settings) -> PolicyJobs:
    """The scheduler's policy jobs under other settings."""
    return PolicyJobs(
        replace(scheduler.ctx, settings=settings), scheduler.releaser, scheduler.reservations, scheduler.queue
    )


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


async def allocate(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post("/scheduler/devices/allocate", json=body, headers=headers)


async def reserve(
    client: httpx.AsyncClient, headers: dict[str, str], user: str, start: datetime, minutes: int
) -> httpx.Response:
    body = {"userId": user, "startAt": iso(start), "durationMinutes": minutes}
    return await client.post("/scheduler/reservations", json=body, headers=headers)


# --- reservations --------------------------------------------------------------------------------
async def test_reservation_holds_a_device_and_windows_never_overlap(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": f"u{i}"} for i in range(3)])
    await create_devices(client, admin, 2)
    start = utcnow() + timedelta(hours=1)
    first = data(await reserve(client, admin, "u0", start, 60), 201)
    assert first["status"] == "reserved" and first["endAt"] == iso(start + timedelta(minutes=60))
    second = data(await reserve(client, admin, "u1", start + timedelta(minutes=30), 60), 201)
    assert second["deviceId"] != first["deviceId"]
    body = error(await reserve(client, admin, "u2", start + timedelta(minutes=10), 30), 400, "BadRequestException")
    assert body["message"] == "No device available for the requested window"
    # back to back is fine: windows are half-open
    data(await reserve(client, admin, "u2", start + timedelta(minutes=60), 30), 201)
    error(await reserve(client, admin, "u2", utcnow() - timedelta(minutes=1), 30), 400, "BadRequestException")
    bad = await client.post(
        "/scheduler/reservations",
        json={"userId": "u2", "startAt": "2030-01-01T10:00:00", "durationMinutes": 30},
        headers=admin,
    )
    error(bad, 400, "BadRequestException")  # no zone: ambiguous
    in_an_hour = int((utcnow() + timedelta(hours=1)).timestamp())
    for timestamp in (in_an_hour, str(in_an_hour)):  # pydantic would read either as Unix time
        body = {"userId": "u2", "startAt": timestamp, "durationMinutes": 30}
        r = await client.post("/scheduler/reservations", json=body, headers=admin)
        assert error(r, 400, "BadRequestException")["details"][0]["field"] == "startAt"


async def test_the_database_refuses_overlapping_reservations(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u0"}])
    await create_devices(client, admin, 1)
    start = utcnow() + timedelta(hours=1)
    first = data(await reserve(client, admin, "u0", start, 60), 201)
    with pytest.raises(IntegrityError):
        async with runtime.db.transaction() as session:
            session.add(
                Reservation(
                    id="resv-raw",
                    user_id="u0",
                    device_id=first["deviceId"],
                    start_at=start + timedelta(minutes=59),
                    end_at=start + timedelta(minutes=90),
                    duration_minutes=31,
                    status="reserved",
                )
            )


async def test_concurrent_reservations_of_one_window(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": f"u{i}"} for i in range(12)])
    await create_devices(client, admin, 3)
    start = utcnow() + timedelta(hours=2)
    responses = await asyncio.gather(*(reserve(client, admin, f"u{i}", start, 45) for i in range(12)))
    assert sorted(r.status_code for r in responses) == [201] * 3 + [400] * 9
    async with runtime.db.transaction() as session:
        per_device = (
            await session.execute(
                select(Reservation.device_id, func.count())
                .where(Reservation.status == "reserved")
                .group_by(Reservation.device_id)
            )
        ).all()
    assert sorted(n for _, n in per_device) == [1, 1, 1]


async def test_allocation_and_extension_never_enter_a_reserved_window(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_users(client, admin, [{"userId": "alice"}, {"userId": "bob"}])
    await create_devices(client, admin, 1)
    start = utcnow() + timedelta(minutes=30)
    data(await reserve(client, admin, "bob", start, 60), 201)
    body = error(await allocate(client, admin, userId="alice", durationMinutes=60), 400, "BadRequestException")
    assert body["message"] == "No available devices"
    short = data(await allocate(client, admin, userId="alice", durationMinutes=20))
    r = await client.post(
        f"/scheduler/allocations/{short['allocationId']}/extend", json={"additionalMinutes": 30}, headers=admin
    )
    body = error(r, 409, "ConflictException")
    assert iso(start).replace("Z", "") in body["message"].replace("Z", "")
    r = await client.post(
        "/scheduler/allocations/batch/extend",
        json={"allocationIds": [short["allocationId"]], "additionalMinutes": 5},
        headers=admin,
    )
    assert data(r)["successCount"] == 1  # still ends before the window


async def test_reservation_turns_into_an_allocation_at_its_start(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "bob"}])
    await create_devices(client, admin, 1)
    created = data(await reserve(client, admin, "bob", utcnow() + timedelta(minutes=5), 60), 201)
    async with runtime.db.transaction() as session:  # time passes
        await session.execute(update(Reservation).values(start_at=utcnow() - timedelta(minutes=1)))
    assert await runtime.services.get(SchedulerService).reservations.start_due() == 1
    got = data(await client.get(f"/scheduler/reservations/{created['reservationId']}", headers=admin))
    assert got["status"] == "fulfilled" and got["allocationId"]
    async with runtime.db.transaction() as session:
        allocation = await session.get(Allocation, got["allocationId"])
    assert allocation is not None and allocation.device_id == created["deviceId"]
    assert allocation.reservation_id == created["reservationId"]
    assert abs((allocation.expires_at - datetime.fromisoformat(created["endAt"])).total_seconds()) < 1
    assert await runtime.services.get(SchedulerService).reservations.start_due() == 0  # once


async def test_batch_reservations_and_cancel(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u0"}, {"userId": "u1"}])
    await create_devices(client, admin, 1)
    start = utcnow() + timedelta(hours=3)
    body = {
        "reservations": [
            {"userId": "u0", "startAt": iso(start), "durationMinutes": 30},
            {"userId": "u1", "startAt": iso(start + timedelta(minutes=10)), "durationMinutes": 30},
            {"userId": "nobody", "startAt": iso(start), "durationMinutes": 30},
        ]
    }
    result = data(await client.post("/scheduler/reservations/batch", json=body, headers=admin))
    assert (result["successCount"], result["failedCount"], result["totalCount"]) == (1, 2, 3)
    assert [f["reason"] for f in result["failures"]] == [
        "No device available for the requested window",
        "User not found",
    ]
    rid = result["successes"][0]["reservationId"]
    assert data(await client.post(f"/scheduler/reservations/{rid}/cancel", headers=admin))["status"] == "cancelled"
    error(await client.post(f"/scheduler/reservations/{rid}/cancel", headers=admin), 409, "ConflictException")
    data(await reserve(client, admin, "u1", start + timedelta(minutes=10), 30), 201)  # window free again
    error(
        await client.post("/scheduler/reservations/batch", json={"reservations": []}, headers=admin),
        400,
        "BadRequestException",
    )


# --- the wait queue ------------------------------------------------------------------------------
async def test_queue_grants_by_priority_then_age(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": u} for u in ("a", "b", "c", "d")])
    await create_devices(client, admin, 1)
    first = data(await allocate(client, admin, userId="a", durationMinutes=60))
    q = {"durationMinutes": 30, "queueIfUnavailable": True}
    b = data(await allocate(client, admin, userId="b", priority=1, **q), 202)
    c = data(await allocate(client, admin, userId="c", priority=5, **q), 202)
    d = data(await allocate(client, admin, userId="d", priority=5, **q), 202)
    assert (b["position"], c["position"], d["position"]) == (1, 1, 2)
    listing = data(await client.get("/scheduler/queue", headers=admin))
    assert [e["userId"] for e in listing["items"]] == ["c", "d", "b"]
    assert [e["position"] for e in listing["items"]] == [1, 2, 3]
    r = await client.post("/scheduler/devices/release", json={"allocationId": first["allocationId"]}, headers=admin)
    data(r)
    await runtime.worker.run_once()  # the release's "devices freed" message triggers a grant pass
    granted = data(await client.get(f"/scheduler/queue/{c['queueEntryId']}", headers=admin))
    assert granted["status"] == "granted" and granted["allocationId"] and granted["position"] is None
    waiting = data(await client.get(f"/scheduler/queue/{d['queueEntryId']}", headers=admin))
    assert waiting["status"] == "waiting" and waiting["position"] == 1
    async with runtime.db.transaction() as session:
        notes = (await session.scalars(select(Notification.type).where(Notification.user_id == "c"))).all()
    assert "scheduler.queue.granted" in notes


async def test_grants_respect_quota_and_expire(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "holder", "maxDevices": 2}, {"userId": "q", "maxDevices": 1}])
    await create_devices(client, admin, 2)
    held = [data(await allocate(client, admin, userId="holder", durationMinutes=60)) for _ in range(2)]
    q = {"userId": "q", "durationMinutes": 30, "queueIfUnavailable": True}
    e1 = data(await allocate(client, admin, **q), 202)
    e2 = data(await allocate(client, admin, **q, maxWaitMinutes=1), 202)
    for h in held:
        data(await client.post("/scheduler/devices/release", json={"allocationId": h["allocationId"]}, headers=admin))
    await runtime.worker.run_once()
    async with runtime.db.transaction() as session:
        statuses = dict((await session.execute(select(QueueEntry.id, QueueEntry.status))).all())
        active = await session.scalar(
            select(func.count()).where(Allocation.user_id == "q", Allocation.status == "allocated")
        )
    assert statuses[e1["queueEntryId"]] == "granted" and statuses[e2["queueEntryId"]] == "waiting"
    assert active == 1  # maxDevices=1: the second device stays free
    async with runtime.db.transaction() as session:
        await session.execute(
            update(QueueEntry)
            .where(QueueEntry.id == e2["queueEntryId"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert await runtime.services.get(SchedulerService).queue.grant_waiting() == 0  # past its wait: never granted
    await runtime.services.get(SchedulerService).queue.expire_overdue()
    expired = data(await client.get(f"/scheduler/queue/{e2['queueEntryId']}", headers=admin))
    assert expired["status"] == "expired"


async def test_batch_allocate_items_opt_into_the_queue(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": f"u{i}"} for i in range(3)])
    await create_devices(client, admin, 1)
    body = {
        "requests": [
            {"userId": "u0", "durationMinutes": 10},
            {"userId": "u1", "durationMinutes": 10, "queueIfUnavailable": True, "priority": 3},
            {"userId": "u2", "durationMinutes": 10},
        ]
    }
    result = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    assert (result["successCount"], result["failedCount"], result["totalCount"]) == (2, 1, 3)
    assert [s["userId"] for s in result["successes"]] == ["u0"]
    assert [(q["userId"], q["position"]) for q in result["queued"]] == [("u1", 1)]
    assert result["failures"] == [{"userId": "u2", "reason": "No available devices", "error": "BadRequestException"}]
    error(
        await client.post(
            "/scheduler/allocations/batch",
            json={"requests": [{"userId": "u0", "durationMinutes": 10, "priority": 10}]},
            headers=admin,
        ),
        400,
        "BadRequestException",
    )


# --- release policies ----------------------------------------------------------------------------
async def test_daily_release_fires_once_with_two_workers(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": f"u{i}"} for i in range(3)])
    await create_devices(client, admin, 3)
    for i in range(3):
        data(await allocate(client, admin, userId=f"u{i}", durationMinutes=1440))
    zone = ZoneInfo("Asia/Shanghai")
    local = utcnow().astimezone(zone)
    at = local.replace(hour=23, minute=59, second=30, microsecond=0)
    settings = make_settings(runtime.settings.database_url, daily_release_time="23:59")
    other = build_runtime(settings)
    try:
        jobs = [
            with_settings(runtime.services.get(SchedulerService), settings),
            other.services.get(SchedulerService).policies,
        ]
        released = await asyncio.gather(*(job.daily_release(now=at) for job in jobs))
        assert sum(released) == 3
        assert await jobs[0].daily_release(now=at) == 0
    finally:
        await other.stop()
    async with runtime.db.transaction() as session:
        reasons = (await session.scalars(select(Allocation.release_reason))).all()
        released_notes = await session.scalar(select(func.count()).where(Notification.type == "device.released"))
    assert reasons == ["每日自动释放"] * 3 and released_notes == 3


async def test_expiry_reminder_fires_once_and_rearms_on_extend(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u0"}])
    await create_devices(client, admin, 1)
    a = data(await allocate(client, admin, userId="u0", durationMinutes=5))
    jobs = [runtime.services.get(SchedulerService).policies] * 2
    sent = await asyncio.gather(*(j.send_expiry_reminders() for j in jobs))
    assert sum(sent) == 1
    assert await jobs[0].send_expiry_reminders() == 0
    data(
        await client.post(
            f"/scheduler/allocations/{a['allocationId']}/extend", json={"additionalMinutes": 30}, headers=admin
        )
    )
    assert await jobs[0].send_expiry_reminders() == 0  # 35 min left > 10: re-armed, not yet due
    async with runtime.db.transaction() as session:
        await session.execute(update(Allocation).values(expires_at=utcnow() + timedelta(minutes=3)))
    assert await jobs[0].send_expiry_reminders() == 1
    async with runtime.db.transaction() as session:
        titles = (
            await session.scalars(
                select(Notification.title).where(Notification.type == "scheduler.allocation.expiring")
            )
        ).all()
    assert titles == ["⏳ 设备即将到期"] * 2


async def test_maintenance_lets_the_running_allocation_finish(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u0"}])
    [device] = await create_devices(client, admin, 1)
    a = data(await allocate(client, admin, userId="u0", durationMinutes=30))
    on = data(await client.post(f"/scheduler/devices/{device}/maintenance", json={"maintenance": True}, headers=admin))
    assert on["maintenance"] is True and on["status"] == "allocated"
    data(
        await client.post(
            f"/scheduler/allocations/{a['allocationId']}/extend", json={"additionalMinutes": 5}, headers=admin
        )
    )
    data(await client.post("/scheduler/devices/release", json={"allocationId": a["allocationId"]}, headers=admin))
    error(await allocate(client, admin, userId="u0", durationMinutes=30), 400, "BadRequestException")
    data(await client.post(f"/scheduler/devices/{device}/maintenance", json={"maintenance": False}, headers=admin))
    data(await allocate(client, admin, userId="u0", durationMinutes=30))
    error(
        await client.post("/scheduler/devices/nope/maintenance", json={"maintenance": True}, headers=admin),
        404,
        "NotFoundException",
    )
    error(
        await client.post(f"/scheduler/devices/{device}/maintenance", json={"maintenance": True}, headers=auth("u0")),
        403,
        "ForbiddenException",
    )


# --- placement -----------------------------------------------------------------------------------
async def test_placement_is_best_fit_then_spread_over_nodes(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": f"u{i}", "maxDevices": 5} for i in range(4)])
    devices = [
        {"id": "big", "name": "Big", "cpuCores": 16, "memoryMB": 65536, "storageMB": 1, "nodeId": "n1"},
        {"id": "s1", "name": "S1", "cpuCores": 2, "memoryMB": 4096, "storageMB": 1, "nodeId": "n1"},
        {"id": "s2", "name": "S2", "cpuCores": 2, "memoryMB": 4096, "storageMB": 1, "nodeId": "n1"},
        {"id": "s3", "name": "S3", "cpuCores": 2, "memoryMB": 4096, "storageMB": 1, "nodeId": "n2"},
    ]
    data(await client.post("/scheduler/devices/batch", json={"devices": devices}, headers=admin))
    body = {
        "requests": [
            {"userId": "u0", "durationMinutes": 10},
            {"userId": "u1", "durationMinutes": 10},
            {"userId": "u2", "durationMinutes": 10, "devicePreferences": {"cpu": 4}},
        ]
    }
    result = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    picked = [s["deviceId"] for s in result["successes"]]
    assert picked[0] in {"s1", "s2"} and picked[1] == "s3"  # smallest first, then the other node
    assert picked[2] == "big"  # the only device with 4+ cores
    nodes = {n["nodeId"]: n for n in data(await client.get("/scheduler/nodes", headers=admin))}
    assert nodes["n1"]["allocated"] == 2 and nodes["n2"]["allocated"] == 1 and nodes["n1"]["available"] == 1


async def test_placement_reads_the_whole_fleet_when_the_first_devices_are_reserved(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """A single allocate reads only the first two devices of each (size, node) bucket;
    when reservations block both, it must still find the third, and in id order."""
    await create_users(client, admin, [{"userId": u, "maxDevices": 5} for u in ("alice", "bob")])
    await create_devices(client, admin, 4)  # device-001 … device-004, one size, one node
    soon = utcnow() + timedelta(minutes=10)
    blocked = {data(await reserve(client, admin, "bob", soon, 60), 201)["deviceId"] for _ in range(2)}
    assert blocked == {"device-001", "device-002"}
    first = data(await allocate(client, admin, userId="alice", durationMinutes=60))
    second = data(await allocate(client, admin, userId="alice", durationMinutes=60))
    assert (first["deviceId"], second["deviceId"]) == ("device-003", "device-004")
    error(await allocate(client, admin, userId="alice", durationMinutes=60), 400, "BadRequestException")
    # a short allocation ends before the reservations begin: the first device is fine again
    assert data(await allocate(client, admin, userId="alice", durationMinutes=5))["deviceId"] == "device-001"
