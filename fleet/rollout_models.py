"""Rollout tables: rollouts, their groups, the per-unit state of each, and unit pins (issue #5).

Every state change of a rollout is written here and committed before it is acted on, so a runner
killed mid-rollout and started again resumes from the database alone (see :mod:`fleet.rollout`).
Times are aware UTC (``speakerops.db.UTCDateTime``); units are in column names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from speakerops.db import Base

#: Rollout states. ``planned`` → ``running`` ⇄ ``paused``; ``running``/``paused`` →
#: ``cancelling`` → ``cancelled``; ``running`` → ``completed`` (every group met its success
#: threshold) or ``failed`` (the last group ended below it). ``retry`` brings failed units back.
ROLLOUT_STATES: tuple[str, ...] = (
    "planned", "running", "paused", "cancelling", "cancelled", "completed", "failed",
)
#: States in which a rollout will do no more work unless an operator retries.
ROLLOUT_FINAL: frozenset[str] = frozenset({"cancelled", "completed", "failed"})

#: Group states: ``pending`` → ``running`` → ``succeeded`` | ``failed`` (below its success
#: threshold) | ``cancelled``.
GROUP_STATES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "cancelled")

#: Per-unit states. ``waiting_window``: the unit's maintenance window is closed now.
UNIT_STATES: tuple[str, ...] = (
    "pending", "waiting_window", "in_progress", "succeeded", "failed", "rolled_back", "skipped",
    "cancelled",
)
#: Unit states that end a unit's part in a rollout (until a retry).
UNIT_FINAL: frozenset[str] = frozenset({"succeeded", "failed", "rolled_back", "skipped", "cancelled"})
#: Unit states that count as failures for the error threshold.
UNIT_FAILED: frozenset[str] = frozenset({"failed", "rolled_back"})

BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Rollout(Base):
    """One staged rollout of a model version (``kind``/``version``) over a set of units."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    #: The :class:`fleet.rollout_plan.RolloutPlan` as JSON (``model_dump(mode="json")``).
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="planned", index=True)
    #: Why it is paused (or failed): operator's words or the gate's figures.
    pause_reason: Mapped[str | None] = mapped_column(Text)
    #: Written reason when the registry's gate was overridden to allow the version.
    gate_override_reason: Mapped[str | None] = mapped_column(Text)
    total_units: Mapped[int] = mapped_column(default=0)
    succeeded_units: Mapped[int] = mapped_column(default=0)
    failed_units: Mapped[int] = mapped_column(default=0)
    rolled_back_units: Mapped[int] = mapped_column(default=0)
    skipped_units: Mapped[int] = mapped_column(default=0)
    cancelled_units: Mapped[int] = mapped_column(default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    #: The process running it now (``host:pid``), None when no runner holds it.
    runner: Mapped[str | None] = mapped_column(String(160))
    #: Last time that runner wrote (its lease; a stale lease can be taken over).
    runner_seen_at: Mapped[datetime | None]

    groups: Mapped[list[RolloutGroup]] = relationship(
        back_populates="rollout", cascade="all, delete-orphan", order_by="RolloutGroup.index")

    def counts(self) -> dict[str, int]:
        """Unit counts by outcome, as stored."""
        return {"total": self.total_units, "succeeded": self.succeeded_units,
                "failed": self.failed_units, "rolled_back": self.rolled_back_units,
                "skipped": self.skipped_units, "cancelled": self.cancelled_units}

    def __repr__(self) -> str:
        return f"Rollout({self.id}, {self.kind}={self.version!r}, state={self.state!r})"


class RolloutGroup(Base):
    """One stage of a rollout (the canary, then each wave) with its thresholds."""

    __tablename__ = "rollout_groups"
    __table_args__ = (UniqueConstraint("rollout_id", "index", name="uq_rollout_groups_rollout_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    #: 0 for the first group (the canary when there is one).
    index: Mapped[int]
    name: Mapped[str] = mapped_column(String(32))
    #: Cumulative share of the targets updated once this group is done, percent.
    cumulative_pct: Mapped[float]
    units: Mapped[int]
    #: Share of the group that must succeed before the next group starts, percent.
    success_threshold_pct: Mapped[float]
    #: Share of the group's finished units that failed at which the rollout pauses, percent.
    error_threshold_pct: Mapped[float]
    #: Finished units needed before the error threshold applies.
    min_finished: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default="pending")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: The voice-quality gate's figures after this group (:class:`fleet.rollout_gates.GateResult`).
    gate_result: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    rollout: Mapped[Rollout] = relationship(back_populates="groups")


class RolloutUnit(Base):
    """One unit's part in a rollout: its state, the step it reached, and what was sent."""

    __tablename__ = "rollout_units"
    __table_args__ = (
        UniqueConstraint("rollout_id", "serial", name="uq_rollout_units_rollout_serial"),
        Index("ix_rollout_units_rollout_state", "rollout_id", "state"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    group_id: Mapped[int] = mapped_column(ForeignKey("rollout_groups.id", ondelete="CASCADE"), index=True)
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id", ondelete="SET NULL"))
    serial: Mapped[str] = mapped_column(String(64))
    #: Position in the plan's deterministic order (0 first).
    position: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: The last per-unit step begun or reached (``fleet.unit_update.Step`` value).
    step_reached: Mapped[str | None] = mapped_column(String(32))
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    #: How many times the engine started this unit (a resumed or retried unit counts again).
    attempts: Mapped[int] = mapped_column(default=0)
    #: The version the unit ran before (from the plan, then from the unit itself).
    previous_version: Mapped[str | None] = mapped_column(String(64))
    #: The version the unit runs after its last attempt, as the unit reported it.
    final_version: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class UnitPin(Base):
    """A unit held at a model version: rollouts that would move it skip it."""

    __tablename__ = "unit_pins"
    __table_args__ = (UniqueConstraint("serial", "kind", name="uq_unit_pins_serial_kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    pinned_by: Mapped[str] = mapped_column(String(128))
    pinned_at: Mapped[datetime]
