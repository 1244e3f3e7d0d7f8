"""Fleet tables: units, their heartbeat samples, and the collectors that write them.

Times are aware UTC (``speakerops.db.UTCDateTime``); physical units are in column names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from speakerops.db import Base

#: Model kinds a unit runs; one installed version per kind.
MODEL_KINDS: tuple[str, ...] = ("stt", "qa", "tts")

#: Unit states shown to operators (balena's Operational / Reduced functionality / Updating /
#: Disconnected, in the field's words). ``unknown`` until the first heartbeat.
UNIT_STATES: tuple[str, ...] = ("online", "degraded", "updating", "offline", "unknown")

#: Pipeline stages a unit reports latencies for, in request order (docs/unit-api.md).
STAGES: tuple[str, ...] = ("wake", "upload", "stt", "qa", "tts", "playback")

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so autoincrement works) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Unit(Base):
    """One smart speaker in the fleet, as inventoried and as last heard from."""

    __tablename__ = "units"

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    hardware_rev: Mapped[str] = mapped_column(String(32), default="")
    site: Mapped[str] = mapped_column(String(64), default="", index=True)
    region: Mapped[str] = mapped_column(String(64), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    agent_url: Mapped[str] = mapped_column(String(255))
    ssh_host: Mapped[str | None] = mapped_column(String(255))
    ssh_port: Mapped[int | None] = mapped_column(Integer)
    ssh_user: Mapped[str | None] = mapped_column(String(64))
    firmware_version: Mapped[str | None] = mapped_column(String(32))
    stt_version: Mapped[str | None] = mapped_column(String(64))
    qa_version: Mapped[str | None] = mapped_column(String(64))
    tts_version: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: The household agreed that recordings may be collected for diagnosis.
    consent_recordings: Mapped[bool] = mapped_column(default=False)
    #: The household agreed that free-text feedback may be stored.
    consent_feedback_text: Mapped[bool] = mapped_column(default=False)

    status: Mapped[str] = mapped_column(String(16), default="unknown", index=True)
    status_changed_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    last_poll_at: Mapped[datetime | None]
    #: What went wrong on the latest poll (None when it succeeded).
    last_poll_error: Mapped[str | None] = mapped_column(Text)
    #: Consecutive failed polls.
    poll_failures: Mapped[int] = mapped_column(default=0)
    #: Unit clock minus collector clock at the last heartbeat, seconds.
    clock_skew_s: Mapped[float | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    heartbeats: Mapped[list[Heartbeat]] = relationship(
        back_populates="unit", cascade="all, delete-orphan", passive_deletes=True
    )

    def model_versions(self) -> dict[str, str | None]:
        """Installed version per model kind, e.g. ``{"stt": "stt-1.4.0", ...}``."""
        return {kind: getattr(self, f"{kind}_version") for kind in MODEL_KINDS}

    def __repr__(self) -> str:
        return f"Unit({self.serial!r}, status={self.status!r})"


class Heartbeat(Base):
    """One ``/v1/health`` answer of a unit (docs/unit-api.md), as received by a collector."""

    __tablename__ = "heartbeats"
    __table_args__ = (Index("ix_heartbeats_unit_received", "unit_id", "received_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    #: When the collector received the answer (collector clock).
    received_at: Mapped[datetime] = mapped_column(index=True)
    #: The unit's own clock in the answer, if it sent a parseable one.
    unit_time: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(16))
    uptime_s: Mapped[float]
    cpu_pct: Mapped[float]
    temp_c: Mapped[float]
    mem_pct: Mapped[float]
    disk_free_mb: Mapped[float]
    mic_noise_dbfs: Mapped[float]
    wifi_rssi_dbm: Mapped[float]
    wake_false_accepts_per_h: Mapped[float]
    requests: Mapped[int]
    errors: Mapped[int]
    stt_version: Mapped[str | None] = mapped_column(String(64))
    qa_version: Mapped[str | None] = mapped_column(String(64))
    tts_version: Mapped[str | None] = mapped_column(String(64))
    #: Per stage, the request latencies since the previous heartbeat, ms: ``{"stt": [412.0, ...]}``.
    latency_ms: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    unit: Mapped[Unit] = relationship(back_populates="heartbeats")


class CollectorStatus(Base):
    """The latest cycle of each collector process (the console's status bar reads it)."""

    __tablename__ = "collector_status"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime]
    last_cycle_at: Mapped[datetime | None]
    cycle_s: Mapped[float | None]
    interval_s: Mapped[float]
    units_polled: Mapped[int] = mapped_column(default=0)
    units_ok: Mapped[int] = mapped_column(default=0)
    units_failed: Mapped[int] = mapped_column(default=0)
    #: Heartbeats held in memory because the database refused the last write.
    pending_rows: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
