"""dining: departments, menus, orders, order lines

Revision ID: 0003_dining
Revises: 0005_scheduler_phase3
Create Date: 2026-11-23 11:59:52.196263
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import batchops.core.db

revision: str = "0003_dining"
down_revision: str | Sequence[str] | None = "0005_scheduler_phase3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dining_departments",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dining_departments")),
    )
    op.create_table(
        "dining_menus",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("meal_type", sa.String(length=16), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("created_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dining_menus")),
        sa.UniqueConstraint("date", "meal_type", name="uq_dining_menus_date_meal"),
    )
    op.create_table(
        "dining_orders",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("department_id", sa.String(length=128), nullable=False),
        sa.Column("menu_id", sa.String(length=64), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("meal_type", sa.String(length=16), nullable=False),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        sa.Column("total_cents", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("remark", sa.String(length=500), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", batchops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", batchops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["department_id"], ["dining_departments.id"], name=op.f("fk_dining_orders_department_id_dining_departments")
        ),
        sa.ForeignKeyConstraint(["menu_id"], ["dining_menus.id"], name=op.f("fk_dining_orders_menu_id_dining_menus")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dining_orders")),
    )
    with op.batch_alter_table("dining_orders", schema=None) as batch_op:
        batch_op.create_index("ix_dining_orders_date_meal", ["date", "meal_type"], unique=False)
        batch_op.create_index("ix_dining_orders_department_date", ["department_id", "date"], unique=False)

    op.create_table(
        "dining_order_lines",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("meal_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["dining_orders.id"], name=op.f("fk_dining_order_lines_order_id_dining_orders")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_dining_order_lines_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dining_order_lines")),
    )
    with op.batch_alter_table("dining_order_lines", schema=None) as batch_op:
        batch_op.create_index("ix_dining_order_lines_date_meal", ["date", "meal_type", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_dining_order_lines_order_id"), ["order_id"], unique=False)
        # At most one active order line per user, date and meal: a cancelled line frees the slot.
        batch_op.create_index(
            "uq_dining_order_lines_active",
            ["user_id", "date", "meal_type"],
            unique=True,
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("dining_order_lines", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_dining_order_lines_active",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )
        batch_op.drop_index(batch_op.f("ix_dining_order_lines_order_id"))
        batch_op.drop_index("ix_dining_order_lines_date_meal")

    op.drop_table("dining_order_lines")
    with op.batch_alter_table("dining_orders", schema=None) as batch_op:
        batch_op.drop_index("ix_dining_orders_department_date")
        batch_op.drop_index("ix_dining_orders_date_meal")

    op.drop_table("dining_orders")
    op.drop_table("dining_menus")
    op.drop_table("dining_departments")
