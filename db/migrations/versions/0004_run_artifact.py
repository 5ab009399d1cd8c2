"""runs: the trained model's artifact (path under the data directory, size and sha256 of its tar.gz) and the epoch
the latest attempt resumed from

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # All nullable: runs from before this release trained without keeping weights, so they have no artifact.
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifact_path", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("artifact_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("artifact_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("resumed_from_epoch", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name in ("resumed_from_epoch", "artifact_sha256", "artifact_bytes", "artifact_path"):
            batch_op.drop_column(name)
