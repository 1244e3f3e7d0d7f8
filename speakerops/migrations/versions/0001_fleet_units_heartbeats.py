"""fleet: units, heartbeats, collector status

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

from speakerops.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("hardware_rev", sa.String(32), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("agent_url", sa.String(255), nullable=False),
        sa.Column("ssh_host", sa.String(255)),
        sa.Column("ssh_port", sa.Integer()),
        sa.Column("ssh_user", sa.String(64)),
        sa.Column("firmware_version", sa.String(32)),
        sa.Column("stt_version", sa.String(64)),
        sa.Column("qa_version", sa.String(64)),
        sa.Column("tts_version", sa.String(64)),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("consent_recordings", sa.Boolean(), nullable=False),
        sa.Column("consent_feedback_text", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_changed_at", UTCDateTime()),
        sa.Column("last_heartbeat_at", UTCDateTime()),
        sa.Column("last_poll_at", UTCDateTime()),
        sa.Column("last_poll_error", sa.Text()),
        sa.Column("poll_failures", sa.Integer(), nullable=False),
        sa.Column("clock_skew_s", sa.Float()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_units"),
        sa.UniqueConstraint("serial", name="uq_units_serial"),
    )
    op.create_index("ix_units_site", "units", ["site"])
    op.create_index("ix_units_status", "units", ["status"])

    op.create_table(
        "heartbeats",
        sa.Column("id", BigIntPK, autoincrement=True),
        sa.Column("unit_id", sa.Integer(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("unit_time", UTCDateTime()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("uptime_s", sa.Float(), nullable=False),
        sa.Column("cpu_pct", sa.Float(), nullable=False),
        sa.Column("temp_c", sa.Float(), nullable=False),
        sa.Column("mem_pct", sa.Float(), nullable=False),
        sa.Column("disk_free_mb", sa.Float(), nullable=False),
        sa.Column("mic_noise_dbfs", sa.Float(), nullable=False),
        sa.Column("wifi_rssi_dbm", sa.Float(), nullable=False),
        sa.Column("wake_false_accepts_per_h", sa.Float(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("stt_version", sa.String(64)),
        sa.Column("qa_version", sa.String(64)),
        sa.Column("tts_version", sa.String(64)),
        sa.Column("latency_ms", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_heartbeats"),
        sa.ForeignKeyConstraint(
            ["unit_id"], ["units.id"], name="fk_heartbeats_unit_id_units", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_heartbeats_unit_received", "heartbeats", ["unit_id", "received_at"])
    op.create_index("ix_heartbeats_received_at", "heartbeats", ["received_at"])

    op.create_table(
        "collector_status",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_cycle_at", UTCDateTime()),
        sa.Column("cycle_s", sa.Float()),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("units_polled", sa.Integer(), nullable=False),
        sa.Column("units_ok", sa.Integer(), nullable=False),
        sa.Column("units_failed", sa.Integer(), nullable=False),
        sa.Column("pending_rows", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.PrimaryKeyConstraint("name", name="pk_collector_status"),
    )


def downgrade() -> None:
    op.drop_table("collector_status")
    op.drop_index("ix_heartbeats_received_at", table_name="heartbeats")
    op.drop_index("ix_heartbeats_unit_received", table_name="heartbeats")
    op.drop_table("heartbeats")
    op.drop_index("ix_units_status", table_name="units")
    op.drop_index("ix_units_site", table_name="units")
    op.drop_table("units")
