"""scheduler phase 3: reservations, wait queue, maintenance, reminders

Revision ID: 0005_scheduler_phase3
Revises: 0001_initial
Create Date: 2026-11-23 09:52:05.136442
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import batchops.core.db

revision: str = "0005_scheduler_phase3"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "allocation_queue",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("min_cpu", sa.Integer(), nullable=True),
        sa.Column("min_memory_mb", sa.Integer(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("enqueued_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("granted_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("allocation_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_allocation_queue_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_queue")),
    )
    with op.batch_alter_table("allocation_queue", schema=None) as batch_op:
        batch_op.create_index("ix_allocation_queue_order", ["status", "priority", "enqueued_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_allocation_queue_user_id"), ["user_id"], unique=False)

    op.create_table(
        "reservations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("start_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("allocation_id", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_reservations_device_id_devices")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_reservations_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reservations_device_window", ["device_id", "status", "start_at", "end_at"], unique=False
        )
        batch_op.create_index("ix_reservations_status_start", ["status", "start_at"], unique=False)
        batch_op.create_index("ix_reservations_user", ["user_id", "start_at"], unique=False)

    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reminder_sent_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reservation_id", sa.String(length=64), nullable=True))

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("maintenance", sa.Boolean(), server_default=sa.false(), nullable=False))

    # Two live reservations of one device never overlap: a constraint, not only a check.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE reservations ADD CONSTRAINT ex_reservations_no_overlap EXCLUDE USING gist "
            "(device_id WITH =, tstzrange(start_at, end_at, '[)') WITH &&) WHERE (status = 'reserved')"
        )
    else:
        for when in ("INSERT", "UPDATE OF status, start_at, end_at, device_id"):
            name = "insert" if when == "INSERT" else "update"
            op.execute(
                f"CREATE TRIGGER reservations_no_overlap_{name} BEFORE {when} ON reservations "
                "WHEN NEW.status = 'reserved' AND EXISTS (SELECT 1 FROM reservations r "
                "WHERE r.device_id = NEW.device_id AND r.status = 'reserved' AND r.id != NEW.id "
                "AND r.start_at < NEW.end_at AND NEW.start_at < r.end_at) "
                "BEGIN SELECT RAISE(ABORT, 'reservation overlaps a live reservation of the same device'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE reservations DROP CONSTRAINT ex_reservations_no_overlap")
    else:
        op.execute("DROP TRIGGER IF EXISTS reservations_no_overlap_insert")
        op.execute("DROP TRIGGER IF EXISTS reservations_no_overlap_update")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("maintenance")

    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_column("reservation_id")
        batch_op.drop_column("reminder_sent_at")

    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_user")
        batch_op.drop_index("ix_reservations_status_start")
        batch_op.drop_index("ix_reservations_device_window")

    op.drop_table("reservations")
    with op.batch_alter_table("allocation_queue", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_allocation_queue_user_id"))
        batch_op.drop_index("ix_allocation_queue_order")

    op.drop_table("allocation_queue")
