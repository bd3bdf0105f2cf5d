"""The console in a real browser (Debian's chromium), on SQLite and PostgreSQL: what an
operator and a device user do, both languages, no JavaScript error, no serious
accessibility violation, and a screenshot of every page for the README."""

from __future__ import annotations

import re

from batchops.billing.usage import USAGE_KIND
from tests.console.conftest import ADMIN_PASSWORD, DEVICE_USER, ConsoleServer, Pages, axe_violations, screenshot

OPERATOR_PAGES = {
    "overview": ("/console/", {"en": "Overview", "zh-CN": "总览"}),
    "devices": ("/console/devices", {"en": "Devices", "zh-CN": "设备"}),
    "allocations": ("/console/allocations", {"en": "Allocations", "zh-CN": "分配"}),
    "reservations": ("/console/reservations", {"en": "Reservations", "zh-CN": "预约"}),
    "users": ("/console/users", {"en": "Users", "zh-CN": "用户"}),
    "billing": ("/console/billing", {"en": "Billing", "zh-CN": "计费"}),
    "usage": (f"/console/billing/users/{DEVICE_USER}", {"en": "Usage of", "zh-CN": "的用量"}),
    "audit": ("/console/audit", {"en": "Audit log", "zh-CN": "审计日志"}),
    "mine": ("/console/mine", {"en": "My devices", "zh-CN": "我的设备"}),
}
OPERATOR_ACTIONS = [
    "/console/devices/import",
    "/console/devices/device-x/maintenance",
    "/console/allocations/batch",
    "/console/reservations/r-1/cancel",
    "/console/queue/q-1/cancel",
    "/console/users/import",
    f"/console/users/{DEVICE_USER}",
    f"/console/users/{DEVICE_USER}/status",
    f"/console/users/{DEVICE_USER}/password",
    "/console/billing/topup",
    "/console/billing/dead-letters/replay",
    "/console/billing/dead-letters/1/replay",
]


async def devices(server: ConsoleServer, prefix: str, count: int) -> None:
    body = [
        {"id": f"{prefix}-{i:03d}", "name": f"{prefix}-{i:03d}", "cpuCores": 4, "memoryMB": 8192, "storageMB": 65536}
        for i in range(count)
    ]
    await server.api("POST", "/scheduler/devices/batch", {"devices": body})


async def allocate(server: ConsoleServer, users: list[str], minutes: int) -> list[str]:
    await server.api("POST", "/admin/users/batch", {"users": [{"userId": u} for u in users]})
    body = {"requests": [{"userId": u, "durationMinutes": minutes} for u in users]}
    out = await server.api("POST", "/scheduler/allocations/batch", body)
    assert out["failedCount"] == 0, out
    return [s["allocationId"] for s in out["successes"]]


