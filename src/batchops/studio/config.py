"""Studio configuration (seed 003 §1–2): credit prices, plans, the internal
concurrency model, the polling schedule and timeouts.

Two layers, as in the seed: the user-facing plan (``concurrency`` / ``batchSize``:
easy to remember) and the internal tuning (per-model concurrency, resolution and
duration weights) from which :func:`calculate_actual_concurrency` derives how
many tasks of one kind a user may have at the provider at once (never more than
the plan's concurrency).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from batchops.core.errors import BadRequestError
from batchops.core.schemas import StrictSchema

log = structlog.get_logger(__name__)

IMAGE = "image"  # the other generationType, "video", is the default
MODELS = ("sora-2", "sora-2-pro")
RESOLUTIONS = ("720p", "1080p")
DURATIONS = (10, 15)

# Credits per video (seed: Sora 2 720P 15-20, Sora 2 Pro 720P 45-60, Sora 2 Pro 1080P 100-130).
VIDEO_CREDITS: dict[tuple[str, str, int], int] = {
    ("sora-2", "720p", 10): 15,
    ("sora-2", "720p", 15): 20,
    ("sora-2-pro", "720p", 10): 45,
    ("sora-2-pro", "720p", 15): 60,
    ("sora-2-pro", "1080p", 10): 100,
    ("sora-2-pro", "1080p", 15): 130,
}

# Credits per image (generationType "image" stays supported). The seed names no figures.
IMAGE_CREDITS: dict[str, int] = {"nano-banana": 2, "gpt-4o-image": 4}
DEFAULT_IMAGE_MODEL = "nano-banana"

# What the KIE API calls each model (text / image to video).
KIE_VIDEO_MODELS: dict[str, tuple[str, str]] = {
    "sora-2": ("sora-2-text-to-video", "sora-2-image-to-video"),
    "sora-2-pro": ("sora-2-pro-text-to-video", "sora-2-pro-image-to-video"),
}
KIE_IMAGE_MODELS: dict[str, str] = {"nano-banana": "google/nano-banana", "gpt-4o-image": "gpt-4o-image"}

# Typical render times in seconds (what the seed's table implies): used by the
# simulated provider and to decide when the first poll is worth making.
RENDER_SECONDS: dict[tuple[str, str, int], float] = {
    ("sora-2", "720p", 10): 60.0,
    ("sora-2", "720p", 15): 80.0,
    ("sora-2-pro", "720p", 10): 90.0,
    ("sora-2-pro", "720p", 15): 120.0,
    ("sora-2-pro", "1080p", 10): 360.0,
    ("sora-2-pro", "1080p", 15): 480.0,
}
IMAGE_RENDER_SECONDS = 15.0


@dataclass(frozen=True)
class VideoModelInfo:
    model: str
    resolution: str
    duration: int
    credits: int
    kie_model: str
    kie_image_model: str
    quality: str  # KIE "size": standard (720p) | high (1080p)
    expected_render_seconds: float


def get_video_model_info(model: str, resolution: str, duration: int) -> VideoModelInfo:
    """Price and provider names of one combination; 400 for a combination without a price."""
    resolution = resolution.lower()
    credits = VIDEO_CREDITS.get((model, resolution, duration))
    if credits is None:
        offered = ", ".join(f"{m} {r} {d}s" for m, r, d in VIDEO_CREDITS)
        raise BadRequestError(
            f"No price for model {model} at {resolution} {duration}s (offered: {offered})",
            details=[{"field": "model", "model": model, "resolution": resolution, "duration": duration}],
        )
    text_model, image_model = KIE_VIDEO_MODELS[model]
    return VideoModelInfo(
        model=model,
        resolution=resolution,
        duration=duration,
        credits=credits,
        kie_model=text_model,
        kie_image_model=image_model,
        quality="high" if resolution == "1080p" else "standard",
        expected_render_seconds=RENDER_SECONDS[(model, resolution, duration)],
    )


def get_image_price(model: str) -> int:
    credits = IMAGE_CREDITS.get(model)
    if credits is None:
        raise BadRequestError(
            f"No price for image model {model} (offered: {', '.join(IMAGE_CREDITS)})",
            details=[{"field": "model", "model": model}],
        )
    return credits


# --- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InternalConfig:
    model_concurrency: dict[str, int]
    resolution_weight: dict[str, float] = field(default_factory=lambda: {"720p": 1.0, "1080p": 0.65})
    duration_weight: dict[int, float] = field(default_factory=lambda: {10: 1.3, 15: 1.0})


@dataclass(frozen=True)
class PlanConfig:
    plan: str
    concurrency: int
    batch_size: int
    description: str
    internal: InternalConfig


BATCH_CONFIG: dict[str, PlanConfig] = {
    "free": PlanConfig(
        "free", 1, 5, "Free：每批5个任务，最多1个同时进行", InternalConfig({"sora-2": 1, "sora-2-pro": 1})
    ),
    "pro": PlanConfig(
        "pro", 3, 15, "Pro套餐：每批15个任务，最多3个同时进行", InternalConfig({"sora-2": 5, "sora-2-pro": 4})
    ),
    "pro_plus": PlanConfig(
        "pro_plus", 5, 25, "Pro+套餐：每批25个任务，最多5个同时进行", InternalConfig({"sora-2": 8, "sora-2-pro": 6})
    ),
    "enterprise": PlanConfig(
        "enterprise",
        10,
        50,
        "Enterprise套餐：每批50个任务，最多10个同时进行",
        InternalConfig({"sora-2": 12, "sora-2-pro": 10}, resolution_weight={"720p": 1.0, "1080p": 0.7}),
    ),
}


class PlanOverride(StrictSchema):
    """One plan's entry in ``BATCHOPS_STUDIO_PLANS_FILE``: the seed's field names, every
    one optional (what is left out keeps its built-in value)."""

    concurrency: int | None = Field(None, ge=1, le=1000)
    batch_size: int | None = Field(None, ge=1, le=1000)
    description: str | None = Field(None, max_length=500)
    model_concurrency: dict[str, Annotated[int, Field(ge=1, le=1000)]] = Field(default_factory=dict)
    resolution_weight: dict[str, Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=dict)
    duration_weight: dict[int, Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_keys(self) -> PlanOverride:
        for name, keys, known in (
            ("modelConcurrency", self.model_concurrency, MODELS),
            ("resolutionWeight", self.resolution_weight, RESOLUTIONS),
            ("durationWeight", self.duration_weight, DURATIONS),
        ):
            unknown = sorted(str(k) for k in keys if k not in known)
            if unknown:
                raise ValueError(f"{name}: unknown {', '.join(unknown)} (known: {', '.join(map(str, known))})")
        return self

    def apply(self, base: PlanConfig) -> PlanConfig:
        internal = base.internal
        return PlanConfig(
            base.plan,
            self.concurrency or base.concurrency,
            self.batch_size or base.batch_size,
            self.description or base.description,
            InternalConfig(
                {**internal.model_concurrency, **self.model_concurrency},
                {**internal.resolution_weight, **self.resolution_weight},
                {**internal.duration_weight, **self.duration_weight},
            ),
        )


PlanOverrides = TypeAdapter(dict[Literal["free", "pro", "pro_plus", "enterprise"], PlanOverride])


class PlanCatalog:
    """The plans in force: ``BATCH_CONFIG``, with the overrides of a JSON file if one is
    set (seed 003: 配置热更新, 调整并发策略). The file is read again when its content
    changes, looked at no more than once per ``check_every`` seconds, in every process
    that uses it: a change takes effect within that time, with no restart. A file that
    fails to parse is refused: at start-up the error stops the process; later it is
    logged and the plans stay as they were."""

    def __init__(self, path: str | None = None, check_every: float = 1.0) -> None:
        self.path, self.check_every = path, check_every
        self.plans = dict(BATCH_CONFIG)
        self._content: bytes | None = None
        self._next_check = 0.0
        if path is not None:
            self._load(Path(path).read_bytes())

    def get(self, plan: str | None) -> PlanConfig:
        if self.path is not None and time.monotonic() >= self._next_check:
            self._refresh()
        return self.plans.get(plan or "free", self.plans["free"])

    def _refresh(self) -> None:
        assert self.path is not None
        self._next_check = time.monotonic() + self.check_every
        try:
            content = Path(self.path).read_bytes()
        except OSError as exc:
            log.error("studio_plans_file_unreadable", path=self.path, error=str(exc))
            return
        if content == self._content:
            return
        self._content = content  # a refused file is reported once, not at every check
        try:
            changed = self._load(content)
        except ValidationError as exc:
            log.error("studio_plans_file_refused", path=self.path, error=str(exc))
            return
        log.info("studio_plans_reloaded", path=self.path, plans=changed)

    def _load(self, content: bytes) -> list[str]:
        """Apply the file's overrides to the built-in plans; the names of those it changes."""
        overrides = PlanOverrides.validate_json(content)
        self.plans = {
            name: overrides[name].apply(cfg) if name in overrides else cfg for name, cfg in BATCH_CONFIG.items()
        }
        self._content = content
        return sorted(overrides)


