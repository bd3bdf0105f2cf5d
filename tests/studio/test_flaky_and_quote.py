"""The simulated provider's ``[flaky]`` prompt (fails its first run, renders once retried),
the rows of a batch as people write them, and the quote the console shows as they type."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from batchops.core.runtime import Runtime
from batchops.identity.models import User
from batchops.studio.engine import Engine
from batchops.studio.reads import quote
from batchops.studio.rows import EXAMPLE_CSV, parse_rows
from batchops.studio.schemas import BatchGenerateIn
from tests.helpers import data
from tests.studio.conftest import run_until_idle, studio_user


async def test_a_flaky_task_fails_its_first_run_and_renders_once_retried(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    body = {"rows": [{"prompt": "a calm lake [flaky]"}, {"prompt": "a cat"}], "defaultModel": "sora-2"}
    batch_id = data(await client.post("/api/v1/workflow/batch-generate", json=body, headers=user), 202)["batchId"]
    engine = engine_factory()
    await run_until_idle(engine)
    view = data(await client.get(f"/api/v1/workflow/batches/{batch_id}", headers=user))
    flaky, fine = view["tasks"]
    assert (flaky["status"], flaky["errorKind"], flaky["attempts"]) == ("failed", "server_error", 4)
    assert fine["status"] == "succeeded"
    assert view["credits"] == {"held": 0, "spent": 15, "returned": 15}
    data(await client.post(f"/api/v1/workflow/batches/{batch_id}/retry-failed", headers=user))
    await run_until_idle(engine)
    view = data(await client.get(f"/api/v1/workflow/batches/{batch_id}", headers=user))
    assert [t["status"] for t in view["tasks"]] == ["succeeded", "succeeded"]
    assert view["tasks"][0]["attempts"] == 1 and view["tasks"][0]["resultUrl"]


def test_rows_are_read_from_the_clis_csv_or_one_prompt_a_line() -> None:
    example = parse_rows(EXAMPLE_CSV)
    assert not example.problems and len(example.rows) == 4 and example.lines == [2, 3, 4, 5]
    neon = {"prompt": "A neon-lit city street in the rain at night", "resolution": "720p", "duration": 15}
    assert example.rows[1] == neon
    mixed = parse_rows("\ufeffPrompt, Duration ,image_url\n a fox ,10s,https://x/y.png\n\n,15,\nb,ten,\n")
    assert mixed.rows == [{"prompt": "a fox", "duration": 10, "imageUrl": "https://x/y.png"}]
    assert mixed.problems == [(4, "no prompt"), (5, "duration 'ten' is not a number of seconds (10 or 15)")]
    huge = parse_rows("prompt\nfine\n" + "x" * 200_000 + "\nnever read\n")
    assert huge.rows == [{"prompt": "fine"}] and huge.problems[0][1].startswith("unreadable CSV: field larger")
    plain = parse_rows("a fox, in snow\n\n  a city at night  \n")
    assert plain.rows == [{"prompt": "a fox, in snow"}, {"prompt": "a city at night"}] and plain.lines == [1, 3]


@pytest.mark.parametrize(
    ("rows", "available", "total", "verdict"),
    [
        ([{"prompt": "a"}, {"prompt": "b", "model": "sora-2-pro", "resolution": "1080p"}], 115, 115, "ok"),
        ([{"prompt": "a"}, {"prompt": "b", "model": "sora-2-pro", "resolution": "1080p"}], 100, 115, "short 15"),
        ([{"prompt": "a"}, {"prompt": "b", "model": "sora-2", "resolution": "1080p"}], 1000, 0, "row 1"),
        ([{"prompt": str(i)} for i in range(16)], 1000, 240, "too many"),
    ],
)
def test_a_quote_makes_the_checks_of_a_submission_without_holding_anything(
    runtime: Runtime, rows: list[dict[str, object]], available: int, total: int, verdict: str
) -> None:
    body = BatchGenerateIn.model_validate({"rows": rows, "defaultDuration": 10})
    q = quote(User(id="u1", plan="pro"), body, available)
    assert (q.total, q.plan.plan, q.plan.batch_size) == (total, "pro", 15)
    assert q.submittable == (verdict == "ok")
    assert (q.shortfall == 15) == (verdict == "short 15")
    assert (1 in q.problems and "No price for model sora-2 at 1080p" in q.problems[1]) == (verdict == "row 1")
    assert q.over_size == (verdict == "too many")
