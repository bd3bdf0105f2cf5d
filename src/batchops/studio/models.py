"""Studio tables. The database is the queue: a task row carries its state, the
time its next step is due and the lease of the worker doing that step."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, utcnow

# batch status
B_QUEUED, B_RUNNING, B_PAUSED, B_COMPLETED, B_CANCELLED = "queued", "running", "paused", "completed", "cancelled"
# task state
QUEUED, SUBMITTING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "submitting",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
ACTIVE_STATES = (SUBMITTING, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


class StudioBatch(Base):
    __tablename__ = "studio_batches"
    __table_args__ = (Index("ix_studio_batches_user", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    plan: Mapped[str] = mapped_column(String(16))
    generation_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=B_QUEUED)
    total_count: Mapped[int]
    credits_held: Mapped[int] = mapped_column(default=0)  # total held at submit (and retry-failed)
    # adaptive concurrency: the batch's current limit, the plan's, recent outcomes (1 = failed)
    concurrency_limit: Mapped[int]
    max_concurrency: Mapped[int]
    recent_outcomes: Mapped[list[Any]]
    degradations: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class StudioTask(Base):
    __tablename__ = "studio_tasks"
    __table_args__ = (
        Index("ix_studio_tasks_due", "state", "due_at"),
        Index("ix_studio_tasks_user_state", "user_id", "state"),
        Index("ix_studio_tasks_batch", "batch_id", "index"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("studio_batches.id"))
    user_id: Mapped[str] = mapped_column(String(128))
    index: Mapped[int]
    generation_type: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    resolution: Mapped[str | None] = mapped_column(String(16))
    duration: Mapped[int | None]
    prompt: Mapped[str] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(String(2000))
    credits: Mapped[int]
    hold_ref: Mapped[str] = mapped_column(String(100))  # the ledger hold of this task's credits
    sort_key: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    due_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    request_id: Mapped[str | None] = mapped_column(String(100))  # ours, recorded before the provider call
    provider_task_id: Mapped[str | None] = mapped_column(String(200))
    submitted_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    polls: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    history: Mapped[list[Any]]
    result_url: Mapped[str | None] = mapped_column(String(2000))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SimJob(Base):
    """The simulated provider's own state, shared by every process (and counted by tests)."""

    __tablename__ = "studio_sim_jobs"
    __table_args__ = (Index("ix_studio_sim_jobs_request", "request_id"), Index("ix_studio_sim_jobs_task", "task_ref"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(100))
    task_ref: Mapped[str] = mapped_column(String(64))
    user_ref: Mapped[str] = mapped_column(String(128))
    submitted_at: Mapped[datetime]
    ready_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]  # cancelled by the client
    outcome: Mapped[str] = mapped_column(String(32))  # succeeded | an error kind
    polls: Mapped[int] = mapped_column(default=0)
