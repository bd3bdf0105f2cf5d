"""Video batches in the console over HTTP, on SQLite and PostgreSQL: the quote as a
creator types (pasted prompts or the CLI's CSV), nothing sent that the server would
refuse, the shortfall explained and nothing held, a batch's page, actions and ZIP,
and only the owner's batches."""

from __future__ import annotations

import io
import re
import zipfile

import httpx
import pytest

from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from batchops.studio.rows import EXAMPLE_CSV
from tests.conftest import auth
from tests.console.helpers import sign_in
from tests.helpers import create_users, data, sql, sql_value

PASSWORD = "creator-password"


@pytest.fixture
async def creators(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> None:
    await create_users(client, admin, [{"userId": "maker", "plan": "pro"}, {"userId": "other", "plan": "pro"}])
    for user_id, credits in (("maker", 100), ("other", 1000)):
        r = await client.post(
            "/admin/billing/topup", json={"userId": user_id, "amount": credits, "currency": "CREDITS"}, headers=admin
        )
        data(r)
        await runtime.services.get(IdentityService).set_password(user_id, PASSWORD)


def figures(html: str) -> dict[str, str]:
    match = re.search(r'id="quote-figures" ([^>]+)>', html)
    assert match, html[:2000]
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))


async def test_the_quote_follows_the_rows_pasted_or_uploaded(client: httpx.AsyncClient, creators: None) -> None:
    token = await sign_in(client, "maker", PASSWORD)
    assert (await client.get("/console/")).headers["location"] == "/console/studio"  # a paying creator starts here
    page = await client.get("/console/studio/new")
    assert page.status_code == 200 and figures(page.text)["rows"] == "0"
    assert "100" in page.text and "3 at once, 15 per batch" in page.text
    form = {"csrf_token": token, "model": "sora-2", "resolution": "720p", "duration": "10"}
    r = await client.post("/console/studio/quote", data={**form, "prompts": "a fox\n\na city at night\n"})
    assert figures(r.text) == {"rows": "2", "total": "30", "shortfall": "0", "submittable": "true"}
    r = await client.post("/console/studio/quote", data={**form, "prompts": "a fox\na city", "duration": "15"})
    assert figures(r.text)["total"] == "40"
    upload = {"rows_file": ("rows.csv", EXAMPLE_CSV.encode(), "text/csv")}
    r = await client.post("/console/studio/quote", data=form, files=upload)  # 15 + 20 + 15 + 100
    assert figures(r.text) == {"rows": "4", "total": "150", "shortfall": "50", "submittable": "false"}
    assert "150 credits and 100 are available: 50 short" in r.text and " disabled>" in r.text
    bad = "prompt,resolution,duration\na fox,4k,10\n,720p,10\na city,1080p,10\n"
    r = await client.post("/console/studio/quote", data={**form, "prompts": bad})
    text = re.sub(r"\s+", " ", r.text)
    assert "line 3: no prompt" in text
    assert "line 2: resolution: Input should be &#39;720p&#39; or &#39;1080p&#39;" in text
    r = await client.post("/console/studio/quote", data={**form, "prompts": "prompt,resolution\na city,1080p\n"})
    assert "line 2: No price for model sora-2 at 1080p 10s" in re.sub(r"\s+", " ", r.text)
    r = await client.post("/console/studio/quote", data={**form, "prompts": "\n".join(f"p{i}" for i in range(16))})
    assert "16 rows: the pro plan takes at most 15 per batch" in r.text and figures(r.text)["submittable"] == "false"
    example = await client.get("/console/studio/example.csv")
    assert (
        example.status_code == 200
        and example.text == EXAMPLE_CSV
        and "attachment" in example.headers["content-disposition"]
    )


async def test_a_batch_the_credits_cannot_cover_is_refused_with_the_shortfall_and_nothing_held(
    client: httpx.AsyncClient, creators: None, runtime: Runtime
) -> None:
    token = await sign_in(client, "maker", PASSWORD)
    form = {"csrf_token": token, "model": "sora-2-pro", "resolution": "720p", "duration": "10", "prompts": "a\nb\nc"}
    r = await client.post("/console/studio/batches", data=form, headers={"HX-Request": "true"})
    assert r.status_code == 403 and r.headers["HX-Retarget"] == "#flash"
    assert "the batch needs 135 credits and 100 are available, 35 short. Nothing was held." in r.text
    assert await sql_value(runtime, "SELECT COUNT(*) FROM studio_batches") == 0
    assert await sql_value(runtime, "SELECT COUNT(*) FROM billing_holds") == 0
    r = await client.post("/console/studio/batches", data={**form, "prompts": "prompt,duration\na,ten\n"})
    assert r.status_code == 400 and "Nothing was sent: the rows need fixing first." in r.text and "line 2" in r.text


async def test_a_creator_sends_a_batch_acts_on_it_and_downloads_it_but_not_someone_elses(
    client: httpx.AsyncClient, creators: None, runtime: Runtime
) -> None:
    token = await sign_in(client, "maker", PASSWORD)
    form = {"csrf_token": token, "model": "sora-2", "resolution": "720p", "duration": "10", "prompts": "a fox\na city"}
    r = await client.post("/console/studio/batches", data=form, headers={"HX-Request": "true"})
    assert r.status_code == 200, r.text
    target = r.headers["HX-Redirect"]
    batch_id = target.rsplit("/", 1)[1]
    page = await client.get(target)
    assert page.status_code == 200 and page.text.count("<tr data-index=") == 2
    assert 'data-status="queued"' in page.text and 'max="2" value="0"' in page.text
    r = await client.post(f"{target}/pause", data={"csrf_token": token})
    assert 'data-status="paused"' in r.text and "Paused: 2 queued tasks wait" in r.text
    r = await client.post(f"{target}/resume", data={"csrf_token": token})
    assert 'data-status="running"' in r.text and "Resumed" in r.text
    r = await client.post(f"{target}/cancel", data={"csrf_token": token})
    assert 'data-status="cancelled"' in r.text and "Cancelled 2 tasks; 30 credits returned." in r.text
    r = await client.post(f"{target}/pause", data={"csrf_token": token})
    assert r.status_code == 409
    archive = await client.get(f"{target}/download")
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert archive.headers["content-type"] == "application/zip" and {"manifest.json", "results.csv"} <= set(names)
    listing = await client.get("/console/studio")
    assert batch_id in listing.text and 'value="2"' in listing.text  # both finished (cancelled)
    others = data(
        await client.post("/api/v1/workflow/batch-generate", json={"rows": [{"prompt": "x"}]}, headers=auth("other")),
        202,
    )["batchId"]
    assert others not in listing.text
    for path in (f"/console/studio/batches/{others}", f"/console/studio/batches/{others}/download"):
        assert (await client.get(path)).status_code == 403, path
    assert (
        await client.post(f"/console/studio/batches/{others}/cancel", data={"csrf_token": token})
    ).status_code == 403
    states = await sql(runtime, "SELECT state FROM studio_tasks WHERE batch_id = :b", b=others)
    assert [s[0] for s in states] == ["queued"]
