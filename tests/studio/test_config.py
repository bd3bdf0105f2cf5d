"""The seed's figures: prices, plans, concurrency model, polling schedule, timeouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from batchops.core.errors import BadRequestError
from batchops.studio.config import (
    SLOW_QUEUE_KEY,
    PlanCatalog,
    calculate_actual_concurrency,
    degraded_concurrency,
    get_batch_config,
    get_polling_config,
    get_video_model_info,
    is_fast,
    retry_backoff,
    sort_key,
    use_plans_file,
)
from tests.helpers import data, error
from tests.studio.conftest import studio_user


def test_prices() -> None:
    assert get_video_model_info("sora-2", "720p", 10).credits == 15
    assert get_video_model_info("sora-2", "720P", 15).credits == 20
    assert get_video_model_info("sora-2-pro", "720p", 10).credits == 45
    assert get_video_model_info("sora-2-pro", "720p", 15).credits == 60
    assert get_video_model_info("sora-2-pro", "1080p", 10).credits == 100
    info = get_video_model_info("sora-2-pro", "1080p", 15)
    assert info.credits == 130 and info.quality == "high" and info.kie_model == "sora-2-pro-text-to-video"
    with pytest.raises(BadRequestError, match="No price"):
        get_video_model_info("sora-2", "1080p", 10)
    with pytest.raises(BadRequestError):
        get_video_model_info("sora-3", "720p", 10)


def test_plans() -> None:
    assert (get_batch_config("pro").concurrency, get_batch_config("pro").batch_size) == (3, 15)
    assert (get_batch_config("pro_plus").concurrency, get_batch_config("pro_plus").batch_size) == (5, 25)
    assert (get_batch_config("enterprise").concurrency, get_batch_config("enterprise").batch_size) == (10, 50)
    assert get_batch_config(None).plan == "free" and get_batch_config("unknown").plan == "free"


def test_actual_concurrency() -> None:
    # never above the plan, weighted down for heavy work, never below 1
    assert calculate_actual_concurrency("pro", "sora-2", "720p", 10) == 3
    assert calculate_actual_concurrency("pro", "sora-2-pro", "1080p", 15) == 2  # floor(4 × 0.65 × 1.0)
    assert calculate_actual_concurrency("enterprise", "sora-2-pro", "1080p", 15) == 7  # floor(10 × 0.7 × 1.0)
    assert calculate_actual_concurrency("enterprise", "sora-2-pro", "1080p", 10) == 9  # floor(10 × 0.7 × 1.3)
    assert calculate_actual_concurrency("free", "sora-2-pro", "1080p", 15) == 1


def test_queues_polling_timeouts_retries() -> None:
    assert is_fast("720p", 15) and is_fast("1080p", 10) and not is_fast("1080p", 15)
    keys = {(r, d): sort_key(r, d, s) for r, d, s in (("720p", 10, 60), ("1080p", 10, 360), ("720p", 15, 120))}
    slow_key = sort_key("1080p", 15, 480)
    # fast queue before the slow one, shorter durations first, 720p before 1080p within one
    assert keys[("720p", 10)] < keys[("1080p", 10)] < keys[("720p", 15)] < slow_key
    assert min(keys.values()) < max(keys.values()) < SLOW_QUEUE_KEY <= slow_key
    p720, p1080 = get_polling_config("720p"), get_polling_config("1080p")
    assert [p720.interval(t) for t in (0, 59, 60, 179, 180, 1000)] == [3, 3, 5, 5, 8, 8]
    assert [p1080.interval(t) for t in (0, 179, 180, 479, 480)] == [5, 5, 8, 8, 12]
    assert (p720.timeout_seconds, p1080.timeout_seconds) == (300, 900)
    assert [retry_backoff(n) for n in (1, 2, 3)] == [2, 4, 8]
    assert [degraded_concurrency(n) for n in (10, 6, 5, 3, 2, 1)] == [6, 4, 3, 2, 1, 1]  # 40 %, to the nearest slot


# --- 配置热更新: BATCHOPS_STUDIO_PLANS_FILE --------------------------------------------------------
@pytest.fixture
def plans_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "plans.json"
    path.write_text("{}")
    use_plans_file(str(path), check_every=0)
    yield path
    use_plans_file(None)


def write_plans(path: Path, plans: dict[str, Any]) -> None:
    path.write_text(json.dumps(plans))


def test_a_plans_file_changes_concurrency_without_a_restart(plans_file: Path) -> None:
    """The seed's 调整并发策略: a conservative, then an aggressive modelConcurrency."""
    assert calculate_actual_concurrency("pro", "sora-2-pro", "1080p", 15) == 2  # floor(4 × 0.65)
    write_plans(plans_file, {"pro": {"modelConcurrency": {"sora-2": 3, "sora-2-pro": 2}}})
    assert calculate_actual_concurrency("pro", "sora-2-pro", "1080p", 15) == 1  # floor(2 × 0.65)
    assert calculate_actual_concurrency("pro", "sora-2", "720p", 10) == 3  # floor(3 × 1.3), the plan's cap
    plans_file.write_text(
        json.dumps({"pro": {"concurrency": 6, "batchSize": 30, "modelConcurrency": {"sora-2-pro": 6}}})
    )
    pro = get_batch_config("pro")
    assert (pro.concurrency, pro.batch_size, pro.description) == (6, 30, "Pro套餐：每批15个任务，最多3个同时进行")
    assert calculate_actual_concurrency("pro", "sora-2-pro", "1080p", 15) == 3  # floor(6 × 0.65)
    assert get_batch_config("free").concurrency == 1  # plans the file leaves out keep their values
    plans_file.write_text("{}")
    assert (get_batch_config("pro").concurrency, get_batch_config("pro").batch_size) == (3, 15)


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        '{"pro": {"concurrency": 0}}',
        '{"pro": {"modelConcurrency": {"sora-3": 2}}}',
        '{"gold": {"concurrency": 2}}',
        '{"pro": {"concurency": 2}}',
    ],
)
def test_a_bad_plans_file_is_refused_and_the_plans_stay(plans_file: Path, bad: str) -> None:
    write_plans(plans_file, {"pro": {"concurrency": 4}})
    assert get_batch_config("pro").concurrency == 4
    plans_file.write_text(bad)
    assert get_batch_config("pro").concurrency == 4
    with pytest.raises((ValidationError, ValueError)):  # at start-up, the same file stops the process
        PlanCatalog(str(plans_file))


async def test_a_changed_batch_size_applies_to_the_next_submission(
    client: httpx.AsyncClient, admin: dict[str, str], plans_file: Path
) -> None:
    pro = await studio_user(client, admin, "pro", plan="pro", credits=100_000)
    body = {"rows": [{"prompt": f"shot {i}", "model": "sora-2"} for i in range(20)]}
    url = "/api/v1/workflow/batch-generate"
    error(await client.post(url, json=body, headers=pro), 400, "BadRequestException")
    write_plans(plans_file, {"pro": {"batchSize": 20}})
    accepted = data(await client.post(url, json=body, headers=pro), 202)
    assert (accepted["totalCount"], accepted["batchSize"]) == (20, 20)
