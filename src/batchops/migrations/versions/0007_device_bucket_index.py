"""device buckets: the first free devices of each (size, node) read from an index

Placement reads the first k free devices of every (size, node) bucket. PostgreSQL does
it per bucket with ``ORDER BY id LIMIT k`` (a LATERAL join), which needs this index in
that order; without it, it sorted the whole free fleet for ``row_number()`` (1,000
devices: ~3 ms of a 10 ms budget). ``coalesce(node_id, '')`` puts the devices without a
node in a bucket an equality can find. It replaces ``ix_devices_status_fit``, its prefix.

Revision ID: 0007_device_bucket_index
Revises: 0006_queue_and_node_indexes
Create Date: 2026-11-23 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_device_bucket_index"
down_revision: str | Sequence[str] | None = "0006_queue_and_node_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_status_fit")
        batch_op.create_index(
            "ix_devices_bucket",
            ["status", "cpu_cores", "memory_mb", "storage_mb", sa.text("coalesce(node_id, '')"), "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_bucket")
        batch_op.create_index("ix_devices_status_fit", ["status", "cpu_cores", "memory_mb", "storage_mb"], unique=False)
