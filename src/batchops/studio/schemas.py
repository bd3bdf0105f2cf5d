"""Studio request / response models (camelCase on the wire, the seed's names)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, JsonValue

from batchops.core.schemas import Schema, StrictSchema, Text
from batchops.studio.config import DURATIONS, IMAGE_CREDITS, MODELS

GenerationType = Literal["video", "image"]
Resolution = Literal["720p", "1080p"]
BatchStatus = Literal["queued", "running", "paused", "completed", "cancelled"]

# The published schema lists what has a price; the service judges the combination (and
# answers with the price list), which is why these are not Literal types.
MODEL_DOC: dict[str, JsonValue] = {
    "enum": [*MODELS, *IMAGE_CREDITS, None],
    "description": "video: sora-2 (720p) or sora-2-pro (720p, 1080p); image: nano-banana or gpt-4o-image",
}
DURATION_DOC: dict[str, JsonValue] = {"enum": [*DURATIONS, None], "description": "seconds of video"}


class RowIn(StrictSchema):
    prompt: Text = Field(min_length=1, max_length=4000)
    model: str | None = Field(None, min_length=1, max_length=64, json_schema_extra=MODEL_DOC)
    resolution: Resolution | None = None
    duration: int | None = Field(None, ge=1, le=60, json_schema_extra=DURATION_DOC)
    image_url: Text | None = Field(None, max_length=2000)


class BatchGenerateIn(StrictSchema):
    rows: list[RowIn] = Field(min_length=1, max_length=1000, description="at most the plan's batchSize")
    generation_type: GenerationType = "video"
    default_model: str | None = Field(None, min_length=1, max_length=64, json_schema_extra=MODEL_DOC)
    default_resolution: Resolution | None = None
    default_duration: int | None = Field(None, ge=1, le=60, json_schema_extra=DURATION_DOC)


class BatchAccepted(Schema):
    batch_id: str
    status: BatchStatus
    total_count: int
    credits_held: int
    plan: str
    concurrency: int
    batch_size: int


class Counts(Schema):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class Credits(Schema):
    held: int
    spent: int
    returned: int


class TaskOut(Schema):
    task_id: str
    index: int
    generation_type: str
    model: str
    resolution: str | None
    duration: int | None
    prompt: str
    credits: int
    status: str
    attempts: int
    error: str | None = None
    error_kind: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_url: str | None = None


class FailureAnalysis(Schema):
    failed_count: int
    by_kind: dict[str, int]
    retryable_count: int
    retried_attempts: int
    failure_rate: float


class BatchSummaryOut(Schema):
    batch_id: str
    user_id: str
    status: BatchStatus
    generation_type: str
    plan: str
    total_count: int
    counts: Counts
    credits: Credits
    concurrency_limit: int
    max_concurrency: int
    degradations: int
    created_at: datetime
    finished_at: datetime | None = None


class BatchDetailOut(BatchSummaryOut):
    tasks: list[TaskOut]
    failure_analysis: FailureAnalysis


class BatchActionOut(Schema):
    batch_id: str
    status: BatchStatus
    affected_count: int
    credits_returned: int = 0
    credits_held: int = 0


class CallbackAck(Schema):
    """What KIE gets back from its callback (it needs only the 200): KIE's own shape, with
    what was done (``reconciled``, ``poll`` or ``ignored``) as the message."""

    code: int = 200
    msg: str
