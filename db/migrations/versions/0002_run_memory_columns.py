"""runs: the newest memory report's headline numbers (sortable without a join)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = ("stored_activation_bytes", "peak_bytes", "peak_activation_bytes")


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
    # Back-fill from each run's newest memory report.
    for name in COLUMNS:
        op.execute(
            f"UPDATE runs SET {name} = (SELECT m.{name} FROM memory_reports m WHERE m.run_id = runs.id "
            f"ORDER BY m.attempt DESC LIMIT 1)"
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.drop_column(name)
