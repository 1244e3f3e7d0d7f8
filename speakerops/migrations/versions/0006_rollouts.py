"""rollouts, rollout groups and per-unit rollout state (issue #5)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

import speakerops.db

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('pause_reason', sa.Text(), nullable=True),
    sa.Column('gate_override_reason', sa.Text(), nullable=True),
    sa.Column('total_units', sa.Integer(), nullable=False),
    sa.Column('succeeded_units', sa.Integer(), nullable=False),
    sa.Column('failed_units', sa.Integer(), nullable=False),
    sa.Column('rolled_back_units', sa.Integer(), nullable=False),
    sa.Column('skipped_units', sa.Integer(), nullable=False),
    sa.Column('cancelled_units', sa.Integer(), nullable=False),
    sa.Column('bytes_sent', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', speakerops.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', speakerops.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('runner', sa.String(length=160), nullable=True),
    sa.Column('runner_seen_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts'))
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_state'), ['state'], unique=False)

    op.create_table('unit_pins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('pinned_by', sa.String(length=128), nullable=False),
    sa.Column('pinned_at', speakerops.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_unit_pins')),
    sa.UniqueConstraint('serial', 'kind', name='uq_unit_pins_serial_kind')
    )
    op.create_table('rollout_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('cumulative_pct', sa.Float(), nullable=False),
    sa.Column('units', sa.Integer(), nullable=False),
    sa.Column('success_threshold_pct', sa.Float(), nullable=False),
    sa.Column('error_threshold_pct', sa.Float(), nullable=False),
    sa.Column('min_finished', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('started_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('gate_result', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_groups_rollout_id_rollouts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollout_groups')),
    sa.UniqueConstraint('rollout_id', 'index', name='uq_rollout_groups_rollout_index')
    )
    with op.batch_alter_table('rollout_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_groups_rollout_id'), ['rollout_id'], unique=False)

    op.create_table('rollout_units',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=True),
    sa.Column('serial', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('step_reached', sa.String(length=32), nullable=True),
    sa.Column('bytes_sent', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('previous_version', sa.String(length=64), nullable=True),
    sa.Column('final_version', sa.String(length=64), nullable=True),
    sa.Column('started_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', speakerops.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['group_id'], ['rollout_groups.id'], name=op.f('fk_rollout_units_group_id_rollout_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_units_rollout_id_rollouts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_rollout_units_unit_id_units'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollout_units')),
    sa.UniqueConstraint('rollout_id', 'serial', name='uq_rollout_units_rollout_serial')
    )
    with op.batch_alter_table('rollout_units', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_units_group_id'), ['group_id'], unique=False)
        batch_op.create_index('ix_rollout_units_rollout_state', ['rollout_id', 'state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rollout_units', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_units_rollout_state')
        batch_op.drop_index(batch_op.f('ix_rollout_units_group_id'))

    op.drop_table('rollout_units')
    with op.batch_alter_table('rollout_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_groups_rollout_id'))

    op.drop_table('rollout_groups')
    op.drop_table('unit_pins')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_state'))

    op.drop_table('rollouts')
