"""Accepting a batch (seed 003 §4 batch-generate): each row priced and checked against the
plan, the tasks written queued for the engine, every task's credits held at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert

from batchops.core.clock import Clock
from batchops.core.db import Database, new_id
from batchops.core.errors import BadRequestError
from batchops.identity.models import User
from batchops.studio.config import (
    DEFAULT_IMAGE_MODEL,
    IMAGE,
    get_batch_config,
    get_image_price,
    get_video_model_info,
    sort_key,
)
from batchops.studio.holds import hold_all, hold_reference
from batchops.studio.models import B_QUEUED, QUEUED, StudioBatch, StudioTask
from batchops.studio.providers import expected_render_seconds
from batchops.studio.schemas import BatchAccepted, BatchGenerateIn

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ResolvedRow:
    model: str
    resolution: str | None
    duration: int | None
    credits: int


def resolve_rows(body: BatchGenerateIn) -> list[ResolvedRow]:
    """Each row's model / resolution / duration (falling back to the defaults) and price."""
    resolved: list[ResolvedRow] = []
    problems: list[dict[str, Any]] = []
    first: str | None = None
    for i, row in enumerate(body.rows):
        try:
            if body.generation_type == IMAGE:
                model = row.model or body.default_model or DEFAULT_IMAGE_MODEL
                resolved.append(ResolvedRow(model, None, None, get_image_price(model)))
            else:
                info = get_video_model_info(
                    row.model or body.default_model or "sora-2",
                    row.resolution or body.default_resolution or "720p",
                    row.duration or body.default_duration or 10,
                )
                resolved.append(ResolvedRow(info.model, info.resolution, info.duration, info.credits))
        except BadRequestError as exc:
            first = first or f"rows[{i}]: {exc.message}"
            problems.append({"field": f"rows.{i}", "message": exc.message})
    if problems:
        raise BadRequestError(first or "Invalid rows", details=problems)
    return resolved


class Submission:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def submit(self, user: User, body: BatchGenerateIn) -> BatchAccepted:
        cfg = get_batch_config(user.plan)
        if len(body.rows) > cfg.batch_size:
            raise BadRequestError(
                f"Batch size {len(body.rows)} exceeds the {cfg.plan} plan's limit of {cfg.batch_size}",
                details=[{"field": "rows", "max": cfg.batch_size, "given": len(body.rows), "plan": cfg.plan}],
            )
        resolved = resolve_rows(body)
        now = self.clock()
        batch_id = new_id("batch")
        tasks: list[dict[str, Any]] = []
        for i, (row, r) in enumerate(zip(body.rows, resolved, strict=True)):
            task_id = new_id("task")
            tasks.append(
                {
                    "id": task_id,
                    "batch_id": batch_id,
                    "user_id": user.id,
                    "index": i,
                    "generation_type": body.generation_type,
                    "model": r.model,
                    "resolution": r.resolution,
                    "duration": r.duration,
                    "prompt": row.prompt,
                    "image_url": row.image_url,
                    "credits": r.credits,
                    "hold_ref": hold_reference(task_id),
                    "sort_key": sort_key(
                        r.resolution,
                        r.duration,
                        expected_render_seconds(body.generation_type, r.model, r.resolution, r.duration),
                    ),
                    "state": QUEUED,
                    "attempts": 0,
                    "due_at": now,
                    "polls": 0,
                    "history": [],
                    "created_at": now,
                }
            )
        total = sum(r.credits for r in resolved)
        async with self.db.transaction() as session:
            session.add(
                StudioBatch(
                    id=batch_id,
                    user_id=user.id,
                    plan=cfg.plan,
                    generation_type=body.generation_type,
                    status=B_QUEUED,
                    total_count=len(tasks),
                    credits_held=total,
                    concurrency_limit=cfg.concurrency,
                    max_concurrency=cfg.concurrency,
                    recent_outcomes=[],
                    degradations=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            await session.flush()
            await session.execute(insert(StudioTask), tasks)
            await hold_all(session, user.id, [(t["hold_ref"], t["credits"]) for t in tasks])
        log.info("studio_batch_submitted", batch_id=batch_id, tasks=len(tasks), credits=total)
        return BatchAccepted(
            batch_id=batch_id,
            status=B_QUEUED,
            total_count=len(tasks),
            credits_held=total,
            plan=cfg.plan,
            concurrency=cfg.concurrency,
            batch_size=cfg.batch_size,
        )
