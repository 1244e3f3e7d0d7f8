"""Fleet tables: units, their heartbeat samples, and the collectors that write them.

Times are aware UTC (``speakerops.db.UTCDateTime``); physical units are in column names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, text
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
    #: The last (up to 21) poll observations, oldest first: ``1`` answered, ``0`` did not
    #: (:mod:`fleet.unit_states`, Nagios' flap-detection window).
    state_history: Mapped[str] = mapped_column(String(21), default="", server_default="")
    #: Weighted percent state change over ``state_history``, 0–100 (None before the first poll).
    state_change_pct: Mapped[float | None]
    #: The unit is flapping (hysteresis between 25 % and 50 % state change, fleet.unit_states).
    flapping: Mapped[bool] = mapped_column(default=False, server_default=false())
    #: When the current flapping began (None when not flapping).
    flapping_since: Mapped[datetime | None]
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


#: Scopes an offline policy can name, most specific last (``fleet.unit_states``).
OFFLINE_POLICY_SCOPES: tuple[str, ...] = ("site", "hardware_rev", "tag", "unit")


class OfflinePolicy(Base):
    """A group's own offline threshold (Mender MEN-4798), e.g. lab units switched off at night.

    ``scope_kind`` is one of :data:`OFFLINE_POLICY_SCOPES`, ``scope_value`` the site, hardware
    revision, tag or unit serial. For a unit the most specific policy wins (unit > tag > site =
    hardware_rev; ties: the longest threshold); without one, the collector's default
    (1.5 × the poll interval) applies.
    """

    __tablename__ = "offline_policies"
    __table_args__ = (UniqueConstraint("scope_kind", "scope_value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope_kind: Mapped[str] = mapped_column(String(16))
    scope_value: Mapped[str] = mapped_column(String(128))
    #: Seconds without a heartbeat after which a unit in the scope is offline.
    offline_after_s: Mapped[float]
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime | None]


#: Upper edges (ms) of the latency histogram buckets kept in rollups; the last bucket is open.
#: Log-spaced from 25 ms to 20 s so that p50/p95/p99 of any stage come back within ~12 % —
#: percentiles over minutes and hours cannot be computed from averages.
LATENCY_EDGES_MS: tuple[float, ...] = (
    25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 750, 900, 1000, 1250, 1500, 1750, 2000,
    2250, 2500, 2750, 3000, 3500, 4000, 5000, 6000, 8000, 10000, 15000, 20000,
)


class _RollupFigures:
    """The figures of a rollup (a unit's or a cohort's heartbeats over one bucket)."""

    heartbeats: Mapped[int]
    cpu_pct_avg: Mapped[float | None]
    cpu_pct_max: Mapped[float | None]
    temp_c_avg: Mapped[float | None]
    temp_c_max: Mapped[float | None]
    mem_pct_avg: Mapped[float | None]
    disk_free_mb_min: Mapped[float | None]
    mic_noise_dbfs_avg: Mapped[float | None]
    wifi_rssi_dbm_avg: Mapped[float | None]
    wake_false_accepts_per_h_avg: Mapped[float | None]
    requests: Mapped[int]
    errors: Mapped[int]
    #: Reboots seen in the bucket (uptime went down between heartbeats).
    reboots: Mapped[int] = mapped_column(default=0)
    #: Requests whose end to end exceeded 3,000 ms / whose server part exceeded 2,000 ms.
    e2e_over_budget: Mapped[int] = mapped_column(default=0)
    server_over_budget: Mapped[int] = mapped_column(default=0)
    #: Per stage (and ``e2e``, ``server``), request counts per :data:`LATENCY_EDGES_MS` bucket
    #: (len(edges) + 1 counts), e.g. ``{"stt": [0, 3, 10, ...], ...}``.
    latency_hist: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Per stage, the sum of latencies in ms (for means).
    latency_sum_ms: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class _RollupColumns(_RollupFigures):
    """Columns shared by the 1-minute and 1-hour rollups of a unit's heartbeats."""

    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    #: Start of the bucket (aware UTC, aligned to the minute or hour).
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True, index=True)


class UnitRollup1m(_RollupColumns, Base):
    """A unit's heartbeats summarized per minute (kept 48 hours; cohorts' minutes 30 days)."""

    __tablename__ = "unit_rollups_1m"


class UnitRollup1h(_RollupColumns, Base):
    """A unit's heartbeats summarized per hour (kept one year)."""

    __tablename__ = "unit_rollups_1h"


class CohortRollup1m(_RollupFigures, Base):
    """The heartbeats of one cohort summarized per minute (kept 30 days, ``fleet.rollups``).

    A cohort is the units sharing site, hardware revision, firmware and model versions in that
    minute: versions as the heartbeats reported them (the unit's inventory where a heartbeat
    names none), site and hardware revision from the unit. ``""`` stands for "not known".
    The figures (:class:`_RollupFigures`) are those of :class:`UnitRollup1m` summed over the
    cohort: counts and histograms summed, means weighted by heartbeats, max/min over the units.
    """

    __tablename__ = "cohort_rollups_1m"

    #: Start of the minute (aware UTC).
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(String(64), primary_key=True)
    hardware_rev: Mapped[str] = mapped_column(String(32), primary_key=True)
    firmware_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    stt_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    qa_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    tts_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Distinct units that sent a heartbeat in the minute.
    units: Mapped[int]


