"""cohort minute rollups: fleet minutes kept 30 days without per-unit rows (issue #4)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

import speakerops.db
from speakerops.roles import apply_grants

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

UTC = speakerops.db.UTCDateTime(timezone=True)
TABLES = ["cohort_rollups_1m"]


def upgrade() -> None:
    # Rows for the minutes already rolled up per unit are written by the next
    # fleet.rollups.compute_rollups (a backfill from unit_rollups_1m), not here.
    op.create_table('cohort_rollups_1m',
    sa.Column('bucket_start', UTC, nullable=False),
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('hardware_rev', sa.String(length=32), nullable=False),
    sa.Column('firmware_version', sa.String(length=32), nullable=False),
    sa.Column('stt_version', sa.String(length=64), nullable=False),
    sa.Column('qa_version', sa.String(length=64), nullable=False),
    sa.Column('tts_version', sa.String(length=64), nullable=False),
    sa.Column('units', sa.Integer(), nullable=False),
    sa.Column('heartbeats', sa.Integer(), nullable=False),
    sa.Column('cpu_pct_avg', sa.Float(), nullable=True),
    sa.Column('cpu_pct_max', sa.Float(), nullable=True),
    sa.Column('temp_c_avg', sa.Float(), nullable=True),
    sa.Column('temp_c_max', sa.Float(), nullable=True),
    sa.Column('mem_pct_avg', sa.Float(), nullable=True),
    sa.Column('disk_free_mb_min', sa.Float(), nullable=True),
    sa.Column('mic_noise_dbfs_avg', sa.Float(), nullable=True),
    sa.Column('wifi_rssi_dbm_avg', sa.Float(), nullable=True),
    sa.Column('wake_false_accepts_per_h_avg', sa.Float(), nullable=True),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('reboots', sa.Integer(), nullable=False),
    sa.Column('e2e_over_budget', sa.Integer(), nullable=False),
    sa.Column('server_over_budget', sa.Integer(), nullable=False),
    sa.Column('latency_hist', sa.JSON(), nullable=False),
    sa.Column('latency_sum_ms', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('bucket_start', 'site', 'hardware_rev', 'firmware_version', 'stt_version',
                            'qa_version', 'tts_version', name=op.f('pk_cohort_rollups_1m'))
    )
    apply_grants(op.get_bind(), TABLES)


def downgrade() -> None:
    op.drop_table('cohort_rollups_1m')
