"""technician workbench: unit self-tests and diagnosis runs (issue #7)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

import speakerops.db
from speakerops.roles import apply_grants

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
UTC = speakerops.db.UTCDateTime(timezone=True)
TABLES = ["unit_selftests", "workbench_runs"]


def upgrade() -> None:
    op.create_table('unit_selftests',
    sa.Column('id', BigIntPK, autoincrement=True, nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=64), nullable=False),
    sa.Column('at', UTC, nullable=False),
    sa.Column('phrase', sa.String(length=200), nullable=False),
    sa.Column('noise_floor_dbfs', sa.Float(), nullable=True),
    sa.Column('snr_db', sa.Float(), nullable=True),
    sa.Column('clipping_ratio', sa.Float(), nullable=True),
    sa.Column('capture_level_dbfs', sa.Float(), nullable=True),
    sa.Column('expected_level_dbfs', sa.Float(), nullable=True),
    sa.Column('dropout_ratio', sa.Float(), nullable=True),
    sa.Column('transcript', sa.Text(), nullable=True),
    sa.Column('wer', sa.Float(), nullable=True),
    sa.Column('recognized', sa.Boolean(), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_unit_selftests_unit_id_units'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_unit_selftests'))
    )
    op.create_index('ix_unit_selftests_unit_at', 'unit_selftests', ['unit_id', 'at'], unique=False)
    op.create_table('workbench_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=True),
    sa.Column('serial', sa.String(length=64), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('started_at', UTC, nullable=False),
    sa.Column('finished_at', UTC, nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('why', sa.JSON(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('run_dir', sa.Text(), nullable=False),
    sa.Column('report_json', sa.Text(), nullable=True),
    sa.Column('report_html', sa.Text(), nullable=True),
    sa.Column('recordings_examined', sa.Integer(), nullable=False),
    sa.Column('bytes_collected', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_workbench_runs_unit_id_units'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_workbench_runs_ticket_id_tickets'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workbench_runs'))
    )
    op.create_index('ix_workbench_runs_serial_started', 'workbench_runs', ['serial', 'started_at'], unique=False)
    apply_grants(op.get_bind(), TABLES)


def downgrade() -> None:
    op.drop_index('ix_workbench_runs_serial_started', table_name='workbench_runs')
    op.drop_table('workbench_runs')
    op.drop_index('ix_unit_selftests_unit_at', table_name='unit_selftests')
    op.drop_table('unit_selftests')