class RollupWatermark(Base):
    """How far each rollup level has been computed (aware UTC, exclusive)."""

    __tablename__ = "rollup_watermarks"

    level: Mapped[str] = mapped_column(String(8), primary_key=True)  # "1m" | "1h"
    computed_until: Mapped[datetime]


#: Alert severities, least to most urgent.
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
#: Alert states: open → acknowledged → resolved (auto when the condition clears, or by hand).
ALERT_STATES: tuple[str, ...] = ("open", "acknowledged", "resolved")


class AlertRule(Base):
    """A condition on a metric over a scope, held for a duration.

    ``metric`` names a unit figure (``temp_c``, ``cpu_pct``, ``mic_noise_dbfs``, ``error_rate``…),
    ``offline`` (a unit without heartbeat) or ``slo_burn_1h`` / ``slo_burn_24h`` (error-budget
    burn rate). ``scope_kind`` is ``fleet``, ``site``, ``hardware_rev``, ``tag`` or ``unit`` with
    ``scope_value`` naming which.
    """

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    metric: Mapped[str] = mapped_column(String(64))
    scope_kind: Mapped[str] = mapped_column(String(16), default="fleet")
    scope_value: Mapped[str | None] = mapped_column(String(128))
    comparison: Mapped[str] = mapped_column(String(2))  # > >= < <=
    threshold: Mapped[float]
    duration_s: Mapped[float] = mapped_column(default=0.0)
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    enabled: Mapped[bool] = mapped_column(default=True)
    builtin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]


class Alert(Base):
    """One firing of a rule on one scope; at most one not resolved per (rule, scope_key)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("uq_alerts_open_rule_scope", "rule_id", "scope_key", unique=True,
              sqlite_where=text("state != 'resolved'"), postgresql_where=text("state != 'resolved'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"), index=True)
    #: What the alert is about, e.g. ``unit=SPK-000042`` or ``site=busan-office``.
    scope_key: Mapped[str] = mapped_column(String(160))
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    severity: Mapped[str] = mapped_column(String(16))
    #: When the condition was first seen true (the alert fires after the rule's duration).
    pending_since: Mapped[datetime | None]
    opened_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    value: Mapped[float | None]
    message: Mapped[str] = mapped_column(Text, default="")
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None]
    #: ``auto`` when the condition cleared, else who resolved it.
    resolved_by: Mapped[str | None] = mapped_column(String(64))


class AlertEvent(Base):
    """The history of an alert: opened, acknowledged, resolved, reopened."""

    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")


# -- model registry and SSH known hosts (issue #5) -------------------------------------------------
class ModelVersion(Base):
    """One model version in the registry: a signed bundle stored under
    ``<data_dir>/registry/<kind>/<version>/`` (see :mod:`fleet.registry`)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("kind", "version", name="uq_model_versions_kind_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), index=True)  # stt | qa | tts
    version: Mapped[str] = mapped_column(String(64))
    #: ``{name: {"sha256": hex, "bytes": n}}`` as in the bundle's manifest.
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_bytes: Mapped[int] = mapped_column(BigInteger)
    #: SHA-256 of the manifest's canonical bytes (what the signature covers).
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    #: Ed25519 signature over the canonical manifest, base64.
    signature: Mapped[str] = mapped_column(Text)
    #: First 16 hex digits of the SHA-256 of the raw signing public key.
    key_id: Mapped[str] = mapped_column(String(16))
    notes: Mapped[str] = mapped_column(Text, default="")
    #: The ``metadata`` object of the manifest (templates hash, quantized, voice …).
    bundle_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: When the bundle was built (manifest ``created_at``), if it says.
    built_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128), default="")
    #: The stored, signed copy of the bundle.
    source_path: Mapped[str] = mapped_column(Text)
    #: Report of ``speakerops evaluate --json`` / ``inference_core.evaluate.evaluate`` (or None).
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluated_at: Mapped[datetime | None]
    #: All applicable service requirements passed (None: not evaluated, or nothing applicable).
    evaluation_passed: Mapped[bool | None]
    #: Verdicts per requirement: ``[{"key", "label", "target", "value", "passed"}, ...]``.
    requirements: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    #: An operator's override of a failed evaluation gate (the reason is also in the audit log).
    gate_override_reason: Mapped[str | None] = mapped_column(Text)
    gate_override_by: Mapped[str | None] = mapped_column(String(128))
    gate_override_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"ModelVersion({self.kind!r}, {self.version!r})"


class ModelAlias(Base):
    """A named pointer to a version of a kind (MLflow-style ``production``, ``canary``)."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("kind", "alias", name="uq_model_aliases_kind_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(128), default="")

    version: Mapped[ModelVersion] = relationship()


#: Known-host states: a key seen but not approved yet, approved, or refused (a changed key).
HOST_KEY_STATES: tuple[str, ...] = ("pending", "approved", "refused")


class KnownHost(Base):
    """An SSH host key a unit presented, and whether an operator approved it (``fleet.ssh``)."""

    __tablename__ = "known_hosts"
    __table_args__ = (UniqueConstraint("serial", "fingerprint", name="uq_known_hosts_serial_fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    key_type: Mapped[str] = mapped_column(String(64))
    key_base64: Mapped[str] = mapped_column(Text)
    #: OpenSSH form ``SHA256:<base64 without padding>``.
    fingerprint: Mapped[str] = mapped_column(String(80))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[datetime | None]