_catalog = PlanCatalog()


def use_plans_file(path: str | None, *, check_every: float = 1.0) -> None:
    """Read the plans from here on from ``BATCHOPS_STUDIO_PLANS_FILE`` (None: the built-ins)."""
    global _catalog
    _catalog = PlanCatalog(path, check_every)


def get_batch_config(plan: str | None) -> PlanConfig:
    """The plan's configuration; an unknown or missing plan is ``free`` (new users)."""
    return _catalog.get(plan)


def calculate_actual_concurrency(plan: str | None, model: str, resolution: str | None, duration: int | None) -> int:
    """How many tasks of this kind the user may have at the provider at once.

    ``model concurrency × resolution weight × duration weight``, rounded down,
    never above the plan's concurrency and never below 1. Images count as 720p 10 s.
    """
    cfg = get_batch_config(plan)
    internal = cfg.internal
    base = internal.model_concurrency.get(model, cfg.concurrency)
    weight = internal.resolution_weight.get(resolution or "720p", 1.0) * internal.duration_weight.get(
        duration or 10, 1.0
    )
    return max(1, min(cfg.concurrency, math.floor(base * weight + 1e-9)))


# --- queues, polling, timeouts, retries --------------------------------------------------------


def is_fast(resolution: str | None, duration: int | None) -> bool:
    """Fast queue: 720p, and 1080p 10 s. Slow queue: 1080p 15 s."""
    return not (resolution == "1080p" and duration == 15)


