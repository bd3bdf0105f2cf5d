"""List, download, SSE progress, WebSocket push, statement counts, admin-set plans."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Callable

import httpx

from batchops.core.clock import ManualClock
from batchops.core.runtime import Runtime
from batchops.studio.engine import Engine
from batchops.studio.reads import failure_rate
from tests.helpers import create_users, data, error
from tests.studio.conftest import rows, run_until_idle, studio_user
from tests.studio.test_flow import SORA2, batch, submit


async def test_list_is_paginated_and_scoped(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    a = await studio_user(client, admin, "a")
    b = await studio_user(client, admin, "b")
    for _ in range(3):
        await submit(client, a, {"rows": rows(SORA2)})
    await submit(client, b, {"rows": rows(SORA2)})
    page = data(await client.get("/api/v1/workflow/batches?page=1&pageSize=2", headers=a))
    assert page["total"] == 3 and page["totalPages"] == 2 and len(page["items"]) == 2
    assert {i["userId"] for i in page["items"]} == {"a"} and page["items"][0]["counts"]["queued"] == 1
    page2 = data(await client.get("/api/v1/workflow/batches?page=2&pageSize=2", headers=a))
    assert len(page2["items"]) == 1
    everyone = data(await client.get("/api/v1/workflow/batches", headers=admin))
    assert everyone["total"] == 4
    only_b = data(await client.get("/api/v1/workflow/batches?userId=b", headers=admin))
    assert only_b["total"] == 1
    error(await client.get("/api/v1/workflow/batches?pageSize=0", headers=a), 400, "BadRequestException")
    error(await client.get("/api/v1/workflow/batches/nope", headers=a), 404, "NotFoundException")
    other = page["items"][0]["batchId"]
    error(await client.get(f"/api/v1/workflow/batches/{other}", headers=b), 403, "ForbiddenException")


async def test_download_zip_events_and_push(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
) -> None:
    user = await studio_user(client, admin, "u1")
    inbox = runtime.push.subscribe("u1")
    accepted = await submit(client, user, {"rows": [*rows(SORA2, SORA2), {"prompt": "[reject] x"}]})
    batch_id = accepted["batchId"]
    url = f"/api/v1/workflow/batches/{batch_id}/events?interval=0.05"
    stream, _ = await asyncio.gather(client.get(url, headers=user), run_until_idle(engine_factory()))
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    events = [e for e in stream.text.split("\n\n") if e]
    assert events[0].startswith("event: progress") and events[-1].startswith("event: done")
    last = json.loads(events[-1].split("data: ", 1)[1])
    assert last["status"] == "completed" and last["counts"]["succeeded"] == 2 and last["counts"]["failed"] == 1

    pushed = []
    while not inbox.empty():
        pushed.append(inbox.get_nowait())
    progress = [m for m in pushed if m.get("type") == "studio.batch.progress"]
    assert progress and progress[-1]["finishedCount"] == 3
    assert any(m.get("notificationType") == "studio.batch.completed" for m in pushed)
    runtime.push.unsubscribe("u1", inbox)
    # the console's failure rate: tasks finished within the last hour, by the clock it is given
    assert await failure_rate(runtime.db, clock=clock) == (1, 3)
    clock.advance(hours=1, seconds=1)
    assert await failure_rate(runtime.db, clock=clock) == (0, 0)

    metrics = (await client.get("/metrics")).text
    for name in (
        "studio_failure_rate",
        "studio_task_processing_seconds_bucket",
        "studio_provider_calls_total",
        "studio_credits_consumed_total",
    ):
        assert name in metrics, name

    r = await client.get(f"/api/v1/workflow/batches/{batch_id}/download", headers=user)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    names = archive.namelist()
    assert "manifest.json" in names and "results.csv" in names
    assert len([n for n in names if n.startswith("results/")]) == 2
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["batchId"] == batch_id and len(manifest["tasks"]) == 3
    assert manifest["failureAnalysis"]["byKind"] == {"content_rejected": 1}


async def test_submit_costs_a_constant_number_of_statements(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    statement_counter: Callable[[], list[str]],
) -> None:
    user = await studio_user(client, admin, "u1", plan="enterprise", credits=100_000)
    counts = []
    for n in (1, 50):
        before = len(statement_counter())
        await submit(client, user, {"rows": rows(*[SORA2] * n)})
        counts.append(len(statement_counter()) - before)
    assert counts[0] == counts[1], counts
    assert counts[0] <= 14


async def test_admin_sets_the_plan(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    user = await studio_user(client, admin, "u1", plan="free")
    url = "/api/v1/workflow/batch-generate"
    error(await client.post(url, json={"rows": rows(*[SORA2] * 10)}, headers=user), 400, "BadRequestException")
    await create_users(client, admin, [{"userId": "u1", "plan": "pro_plus"}])
    accepted = await submit(client, user, {"rows": rows(*[SORA2] * 25)})
    view = await batch(client, user, accepted["batchId"])
    assert view["plan"] == "pro_plus" and view["maxConcurrency"] == 5
    error(
        await client.post("/admin/users/batch", json={"users": [{"userId": "u1", "plan": "gold"}]}, headers=admin),
        400,
        "BadRequestException",
    )


async def test_concurrent_submissions_never_overspend(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=100)
    url = "/api/v1/workflow/batch-generate"
    results = await asyncio.gather(
        *(client.post(url, json={"rows": rows(SORA2, SORA2)}, headers=user) for _ in range(8))
    )
    accepted = [r for r in results if r.status_code == 202]
    assert len(accepted) == 3 and all(r.status_code in (202, 403) for r in results)  # 3 × 30 ≤ 100 < 4 × 30
