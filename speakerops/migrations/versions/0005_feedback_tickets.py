"""feedback and A/S tickets (issue #6)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

import speakerops.db

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
UTC = speakerops.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('feedback_imports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('origin', sa.String(length=255), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=True),
    sa.Column('encoding', sa.String(length=32), nullable=True),
    sa.Column('started_at', UTC, nullable=False),
    sa.Column('finished_at', UTC, nullable=True),
    sa.Column('rows_total', sa.Integer(), nullable=False),
    sa.Column('rows_imported', sa.Integer(), nullable=False),
    sa.Column('rows_duplicate', sa.Integer(), nullable=False),
    sa.Column('rows_rejected', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback_imports'))
    )
    op.create_table('feedback',
    sa.Column('id', BigIntPK, autoincrement=True, nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('household_id', sa.String(length=64), nullable=False),
    sa.Column('submitted_at', UTC, nullable=False),
    sa.Column('received_at', UTC, nullable=False),
    sa.Column('feature', sa.String(length=16), nullable=False),
    sa.Column('intent', sa.String(length=64), nullable=True),
    sa.Column('rating', sa.SmallInteger(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('redactions', sa.SmallInteger(), nullable=False),
    sa.Column('text_withheld', sa.Boolean(), nullable=False),
    sa.Column('corrected', sa.Boolean(), nullable=False),
    sa.Column('repeated', sa.Boolean(), nullable=False),
    sa.Column('cancelled', sa.Boolean(), nullable=False),
    sa.Column('stt_version', sa.String(length=64), nullable=True),
    sa.Column('qa_version', sa.String(length=64), nullable=True),
    sa.Column('tts_version', sa.String(length=64), nullable=True),
    sa.Column('versions_source', sa.String(length=16), nullable=False),
    sa.Column('submission_id', sa.String(length=160), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('import_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_feedback_unit_id_units'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['import_id'], ['feedback_imports.id'],
                            name=op.f('fk_feedback_import_id_feedback_imports'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback')),
    sa.UniqueConstraint('submission_id', name=op.f('uq_feedback_submission_id'))
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_submitted_at'), ['submitted_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_import_id'), ['import_id'], unique=False)
        batch_op.create_index('ix_feedback_unit_submitted', ['unit_id', 'submitted_at'], unique=False)
        batch_op.create_index('ix_feedback_household_submitted', ['household_id', 'submitted_at'], unique=False)

    op.create_table('tickets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('priority', sa.String(length=8), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('assignee', sa.String(length=128), nullable=True),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=True),
    sa.Column('unit_serial', sa.String(length=64), nullable=True),
    sa.Column('feedback_id', BigIntPK, nullable=True),
    sa.Column('household_id', sa.String(length=64), nullable=True),
    sa.Column('stt_version', sa.String(length=64), nullable=True),
    sa.Column('qa_version', sa.String(length=64), nullable=True),
    sa.Column('tts_version', sa.String(length=64), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('created_at', UTC, nullable=False),
    sa.Column('updated_at', UTC, nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('first_response_at', UTC, nullable=True),
    sa.Column('resolved_at', UTC, nullable=True),
    sa.Column('closed_at', UTC, nullable=True),
    sa.Column('reopened_count', sa.Integer(), nullable=False),
    sa.Column('response_target_s', sa.Float(), nullable=False),
    sa.Column('resolution_target_s', sa.Float(), nullable=False),
    sa.Column('resolution_elapsed_s', sa.Float(), nullable=False),
    sa.Column('resolution_running_since', UTC, nullable=True),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_tickets_unit_id_units'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['feedback_id'], ['feedback.id'], name=op.f('fk_tickets_feedback_id_feedback'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tickets'))
    )
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        for col in ('state', 'priority', 'category', 'assignee', 'unit_id', 'household_id', 'created_at'):
            batch_op.create_index(batch_op.f(f'ix_tickets_{col}'), [col], unique=False)

    op.create_table('ticket_events',
    sa.Column('id', BigIntPK, autoincrement=True, nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('at', UTC, nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('from_state', sa.String(length=20), nullable=True),
    sa.Column('to_state', sa.String(length=20), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_ticket_events_ticket_id_tickets'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_events'))
    )
    with op.batch_alter_table('ticket_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_events_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('ticket_attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('added_at', UTC, nullable=False),
    sa.Column('added_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_ticket_attachments_ticket_id_tickets'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_attachments'))
    )
    with op.batch_alter_table('ticket_attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_attachments_ticket_id'), ['ticket_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ticket_attachments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticket_attachments_ticket_id'))
    op.drop_table('ticket_attachments')
    with op.batch_alter_table('ticket_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticket_events_ticket_id'))
    op.drop_table('ticket_events')
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        for col in ('state', 'priority', 'category', 'assignee', 'unit_id', 'household_id', 'created_at'):
            batch_op.drop_index(batch_op.f(f'ix_tickets_{col}'))
    op.drop_table('tickets')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_household_submitted')
        batch_op.drop_index('ix_feedback_unit_submitted')
        batch_op.drop_index(batch_op.f('ix_feedback_import_id'))
        batch_op.drop_index(batch_op.f('ix_feedback_submitted_at'))
    op.drop_table('feedback')
    op.drop_table('feedback_imports')
