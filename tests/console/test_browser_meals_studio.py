"""Meals and video batches in a real browser (Debian's chromium), on SQLite and
PostgreSQL: a department admin orders a week of lunches for 12 members and fixes the
order that failed, the kitchen summary agrees, another department's admin can neither
see nor order for them; a creator sends a 20-row CSV and follows it live to the end,
pauses, resumes, retries the failed, downloads the ZIP; a creator short of credits is
told so before anything is held. Both languages, no JavaScript error, no serious
accessibility violation."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from typing import Any

from playwright.async_api import expect

from batchops.dining.rules import local_today
from tests.console.conftest import ConsoleServer, Pages, axe_violations, screenshot

PASSWORD = "canteen-and-studio-1"
MEMBERS = [f"meal-{i:02d}" for i in range(1, 13)]
LIVE = 60_000  # ms: a batch at the test server's time scale ends well within this


def today() -> dt.date:
    return local_today("Asia/Shanghai", dt.datetime.now(dt.UTC))  # the server's BATCHOPS_TIMEZONE (its default)


def day(offset: int) -> str:
    return (today() + dt.timedelta(days=offset)).isoformat()


async def canteen(server: ConsoleServer) -> None:
    """dept-web (研发部): its admin and 12 members 成员01…12; dept-mkt: its admin and one
    member; lunches of the next 7 days published at 12.50; 成员05 already ordered on day 2."""
    await server.api(
        "POST",
        "/api/dining/departments/batch",
        {
            "departments": [
                {"departmentId": "dept-web", "name": "研发部"},
                {"departmentId": "dept-mkt", "name": "市场部"},
            ]
        },
    )
    await server.users(
        {"userId": "web-admin", "name": "部门管理员", "role": "dept_admin", "departmentId": "dept-web"},
        {"userId": "mkt-admin", "name": "Marketing admin", "role": "dept_admin", "departmentId": "dept-mkt"},
        password=PASSWORD,
    )
    await server.users(
        *({"userId": u, "name": f"成员{i:02d}", "departmentId": "dept-web"} for i, u in enumerate(MEMBERS, 1)),
        {"userId": "mkt-01", "name": "Marketer One", "departmentId": "dept-mkt"},
    )
    menus = [
        {"date": day(d), "mealType": "lunch", "price": "12.50", "items": ["宫保鸡丁", "米饭"], "published": True}
        for d in range(7)
    ]
    await server.api("POST", "/api/dining/menus/batch", {"menus": menus})
    await server.api_as(
        "web-admin",
        "POST",
        "/api/dining/enhanced/quick-batch-orders",
        {"members": [{"userId": "meal-05"}], "meals": [{"date": day(2), "mealType": "lunch"}]},
    )


async def test_a_department_admin_orders_a_week_of_lunches_fixes_the_failed_one_and_the_kitchen_agrees(
    pages: Pages, console_server: ConsoleServer
) -> None:
    await canteen(console_server)
    page = await pages.open("web-admin", locale="zh-CN")
    await page.goto("/console/dining")
    await page.locator(".select-column[data-column=lunch]").check()
    await page.get_by_label("搜索成员").fill("成员")
    await page.locator(".select-shown").check()
    await expect(page.locator("#member-list input:checked")).to_have_count(12)
    await page.get_by_label("备注").fill("项目周午餐")
    await expect(page.locator("#remark-count")).to_have_text("5 / 500 个字符")
    await expect(page.locator("#order-total")).to_have_text("7 个餐次 × 12 人 = 84 份，共 ¥1050.00")
    await page.get_by_role("button", name="提交报餐").click()
    request = page.locator("#order-result .order-request")
    await expect(request).to_have_attribute("data-failed", "1")
    await expect(request).to_have_attribute("data-succeeded", "6")
    await expect(request.locator("h2")).to_contain_text("快速批量报餐提交完成")
    failed = request.locator(f"tr.failed[data-date='{day(2)}'][data-meal=lunch]")
    await expect(failed).to_contain_text("订单 3: 用户 成员05 已经报餐")
    fix = page.locator(f"#resend-form fieldset[data-date='{day(2)}']")
    await expect(fix.get_by_label("成员05")).not_to_be_checked()  # already ordered: unticked
    await expect(fix.locator("input:checked")).to_have_count(11)
    await screenshot(console_server, page, "meals-result-zh-CN")
    await page.get_by_role("button", name="重新提交").click()
    await expect(page.locator("#order-result .order-request")).to_have_attribute("data-succeeded", "1")
    await expect(page.locator("#resend-form")).to_have_count(0)
    await expect(page.locator("#week-table .ordered[data-ordered='12']")).to_have_count(7)  # updated in place
    assert not await axe_violations(page)

    await page.goto(f"/console/dining/summary?date={day(2)}")
    await expect(page.locator("#summary-meals tr[data-meal=lunch] .headcount")).to_have_text("12")
    await expect(page.locator("#summary-departments tr[data-department=dept-web] td[data-meal=lunch]")).to_have_text(
        "12"
    )
    csv_lines = (await (await page.request.get(f"/console/dining/summary.csv?date={day(2)}")).text()).splitlines()
    assert f"{day(2)},dept-web,研发部,lunch,12" in csv_lines and f"{day(2)},*,total,lunch,12" in csv_lines
    assert not await axe_violations(page)
    await screenshot(console_server, page, "kitchen-summary-zh-CN")

    await page.goto(f"/console/dining/orders?date={day(1)}")
    page.once("dialog", lambda dialog: dialog.accept())
    row = page.locator("#orders-table tbody tr[data-status=pending]")
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="取消").click()
    await expect(page.locator("#orders-table tbody tr[data-status=cancelled]")).to_have_count(1)
    assert not await axe_violations(page)
    await screenshot(console_server, page, "meal-orders-zh-CN")


async def test_another_departments_admin_can_neither_see_nor_order_for_these_members(
    pages: Pages, console_server: ConsoleServer
) -> None:
    await canteen(console_server)
    web_orders = await console_server.api_as("web-admin", "GET", "/api/dining/orders?pageSize=100")
    page = await pages.open("mkt-admin")
    await page.goto("/console/dining")
    await expect(page.locator("#member-list li")).to_have_count(2)  # Marketer One and their admin
    assert "成员" not in await page.locator("#member-list").inner_text()
    assert not await axe_violations(page)
    await screenshot(console_server, page, "meals")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    forged = await page.request.post(
        "/console/dining/orders", form={"csrf_token": token, "meal": f"{day(3)}|lunch", "member": "meal-01"}
    )
    assert "订单 1: 用户 成员01 不属于本部门" in await forged.text()
    assert (await page.request.get("/console/dining/orders?department=dept-web")).status == 403
    some_order = web_orders["items"][0]["orderId"]
    cancel = await page.request.post(f"/console/dining/orders/{some_order}/cancel", form={"csrf_token": token})
    assert cancel.status == 403
    after = await console_server.api_as("web-admin", "GET", "/api/dining/orders?pageSize=100")
    assert after["items"] == web_orders["items"]  # nothing ordered or cancelled for them
    await page.goto("/console/dining/orders")
    assert "meal-0" not in await page.locator("#orders-table").inner_text()
    assert not await axe_violations(page)
    await page.goto(f"/console/dining/summary?date={day(2)}")
    await expect(page.locator("#summary-departments tr[data-department=dept-web]")).to_have_count(0)
    assert not await axe_violations(page)


def rows_csv() -> bytes:
    """20 rows: 18 of 10 s (15 credits), then 2 of 15 s (20 credits; the engine takes them
    last): the provider rejects one, and refuses the other on its first run."""
    lines = ["prompt,model,resolution,duration"]
    for i in range(20):
        marker = {18: " [reject]", 19: " [flaky]"}.get(i, "")
        lines.append(f"a lighthouse in a storm (take {i}){marker},sora-2,720p,{15 if i >= 18 else ''}")
    return ("\n".join(lines) + "\n").encode()


RECORD_LIVE_CHANGES = """() => {
  window.seenBar = []; window.seenStates = {};
  const record = () => {
    const bar = document.querySelector('#batch-bar');
    if (bar) window.seenBar.push(Number(bar.value));
    document.querySelectorAll('#task-rows tr').forEach((row) => {
      const seen = window.seenStates[row.dataset.index] = window.seenStates[row.dataset.index] || [];
      if (seen[seen.length - 1] !== row.dataset.state) seen.push(row.dataset.state);
    });
  };
  new MutationObserver(record).observe(document.querySelector('.batch-live'), {childList: true, subtree: true});
  record();
}"""


async def count(page: Any, state: str) -> int:
    return int(await page.locator(f"[data-count={state}] .value").inner_text())


async def test_a_creator_sends_a_20_row_csv_follows_it_live_pauses_resumes_retries_and_downloads(
    pages: Pages, console_server: ConsoleServer
) -> None:
    creator = "creator-web"
    await console_server.users({"userId": creator, "name": "Creator", "plan": "pro_plus"}, password=PASSWORD)
    await console_server.api("POST", "/admin/billing/topup", {"userId": creator, "amount": 1000, "currency": "CREDITS"})
    page = await pages.open(creator)
    await page.goto("/console/")  # a creator starts at their batches
    await page.get_by_role("link", name="New batch").click()
    await page.set_input_files(
        "input[name=rows_file]", files=[{"name": "rows.csv", "mimeType": "text/csv", "buffer": rows_csv()}]
    )
    quote = page.locator("#quote-figures")
    await expect(quote).to_have_attribute("data-rows", "20")
    await expect(quote).to_have_attribute("data-total", str(18 * 15 + 2 * 20))
    await expect(quote).to_have_attribute("data-submittable", "true")
    await expect(page.locator("#quote-available")).to_have_text("1000")
    assert not await axe_violations(page)
    await screenshot(console_server, page, "studio-new")
    await page.get_by_role("button", name="Send the batch").click()
    await page.wait_for_url("**/console/studio/batches/batch-*")
    await page.evaluate(RECORD_LIVE_CHANGES)

    await page.get_by_role("button", name="Pause").click()
    summary = page.locator(".summary-head")
    await expect(summary).to_have_attribute("data-status", "paused")
    await expect(page.locator("[data-count=running] .value")).to_have_text("0", timeout=LIVE)  # the running end...
    waiting = await count(page, "queued")
    assert waiting > 0  # ...and the queued ones wait
    await page.get_by_role("button", name="Resume").click()
    await expect(summary).to_have_attribute("data-status", "completed", timeout=LIVE)
    await expect(summary).to_have_attribute("data-finished", "20")
    seen = await page.evaluate("({bar: window.seenBar, states: window.seenStates})")
    assert seen["bar"][-1] == 20 and any(0 < v < 20 for v in seen["bar"]), seen["bar"]
    assert any(states[-2:] == ["running", "succeeded"] for states in seen["states"].values()), seen["states"]
    chart = page.locator("#failure-chart")
    await expect(chart.locator(".bar-row[data-kind=content_rejected] .bar-value")).to_have_text("1")
    await expect(chart.locator(".bar-row[data-kind=server_error] .bar-value")).to_have_text("1")
    await screenshot(console_server, page, "studio-batch")

    await page.get_by_role("button", name="Retry the 2 failed").click()
    await expect(page.locator("#flash")).to_contain_text("Retrying 2 failed tasks; 40 credits held again.")
    await expect(summary).not_to_have_attribute("data-status", "completed")
    await expect(summary).to_have_attribute("data-status", "completed", timeout=LIVE)
    assert (await count(page, "succeeded"), await count(page, "failed")) == (19, 1)  # the flaky one made it
    async with page.expect_download() as download:
        await page.locator("#batch-download").click()
    archive = zipfile.ZipFile(io.BytesIO((await (await download.value).path()).read_bytes()))
    names = archive.namelist()
    assert {"manifest.json", "results.csv"} <= set(names) and sum(n.endswith(".url") for n in names) == 19
    assert archive.read("results.csv").decode().count(",succeeded,") == 19
    assert not await axe_violations(page)

    await page.get_by_role("link", name="中文").click()  # the same page in the other language
    await expect(page.locator("#batch-status")).to_have_text("已完成")
    assert not await axe_violations(page)
    await page.goto("/console/studio")
    row = page.locator("#batches-table tbody tr").first
    spent, returned = 18 * 15 + 20, 20  # the rejected one's credits came back
    assert await row.locator("td.num").all_inner_texts() == ["19", "1", "0", str(spent), str(returned)]
    assert not await axe_violations(page)
    await screenshot(console_server, page, "studio-batches-zh-CN")
    await page.get_by_role("link", name="English").click()
    await expect(page.locator("h1")).to_have_text("My video batches")
    assert not await axe_violations(page)


async def test_a_creator_without_enough_credits_is_told_the_shortfall_before_anything_is_held(
    pages: Pages, console_server: ConsoleServer
) -> None:
    poor = "creator-poor"
    await console_server.users({"userId": poor, "plan": "pro"}, password=PASSWORD)
    await console_server.api("POST", "/admin/billing/topup", {"userId": poor, "amount": 30, "currency": "CREDITS"})
    page = await pages.open(poor, locale="zh-CN")
    await page.goto("/console/studio/new")
    await page.locator("#prompts").fill("灯塔\n暴风雨中的船\n海鸥")
    await expect(page.locator("#quote-figures")).to_have_attribute("data-shortfall", "15")
    await expect(page.locator("#quote-verdict")).to_contain_text("还差 15 积分")
    await expect(page.get_by_role("button", name="提交批次")).to_be_disabled()
    assert not await axe_violations(page)
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = await page.request.post(  # past the page, straight to the server
        "/console/studio/batches",
        multipart={
            "csrf_token": token,
            "prompts": "灯塔\n暴风雨中的船\n海鸥",
            "model": "sora-2",
            "resolution": "720p",
            "duration": "10",
        },
    )
    assert refused.status == 403 and "还差 15 积分。未冻结任何积分。" in await refused.text()
    batches = await console_server.api("GET", f"/api/v1/workflow/batches?userId={poor}")
    assert batches["total"] == 0
    held = "SELECT COUNT(*) FROM billing_holds h JOIN billing_accounts a ON a.id = h.account_id WHERE a.user_id = :u"
    assert await console_server.scalar(held, u=poor) == 0
