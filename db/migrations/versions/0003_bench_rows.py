"""bench_rows: rows of `mefts bench`, stored by `mefts bench-import`, served by GET /api/bench

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bench_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("backbone", sa.String(length=500), nullable=False),
        sa.Column("method", sa.String(length=200), nullable=False),
        sa.Column("options", sa.JSON(), nullable=True),
        sa.Column("layers", sa.Integer(), nullable=True),
        sa.Column("seq_len", sa.Integer(), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("dtype", sa.String(length=32), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("stored_activation_bytes", sa.BigInteger(), nullable=True),
        sa.Column("peak_bytes", sa.BigInteger(), nullable=True),
        sa.Column("peak_activation_bytes", sa.BigInteger(), nullable=True),
        sa.Column("step_seconds", sa.Float(), nullable=True),
        sa.Column("row", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bench_rows")),
    )
    op.create_index(op.f("ix_bench_rows_backbone"), "bench_rows", ["backbone"], unique=False)
    op.create_index(op.f("ix_bench_rows_method"), "bench_rows", ["method"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_bench_rows_method"), table_name="bench_rows")
    op.drop_index(op.f("ix_bench_rows_backbone"), table_name="bench_rows")
    op.drop_table("bench_rows")
