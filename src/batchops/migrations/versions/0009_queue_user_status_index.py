"""the queue's per-user index also holds the status

The grant pass counts, for each candidate, the same user's waiting entries served
before it. Indexed by user alone, SQLite's planner preferred the (status, expires_at)
index for that count and read every waiting entry for every candidate; with
(user_id, status) both equalities are indexed and each count reads the user's entries.

Revision ID: 0009_queue_user_status_index
Revises: 0008_job_schedule_and_passwords
Create Date: 2026-12-07 04:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_queue_user_status_index"
down_revision: str | Sequence[str] | None = "0008_job_schedule_and_passwords"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("allocation_queue", schema=None) as batch_op:
        batch_op.drop_index("ix_allocation_queue_user_id")
        batch_op.create_index("ix_allocation_queue_user_status", ["user_id", "status", "expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("allocation_queue", schema=None) as batch_op:
        batch_op.drop_index("ix_allocation_queue_user_status")
        batch_op.create_index("ix_allocation_queue_user_id", ["user_id"], unique=False)
