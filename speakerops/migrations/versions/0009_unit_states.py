"""unit states: per-group offline thresholds and flapping detection (issue #4)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

import speakerops.db
from speakerops.roles import apply_grants

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

UTC = speakerops.db.UTCDateTime(timezone=True)
TABLES = ["offline_policies"]


def upgrade() -> None:
    op.create_table('offline_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope_kind', sa.String(length=16), nullable=False),
    sa.Column('scope_value', sa.String(length=128), nullable=False),
    sa.Column('offline_after_s', sa.Float(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', UTC, nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=True),
    sa.Column('updated_at', UTC, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_offline_policies')),
    sa.UniqueConstraint('scope_kind', 'scope_value', name=op.f('uq_offline_policies_scope_kind'))
    )
    with op.batch_alter_table('units') as batch:
        batch.add_column(sa.Column('state_history', sa.String(length=21), nullable=False, server_default=''))
        batch.add_column(sa.Column('state_change_pct', sa.Float(), nullable=True))
        batch.add_column(sa.Column('flapping', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('flapping_since', UTC, nullable=True))
    apply_grants(op.get_bind(), TABLES)


def downgrade() -> None:
    with op.batch_alter_table('units') as batch:
        batch.drop_column('flapping_since')
        batch.drop_column('flapping')
        batch.drop_column('state_change_pct')
        batch.drop_column('state_history')
    op.drop_table('offline_policies')