SLOW_QUEUE_KEY = 100_000  # sort keys from here on belong to the slow queue


def sort_key(resolution: str | None, duration: int | None, render_seconds: float = 0.0) -> int:
    """Fast queue first, then shorter durations first, then shorter renders first: the
    seed's order ("720P 优先完成": 720p 10 s before 1080p 10 s, for quick feedback)."""
    queue = 0 if is_fast(resolution, duration) else SLOW_QUEUE_KEY
    return queue + (duration or 0) * 1000 + min(999, max(0, round(render_seconds)))


@dataclass(frozen=True)
class PollingConfig:
    # (elapsed seconds up to which the interval applies, interval seconds); the last applies beyond
    steps: tuple[tuple[float, float], ...]
    timeout_seconds: float

    def interval(self, elapsed: float) -> float:
        for until, every in self.steps:
            if elapsed < until:
                return every
        return self.steps[-1][1]


POLLING: dict[str, PollingConfig] = {
    "720p": PollingConfig(((60.0, 3.0), (180.0, 5.0), (math.inf, 8.0)), timeout_seconds=300.0),
    "1080p": PollingConfig(((180.0, 5.0), (480.0, 8.0), (math.inf, 12.0)), timeout_seconds=900.0),
}

# The first poll is made once this share of the typical render time has passed: nothing is
# ever ready sooner, so earlier polls are wasted calls.
FIRST_POLL_SHARE = 0.75

# The slow queue's partial round (n mod k tasks) starts once the work left is no more than
# this much longer than its rounds: its chains are the longest, and the fluid estimate of
# the work left is optimistic (slots idle in packing and at the tail), so started exactly on
# that estimate they would end last. bench/studio.py's makespan shows its effect.
PARTIAL_ROUND_LEAD = 0.02


def get_polling_config(resolution: str | None) -> PollingConfig:
    return POLLING["1080p" if resolution == "1080p" else "720p"]


MAX_RETRIES = 3
RETRY_BACKOFF_SECONDS = (2.0, 4.0, 8.0)
DEGRADE_FAILURE_RATE = 0.30
DEGRADE_FACTOR = 0.6  # cut by 40 %
DEGRADE_WINDOW = 10  # outcomes judged together
DEGRADE_MIN_OUTCOMES = 5


def retry_backoff(retry_number: int) -> float:
    """Delay before retry ``retry_number`` (1-based): 2 s, 4 s, 8 s."""
    return RETRY_BACKOFF_SECONDS[min(retry_number, len(RETRY_BACKOFF_SECONDS)) - 1]


def degraded_concurrency(current: int) -> int:
    """The seed's cut by 40 %, to the nearest whole slot (10 → 6, 5 → 3, 3 → 2, 2 → 1), never
    below 1. Rounding down would cut a Pro batch's 3 slots to 1: a 67 % cut."""
    return max(1, round(current * DEGRADE_FACTOR))
