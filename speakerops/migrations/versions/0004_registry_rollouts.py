"""model registry (model_versions, model_aliases) and SSH known hosts (issue #5)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

import speakerops.db

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_UTC = speakerops.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'model_versions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('files', sa.JSON(), nullable=False),
        sa.Column('artifact_bytes', sa.BigInteger(), nullable=False),
        sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.Text(), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('notes', sa.Text(), nullable=False),
        sa.Column('bundle_metadata', sa.JSON(), nullable=False),
        sa.Column('built_at', _UTC, nullable=True),
        sa.Column('created_at', _UTC, nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=False),
        sa.Column('source_path', sa.Text(), nullable=False),
        sa.Column('evaluation', sa.JSON(), nullable=True),
        sa.Column('evaluated_at', _UTC, nullable=True),
        sa.Column('evaluation_passed', sa.Boolean(), nullable=True),
        sa.Column('requirements', sa.JSON(), nullable=True),
        sa.Column('gate_override_reason', sa.Text(), nullable=True),
        sa.Column('gate_override_by', sa.String(length=128), nullable=True),
        sa.Column('gate_override_at', _UTC, nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
        sa.UniqueConstraint('kind', 'version', name='uq_model_versions_kind_version'),
    )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_versions_kind'), ['kind'], unique=False)

    op.create_table(
        'model_aliases',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('alias', sa.String(length=64), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('updated_at', _UTC, nullable=False),
        sa.Column('updated_by', sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'],
                                name=op.f('fk_model_aliases_version_id_model_versions'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_model_aliases')),
        sa.UniqueConstraint('kind', 'alias', name='uq_model_aliases_kind_alias'),
    )
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_aliases_version_id'), ['version_id'], unique=False)

    op.create_table(
        'known_hosts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('port', sa.Integer(), nullable=False),
        sa.Column('key_type', sa.String(length=64), nullable=False),
        sa.Column('key_base64', sa.Text(), nullable=False),
        sa.Column('fingerprint', sa.String(length=80), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('first_seen_at', _UTC, nullable=False),
        sa.Column('last_seen_at', _UTC, nullable=False),
        sa.Column('approved_by', sa.String(length=128), nullable=True),
        sa.Column('approved_at', _UTC, nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_known_hosts')),
        sa.UniqueConstraint('serial', 'fingerprint', name='uq_known_hosts_serial_fingerprint'),
    )
    with op.batch_alter_table('known_hosts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_known_hosts_serial'), ['serial'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('known_hosts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_known_hosts_serial'))
    op.drop_table('known_hosts')
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_aliases_version_id'))
    op.drop_table('model_aliases')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_versions_kind'))
    op.drop_table('model_versions')
