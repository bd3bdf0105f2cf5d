"""Submit → engine → results, credits through the ledger, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select

from batchops.billing.ledger import Ledger
from batchops.core.runtime import Runtime
from batchops.studio.engine import Engine
from batchops.studio.models import SimJob
from tests.helpers import data, error, sql_value
from tests.studio.conftest import rows, run_until_idle, studio_user

SORA2 = ("sora-2", "720p", 10)
SORA2_15 = ("sora-2", "720p", 15)
PRO_720 = ("sora-2-pro", "720p", 10)
PRO_1080_10 = ("sora-2-pro", "1080p", 10)
PRO_1080_15 = ("sora-2-pro", "1080p", 15)


async def balance(runtime: Runtime, user_id: str) -> tuple[int, int]:
    async with runtime.db.transaction() as session:
        b = (await runtime.services.get(Ledger).balances(session, [user_id], "CREDITS"))[user_id]
    return b.balance, b.held


async def submit(client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = data(await client.post("/api/v1/workflow/batch-generate", json=body, headers=headers), 202)
    return result


async def batch(client: httpx.AsyncClient, headers: dict[str, str], batch_id: str) -> dict[str, Any]:
    result: dict[str, Any] = data(await client.get(f"/api/v1/workflow/batches/{batch_id}", headers=headers))
    return result


async def sim_jobs(runtime: Runtime) -> list[SimJob]:
    async with runtime.db.transaction() as session:
        return list(await session.scalars(select(SimJob).order_by(SimJob.submitted_at)))


async def test_batch_runs_to_completion_and_charges_per_success(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    body = {"rows": rows(SORA2, SORA2_15, PRO_720, PRO_1080_10, PRO_1080_15), "generationType": "video"}
    accepted = await submit(client, user, body)
    assert accepted["totalCount"] == 5 and accepted["creditsHeld"] == 15 + 20 + 45 + 100 + 130
    assert await balance(runtime, "u1") == (1000, 310)
    view = await batch(client, user, accepted["batchId"])
    assert view["status"] == "queued" and view["counts"]["queued"] == 5 and view["credits"]["held"] == 310

    await run_until_idle(engine_factory())

    view = await batch(client, user, accepted["batchId"])
    assert view["status"] == "completed"
    assert view["counts"] == {"queued": 0, "running": 0, "succeeded": 5, "failed": 0, "cancelled": 0}
    assert view["credits"] == {"held": 0, "spent": 310, "returned": 0}
    assert all(t["resultUrl"] and t["attempts"] == 1 for t in view["tasks"])
    assert await balance(runtime, "u1") == (690, 0)
    jobs = await sim_jobs(runtime)
    assert len(jobs) == 5 and len({j.task_ref for j in jobs}) == 5
    note = await sql_value(
        runtime, "SELECT title FROM notifications WHERE user_id = 'u1' AND type = 'studio.batch.completed'"
    )
    assert note == "🎬 批量生成完成"


async def test_defaults_and_images(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    body = {
        "rows": [{"prompt": "p1"}, {"prompt": "p2", "duration": 10}],
        "generationType": "video",
        "defaultModel": "sora-2-pro",
        "defaultResolution": "720p",
        "defaultDuration": 15,
    }
    accepted = await submit(client, user, body)
    assert accepted["creditsHeld"] == 60 + 45
    images = await submit(client, user, {"rows": [{"prompt": "a logo"}] * 3, "generationType": "image"})
    assert images["creditsHeld"] == 3 * 2
    await run_until_idle(engine_factory())
    view = await batch(client, user, images["batchId"])
    assert view["counts"]["succeeded"] == 3 and view["tasks"][0]["model"] == "nano-banana"
    assert await balance(runtime, "u1") == (1000 - 105 - 6, 0)


async def test_limits_prices_and_credits_are_checked(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    pro = await studio_user(client, admin, "pro", plan="pro", credits=100_000)
    free = await studio_user(client, admin, "new", plan="free", credits=100_000)
    poor = await studio_user(client, admin, "poor", plan="enterprise", credits=100)
    url = "/api/v1/workflow/batch-generate"
    body = error(await client.post(url, json={"rows": rows(*[SORA2] * 16)}, headers=pro), 400, "BadRequestException")
    assert "limit of 15" in body["message"]
    data(await client.post(url, json={"rows": rows(*[SORA2] * 15)}, headers=pro), 202)
    error(await client.post(url, json={"rows": rows(*[SORA2] * 6)}, headers=free), 400, "BadRequestException")
    body = error(
        await client.post(url, json={"rows": rows(SORA2, ("sora-2", "1080p", 10))}, headers=pro),
        400,
        "BadRequestException",
    )
    assert "No price" in body["message"] and body["details"][0]["field"] == "rows.1"
    short = await client.post(url, json={"rows": rows(PRO_1080_15)}, headers=poor)
    body = error(short, 403, "ForbiddenException")
    assert body["message"] == "Insufficient balance"
    assert body["details"][0]["shortfall"] == 30
    assert await balance(runtime, "poor") == (100, 0)
    error(await client.post(url, json={"rows": []}, headers=pro), 400, "BadRequestException")
    error(await client.post(url, json={"rows": [{"prompt": ""}]}, headers=pro), 400, "BadRequestException")
    for bad in ({"rows": [{"prompt": "x", "resolution": "4k"}]}, {"rows": [{"prompt": "x"}], "bogus": 1}):
        error(await client.post(url, json=bad, headers=pro), 400, "BadRequestException")
    error(await client.post(url, json={"rows": [{"prompt": "x"}]}), 401, "UnauthorizedException")
