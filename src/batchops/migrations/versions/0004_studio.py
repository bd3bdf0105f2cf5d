"""studio: batches, tasks (the queue), simulated provider jobs

Revision ID: 0004_studio
Revises: 0005_scheduler_phase3
Create Date: 2026-11-23 12:02:45.224987
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import batchops.core.db

revision: str = "0004_studio"
down_revision: str | Sequence[str] | None = "0005_scheduler_phase3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "studio_sim_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("task_ref", sa.String(length=64), nullable=False),
        sa.Column("user_ref", sa.String(length=128), nullable=False),
        sa.Column("submitted_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ready_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studio_sim_jobs")),
    )
    with op.batch_alter_table("studio_sim_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_studio_sim_jobs_request", ["request_id"], unique=False)
        batch_op.create_index("ix_studio_sim_jobs_task", ["task_ref"], unique=False)

    op.create_table(
        "studio_batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("plan", sa.String(length=16), nullable=False),
        sa.Column("generation_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total_count", sa.Integer(), nullable=False),
        sa.Column("credits_held", sa.Integer(), nullable=False),
        sa.Column("concurrency_limit", sa.Integer(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column(
            "recent_outcomes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("degradations", sa.Integer(), nullable=False),
        sa.Column("created_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_studio_batches_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studio_batches")),
    )
    with op.batch_alter_table("studio_batches", schema=None) as batch_op:
        batch_op.create_index("ix_studio_batches_user", ["user_id", "created_at"], unique=False)

    op.create_table(
        "studio_tasks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("generation_type", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("image_url", sa.String(length=2000), nullable=True),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("hold_ref", sa.String(length=100), nullable=False),
        sa.Column("sort_key", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("request_id", sa.String(length=100), nullable=True),
        sa.Column("provider_task_id", sa.String(length=200), nullable=True),
        sa.Column("submitted_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column(
            "history", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("result_url", sa.String(length=2000), nullable=True),
        sa.Column("started_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["studio_batches.id"], name=op.f("fk_studio_tasks_batch_id_studio_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studio_tasks")),
    )
    with op.batch_alter_table("studio_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_studio_tasks_batch", ["batch_id", "index"], unique=False)
        batch_op.create_index("ix_studio_tasks_due", ["state", "due_at"], unique=False)
        batch_op.create_index("ix_studio_tasks_user_state", ["user_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("studio_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_studio_tasks_user_state")
        batch_op.drop_index("ix_studio_tasks_due")
        batch_op.drop_index("ix_studio_tasks_batch")

    op.drop_table("studio_tasks")
    with op.batch_alter_table("studio_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_studio_batches_user")

    op.drop_table("studio_batches")
    with op.batch_alter_table("studio_sim_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_studio_sim_jobs_task")
        batch_op.drop_index("ix_studio_sim_jobs_request")

    op.drop_table("studio_sim_jobs")
