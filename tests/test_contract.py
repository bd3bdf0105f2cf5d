"""The service-wide contract: ops endpoints, offline docs, OpenAPI, WebSocket push,
notifications listing, the identity admin API and the token CLI."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.cli import app as cli_app
from batchops.core.auth import create_token
from batchops.core.runtime import Runtime
from batchops.identity.schemas import UserIn
from batchops.identity.service import IdentityService
from batchops.settings import get_settings
from tests.conftest import JWT_SECRET, auth, make_settings
from tests.helpers import allocation_ids, create_devices, create_users, data, error

DEADLINE = 10.0


# --- ops -------------------------------------------------------------------------------------------
async def test_health_ok(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert data(r) == {"status": "ok", "database": "ok"}


async def test_health_503_when_database_unreachable() -> None:
    rt = build_runtime(make_settings("postgresql://nobody@127.0.0.1:1/nowhere"))
    try:
        transport = httpx.ASGITransport(app=create_app(rt.settings, rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://batchops.test") as c:
            body = error(await c.get("/health"), 503, "ServiceUnavailableException")
    finally:
        await rt.stop()
    assert body["message"] == "Database unreachable"


async def test_metrics_after_a_batch(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    data(await client.post("/scheduler/allocations/batch/query", json={"userIds": ["u1", "u2"]}, headers=admin))
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    await allocation_ids(client, admin, ["u1"])
    r = await client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert re.search(r'scheduler_batch_operations_total\{operation="allocate",status="success"\} [1-9]', text)
    assert 'scheduler_batch_operation_duration_seconds_count{operation="query"}' in text
    assert 'scheduler_batch_size_distribution_bucket{le="5.0",operation="query"}' in text
    assert "scheduler_batch_partial_failure_rate" in text


async def test_docs_work_offline(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
    assert assets, r.text
    assert not [a for a in assets if re.match(r"(https?:)?//", a)], assets
    for asset in assets:  # every asset the page needs is served by the app itself
        assert (await client.get(asset)).status_code == 200, asset


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    import schemathesis

    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/scheduler/allocations/batch",
        "/scheduler/allocations/batch/release",
        "/scheduler/allocations/batch/extend",
        "/scheduler/allocations/batch/query",
        "/admin/users/batch",
        "/notifications",
        "/health",
    ):
        assert path in spec["paths"], path
    schema = schemathesis.openapi.from_dict(spec)
    operations = list(schema.get_all_operations())
    assert operations and all(op.ok() for op in operations)  # every operation parses


# --- WebSocket notifications -------------------------------------------------------------------------
@pytest.fixture
async def live_url(runtime: Runtime) -> AsyncIterator[str]:
    """A real uvicorn server on a free port, in this event loop, on the test runtime."""
    app = create_app(runtime.settings, runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(DEADLINE):
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on: poll, bounded
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"ws://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def receive(ws: Any) -> dict[str, Any]:
    async with asyncio.timeout(DEADLINE):
        message: dict[str, Any] = json.loads(await ws.recv())
    return message


async def test_websocket_receives_the_notifications_of_a_batch(
    client: httpx.AsyncClient, admin: dict[str, str], live_url: str
) -> None:
    await create_users(client, admin, [{"userId": "alice"}, {"userId": "bob"}])
    await create_devices(client, admin, 3)
    alice_token = create_token("alice", JWT_SECRET)
    bob_token = create_token("bob", JWT_SECRET)
    async with (
        connect(f"{live_url}/ws/notifications?token={alice_token}") as alice,
        connect(f"{live_url}/ws/notifications") as bob,
    ):
        assert await receive(alice) == {"type": "connected", "userId": "alice"}
        await bob.send(json.dumps({"token": bob_token}))
        assert await receive(bob) == {"type": "connected", "userId": "bob"}

        body = await allocation_ids(client, admin, ["alice", "bob", "alice"])
        alice_messages = [await receive(alice), await receive(alice)]
        bob_message = await receive(bob)

    assert {m["type"] for m in alice_messages} == {"notification"}
    assert {m["notificationType"] for m in alice_messages} == {"device.allocated"}
    assert {m["data"]["allocationId"] for m in alice_messages} == {body[0], body[2]}
    assert bob_message["data"]["allocationId"] == body[1]
    assert bob_message["title"] == "📱 设备已分配"


@pytest.mark.parametrize("how", ["query", "first message", "expired", "no token"])
async def test_websocket_bad_token_is_closed(
    client: httpx.AsyncClient, admin: dict[str, str], live_url: str, how: str
) -> None:
    from datetime import timedelta

    bad = {
        "query": "not-a-token",
        "first message": create_token("alice", "wrong-secret-of-at-least-32-bytes-long"),
        "expired": create_token("admin", JWT_SECRET, ttl=timedelta(seconds=-1)),
        "no token": "",
    }[how]
    url = f"{live_url}/ws/notifications" + (f"?token={bad}" if how in ("query", "expired") else "")
    async with connect(url) as ws:
        if how not in ("query", "expired"):
            await ws.send(json.dumps({"token": bad} if bad else {"hello": 1}))
        assert await receive(ws) == {"type": "error", "error": "UnauthorizedException"}
        with pytest.raises(ConnectionClosed):
            await receive(ws)
    assert ws.close_code == 4401


# --- notifications listing -----------------------------------------------------------------------------
async def test_notifications_are_listed_per_user_and_paginated(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_users(client, admin, [{"userId": "alice", "maxDevices": 10}, {"userId": "bob"}])
    await create_devices(client, admin, 6)
    await allocation_ids(client, admin, ["alice"] * 5 + ["bob"])
    page = data(await client.get("/notifications?page=1&pageSize=2", headers=auth("alice")))
    assert (page["total"], page["totalPages"], len(page["items"])) == (5, 3, 2)
    assert {n["userId"] for n in page["items"]} == {"alice"}
    assert page["items"][0]["title"] == "📱 设备已分配"
    assert page["items"][0]["createdAt"].endswith("Z")
    assert data(await client.get("/notifications", headers=auth("bob")))["total"] == 1
    marked = data(await client.post("/notifications/read", json={}, headers=auth("alice")))
    assert marked == {"marked": 5}
    assert data(await client.get("/notifications?unreadOnly=true", headers=auth("alice")))["total"] == 0
    error(await client.get("/notifications"), 401, "UnauthorizedException")


# --- identity --------------------------------------------------------------------------------------
async def test_users_batch_limits_and_defaults(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    error(await client.post("/admin/users/batch", json={"users": []}, headers=admin), 400, "BadRequestException")
    one = data(await client.post("/admin/users/batch", json={"users": [{"userId": "u-one"}]}, headers=admin))
    assert one["createdCount"] == 1
    (user,) = one["users"]
    assert (user["userId"], user["role"], user["status"], user["maxDevices"], user["plan"]) == (
        "u-one",
        "user",
        "active",
        5,
        "free",
    )
    many = [{"userId": f"u-{i}"} for i in range(1000)]
    result = data(await client.post("/admin/users/batch", json={"users": many}, headers=admin))
    assert (result["totalCount"], result["createdCount"]) == (1000, 1000)
    error(
        await client.post("/admin/users/batch", json={"users": [*many, {"userId": "x"}]}, headers=admin),
        400,
        "BadRequestException",
    )
    updated = data(
        await client.post(
            "/admin/users/batch", json={"users": [{"userId": "u-one", "maxDevices": 9, "plan": "pro"}]}, headers=admin
        )
    )
    assert (updated["createdCount"], updated["updatedCount"]) == (0, 1)
    got = data(await client.get("/admin/users/u-one", headers=admin))
    assert (got["maxDevices"], got["plan"], got["role"]) == (9, "pro", "user")
    error(
        await client.post("/admin/users/batch", json={"users": [{"userId": "x", "role": "root"}]}, headers=admin),
        400,
        "BadRequestException",
    )


async def test_unknown_user_is_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    error(await client.get("/admin/users/nobody", headers=admin), 404, "NotFoundException")


def test_token_cli_prints_a_decodable_jwt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHOPS_JWT_SECRET", JWT_SECRET)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["token", "someone", "--hours", "2"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "someone"
    assert claims["exp"] - claims["iat"] == 2 * 3600


async def test_processes_starting_together_bootstrap_one_admin(runtime: Runtime) -> None:
    """serve, worker and billing each make sure of BATCHOPS_BOOTSTRAP_ADMIN at start-up;
    at once, none may fail (a lost race was a duplicate key: the process did not start)."""
    identity = runtime.services.get(IdentityService)
    await identity.upsert_users([UserIn(user_id="boot-admin", name="Boot", role="user", status="suspended")])
    for user_id in ("boot-admin", "boot-new"):
        await asyncio.gather(*(identity.ensure_admin(user_id) for _ in range(8)))
        user = await identity.find(user_id)
        assert user is not None and (user.role, user.status) == ("admin", "active")
    kept = await identity.find("boot-admin")
    assert kept is not None and kept.name == "Boot"  # only the role and status are made sure of
