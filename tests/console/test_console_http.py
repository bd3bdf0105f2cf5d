"""The console over HTTP, on SQLite and PostgreSQL: sign-in, sessions, CSRF, the brake on
failed sign-ins, role checks on the server, batches run like the API's, languages."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from batchops.console import session_routes
from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from batchops.scheduler.reads import AllocationFilter, allocation_ids
from tests.conftest import auth
from tests.console.helpers import csrf_of, sign_in
from tests.helpers import LogRecorder, create_devices, create_users, sql
from tests.helpers import allocation_ids as allocate

ADMIN_PASSWORD = "operator-password"
USER_PASSWORD = "device-user-password"

OPERATOR_PAGES = [
    "/console/",
    "/console/overview/figures",
    "/console/devices",
    "/console/allocations",
    "/console/reservations",
    "/console/users",
    "/console/billing",
    "/console/billing/users/u1",
    "/console/audit",
]
# Every operator action, with a body that would succeed for an admin.
OPERATOR_ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("/console/devices/import", {"devices_csv": "name,cpuCores,memoryMB,storageMB\nX,1,1024,1024"}),
    ("/console/devices/device-001/maintenance", {"on": "true"}),
    ("/console/allocations/batch", {"action": "release", "scope": "filter"}),
    ("/console/reservations/r-1/cancel", {}),
    ("/console/queue/q-1/cancel", {}),
    ("/console/users/import", {"users_csv": "userId,role\nu1,admin"}),
    ("/console/users/u1", {"role": "admin"}),
    ("/console/users/u2/status", {"status": "suspended"}),
    ("/console/users/u2/password", {"password": "a-new-password"}),
    ("/console/billing/topup", {"userId": "u1", "amount": "100"}),
    ("/console/billing/dead-letters/replay", {}),
    ("/console/billing/dead-letters/1/replay", {}),
]


@pytest.fixture
async def people(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    await create_users(client, admin, [{"userId": f"u{i}"} for i in range(1, 4)])
    identity = runtime.services.get(IdentityService)
    await identity.set_password("admin", ADMIN_PASSWORD)
    await identity.set_password("u1", USER_PASSWORD)


async def test_sign_in_goes_back_to_the_page_asked_for_and_sign_out_ends_the_session(
    client: httpx.AsyncClient, people: None
) -> None:
    r = await client.get("/console/devices?state=available")
    assert (
        r.status_code == 303
        and r.headers["location"] == "/console/signin?next=%2Fconsole%2Fdevices%3Fstate%3Davailable"
    )
    token = await csrf_of(client)
    r = await client.post(
        "/console/signin",
        data={
            "userId": "admin",
            "password": ADMIN_PASSWORD,
            "csrf_token": token,
            "next": "/console/devices?state=available",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/devices?state=available"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
    assert (await client.get("/console/devices")).status_code == 200
    token = await csrf_of(client, "/console/devices")
    r = await client.post("/console/signout", data={"csrf_token": token})
    assert r.status_code == 303
    assert (await client.get("/console/devices")).status_code == 303


async def test_a_sign_in_never_leads_off_the_console(client: httpx.AsyncClient, people: None) -> None:
    token = await csrf_of(client)
    for target in ("https://evil.example/", "//evil.example/console", "/docs"):
        r = await client.post(
            "/console/signin", data={"userId": "admin", "password": ADMIN_PASSWORD, "csrf_token": token, "next": target}
        )
        assert r.headers["location"] == "/console/", target
        token = await csrf_of(client)


async def test_repeated_failed_sign_ins_are_slowed_down_and_logged(
    client: httpx.AsyncClient, people: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = LogRecorder()
    monkeypatch.setattr(session_routes, "log", recorder)
    token = await csrf_of(client)
    form = {"userId": "admin", "password": "wrong", "csrf_token": token}
    for _ in range(5):  # the default limit: 5 failures a minute per account and address
        assert (await client.post("/console/signin", data=form)).status_code == 401
    r = await client.post("/console/signin", data={**form, "password": ADMIN_PASSWORD})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert [e["event"] for e in recorder.events] == ["console_signin_failed"] * 5 + ["console_signin_throttled"]
    assert recorder.events[0]["user_id"] == "admin" and recorder.events[0]["level"] == "warning"


async def test_unsafe_requests_without_the_sessions_csrf_token_are_refused(
    client: httpx.AsyncClient, people: None, runtime: Runtime
) -> None:
    token = await sign_in(client, "admin", ADMIN_PASSWORD)
    await create_devices(client, auth("admin"), 1)
    url = "/console/devices/device-001/maintenance"
    assert (await client.post(url, data={"on": "true"})).status_code == 403
    assert (await client.post(url, data={"on": "true", "csrf_token": "forged"})).status_code == 403
    assert (await client.post(url, data={"on": "true"}, headers={"X-CSRF-Token": "forged"})).status_code == 403
    assert [row.maintenance for row in await sql(runtime, "SELECT maintenance FROM devices")] == [False]
    assert (await client.post(url, data={"on": "true"}, headers={"X-CSRF-Token": token})).status_code == 200
    assert (await client.post(url, data={"on": "false", "csrf_token": token})).status_code == 200


async def test_a_device_user_is_refused_every_operator_page_and_action(
    client: httpx.AsyncClient, people: None, runtime: Runtime
) -> None:
    await create_devices(client, auth("admin"), 1)
    token = await sign_in(client, "u1", USER_PASSWORD)
    for page in OPERATOR_PAGES[1:]:
        r = await client.get(page)
        assert r.status_code == 403 and "Admin role required" in r.text, page
    assert (await client.get("/console/")).headers["location"] == "/console/mine"
    for url, form in OPERATOR_ACTIONS:
        r = await client.post(url, data={**form, "csrf_token": token})
        assert r.status_code == 403, (url, r.status_code)
    rows = await sql(runtime, "SELECT role, status FROM users WHERE id IN ('u1', 'u2') ORDER BY id")
    assert [tuple(r) for r in rows] == [("user", "active"), ("user", "active")]
    assert [r.maintenance for r in await sql(runtime, "SELECT maintenance FROM devices")] == [False]


async def test_a_new_password_or_a_suspension_ends_the_session(
    client: httpx.AsyncClient, people: None, runtime: Runtime
) -> None:
    await sign_in(client, "u1", USER_PASSWORD)
    assert (await client.get("/console/mine")).status_code == 200
    await runtime.services.get(IdentityService).set_password("u1", "another-password")
    assert (await client.get("/console/mine")).status_code == 303
    await sign_in(client, "u1", "another-password")
    await create_users(client, auth("admin"), [{"userId": "u1", "status": "suspended"}])
    assert (await client.get("/console/mine")).status_code == 303
    token = await csrf_of(client)
    r = await client.post("/console/signin", data={"userId": "u1", "password": "another-password", "csrf_token": token})
    assert r.status_code == 403 and "suspended" in r.text


async def test_a_console_batch_runs_like_the_apis_audited_and_pushed_in_parts_of_the_api_size(
    client: httpx.AsyncClient, people: None, runtime: Runtime
) -> None:
    admin = auth("admin")
    users = [f"bulk-{i:03d}" for i in range(120)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 121)
    for start in range(0, 120, 50):
        await allocate(client, admin, users[start : start + 50])
    token = await sign_in(client, "admin", ADMIN_PASSWORD)
    pushed = runtime.push.subscribe("admin")
    try:
        r = await client.post(
            "/console/allocations/batch",
            data={
                "action": "release",
                "scope": "filter",
                "f_status": "allocated",
                "reason": "end of day",
                "csrf_token": token,
            },
        )
    finally:
        runtime.push.unsubscribe("admin", pushed)
    assert r.status_code == 200, r.text
    assert "Batch release completed: 120/120 succeeded" in r.text
    audit = await sql(
        runtime,
        "SELECT actor_id, operation, total_count, success_count FROM audit_log"
        " WHERE domain = 'scheduler' AND operation = 'release' ORDER BY id",
    )
    assert [tuple(a) for a in audit] == [("admin", "release", 100, 100), ("admin", "release", 20, 20)]
    messages = [pushed.get_nowait() for _ in range(pushed.qsize())]
    parts = [m for m in messages if m["type"] == "console.batch"]
    ends = [m for m in messages if m["type"] == "batch.progress" and "committed" in m]
    assert [(p["part"], p["offset"], p["total"]) for p in parts] == [(1, 0, 120), (2, 100, 120)]
    assert [(e["operation"], e["total"], e["succeeded"]) for e in ends] == [
        ("batch_release", 100, 100),
        ("batch_release", 20, 20),
    ]
    left, _ = await allocation_ids(runtime.db, AllocationFilter(status="allocated"), clock=runtime.clock, limit=10)
    assert left == []


async def test_the_seeds_reasons_appear_per_item(client: httpx.AsyncClient, people: None) -> None:
    await create_devices(client, auth("admin"), 1)
    [allocation] = await allocate(client, auth("admin"), ["u2"])
    token = await sign_in(client, "admin", ADMIN_PASSWORD)
    form = {"action": "extend", "ids": [allocation, "alloc-missing"], "minutes": "30", "csrf_token": token}
    r = await client.post("/console/allocations/batch", data=form)
    assert "Batch extend completed: 1/2 succeeded" in r.text
    assert re.search(r"alloc-missing</th><td>NotFoundException</td><td>Allocation not found</td>", r.text)


async def test_pages_follow_accept_language_and_the_switch(client: httpx.AsyncClient, people: None) -> None:
    r = await client.get("/console/signin", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert '<html lang="zh-CN">' in r.text and "登录 batchops" in r.text
    r = await client.get("/console/signin", headers={"Accept-Language": "fr-FR,en;q=0.5"})
    assert '<html lang="en">' in r.text and "Sign in to batchops" in r.text
    r = await client.get("/console/lang/zh_CN?next=/console/signin")
    assert r.status_code == 303 and r.headers["location"] == "/console/signin"
    r = await client.get("/console/signin", headers={"Accept-Language": "en"})
    assert "登录 batchops" in r.text  # the choice wins over the browser's


async def test_the_root_leads_to_the_console_and_its_assets_are_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/console/"
    page = await client.get("/console/signin")
    assets = re.findall(r"""(?:src|href)="(/console/static/[^"]+)\"""", page.text)
    assert len(assets) >= 4
    for asset in assets:
        assert (await client.get(asset)).status_code == 200, asset
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_users_are_imported_changed_suspended_and_given_passwords_from_the_console(
    client: httpx.AsyncClient, people: None, runtime: Runtime
) -> None:
    token = await sign_in(client, "admin", ADMIN_PASSWORD)
    csv_rows = "\n".join(
        [
            "userId,name,role,departmentId,maxDevices,plan",
            "new-1,New One,user,dept-a,3,pro",
            "u2,,dept_admin,,,",
            "bad,,chief,,,",
        ]
    )
    r = await client.post("/console/users/import", data={"users_csv": csv_rows, "csrf_token": token})
    assert r.status_code == 200 and 'data-created="1"' in r.text
    assert re.search(r"<td>4</td><td>BadRequestException</td><td>role:", r.text), r.text
    r = await client.post("/console/users/new-1/status", data={"status": "suspended", "csrf_token": token})
    assert r.status_code == 200
    r = await client.post("/console/users/new-1/password", data={"password": "short", "csrf_token": token})
    assert r.status_code == 400 and "at least 8 characters" in r.text
    r = await client.post("/console/users/new-1/password", data={"password": "long-enough-1", "csrf_token": token})
    assert r.status_code == 200
    r = await client.post("/console/users/admin/status", data={"status": "suspended", "csrf_token": token})
    assert r.status_code == 400  # an operator cannot lock themselves out
    rows = await sql(runtime, "SELECT id, role, status, department_id, max_devices, plan FROM users ORDER BY id")
    found = {r[0]: tuple(r[1:]) for r in rows}
    assert found["new-1"] == ("user", "suspended", "dept-a", 3, "pro")
    assert found["u2"][0] == "dept_admin" and "bad" not in found
    assert await runtime.services.get(IdentityService).authenticate("new-1", "long-enough-1") is not None


async def test_the_demo_gives_its_four_kinds_of_user_passwords(runtime: Runtime, people: None) -> None:
    from batchops.demo import CREATOR, DEMO_DEVICE_USER, DEMO_PASSWORDS, DEPT_ADMIN, set_demo_passwords
    from batchops.identity.schemas import UserIn

    identity = runtime.services.get(IdentityService)
    await identity.upsert_users(
        [
            UserIn(user_id=DEMO_DEVICE_USER),
            UserIn(user_id=DEPT_ADMIN, role="dept_admin", department_id="dept-001"),
            UserIn(user_id=CREATOR, plan="pro"),
        ]
    )
    lines = await set_demo_passwords(identity, "admin")
    assert lines == [
        "console sign-in (operator): admin / batchops-admin",
        "console sign-in (device user): user-011 / batchops-user",
        "console sign-in (department admin): dept-admin-001 / batchops-meals",
        "console sign-in (creator): creator-001 / batchops-studio",
    ]
    for user_id in ("admin", DEMO_DEVICE_USER, DEPT_ADMIN, CREATOR):
        assert await identity.authenticate(user_id, DEMO_PASSWORDS.get(user_id, "batchops-admin")) is not None
    assert await identity.authenticate(DEMO_DEVICE_USER, "wrong-password") is None


async def test_devices_are_registered_from_an_uploaded_csv_file(
    client: httpx.AsyncClient, people: None, runtime: Runtime
) -> None:
    token = await sign_in(client, "admin", ADMIN_PASSWORD)
    upload = "\ufeffname,cpu,memory,storage,node\nUp-1,2,4096,32768,node-7\nUp-2,2,4096,32768,node-7\n".encode()
    r = await client.post(
        "/console/devices/import",
        data={"csrf_token": token},
        files={"devices_file": ("devices.csv", upload, "text/csv")},
    )
    assert r.status_code == 200 and 'data-created="2"' in r.text, r.text
    rows = await sql(runtime, "SELECT name, node_id FROM devices ORDER BY name")
    assert [tuple(row) for row in rows] == [("Up-1", "node-7"), ("Up-2", "node-7")]
    r = await client.post(
        "/console/devices/import",
        data={"csrf_token": token},
        files={"devices_file": ("devices.csv", b"name,colour\nX,red\n", "text/csv")},
    )
    assert r.status_code == 400 and "Unknown CSV columns: colour" in r.text
