"""Every limit edge and every kind of bad input gets a 400 (or a per-item failure) in the
contract's error shape, never a 500; auth failures are 401/403; the rate limit is 429."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.core import auth as core_auth
from batchops.core import ratelimit
from batchops.core.auth import create_token
from batchops.core.runtime import Runtime
from tests.conftest import JWT_SECRET, auth, make_settings
from tests.helpers import allocation_ids, create_devices, create_users, data, error

ALLOCATE = "/scheduler/allocations/batch"
RELEASE = "/scheduler/allocations/batch/release"
EXTEND = "/scheduler/allocations/batch/extend"
QUERY = "/scheduler/allocations/batch/query"
DEVICES = "/scheduler/devices/batch"
DEVICE_SIZE = {"cpuCores": 4, "memoryMB": 8192, "storageMB": 65536}


def requests(n: int, minutes: int = 60) -> list[dict[str, Any]]:
    return [{"userId": f"nobody-{i}", "durationMinutes": minutes} for i in range(n)]


def ids(n: int) -> list[str]:
    return [f"alloc-{i}" for i in range(n)]


def bad_request(response: httpx.Response, *fields: str) -> dict[str, Any]:
    body = error(response, 400, "BadRequestException")
    named = {d["field"] for d in body["details"]}
    for f in fields:
        assert any(n == f or n.startswith(f + ".") for n in named), (f, body)
    return body


# --- list limits: 0, 1, max, max+1 -------------------------------------------------------------------
LIMITS = [
    (ALLOCATE, "requests", 50, lambda n: {"requests": requests(n)}),
    (RELEASE, "allocationIds", 100, lambda n: {"allocationIds": ids(n)}),
    (EXTEND, "allocationIds", 50, lambda n: {"allocationIds": ids(n), "additionalMinutes": 5}),
    (QUERY, "userIds", 100, lambda n: {"userIds": [f"u-{i}" for i in range(n)]}),
    (DEVICES, "devices", 1000, lambda n: {"devices": [{"name": f"D-{i}", **DEVICE_SIZE} for i in range(n)]}),
]


@pytest.mark.parametrize(("path", "field", "limit", "body"), LIMITS, ids=[p for p, *_ in LIMITS])
async def test_list_limit_edges(
    client: httpx.AsyncClient, admin: dict[str, str], path: str, field: str, limit: int, body: Any
) -> None:
    bad_request(await client.post(path, json=body(0), headers=admin), field)
    for n in (1, limit):
        result = data(await client.post(path, json=body(n), headers=admin))
        if path == QUERY:
            assert result["userCount"] == n
        else:
            assert result["totalCount"] == n
            assert result["successCount"] + result["failedCount"] == n
    bad_request(await client.post(path, json=body(limit + 1), headers=admin), field)


async def test_device_listing_pages_and_filters(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    devices = await create_devices(client, admin, 5)
    await create_users(client, admin, [{"userId": "u1"}])
    body = {"requests": [{"userId": "u1", "durationMinutes": 30}]}
    taken = data(await client.post(ALLOCATE, json=body, headers=admin))["successes"][0]["deviceId"]
    resting = next(d for d in devices if d != taken)
    data(await client.post(f"/scheduler/devices/{resting}/maintenance", json={"maintenance": True}, headers=admin))

    def listing(**params: Any) -> Any:
        return client.get("/scheduler/devices", params=params, headers=auth("u1"))

    pages = [data(await listing(page=p, pageSize=2)) for p in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert {(p["total"], p["totalPages"], p["pageSize"]) for p in pages} == {(5, 3, 2)}
    assert [d["id"] for p in pages for d in p["items"]] == sorted(devices)
    by_status = {s: {d["id"] for d in data(await listing(status=s))["items"]} for s in STATUSES}
    assert by_status == {
        "available": set(devices) - {taken, resting},  # free to take: not the one in maintenance
        "allocated": {taken},
        "maintenance": {resting},
        "offline": set(),
    }
    for bad in ({"status": "broken"}, {"page": 0}, {"pageSize": 0}, {"pageSize": 201}, {"page": "x"}):
        bad_request(await listing(**bad))
    error(await client.get("/scheduler/devices"), 401, "UnauthorizedException")


STATUSES = ("available", "allocated", "maintenance", "offline")


@pytest.mark.parametrize(("minutes", "ok"), [(0, False), (1, True), (1440, True), (1441, False), (-5, False)])
async def test_duration_and_additional_minutes_edges(
    client: httpx.AsyncClient, admin: dict[str, str], minutes: int, ok: bool
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 3}])
    await create_devices(client, admin, 3)
    (allocation,) = await allocation_ids(client, admin, ["u1"])
    calls = [
        (ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": minutes}]}, "requests.0.durationMinutes"),
        ("/scheduler/devices/allocate", {"userId": "u1", "durationMinutes": minutes}, "durationMinutes"),
        (EXTEND, {"allocationIds": [allocation], "additionalMinutes": minutes}, "additionalMinutes"),
        (f"/scheduler/allocations/{allocation}/extend", {"additionalMinutes": minutes}, "additionalMinutes"),
    ]
    for path, body, field in calls:
        r = await client.post(path, json=body, headers=admin)
        if ok:
            result = data(r)
            if "successCount" in result:
                assert result["successCount"] == 1, (path, result)
        else:
            bad_request(r, field)


# --- wrong types, unknown fields, malformed bodies --------------------------------------------------------
WRONG_BODIES = [
    ("string for int", ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": "sixty"}]}),
    ("numeric string for int", ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": "60"}]}),
    ("float for int", ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": 60.5}]}),
    ("bool for int", EXTEND, {"allocationIds": ["a"], "additionalMinutes": True}),
    ("null for int", ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": None}]}),
    ("null list", RELEASE, {"allocationIds": None}),
    ("int for string", QUERY, {"userIds": [123]}),
    ("empty string id", RELEASE, {"allocationIds": [""]}),
    ("too long id", RELEASE, {"allocationIds": ["x" * 129]}),
    ("array for object", ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": 5, "devicePreferences": []}]}),
    ("object for array", RELEASE, {"allocationIds": {"a": 1}}),
    ("string for bool", RELEASE, {"allocationIds": ["a"], "continueOnError": "maybe"}),
    ("string bool", RELEASE, {"allocationIds": ["a"], "continueOnError": "false"}),
    (
        "zero cpu preference",
        ALLOCATE,
        {"requests": [{"userId": "u1", "durationMinutes": 5, "devicePreferences": {"cpu": 0}}]},
    ),
    ("unknown top-level field", RELEASE, {"allocationIds": ["a"], "force": True}),
    ("unknown nested field", ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": 5, "gpu": 1}]}),
    ("missing field", EXTEND, {"allocationIds": ["a"]}),
    ("array body", QUERY, [{"userIds": ["u1"]}]),
    ("string body", QUERY, "userIds"),
    ("too long reason", RELEASE, {"allocationIds": ["a"], "reason": "r" * 501}),
]


@pytest.mark.parametrize(("case", "path", "body"), WRONG_BODIES, ids=[c for c, *_ in WRONG_BODIES])
async def test_wrong_types_are_400(
    client: httpx.AsyncClient, admin: dict[str, str], case: str, path: str, body: Any
) -> None:
    result = bad_request(await client.post(path, json=body, headers=admin))
    assert result["details"], result
    assert result["message"].startswith("Validation failed"), result


async def test_ids_are_limited_as_sent_and_kept_trimmed(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """128 characters as sent (the schema's maxLength), surrounding whitespace dropped, never blank."""
    bad_request(await client.post(QUERY, json={"userIds": ["\r" + "x" * 128]}, headers=admin), "userIds.0")
    bad_request(await client.post(QUERY, json={"userIds": [" \t "]}, headers=admin), "userIds.0")
    out = data(await client.post(QUERY, json={"userIds": [" u1 ", "y" * 128]}, headers=admin))
    assert list(out["allocations"]) == ["u1", "y" * 128]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"userIds": ["u1"', "application/json"),
        (b"{'userIds': ['u1']}", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'{"userIds": ["u1"]}', "text/plain"),
        (b"userIds=u1", "application/x-www-form-urlencoded"),
    ],
    ids=["truncated", "single quotes", "empty", "not utf8", "text/plain", "form"],
)
async def test_malformed_bodies_are_400(
    client: httpx.AsyncClient, admin: dict[str, str], content: bytes, content_type: str
) -> None:
    r = await client.post(QUERY, content=content, headers={**admin, "Content-Type": content_type})
    bad_request(r)


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    body = error(await client.get("/scheduler/nowhere", headers=admin), 404, "NotFoundException")
    assert body["message"] == "Route not found"
    error(await client.post("/nope", json={}), 404, "NotFoundException")
    r = await client.get(ALLOCATE, headers=admin)
    error(r, 405, "MethodNotAllowedException")
    assert "POST" in r.headers["allow"]
    error(await client.delete(QUERY, headers=admin), 405, "MethodNotAllowedException")


