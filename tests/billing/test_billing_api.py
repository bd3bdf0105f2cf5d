"""Billing over HTTP on SQLite and PostgreSQL: ledger, metering (seed 001 endpoints),
pre-authorisation of allocations, dead letters, reconciliation, bad input."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from batchops.billing import service as billing_service
from batchops.billing.service import BillingService
from batchops.core.db import utcnow
from batchops.core.runtime import Runtime
from tests.billing.conftest import INTERNAL, balance, topup, usage
from tests.conftest import auth
from tests.helpers import LogRecorder, create_devices, create_users, data, error, execute, sql, sql_value


async def test_topup_balance_and_idempotent_reference(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    empty = await balance(client, "u1")
    assert empty == {
        "hasBalance": False,
        "balance": 0.0,
        "held": 0.0,
        "available": 0.0,
        "currency": "CNY",
        "reason": "Insufficient balance",
    }
    body = {"userId": "u1", "amount": "12.34", "reference": "pay-1"}
    first = data(await client.post("/admin/billing/topup", json=body, headers=admin))
    again = await client.post("/admin/billing/topup", json=body, headers=admin)
    assert first["applied"] is True and data(again)["applied"] is False
    assert again.json()["message"] == "Top-up already applied (same reference)"
    await create_users(client, admin, [{"userId": "u2"}])
    for reused in ({**body, "amount": "99"}, {**body, "userId": "u2"}, {**body, "currency": "CREDITS", "amount": 12}):
        r = await client.post("/admin/billing/topup", json=reused, headers=admin)  # the key reused by mistake
        assert error(r, 409, "ConflictException")["message"] == "This reference was used for another top-up"
    assert (await balance(client, "u2"))["balance"] == 0
    now = await balance(client, "u1")
    assert now["balance"] == 12.34 and now["hasBalance"] is True and now["reason"] is None
    credits = await client.post(
        "/admin/billing/topup", json={"userId": "u1", "amount": 500, "currency": "CREDITS"}, headers=admin
    )
    assert data(credits)["balance"] == 500
    assert (await balance(client, "u1"))["balance"] == 12.34  # credits are another account


async def test_topup_rejects_bad_input(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    for amount in (-1, 0, "abc", 0.001):
        r = await client.post("/admin/billing/topup", json={"userId": "u1", "amount": amount}, headers=admin)
        error(r, 400, "BadRequestException")
    for amount in (1.5, "0.5"):  # credits are whole: not truncated to 1 (or to a misleading 0)
        body = {"userId": "u1", "amount": amount, "currency": "CREDITS"}
        r = await client.post("/admin/billing/topup", json=body, headers=admin)
        assert "CREDITS are whole" in error(r, 400, "BadRequestException")["message"]
    body = {"userId": "u1", "amount": "2.00", "currency": "CREDITS"}
    assert data(await client.post("/admin/billing/topup", json=body, headers=admin))["balance"] == 2
    error(
        await client.post("/admin/billing/topup", json={"userId": "nobody", "amount": 1}, headers=admin),
        404,
        "NotFoundException",
    )
    error(
        await client.post("/admin/billing/topup", json={"userId": "u1", "amount": 1, "currency": "USD"}, headers=admin),
        400,
        "BadRequestException",
    )
    error(
        await client.post("/admin/billing/topup", json={"userId": "u1", "amount": 1}, headers=auth("u1")),
        403,
        "ForbiddenException",
    )


async def test_internal_endpoints_need_the_service_token(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    for headers in ({}, {"X-Service-Token": "wrong"}, admin):
        error(await client.get("/api/internal/balance/user/u1", headers=headers), 401, "UnauthorizedException")
        r = await client.post("/api/internal/metering/device-usage", json=usage("a1"), headers=headers)
        error(r, 401, "UnauthorizedException")
    error(await client.get("/api/internal/balance/user/nobody", headers=INTERNAL), 404, "NotFoundException")


async def test_usage_report_charges_once(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await topup(client, admin, "u1", 10)
    first = data(await client.post("/api/internal/metering/device-usage", json=usage("a1"), headers=INTERNAL))
    assert first == {"allocationId": "a1", "status": "charged", "cost": 0.93, "error": None, "reason": None}
    again = data(await client.post("/api/internal/metering/device-usage", json=usage("a1"), headers=INTERNAL))
    assert again["status"] == "duplicate"
    assert (await balance(client, "u1"))["balance"] == 10 - 0.93


async def test_usage_report_rejects_bad_input(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    bad = [
        usage("a1", seconds=-1),
        usage("a1", cpuCores=-2),
        usage("a1", releasedAt="2026-11-23T07:00:00Z"),
        usage("a1", allocatedAt="2026-11-23T06:00:00", releasedAt="2026-11-23T07:00:00"),  # no offset: ambiguous
        usage("a1", durationSeconds="long"),
        usage("", seconds=1),
        {k: v for k, v in usage("a1").items() if k != "userId"},
        usage("a1", unknownField=1),
        usage("a1", seconds=3602, releasedAt="2026-11-23T09:00:00Z"),  # longer than the device was held
        # loose types (issue 16.4): no coercion, as in the scheduler's bodies
        usage("a1", durationSeconds=True),
        usage("a1", cpuCores="4"),
        usage("a1", memoryMB=8192.5),  # 8192.0 is 8192 (JSON Schema's integer): test_input_rules
        usage("a1", allocatedAt=0),
        usage("a1", allocatedAt="0"),
        usage("a1", releasedAt=1795420800),
    ]
    for body in bad:
        r = await client.post("/api/internal/metering/device-usage", json=body, headers=INTERNAL)
        error(r, 400, "BadRequestException")
        batch = {"events": [usage("a2"), body]}
        r = await client.post("/api/internal/metering/device-usage/batch", json=batch, headers=INTERNAL)
        error(r, 400, "BadRequestException")
    json_headers = {**INTERNAL, "content-type": "application/json"}
    r = await client.post("/api/internal/metering/device-usage", content=b"{not json", headers=json_headers)
    error(r, 400, "BadRequestException")
    unknown = await client.post("/api/internal/metering/device-usage", json=usage("a1", "ghost"), headers=INTERNAL)
    assert error(unknown, 404, "NotFoundException")["message"] == "User not found"
    history = data(await client.get("/metering/users/u1", headers=admin))
    assert history["total"] == 0 and (await balance(client, "u1"))["balance"] == 0  # nothing was charged


async def test_loose_types_name_the_field(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    cases = {"durationSeconds": True, "cpuCores": "4", "allocatedAt": 0}
    for field, value in cases.items():
        r = await client.post(
            "/api/internal/metering/device-usage", json=usage("a1", **{field: value}), headers=INTERNAL
        )
        details = error(r, 400, "BadRequestException")["details"]
        assert [d["field"] for d in details] == [field], details


@pytest.mark.parametrize("size", [0, 1, 100, 101])
async def test_batch_report_limits(client: httpx.AsyncClient, admin: dict[str, str], size: int) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await topup(client, admin, "u1", 1000)
    events = [usage(f"a{i}", seconds=60) for i in range(size)]
    r = await client.post("/api/internal/metering/device-usage/batch", json={"events": events}, headers=INTERNAL)
    if size in (0, 101):
        error(r, 400, "BadRequestException")
        return
    out = data(r)
    assert out["success"] == size and out["failed"] == 0 and out["errors"] == []
    assert r.json()["message"] == f"Batch billing report completed: {size} success, 0 failed"


async def test_batch_report_per_event_results(
    client: httpx.AsyncClient, admin: dict[str, str], statement_counter: Any
) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await topup(client, admin, "u1", 100)
    await client.post("/api/internal/metering/device-usage", json=usage("old"), headers=INTERNAL)
    events = [usage("n1"), usage("old"), usage("n2", "ghost"), usage("n1"), usage("n3", "u2", seconds=7200)]
    statements = statement_counter()
    statements.clear()
    url = "/api/internal/metering/device-usage/batch"
    out = data(await client.post(url, json={"events": events}, headers=INTERNAL))
    writes = [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "BEGIN", "SAVEPOINT", "RELEASE"))]
    assert len(statements) <= 12, statements  # constant: users, insert, accounts (2), holds, flush
    assert len(writes) <= 5
    assert [r["status"] for r in out["results"]] == ["charged", "duplicate", "failed", "duplicate", "charged"]
    assert out["success"] == 4 and out["failed"] == 1 and out["errors"] == ["n2: User not found"]
    assert (out["results"][2]["error"], out["results"][2]["reason"]) == ("NotFoundException", "User not found")
    assert (await balance(client, "u1"))["balance"] == 100 - 2 * 0.93
    assert (await balance(client, "u2"))["balance"] == -1.86  # usage happened: the user is now in arrears
    assert (await balance(client, "u2"))["reason"] == "Account in arrears: -1.86 CNY"


async def test_usage_history_self_or_admin_paginated(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await topup(client, admin, "u1", 100)
    events = [usage(f"a{i}", seconds=1800 * (i + 1)) for i in range(5)]
    await client.post("/api/internal/metering/device-usage/batch", json={"events": events}, headers=INTERNAL)
    mine = data(await client.get("/metering/users/u1?page=1&pageSize=2", headers=auth("u1")))
    assert mine["total"] == 5 and mine["totalPages"] == 3 and len(mine["items"]) == 2
    assert mine["totals"] == {"count": 5, "durationSeconds": 1800 * 15, "cost": 0.47 + 0.93 + 1.40 + 1.86 + 2.32}
    assert mine["balance"]["balance"] == round(100 - mine["totals"]["cost"], 2)
    item = mine["items"][0]
    assert {"allocationId", "deviceId", "durationSeconds", "cpuCores", "memoryMB", "storageMB", "cost"} <= set(item)
    assert data(await client.get("/metering/users/u1", headers=admin))["total"] == 5
    error(await client.get("/metering/users/u1", headers=auth("u2")), 403, "ForbiddenException")
    error(await client.get("/metering/users/ghost", headers=admin), 404, "NotFoundException")
    error(await client.get("/metering/users/u1?pageSize=0", headers=admin), 400, "BadRequestException")


# --- the scheduler pre-authorises (seed P1/P2) ---------------------------------------------------
async def allocate(client: httpx.AsyncClient, user: str, minutes: int = 30) -> httpx.Response:
    return await client.post("/scheduler/devices/allocate", json={"durationMinutes": minutes}, headers=auth(user))


async def test_allocate_holds_release_captures(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 3)
    body = error(await allocate(client, "u1"), 403, "ForbiddenException")
    assert body["message"] == "Insufficient balance"
    assert body["details"] == [{"needed": 0.47, "available": 0.0, "shortfall": 0.47, "currency": "CNY"}]
    await topup(client, admin, "u1", 1)
    allocation = data(await allocate(client, "u1"))
    held = await balance(client, "u1")
    assert held["held"] == 0.47 and held["available"] == 1 - 0.47
    url = f"/scheduler/allocations/{allocation['allocationId']}/extend"
    extended = await client.post(url, json={"additionalMinutes": 30}, headers=auth("u1"))
    data(extended)
    assert (await balance(client, "u1"))["held"] == 0.94
    released = await client.post(
        "/scheduler/devices/release", json={"allocationId": allocation["allocationId"]}, headers=auth("u1")
    )
    data(released)
    assert (await balance(client, "u1"))["held"] == 0.94  # until the usage report is delivered
    await runtime.worker.run_once()
    after = await balance(client, "u1")
    used = await sql_value(runtime, "SELECT cost FROM billing_usage")
    assert after["held"] == 0 and after["balance"] == pytest.approx(1 - used / 100)
    assert used <= 94  # a few seconds of use cost at most the hold


async def test_a_zero_cost_report_closes_the_hold_without_a_charge_entry(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    await topup(client, admin, "u1", 1)
    allocation_id = data(await allocate(client, "u1"))["allocationId"]
    report = usage(allocation_id, seconds=0)
    result = data(await client.post("/api/internal/metering/device-usage", json=report, headers=INTERNAL))
    assert result["status"] == "charged" and result["cost"] == 0
    kinds = await sql(runtime, "SELECT kind, amount FROM billing_entries WHERE kind <> 'topup' ORDER BY id")
    assert [tuple(k) for k in kinds] == [("hold", 47), ("capture", 0)]  # no extra zero "charge"
    after = await balance(client, "u1")
    assert after["balance"] == 1 and after["held"] == 0


async def test_a_report_naming_another_user_captures_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    """A report whose allocation was held for u1 but names u2: that event fails (it was a
    500 that failed its whole batch), the others are charged, and u1's hold stays open
    for the right report."""
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 1)
    await topup(client, admin, "u1", 1)
    allocation_id = data(await allocate(client, "u1"))["allocationId"]
    events = [usage(allocation_id, "u2", seconds=60), usage("elsewhere", "u2", seconds=60)]
    url = "/api/internal/metering/device-usage/batch"
    out = data(await client.post(url, json={"events": events}, headers=INTERNAL))
    assert [(r["status"], r["error"], r["reason"]) for r in out["results"]] == [
        ("failed", "ConflictException", "Allocation is held by another user"),
        ("charged", None, None),
    ]
    one = await client.post("/api/internal/metering/device-usage", json=events[0], headers=INTERNAL)
    assert error(one, 409, "ConflictException")["message"] == "Allocation is held by another user"
    assert (await balance(client, "u1"))["held"] == 0.47
    right = data(await client.post(url, json={"events": [usage(allocation_id, "u1", seconds=60)]}, headers=INTERNAL))
    assert right["results"][0]["status"] == "charged" and (await balance(client, "u1"))["held"] == 0


async def test_a_reservation_needs_the_balance_to_pay_for_its_window(
    client: httpx.AsyncClient, admin: dict[str, str], billing_on: None
) -> None:
    """Seed 001 P1 #4 余额预检查: a user who could not pay keeps no device window (the
    hold itself is taken at the start, as for any allocation)."""
    await create_users(client, admin, [{"userId": "u1"}, {"userId": "u2"}])
    await create_devices(client, admin, 3)
    await topup(client, admin, "u1", "0.50")  # one 30-minute window (0.47), not two
    start = (utcnow() + dt.timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    body = {"reservations": [{"userId": u, "startAt": start, "durationMinutes": 30} for u in ("u1", "u1", "u2")]}
    result = data(await client.post("/scheduler/reservations/batch", json=body, headers=admin))
    assert result["successCount"] == 1
    assert [(f["userId"], f["error"], f["reason"]) for f in result["failures"]] == [
        ("u1", "ForbiddenException", "Insufficient balance"),  # the second window of u1
        ("u2", "ForbiddenException", "Insufficient balance"),
    ]
    assert (await balance(client, "u1"))["held"] == 0  # nothing held before the window starts


async def test_a_small_balance_cannot_be_overspent_by_a_batch(
    client: httpx.AsyncClient, admin: dict[str, str], billing_on: None
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 10}])
    await create_devices(client, admin, 10)
    await topup(client, admin, "u1", "1.50")  # three 30-minute holds of 0.47
    body = {"requests": [{"userId": "u1", "durationMinutes": 30} for _ in range(5)]}
    out = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    assert out["successCount"] == 3 and out["failedCount"] == 2
    assert {(f["error"], f["reason"]) for f in out["failures"]} == {("ForbiddenException", "Insufficient balance")}
    after = await balance(client, "u1")
    assert after["held"] == 1.41 and after["available"] == pytest.approx(0.09)
    extend = {"allocationIds": [a["allocationId"] for a in out["successes"]], "additionalMinutes": 30}
    ext = data(await client.post("/scheduler/allocations/batch/extend", json=extend, headers=admin))
    assert ext["successCount"] == 0 and ext["failedCount"] == 3  # no room for another 0.47


# --- dead letters, replay, reconciliation -------------------------------------------------------
async def release_all(client: httpx.AsyncClient, admin: dict[str, str], user: str, count: int) -> list[str]:
    body = {"requests": [{"userId": user, "durationMinutes": 30} for _ in range(count)]}
    allocated = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    ids = [a["allocationId"] for a in allocated["successes"]]
    data(await client.post("/scheduler/allocations/batch/release", json={"allocationIds": ids}, headers=admin))
    return ids


async def test_dead_letters_listed_and_replayed(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 5}])
    await create_devices(client, admin, 5)
    ids = await release_all(client, admin, "u1", 3)
    await execute(
        runtime,
        "UPDATE outbox SET status = 'dead', attempts = 5, last_error = 'Connection refused'"
        " WHERE kind = 'billing.device_usage'",
    )
    dead = data(await client.get("/admin/billing/dead-letters?pageSize=2", headers=admin))
    assert dead["total"] == 3 and len(dead["items"]) == 2
    assert dead["items"][0]["lastError"] == "Connection refused" and dead["items"][0]["allocationId"] in ids
    error(await client.get("/admin/billing/dead-letters", headers=auth("u1")), 403, "ForbiddenException")
    replay = data(await client.post("/admin/billing/dead-letters/replay", headers=admin))
    assert replay["requeued"] == 3 and replay["delivered"] >= 3
    assert data(await client.get("/admin/billing/dead-letters", headers=admin))["total"] == 0
    assert await sql_value(runtime, "SELECT count(*) FROM billing_usage") == 3


async def test_reconcile_finds_and_fixes_uncharged_usage(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 5}])
    await create_devices(client, admin, 5)
    ids = await release_all(client, admin, "u1", 4)
    billing = runtime.services.get(BillingService)
    missing, charged = await billing.reconcile(fix=False)
    assert sorted(m.allocation_id for m in missing) == sorted(ids) and charged == 0
    assert {m.outbox_status for m in missing} == {"pending"}
    missing, charged = await billing.reconcile(fix=True)
    assert charged == 4
    assert (await billing.reconcile(fix=False))[0] == []
    await runtime.worker.run_once()  # the original reports arrive late: duplicates, no second charge
    assert await sql_value(runtime, "SELECT count(*) FROM billing_entries WHERE kind = 'charge'") == 4


async def test_the_worker_reconciles_and_reports_what_no_report_will_charge(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed P1 #6 定期对账: a job of the worker's; pending reports are in flight, not lost."""
    assert "billing.check_unbilled" in [job.name for job in runtime.worker.jobs]
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 5}])
    await create_devices(client, admin, 3)
    ids = sorted(await release_all(client, admin, "u1", 3))
    billing = runtime.services.get(BillingService)
    recorder = LogRecorder()
    monkeypatch.setattr(billing_service, "log", recorder)
    assert await billing.check_unbilled() == 0  # three reports pending: the worker will deliver them
    await execute(runtime, "DELETE FROM outbox WHERE dedup_key = :k", k=f"usage:{ids[0]}")  # one report gone
    await execute(runtime, "UPDATE outbox SET status = 'dead' WHERE dedup_key = :k", k=f"usage:{ids[1]}")  # given up
    assert await billing.check_unbilled() == 2
    assert sorted(e["event"] for e in recorder.events) == [
        f"⚠️ Billing data may be lost for allocation: {i}" for i in ids[:2]
    ]
    assert "billing_unbilled_allocations 2.0" in (await client.get("/metrics")).text
    await billing.reconcile(fix=True)
    assert await billing.check_unbilled() == 0
    assert "billing_unbilled_allocations 0.0" in (await client.get("/metrics")).text