async def test_sign_in_and_sign_out(pages: Pages) -> None:
    pages.expected_statuses = {401}  # the wrong password's answer
    page = await pages.open(user=None)
    await page.goto("/console/devices")
    assert "/console/signin" in page.url  # asked to sign in first, and brought back after
    await page.fill("input[name=userId]", "admin")
    await page.fill("input[name=password]", "not-the-password")
    await page.click("button[type=submit]")
    await page.get_by_text("Wrong user or password.").wait_for()
    await screenshot(pages.server, page, "signin")
    await page.fill("input[name=password]", ADMIN_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/console/devices")
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/console/signin")
    await page.goto("/console/devices")
    assert "/console/signin" in page.url


async def test_an_operator_releases_30_allocations_chosen_by_filter_and_watches_the_progress(
    pages: Pages, console_server: ConsoleServer
) -> None:
    await devices(console_server, "rel", 33)
    expiring = await allocate(console_server, [f"rel-user-{i:02d}" for i in range(30)], minutes=20)
    kept = await allocate(console_server, [f"keep-user-{i}" for i in range(3)], minutes=600)
    page = await pages.open()
    await page.goto("/console/allocations?status=allocated&expiring=30")
    await page.locator("#live [data-live=on]").wait_for(state="attached")  # the SSE stream is open
    assert await page.locator("#allocations-table tbody tr").count() == 25  # the first page of 30
    await page.evaluate(
        """() => { window.seen = []; new MutationObserver(() => {
             const bar = document.querySelector('#batch-progress progress');
             if (bar) window.seen.push([Number(bar.value), Number(bar.max)]);
           }).observe(document.querySelector('#batch-progress'), {childList: true, subtree: true}); }"""
    )
    await page.check("input[name=scope][value=filter]")
    await page.select_option("select[name=action]", "release")
    await page.fill("input[name=reason]", "end of shift")
    await page.click("#batch-form button[type=submit]")
    outcome = page.locator("#batch-outcome")
    await outcome.wait_for()
    assert "Batch release completed: 30/30 succeeded" in await outcome.inner_text()
    await page.locator("#batch-progress .progress.done").wait_for()
    seen = await page.evaluate("window.seen")
    assert seen[-1] == [30, 30], seen
    assert any(0 < value < 30 for value, _ in seen), seen  # it moved while the batch ran
    assert await page.locator("#batch-items tr.succeeded").count() == 30
    await screenshot(console_server, page, "allocations-batch-result")
    left = await console_server.api("GET", "/scheduler/allocations?status=allocated&pageSize=200")
    assert {a["allocationId"] for a in left["items"]} & set(expiring) == set()
    assert set(kept) <= {a["allocationId"] for a in left["items"]}
    audit = await page.goto("/console/audit?actor=admin&domain=scheduler")
    assert audit is not None and audit.status == 200
    assert "scheduler.release" in await page.locator("#audit-table").inner_text()


async def test_a_bulk_device_import_reports_each_row(pages: Pages) -> None:
    page = await pages.open()
    await page.goto("/console/devices")
    rows = [
        "id,name,cpuCores,memoryMB,storageMB,nodeId",
        "imp-001,Imported-001,4,8192,65536,node-9",
        "imp-002,Imported-002,8,16384,131072,node-9",
        "imp-003,Imported-003,zero,8192,65536,node-9",
        "imp-001,Again-001,4,8192,65536,node-9",
    ]
    await page.fill("textarea[name=devices_csv]", "\n".join(rows))
    await page.get_by_role("button", name="Register").click()
    result = page.locator("#import-result .notice")
    await result.wait_for()
    assert await result.get_attribute("data-created") == "2"
    text = await result.inner_text()
    assert "2 of 4 devices registered." in text
    assert re.search(r"4\s+BadRequestException\s+cpuCores", text), text
    assert re.search(r"5\s+ConflictException\s+Device imp-001 already exists", text), text
    await page.goto("/console/devices?node=node-9")
    assert await page.locator("#devices-table tbody tr").count() == 2
    await screenshot(pages.server, page, "devices")


async def test_a_dead_letter_is_replayed_and_charged(pages: Pages, console_server: ConsoleServer) -> None:
    user = "dead-letter-user"
    await console_server.api("POST", "/admin/users/batch", {"users": [{"userId": user}]})
    await _dead_letter(console_server, user, "alloc-dead-1")
    page = await pages.open()
    await page.goto("/console/billing")
    table = page.locator("#dead-letter-table")
    assert "alloc-dead-1" in await table.inner_text()
    await screenshot(console_server, page, "billing")
    row = table.locator("tr", has_text="alloc-dead-1")
    await row.get_by_role("button", name="Replay").click()
    await page.locator("#replay-result [data-requeued='1']").wait_for()
    usage = await console_server.api("GET", f"/metering/users/{user}")
    assert [u["allocationId"] for u in usage["items"]] == ["alloc-dead-1"]
    await page.goto(f"/console/billing/users/{user}")
    assert "alloc-dead-1" in await page.locator("table").inner_text()


async def _dead_letter(server: ConsoleServer, user: str, allocation_id: str) -> None:
    """A usage report that ran out of attempts (written as the outbox would leave it)."""
    from sqlalchemy import insert

    from batchops.core.db import Database, utcnow
    from batchops.core.outbox import DEAD, OutboxMessage

    now = utcnow()
    payload = {
        "deviceId": "device-gone",
        "userId": user,
        "allocationId": allocation_id,
        "durationSeconds": 3600,
        "cpuCores": 4,
        "memoryMB": 8192,
        "storageMB": 65536,
        "allocatedAt": "2026-01-01T00:00:00Z",
        "releasedAt": "2026-01-01T01:00:00Z",
    }
    db = Database(server.database_url)
    try:
        async with db.transaction() as session:
            await session.execute(
                insert(OutboxMessage).values(
                    kind=USAGE_KIND,
                    name="usage",
                    payload=payload,
                    dedup_key=f"usage:{allocation_id}",
                    status=DEAD,
                    attempts=5,
                    available_at=now,
                    last_error="billing service unavailable",
                    created_at=now,
                )
            )
    finally:
        await db.dispose()


async def test_a_device_user_extends_a_device_and_the_notification_arrives_live(
    pages: Pages, console_server: ConsoleServer
) -> None:
    await devices(console_server, "mine", 1)
    body = {"requests": [{"userId": DEVICE_USER, "durationMinutes": 60}]}
    [allocation] = [
        s["allocationId"] for s in (await console_server.api("POST", "/scheduler/allocations/batch", body))["successes"]
    ]
    page = await pages.open(DEVICE_USER, locale="zh-CN")
    await page.goto("/console/mine")
    await page.locator("#live [data-live=on]").wait_for(state="attached")
    await page.evaluate("() => { window.stillTheSamePage = true; }")
    row = page.locator("#my-allocations-table tbody tr", has_text=allocation)
    before = await row.locator(".time-left").inner_text()
    await row.get_by_role("button", name="延长").click()
    note = page.locator("#my-notifications li", has_text="⏰ 设备使用时间已延长")
    await note.first.wait_for()
    assert "使用时间已延长 30 分钟" in await note.first.inner_text()
    assert await page.evaluate("() => window.stillTheSamePage === true")  # no reload
    # The notification may arrive before htmx swaps in the extend's answer: wait for the row.
    await page.wait_for_function(
        """([id, least]) => [...document.querySelectorAll('#my-allocations-table tbody tr')].some(
            (tr) => tr.textContent.includes(id) && parseInt(tr.querySelector('.time-left').textContent) >= least)""",
        arg=[allocation, int(before.split()[0]) + 29],
        timeout=5000,
    )
    await screenshot(console_server, page, "mine-zh-CN")


async def test_a_device_user_is_refused_every_operator_page_and_action(pages: Pages) -> None:
    pages.expected_statuses = {403}
    page = await pages.open(DEVICE_USER)
    for name, (path, _) in OPERATOR_PAGES.items():
        if name == "mine":
            continue
        response = await page.goto(path)
        assert response is not None
        if name == "overview":  # a device user's console starts at their devices
            assert page.url.endswith("/console/mine")
            continue
        assert response.status == 403, path
        assert "Admin role required" in await page.content()
    await page.goto("/console/mine")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    for url in OPERATOR_ACTIONS:  # straight to the server, past anything the page hides
        response = await page.request.post(url, form={"csrf_token": token, "status": "suspended", "action": "release"})
        assert response.status == 403, (url, response.status)


async def test_a_request_without_the_csrf_token_is_refused(pages: Pages, console_server: ConsoleServer) -> None:
    await devices(console_server, "csrf", 1)
    page = await pages.open()
    await page.goto("/console/devices")
    response = await page.request.post("/console/devices/csrf-000/maintenance", form={"on": "true"})
    assert response.status == 403 and "CSRF token missing or invalid" in await response.text()
    forged = await page.request.post(
        "/console/devices/csrf-000/maintenance", form={"on": "true"}, headers={"X-CSRF-Token": "forged"}
    )
    assert forged.status == 403
    out = await console_server.api("GET", "/scheduler/devices?status=maintenance&pageSize=200")
    assert "csrf-000" not in {d["id"] for d in out["items"]}


async def test_every_page_in_both_languages_without_errors_or_serious_accessibility_violations(
    pages: Pages, console_server: ConsoleServer
) -> None:
    for locale in ("en", "zh-CN"):
        page = await pages.open(locale=locale)
        for name, (path, heading) in OPERATOR_PAGES.items():
            response = await page.goto(path)
            assert response is not None and response.status == 200, (path, locale)
            assert await page.get_attribute("html", "lang") == locale
            assert heading[locale] in await page.locator("h1").inner_text(), (path, locale)
            if name == "overview":
                await page.locator(".chart canvas").first.wait_for()
            violations = await axe_violations(page)
            assert not violations, (path, locale, violations)
            if locale == "en":
                await screenshot(console_server, page, name)
    phone = await pages.open(width=390)
    for name in ("overview", "allocations", "mine"):
        await phone.goto(OPERATOR_PAGES[name][0])
        overflow = await phone.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (name, overflow)  # wide tables scroll inside their box, not the page
        await screenshot(console_server, phone, f"{name}-phone")