# --- auth ----------------------------------------------------------------------------------------------
async def test_tokens(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    body = {"userIds": ["u1"]}
    error(await client.post(QUERY, json=body), 401, "UnauthorizedException")
    error(await client.post(QUERY, json=body, headers={"Authorization": "Bearer"}), 401, "UnauthorizedException")
    error(await client.post(QUERY, json=body, headers={"Authorization": "Basic abc"}), 401, "UnauthorizedException")
    error(
        await client.post(QUERY, json=body, headers={"Authorization": "Bearer not.a.jwt"}), 401, "UnauthorizedException"
    )
    wrong_key = create_token("admin", "another-secret-of-at-least-32-bytes!!")
    error(
        await client.post(QUERY, json=body, headers={"Authorization": f"Bearer {wrong_key}"}),
        401,
        "UnauthorizedException",
    )
    expired = create_token("admin", JWT_SECRET, ttl=timedelta(seconds=-10))
    result = error(
        await client.post(QUERY, json=body, headers={"Authorization": f"Bearer {expired}"}),
        401,
        "UnauthorizedException",
    )
    assert result["message"] == "Token expired"
    no_sub = jwt.encode({"iat": 0}, JWT_SECRET, algorithm="HS256")
    error(
        await client.post(QUERY, json=body, headers={"Authorization": f"Bearer {no_sub}"}), 401, "UnauthorizedException"
    )
    error(await client.post(QUERY, json=body, headers=auth("ghost")), 401, "UnauthorizedException")
    data(await client.post(QUERY, json=body, headers=admin))


async def test_a_token_checked_once_still_expires(
    client: httpx.AsyncClient, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified tokens are remembered (core.auth._verified); their expiry is not."""
    body = {"userIds": ["u1"]}
    token = create_token("admin", JWT_SECRET, ttl=timedelta(minutes=5))
    headers = {"Authorization": f"Bearer {token}"}
    data(await client.post(QUERY, json=body, headers=headers))
    head, claims, signature = token.split(".")
    forged = f"{head}.{claims}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    forged_headers = {"Authorization": f"Bearer {forged}"}
    error(await client.post(QUERY, json=body, headers=forged_headers), 401, "UnauthorizedException")
    in_six_minutes = datetime.now(UTC) + timedelta(minutes=6)
    monkeypatch.setattr(core_auth, "utcnow", lambda: in_six_minutes)
    result = error(await client.post(QUERY, json=body, headers=headers), 401, "UnauthorizedException")
    assert result["message"] == "Token expired"


async def test_batch_endpoints_are_admin_only(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(
        client,
        admin,
        [{"userId": "u1"}, {"userId": "dept", "role": "dept_admin"}, {"userId": "off", "status": "suspended"}],
    )
    bodies = [
        (ALLOCATE, {"requests": [{"userId": "u1", "durationMinutes": 5}]}),
        (RELEASE, {"allocationIds": ["a"]}),
        (EXTEND, {"allocationIds": ["a"], "additionalMinutes": 5}),
        (QUERY, {"userIds": ["u1"]}),
        ("/scheduler/devices/batch", {"devices": [{"name": "d", "cpuCores": 1, "memoryMB": 1, "storageMB": 1}]}),
        ("/admin/users/batch", {"users": [{"userId": "x"}]}),
    ]
    for path, body in bodies:
        for caller in ("u1", "dept"):
            result = error(await client.post(path, json=body, headers=auth(caller)), 403, "ForbiddenException")
            assert result["message"] == "Admin role required"
        result = error(await client.post(path, json=body, headers=auth("off")), 403, "ForbiddenException")
        assert result["message"] == "User account is suspended"
    # a suspension takes effect at once, also for an admin
    await create_users(client, admin, [{"userId": "admin", "role": "admin", "status": "suspended"}])
    error(await client.post(QUERY, json={"userIds": ["u1"]}, headers=admin), 403, "ForbiddenException")
    error(await client.get("/scheduler/allocations", headers=auth("off")), 403, "ForbiddenException")


# --- rate limit ------------------------------------------------------------------------------------------
class FrozenTime:
    """``time.time`` for the rate limiter (the ``limits`` library reads it): moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> FrozenTime:
    clock = FrozenTime()
    monkeypatch.setattr(ratelimit.time, "time", clock)
    return clock


@pytest.fixture
async def limited_client(runtime: Runtime, frozen_time: FrozenTime) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose batch endpoints allow 2 calls per minute."""
    rt = build_runtime(make_settings(runtime.settings.database_url, batch_rate_limit_per_minute=2))
    transport = httpx.ASGITransport(app=create_app(rt.settings, rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://batchops.test") as c:
        yield c
    await rt.stop()


async def test_third_batch_call_in_a_minute_is_429(
    limited_client: httpx.AsyncClient, admin: dict[str, str], frozen_time: FrozenTime
) -> None:
    body = {"userIds": ["u1"]}
    for _ in range(2):
        data(await limited_client.post(QUERY, json=body, headers=admin))
    frozen_time.now += 30
    r = await limited_client.post(QUERY, json=body, headers=admin)
    result = error(r, 429, "TooManyRequestsException")
    assert r.headers["retry-after"] == "30"  # the first call leaves the moving window a minute after it was made
    assert "at most 2 calls per minute" in result["message"]
    # limits are per endpoint: another batch endpoint still answers
    data(await limited_client.post(RELEASE, json={"allocationIds": ["a"]}, headers=admin))
    # single-item and read endpoints are not batch calls
    data(await limited_client.get("/scheduler/allocations", headers=admin))
    frozen_time.now += 31  # a minute after the first two calls: one may go again
    data(await limited_client.post(QUERY, json=body, headers=admin))


# --- IP allowlist (seed 000 安全性: 添加 IP 白名单限制) ----------------------------------------------------
async def test_batch_endpoints_answer_allowed_addresses_only(runtime: Runtime, admin: dict[str, str]) -> None:
    rt = build_runtime(make_settings(runtime.settings.database_url, batch_allowed_ips="10.0.0.0/8, 192.168.1.5"))
    app = create_app(rt.settings, rt)

    def client_from(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://batchops.test", headers=admin)

    body = {"userIds": ["u1"]}
    try:
        for allowed in ("10.1.2.3", "192.168.1.5", "::ffff:10.0.0.1"):
            async with client_from(allowed) as c:
                data(await c.post(QUERY, json=body))
        for refused in ("127.0.0.1", "192.168.1.6", "11.0.0.1", "::1", "not-an-address"):
            async with client_from(refused) as c:
                result = error(await c.post(QUERY, json=body), 403, "ForbiddenException")
                assert "not allowed" in result["message"], result
                data(await c.get("/scheduler/allocations"))  # single-item routes are not limited
    finally:
        await rt.stop()
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        make_settings(runtime.settings.database_url, batch_allowed_ips="10.0.0.0/8, 300.1.1.1")
