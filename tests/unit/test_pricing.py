"""Prices: device time in exact decimals rounded up to the fen (billing/pricing.py), studio
credits, plans and the concurrency a plan allows per kind of task (studio/config.py)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.billing.pricing import Pricing
from batchops.core.errors import BadRequestError
from batchops.settings import Settings
from batchops.studio.config import (
    BATCH_CONFIG,
    DURATIONS,
    MODELS,
    RESOLUTIONS,
    VIDEO_CREDITS,
    calculate_actual_concurrency,
    get_batch_config,
    get_image_price,
    get_video_model_info,
    is_fast,
    sort_key,
    use_plans_file,
)

PRICING = Pricing(Decimal("0.10"), Decimal("0.05"), Decimal("0.002"))  # the settings' defaults
DECIMALS = st.decimals(min_value=0, max_value=5, places=3, allow_nan=False, allow_infinity=False)
SIZES = st.tuples(st.integers(0, 64), st.integers(0, 262_144), st.integers(0, 1_048_576))


def exact_fen(pricing: Pricing, seconds: int, cpu: int, memory_mb: int, storage_mb: int) -> Fraction:
    """The cost in fen, as a fraction: what the rounding starts from."""
    per_hour = (
        cpu * Fraction(pricing.cpu_core_hour)
        + Fraction(memory_mb, 1024) * Fraction(pricing.memory_gb_hour)
        + Fraction(storage_mb, 1024) * Fraction(pricing.storage_gb_hour)
    )
    return per_hour * max(0, seconds) / 3600 * 100


# --- device time (seed 001) ----------------------------------------------------------------------------
def test_the_defaults_come_from_the_settings() -> None:
    settings = Settings(jwt_secret="x" * 32)
    assert Pricing.from_settings(settings) == PRICING


def test_whole_hours_cost_exactly_their_rate() -> None:
    # floats would make 0.1 × 3 a hair above 0.3, and the ceiling a fen too many
    assert PRICING.cost(3600, 3, 0, 0) == 30
    assert PRICING.cost(3600, 4, 8192, 65536) == 40 + 40 + 13  # 4 × 0.10 + 8 × 0.05 + 64 × 0.002 = 0.928
    assert PRICING.cost(3 * 3600, 1, 1024, 0) == 45


def test_any_started_fen_is_charged() -> None:
    assert PRICING.cost(1, 1, 0, 0) == 1  # 0.0028 fen
    assert PRICING.cost(0, 64, 262_144, 0) == 0
    assert PRICING.cost(-30, 4, 8192, 0) == 0  # no negative durations
    assert PRICING.cost(360, 1, 0, 0) == 1 and PRICING.cost(361, 1, 0, 0) == 2  # 360 s at 0.10/h: 1 fen exactly


@settings(max_examples=50)
@given(seconds=st.integers(-100, 40 * 24 * 3600), size=SIZES, rates=st.tuples(DECIMALS, DECIMALS, DECIMALS))
def test_the_cost_is_the_exact_price_rounded_up_to_the_fen(
    seconds: int, size: tuple[int, int, int], rates: tuple[Decimal, Decimal, Decimal]
) -> None:
    pricing = Pricing(*rates)
    cost = pricing.cost(seconds, *size)
    assert isinstance(cost, int)
    assert cost == math.ceil(exact_fen(pricing, seconds, *size))


@settings(max_examples=50)
@given(a=st.integers(0, 10 * 24 * 3600), b=st.integers(0, 10 * 24 * 3600), size=SIZES)
def test_a_longer_use_never_costs_less_and_a_split_never_costs_less(a: int, b: int, size: tuple[int, int, int]) -> None:
    # the hold for the booked minutes covers any shorter real use
    assert PRICING.cost(min(a, b), *size) <= PRICING.cost(max(a, b), *size)
    # each part rounded up: two reports never cost less than one for the same time
    assert PRICING.cost(a + b, *size) <= PRICING.cost(a, *size) + PRICING.cost(b, *size)


# --- studio credits (seed 003 §1) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "resolution", "duration", "credits"),
    [
        ("sora-2", "720p", 10, 15),
        ("sora-2", "720p", 15, 20),
        ("sora-2-pro", "720p", 10, 45),
        ("sora-2-pro", "720p", 15, 60),
        ("sora-2-pro", "1080p", 10, 100),
        ("sora-2-pro", "1080P", 15, 130),
    ],
)
def test_video_prices_are_the_seeds(model: str, resolution: str, duration: int, credits: int) -> None:
    info = get_video_model_info(model, resolution, duration)
    assert info.credits == credits
    assert info.quality == ("high" if resolution.lower() == "1080p" else "standard")
    assert info.kie_model == f"{model}-text-to-video" and info.kie_image_model == f"{model}-image-to-video"


def test_pro_costs_three_times_sora_2_at_720p() -> None:  # the seed's 是 Sora 2 的 3倍
    for duration in DURATIONS:
        sora, pro = (get_video_model_info(m, "720p", duration).credits for m in MODELS)
        assert pro == 3 * sora


@pytest.mark.parametrize(("model", "resolution", "duration"), [("sora-2", "1080p", 10), ("sora-3", "720p", 10)])
def test_a_combination_without_a_price_is_a_400_naming_the_offer(model: str, resolution: str, duration: int) -> None:
    with pytest.raises(BadRequestError) as raised:
        get_video_model_info(model, resolution, duration)
    assert raised.value.status_code == 400 and "sora-2-pro 1080p 15s" in raised.value.message
    assert raised.value.details == [{"field": "model", "model": model, "resolution": resolution, "duration": duration}]


def test_image_prices() -> None:
    assert (get_image_price("nano-banana"), get_image_price("gpt-4o-image")) == (2, 4)
    with pytest.raises(BadRequestError):
        get_image_price("dall-e")


# --- plans and the concurrency they allow (seed 003 §2) ------------------------------------------------------
def test_plans_are_the_seeds_and_an_unknown_plan_is_free() -> None:
    limits = {name: (get_batch_config(name).concurrency, get_batch_config(name).batch_size) for name in BATCH_CONFIG}
    assert limits == {"free": (1, 5), "pro": (3, 15), "pro_plus": (5, 25), "enterprise": (10, 50)}
    assert get_batch_config(None).plan == get_batch_config("gold").plan == "free"
    assert get_batch_config("pro").internal.resolution_weight == {"720p": 1.0, "1080p": 0.65}
    assert get_batch_config("pro").internal.duration_weight == {10: 1.3, 15: 1.0}


@pytest.mark.parametrize(
    ("plan", "model", "resolution", "duration", "expected"),
    [
        ("pro", "sora-2", "720p", 10, 3),  # 5 × 1.3 = 6.5, capped at the plan's 3
        ("pro", "sora-2-pro", "1080p", 15, 2),  # 4 × 0.65 = 2.6
        ("pro_plus", "sora-2-pro", "1080p", 10, 5),  # 6 × 0.65 × 1.3 = 5.07
        ("pro_plus", "sora-2-pro", "1080p", 15, 3),  # 6 × 0.65 = 3.9
        ("enterprise", "sora-2-pro", "1080p", 15, 7),  # 10 × 0.7 = 7 exactly: not 6 by a float's hair
        ("enterprise", "sora-2-pro", "1080p", 10, 9),  # 10 × 0.7 × 1.3 = 9.1
        ("free", "sora-2-pro", "1080p", 15, 1),  # 1 × 0.65: never below 1
    ],
)
def test_actual_concurrency_figures(plan: str, model: str, resolution: str, duration: int, expected: int) -> None:
    assert calculate_actual_concurrency(plan, model, resolution, duration) == expected


KINDS = [(m, r, d) for (m, r, d) in VIDEO_CREDITS]


@pytest.mark.parametrize("plan", list(BATCH_CONFIG))
def test_actual_concurrency_is_the_weighted_model_concurrency_within_the_plan(plan: str) -> None:
    cfg = get_batch_config(plan)
    for model, resolution, duration in KINDS:
        weighted = (
            cfg.internal.model_concurrency[model]
            * Fraction(str(cfg.internal.resolution_weight[resolution]))
            * Fraction(str(cfg.internal.duration_weight[duration]))
        )
        actual = calculate_actual_concurrency(plan, model, resolution, duration)
        assert actual == max(1, min(cfg.concurrency, math.floor(weighted))), (model, resolution, duration)
    # heavier work never gets more room: 1080p no more than 720p, 15 s no more than 10 s
    for model in MODELS:
        for duration in DURATIONS:
            assert calculate_actual_concurrency(plan, model, "1080p", duration) <= calculate_actual_concurrency(
                plan, model, "720p", duration
            )
        for resolution in RESOLUTIONS:
            assert calculate_actual_concurrency(plan, model, resolution, 15) <= calculate_actual_concurrency(
                plan, model, resolution, 10
            )


def test_a_weighted_concurrency_that_is_a_whole_number_is_not_rounded_down(tmp_path: Path) -> None:
    # 25 × 0.2 × 1.4 is 7, which floats make 6.999…: the exact product decides
    plans = tmp_path / "plans.json"
    overrides = {
        "modelConcurrency": {"sora-2-pro": 25},
        "resolutionWeight": {"1080p": 0.2},
        "durationWeight": {"10": 1.4},
    }
    plans.write_text(json.dumps({"enterprise": overrides}))
    use_plans_file(str(plans))
    try:
        assert calculate_actual_concurrency("enterprise", "sora-2-pro", "1080p", 10) == 7
    finally:
        use_plans_file(None)


def test_images_count_as_720p_10_s() -> None:
    assert calculate_actual_concurrency("pro", "nano-banana", None, None) == 3


# --- queues ---------------------------------------------------------------------------------------------
KIND = st.tuples(st.sampled_from(RESOLUTIONS), st.sampled_from(DURATIONS), st.floats(0, 2000))


@settings(max_examples=50)
@given(a=KIND, b=KIND)
def test_fast_queue_first_then_shorter_durations_then_shorter_renders(
    a: tuple[str, int, float], b: tuple[str, int, float]
) -> None:
    (ka, kb) = (sort_key(*a), sort_key(*b))
    if is_fast(a[0], a[1]) != is_fast(b[0], b[1]):
        assert (ka < kb) == is_fast(a[0], a[1])
    elif a[1] != b[1]:
        assert (ka < kb) == (a[1] < b[1])
    elif round(a[2]) < round(b[2]) <= 999:
        assert ka < kb


def test_only_1080p_15_s_is_slow() -> None:
    assert [(r, d) for r in RESOLUTIONS for d in DURATIONS if not is_fast(r, d)] == [("1080p", 15)]
