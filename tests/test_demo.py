"""``batchops demo``: seed 000's curl scenarios 1–5 replay as written on the demo data."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.billing.ledger import Ledger
from batchops.core.runtime import Runtime
from batchops.demo import load_demo
from batchops.dining.service import DiningService
from batchops.migrate import upgrade
from tests.conftest import auth, make_settings
from tests.helpers import data

# The seed's request bodies, verbatim.
SCENARIO_1 = {
    "requests": [
        {"userId": "user-001", "durationMinutes": 60},
        {"userId": "user-002", "durationMinutes": 120},
        {"userId": "user-003", "durationMinutes": 30},
        {"userId": "user-004", "durationMinutes": 90},
        {"userId": "user-005", "durationMinutes": 60},
        {"userId": "user-006", "durationMinutes": 45},
        {"userId": "user-007", "durationMinutes": 120},
        {"userId": "user-008", "durationMinutes": 60},
        {"userId": "user-009", "durationMinutes": 30},
        {"userId": "user-010", "durationMinutes": 90},
    ],
    "continueOnError": True,
}
SCENARIO_2 = {
    "allocationIds": ["alloc-001", "alloc-002", "alloc-003", "alloc-004", "alloc-005"],
    "reason": "批量测试释放",
    "continueOnError": True,
}
SCENARIO_3 = {
    "allocationIds": ["alloc-001", "alloc-002", "alloc-003"],
    "additionalMinutes": 30,
    "continueOnError": True,
}
SCENARIO_4 = {"userIds": [f"user-{i:03d}" for i in range(1, 21)], "activeOnly": True}
SCENARIO_5 = {
    "requests": [
        {"userId": "normal-user-1", "durationMinutes": 60},
        {"userId": "quota-exceeded-user", "durationMinutes": 60},
        {"userId": "normal-user-2", "durationMinutes": 60},
        {"userId": "suspended-user", "durationMinutes": 60},
        {"userId": "normal-user-3", "durationMinutes": 60},
    ],
    "continueOnError": True,
}


async def test_the_seeds_curl_scenarios_replay_on_the_demo_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    await asyncio.to_thread(upgrade, url)
    settings = make_settings(url, billing_enforce_balance=True)  # as `make run` serves it
    await load_demo(settings, "admin")
    again = await load_demo(settings, "admin")  # idempotent: nothing more is taken or created
    assert not any("alloc-001" in line or "taken by" in line for line in again), again

    rt = build_runtime(settings)
    transport = httpx.ASGITransport(app=create_app(settings, rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://batchops.test", headers=auth("admin")) as c:

        async def post(path: str, body: dict[str, Any]) -> tuple[str, Any]:
            r = await c.post(f"/scheduler/allocations/{path}", json=body)
            return r.json()["message"], data(r)

        message, out = await post("batch", SCENARIO_1)
        assert message == "Batch allocation completed: 8/10 succeeded"
        assert [(f["userId"], f["error"]) for f in out["failures"]] == [
            ("user-009", "ForbiddenException"),
            ("user-010", "ForbiddenException"),
        ]
        assert out["failures"][0]["reason"] == "Quota exceeded: maxDevices=1, current=1"

        message, out = await post("batch/extend", SCENARIO_3)  # before 2, which releases these
        assert message == "Batch extend completed: 3/3 succeeded"
        assert [s["allocationId"] for s in out["successes"]] == SCENARIO_3["allocationIds"]

        message, out = await post("batch/release", SCENARIO_2)
        assert message == "Batch release completed: 5/5 succeeded"
        assert out["successIds"] == SCENARIO_2["allocationIds"]

        message, out = await post("batch/query", SCENARIO_4)
        assert out["userCount"] == 20 and message == f"Found {out['totalAllocations']} allocations for 20 users"
        assert [len(out["allocations"][f"user-{i:03d}"]) for i in range(1, 21)] == [1] * 10 + [0] * 10

        message, out = await post("batch", SCENARIO_5)
        assert message == "Batch allocation completed: 3/5 succeeded"
        assert [(f["userId"], f["reason"]) for f in out["failures"]] == [
            ("quota-exceeded-user", "Quota exceeded: maxDevices=5, current=5"),
            ("suspended-user", "User account is suspended"),
        ]
    await rt.stop()


async def test_the_demo_lets_a_dept_admin_order_and_a_creator_generate(runtime: Runtime) -> None:
    """The README's dining and studio examples start from the demo: a department admin with
    members and published menus from today on, a creator on plan pro with credits."""
    settings = make_settings(runtime.settings.database_url, billing_enforce_balance=True)
    lines = await load_demo(settings, "admin")
    assert any(line.startswith("dining: department dept-001") for line in lines), lines
    assert any(line.startswith("studio: creator-001 (plan pro") for line in lines), lines
    await load_demo(settings, "admin")  # idempotent: the credits are given once

    rt = build_runtime(settings)
    today = rt.services.get(DiningService).today()
    days = [(today + timedelta(days=n)).isoformat() for n in (0, 1, 7)]
    transport = httpx.ASGITransport(app=create_app(settings, rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://batchops.test") as c:
        body = {
            "orders": [
                {"date": days[1], "mealType": "lunch", "members": [{"userId": "staff-001"}, {"userId": "staff-002"}]},
                {"date": days[2], "mealType": "dinner", "members": [{"userId": "staff-003"}]},
            ]
        }
        out = data(await c.post("/api/dining/enhanced/batch-orders", json=body, headers=auth("dept-admin-001")))
        assert out["successCount"] == 2 and [o["totalAmount"] for o in out["orders"]] == [25.0, 15.0], out
        quick = {"members": [{"userId": "staff-004"}], "meals": [{"date": days[0], "mealType": "dinner"}]}
        out = data(await c.post("/api/dining/enhanced/quick-batch-orders", json=quick, headers=auth("dept-admin-001")))
        assert out["successCount"] == 1, out

        rows = [{"prompt": "a fox"}, {"prompt": "a city", "duration": 15}, {"prompt": "waves"}]
        r = await c.post(
            "/api/v1/workflow/batch-generate",
            json={"rows": rows, "defaultModel": "sora-2"},
            headers=auth("creator-001"),
        )
        accepted = data(r, 202)
        assert (accepted["plan"], accepted["creditsHeld"]) == ("pro", 50)
    await rt.stop()
    async with runtime.db.read() as session:
        credits = await runtime.services.get(Ledger).balances(session, ["creator-001"], "CREDITS")
    assert credits["creator-001"].balance == 1000 and credits["creator-001"].held == 50