async def test_billing_metrics_are_exported(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    await release_all(client, admin, "u1", 1)
    await runtime.worker.run_once()
    text = (await client.get("/metrics")).text
    names = (
        'billing_report_total{status="success"}',
        "billing_report_duration_seconds_count",
        "billing_report_errors",
        # the shared batch metrics (DESIGN.md), for every ingestion: the worker's here
        'billing_batch_operations_total{operation="usage_report",status="success"}',
        'billing_batch_operation_duration_seconds_count{operation="usage_report"}',
    )
    for name in names:
        assert name in text


async def test_queue_grants_never_exceed_the_balance(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, billing_on: None
) -> None:
    """Issue 6: a grant takes the same hold as any allocation; without room it stays waiting."""
    await create_users(client, admin, [{"userId": "holder", "maxDevices": 3}, {"userId": "q", "maxDevices": 5}])
    await create_devices(client, admin, 3)
    await topup(client, admin, "holder", 10)
    await topup(client, admin, "q", "1.00")  # room for two 30-minute holds (0.47 each), not three
    held = [data(await allocate(client, "holder", 60)) for _ in range(3)]
    asks = {"userId": "q", "durationMinutes": 30, "queueIfUnavailable": True}
    entries = [data(await client.post("/scheduler/devices/allocate", json=asks, headers=admin), 202) for _ in range(3)]
    ids = [h["allocationId"] for h in held]
    data(await client.post("/scheduler/allocations/batch/release", json={"allocationIds": ids}, headers=admin))
    await runtime.worker.run_once()
    statuses = [
        data(await client.get(f"/scheduler/queue/{e['queueEntryId']}", headers=admin))["status"] for e in entries
    ]
    assert statuses == ["granted", "granted", "waiting"]
    after = await balance(client, "q")
    assert after["held"] == 0.94 and after["available"] == pytest.approx(0.06)
