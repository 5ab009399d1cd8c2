"""initial schema: runs (the queue), metric points, memory reports, sweeps, workers

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 19:12:02.978201
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('n_runs', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    op.create_table('workers',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('devices', sa.JSON(), nullable=True),
    sa.Column('slots', sa.Integer(), nullable=False),
    sa.Column('slot_kind', sa.String(length=16), nullable=False),
    sa.Column('busy', sa.Integer(), nullable=False),
    sa.Column('stopped_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_heartbeat_at'), ['heartbeat_at'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=True),
    sa.Column('cloned_from', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('backbone', sa.String(length=200), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('method_label', sa.String(length=200), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=32), nullable=False),
    sa.Column('needs_gpu', sa.Boolean(), nullable=False),
    sa.Column('learning_rate', sa.Float(), nullable=True),
    sa.Column('batch_size', sa.Integer(), nullable=True),
    sa.Column('max_seq_len', sa.Integer(), nullable=True),
    sa.Column('epochs', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('worker_id', sa.String(length=200), nullable=True),
    sa.Column('host', sa.String(length=200), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('slot', sa.String(length=32), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('total_steps', sa.Integer(), nullable=True),
    sa.Column('epoch', sa.Integer(), nullable=True),
    sa.Column('loss', sa.Float(), nullable=True),
    sa.Column('log_tail', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('traceback', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('main_metric', sa.String(length=64), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('trainable_params', sa.BigInteger(), nullable=True),
    sa.Column('total_params', sa.BigInteger(), nullable=True),
    sa.Column('git_revision', sa.String(length=64), nullable=True),
    sa.Column('versions', sa.JSON(), nullable=True),
    sa.Column('device_used', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], name=op.f('fk_runs_sweep_id_sweeps'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_backbone'), ['backbone'], unique=False)
        batch_op.create_index('ix_runs_claim', ['status', 'priority', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_runs_group', ['task', 'backbone', 'method'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_method'), ['method'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_score'), ['score'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_status'), ['status'], unique=False)
        batch_op.create_index('ix_runs_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_sweep_id'), ['sweep_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_task'), ['task'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_updated_at'), ['updated_at'], unique=False)

    op.create_table('memory_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('device', sa.String(length=200), nullable=True),
    sa.Column('how', sa.String(length=64), nullable=True),
    sa.Column('stored_activation_bytes', sa.BigInteger(), nullable=True),
    sa.Column('peak_bytes', sa.BigInteger(), nullable=True),
    sa.Column('peak_activation_bytes', sa.BigInteger(), nullable=True),
    sa.Column('param_bytes', sa.BigInteger(), nullable=True),
    sa.Column('trainable_param_bytes', sa.BigInteger(), nullable=True),
    sa.Column('grad_bytes', sa.BigInteger(), nullable=True),
    sa.Column('optimizer_bytes', sa.BigInteger(), nullable=True),
    sa.Column('step_seconds', sa.Float(), nullable=True),
    sa.Column('batch_shape', sa.JSON(), nullable=True),
    sa.Column('batch_size', sa.Integer(), nullable=True),
    sa.Column('seq_len', sa.Integer(), nullable=True),
    sa.Column('process_peak_rss_bytes', sa.BigInteger(), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_memory_reports_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_memory_reports')),
    sa.UniqueConstraint('run_id', 'attempt', name='uq_memory_reports_run_attempt')
    )
    op.create_table('metric_points',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('epoch', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_metric_points_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metric_points'))
    )
    with op.batch_alter_table('metric_points', schema=None) as batch_op:
        batch_op.create_index('ix_metric_points_run', ['run_id', 'attempt', 'name', 'step'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('metric_points', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_points_run')

    op.drop_table('metric_points')
    op.drop_table('memory_reports')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_updated_at'))
        batch_op.drop_index(batch_op.f('ix_runs_task'))
        batch_op.drop_index(batch_op.f('ix_runs_sweep_id'))
        batch_op.drop_index('ix_runs_status_created')
        batch_op.drop_index(batch_op.f('ix_runs_status'))
        batch_op.drop_index(batch_op.f('ix_runs_score'))
        batch_op.drop_index(batch_op.f('ix_runs_method'))
        batch_op.drop_index('ix_runs_group')
        batch_op.drop_index(batch_op.f('ix_runs_created_at'))
        batch_op.drop_index('ix_runs_claim')
        batch_op.drop_index(batch_op.f('ix_runs_backbone'))

    op.drop_table('runs')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_heartbeat_at'))

    op.drop_table('workers')
    op.drop_table('sweeps')
