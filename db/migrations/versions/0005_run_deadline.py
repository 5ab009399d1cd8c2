"""runs: the running attempt's deadline (its timeout_s, counted from the job's report that it started), stored so
that a dispatcher started after a server restart enforces it

Revision ID: 0005_run_deadline
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_run_deadline"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: runs without a timeout have no deadline, and attempts started before this release set none.
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("deadline_at")
