"""periodic jobs run once per interval across the cluster; users get passwords

``job_schedule`` has one row per periodic job: a worker runs the job only if it moves
``next_run_at`` forward itself (a conditional UPDATE), so N workers run each job once
per interval, not N times. ``users.password_hash`` is the argon2 hash of the console's
sign-in (NULL: no console sign-in; the JSON API keeps bearer tokens).

Revision ID: 0008_job_schedule_and_passwords
Revises: 0007_device_bucket_index
Create Date: 2026-12-06 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_job_schedule_and_passwords"
down_revision: str | Sequence[str] | None = "0007_device_bucket_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_schedule",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_owner", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_schedule")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_hash", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_hash")
    op.drop_table("job_schedule")
