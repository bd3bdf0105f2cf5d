"""The request guard, in process on SQLite and PostgreSQL (issue 16 #10, #11): credentials
are checked before a body is read, bodies are capped while they stream, a NUL in a path or
query is a 400. The memory and time of a 100 MB body against a real server:
test_request_guard_server.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from batchops.app import create_app
from batchops.core.runtime import Runtime
from tests.conftest import JWT_SECRET, SERVICE_TOKEN, auth
from tests.helpers import create_users, data, error

QUERY = "/scheduler/allocations/batch/query"
USAGE = "/api/internal/metering/device-usage"
CALLBACK = "/api/v1/workflow/providers/kie/callback"
JSON = {"Content-Type": "application/json"}
INTERNAL = {"X-Service-Token": SERVICE_TOKEN}


class Body:
    """A streamed request body that records whether the server asked for it."""

    def __init__(self, payload: bytes, chunk: int = 1024) -> None:
        self.payload, self.chunk, self.sent = payload, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.payload), self.chunk):
            self.sent += len(self.payload[start : start + self.chunk])
            yield self.payload[start : start + self.chunk]


def json_body(value: Any, chunk: int = 1024) -> Body:
    return Body(json.dumps(value).encode(), chunk)


# --- credentials before bodies -------------------------------------------------------------------
async def test_credentials_are_checked_before_the_body_is_read(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    expired = jwt.encode({"sub": "admin", "exp": datetime.now(UTC) - timedelta(seconds=5)}, JWT_SECRET)
    for headers, message in [
        ({}, "Missing bearer token"),
        ({"Authorization": "Bearer not.a.jwt"}, "Invalid token"),
        ({"Authorization": f"Bearer {expired}"}, "Token expired"),
    ]:
        body = json_body({"userIds": ["u1"]})
        result = error(await client.post(QUERY, content=body, headers=headers), 401, "UnauthorizedException")
        assert result["message"] == message and body.sent == 0
    body = json_body(USAGE_EVENT)
    response = await client.post(USAGE, content=body, headers={"X-Service-Token": "wrong"})
    assert error(response, 401, "UnauthorizedException") and body.sent == 0
    # with credentials the body is read; who the caller is still comes from the users table
    body = json_body({"userIds": ["u1"]})
    data(await client.post(QUERY, content=body, headers={**admin, **JSON}))
    assert body.sent > 0
    ghost = await client.post(QUERY, content=json_body({"userIds": ["u1"]}), headers=auth("ghost"))
    error(ghost, 401, "UnauthorizedException")
    # paths that check their own callers get their body: the KIE callback answers for its signature
    body = json_body({"data": {"taskId": "t1"}})
    error(await client.post(f"{CALLBACK}?requestId=r&sig=s", content=body, headers=JSON), 403, "ForbiddenException")
    assert body.sent > 0
    # a path no route serves stays a 404, body unread
    body = json_body({})
    error(await client.post("/nowhere", content=body), 404, "NotFoundException")


USAGE_EVENT = {
    "deviceId": "d1",
    "userId": "u1",
    "allocationId": "a1",
    "durationSeconds": 60,
    "cpuCores": 1,
    "memoryMB": 1,
    "storageMB": 1,
    "allocatedAt": "2025-01-01T00:00:00Z",
    "releasedAt": "2025-01-01T00:01:00Z",
}


# --- capped bodies --------------------------------------------------------------------------------------
@pytest.fixture
async def small_cap(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings.model_copy(update={"max_body_bytes": 2048}), runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://batchops.test") as c:
        yield c


async def test_a_body_over_the_cap_is_413_as_it_streams(small_cap: httpx.AsyncClient, admin: dict[str, str]) -> None:
    too_big = {"userIds": [f"user-{i:05d}" for i in range(300)]}  # ~4.5 KB
    # by its Content-Length, before a byte is read
    body = json_body(too_big)
    headers = {**admin, "Content-Length": str(len(body.payload)), "Content-Type": "application/json"}
    result = error(await small_cap.post(QUERY, content=body, headers=headers), 413, "PayloadTooLargeException")
    assert body.sent == 0 and "2048" in result["message"]
    # chunked, without a length: refused once the bytes received pass the cap, the rest unread
    body = json_body(too_big, chunk=512)
    error(await small_cap.post(QUERY, content=body, headers=admin), 413, "PayloadTooLargeException")
    assert 2048 < body.sent <= 2048 + 512
    # every path is capped, open ones too; a body within the cap is served
    callback = await small_cap.post(f"{CALLBACK}?requestId=r&sig=s", content=json_body(too_big))
    error(callback, 413, "PayloadTooLargeException")
    data(await small_cap.post(QUERY, json={"userIds": ["u1"]}, headers=admin))


async def test_the_largest_documented_batches_fit_the_default_cap(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    """1000 devices, 1000 users with Chinese names, 50 studio rows (the enterprise plan)
    of 2000-character Chinese prompts: each under 1 MiB even JSON-escaped (\\uXXXX)."""
    cap = runtime.settings.max_body_bytes
    users = {
        "users": [{"userId": f"user-{i:06d}", "name": "测试用户" * 5, "departmentId": "dept-研发"} for i in range(1000)]
    }
    devices = {
        "devices": [
            {"id": f"device-{i:06d}", "name": f"Device-{i:06d}", "cpuCores": 8, "memoryMB": 16384, "storageMB": 131072}
            for i in range(1000)
        ]
    }
    rows = {"rows": [{"prompt": "一只猫在月光下的屋顶上散步，" * 143, "model": "sora-2"} for _ in range(50)]}
    for path, body in [("/admin/users/batch", users), ("/scheduler/devices/batch", devices)]:
        payload = json.dumps(body).encode()  # ensure_ascii: the longest common spelling
        assert len(payload) < cap
        data(await client.post(path, content=payload, headers={**admin, "Content-Type": "application/json"}))
    await create_users(client, admin, [{"userId": "admin", "role": "admin", "plan": "enterprise"}])
    payload = json.dumps(rows).encode()
    assert len(payload) < cap
    response = await client.post(
        "/api/v1/workflow/batch-generate", content=payload, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code not in (400, 413), response.text  # the admin has no credits: 403


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/admin/users/a%00b"),
        ("GET", "/scheduler/allocations?userId=a%00b"),
        ("GET", "/scheduler/reservations/r%00"),
        ("POST", "/scheduler/allocations/a%00/extend"),
        ("GET", "/metering/users/u%001"),
        ("GET", "/api/internal/balance/user/u%001"),
        ("GET", "/api/dining/orders?departmentId=%00"),
        ("POST", "/api/dining/orders/o%00/cancel"),
        ("GET", "/api/v1/workflow/batches/b%00"),
        ("GET", "/api/v1/workflow/batches?userId=%00"),
        ("POST", "/api/v1/workflow/providers/kie/callback?requestId=a%00&sig=x"),
        ("GET", "/notifications?page=1&x=%00"),
    ],
)
async def test_a_nul_in_a_path_or_query_is_400(
    client: httpx.AsyncClient, admin: dict[str, str], method: str, url: str
) -> None:
    body = {"additionalMinutes": 5} if url.endswith("/extend") else None
    response = await client.request(method, url, json=body, headers={**admin, **INTERNAL})
    assert "NUL" in error(response, 400, "BadRequestException")["message"]
