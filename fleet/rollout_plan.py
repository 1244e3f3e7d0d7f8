"""Rollout plans: which units, in which groups, under which thresholds, windows and rates.

Everything here is deterministic and needs no SSH: :func:`preview` answers the same groups that
:func:`fleet.rollout.create_rollout` stores and the runner then works through.

Defaults and their sources (FIELD_NOTES "Fleet management and rollouts"):

* groups: a canary of 5 units, then waves to 5 % → 25 % → 50 % → 100 % of the targets
  (Memfault's recommended staging: 5–10 canary devices, then 5 % → 25 % → 50 % → 100 %);
* success threshold 50 % (start the next group) and error threshold 50 % (pause, hawkBit's
  "emergency shutdown"), the error threshold applying once ``min_finished`` units of the group
  finished (AWS IoT Jobs ``minNumberOfExecutedThings``);
* at most 20 parallel SSH sessions (Ansible users raise forks from 5 to 30–100; 20 is the
  issue's default), a per-unit timeout of 600 s (hawkBit #693: a unit stuck "in progress" must
  count as failed), an optional rate limit of units started per minute (AWS IoT
  ``maximumPerMinute``) and an optional maintenance window in each unit's local time (Mender
  MEN-979, hawkBit's maintenance windows).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.models import MODEL_KINDS, Unit
from fleet.rollout_gates import GateSettings
from fleet.rollout_models import UnitPin

logger = logging.getLogger(__name__)

#: Memfault's recommended staging after the canary, cumulative percent of the targets.
DEFAULT_WAVES_PCT: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
#: Memfault: "5–10 canary devices".
DEFAULT_CANARY_UNITS = 5
#: hawkBit's default success and error conditions, percent.
DEFAULT_SUCCESS_THRESHOLD_PCT = 50.0
DEFAULT_ERROR_THRESHOLD_PCT = 50.0
#: The issue's default number of parallel SSH sessions.
DEFAULT_MAX_PARALLEL = 20
#: Per-unit timeout, s (a unit stuck "in progress" counts as failed; hawkBit #693).
DEFAULT_UNIT_TIMEOUT_S = 600.0


class TargetFilter(BaseModel):
    """Which units a rollout may touch. Empty lists do not filter; given lists must all match.

    Attributes
    ----------
    sites, hardware_revs
        The unit's site / hardware revision is one of these.
    tags
        The unit carries every one of these tags.
    current_versions
        The unit's current version of the rollout's kind is one of these (``"none"`` matches a
        unit with no version recorded).
    serials
        Only these units (unknown serials are reported as excluded, the rest go on).
    exclude_serials
        Never these units.
    """

    model_config = ConfigDict(extra="forbid")

    sites: list[str] = Field(default_factory=list)
    hardware_revs: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    current_versions: list[str] = Field(default_factory=list)
    serials: list[str] = Field(default_factory=list)
    exclude_serials: list[str] = Field(default_factory=list)

    def matches(self, unit: Unit, kind: str) -> str | None:
        """None if ``unit`` passes the filter, else why not (one short phrase)."""
        if self.serials and unit.serial not in self.serials:
            return "not in the explicit unit list"
        if unit.serial in self.exclude_serials:
            return "excluded by serial"
        if self.sites and unit.site not in self.sites:
            return f"site {unit.site!r} not selected"
        if self.hardware_revs and unit.hardware_rev not in self.hardware_revs:
            return f"hardware revision {unit.hardware_rev!r} not selected"
        missing = [t for t in self.tags if t not in (unit.tags or [])]
        if missing:
            return f"lacks tag(s) {', '.join(missing)}"
        current = getattr(unit, f"{kind}_version", None) or "none"
        if self.current_versions and current not in self.current_versions:
            return f"runs {kind} {current}, not one of the selected versions"
        return None


class MaintenanceWindow(BaseModel):
    """A daily window in each unit's local time (``Unit.timezone``); units outside it wait.

    ``start`` > ``end`` crosses midnight (e.g. 22:00–04:00). ``start`` == ``end`` is refused
    (say no window instead). The window is half open: ``start`` ≤ local time < ``end``.
    """

    model_config = ConfigDict(extra="forbid")

    start: time
    end: time

    @model_validator(mode="after")
    def _not_empty(self) -> MaintenanceWindow:
        if self.start == self.end:
            raise ValueError(f"maintenance window {self.start:%H:%M}–{self.end:%H:%M} is empty; "
                             "give different start and end times, or no window for any time")
        return self

    @staticmethod
    def _zone(name: str | None) -> ZoneInfo:
        try:
            return ZoneInfo(name or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            logger.warning("unknown time zone %r: using UTC for the maintenance window", name)
            return ZoneInfo("UTC")

    def is_open(self, now: datetime, tz: str | None) -> bool:
        """True if ``now`` (aware) falls in the window in zone ``tz`` (IANA name)."""
        local = now.astimezone(self._zone(tz)).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def next_open(self, now: datetime, tz: str | None) -> datetime:
        """The next time (aware UTC) the window is open in zone ``tz``: ``now`` if open now."""
        if self.is_open(now, tz):
            return now.astimezone(UTC)
        zone = self._zone(tz)
        local_date = now.astimezone(zone).date()
        for days in range(0, 3):
            candidate = datetime.combine(local_date + timedelta(days=days), self.start, zone)
            if candidate.astimezone(UTC) > now:
                return candidate.astimezone(UTC)
        raise AssertionError("unreachable: a daily window opens within two days")  # pragma: no cover

    def label(self) -> str:
        return f"{self.start:%H:%M}–{self.end:%H:%M} local"


class RolloutPlan(BaseModel):
    """Everything a rollout needs besides the units' current state. JSON-able; stored with it.

    Attributes
    ----------
    kind, version
        What to install: a model kind (``stt``, ``qa``, ``tts``) and a registry version.
    targets
        The :class:`TargetFilter`.
    canary_units, canary_pct
        The first group: this many units, or this percentage of the targets (rounded up, at
        least 1). Both None or 0: no canary.
    waves_pct
        Cumulative percentages of the targets reached after each further group (ascending,
        the last 100).
    success_threshold_pct, error_threshold_pct, min_finished
        Per group: share that must succeed to start the next group; share of finished units
        that failed at which the rollout pauses; finished units before the error threshold
        applies.
    max_parallel
        Parallel SSH sessions at most.
    unit_timeout_s, health_timeout_s
        Per unit: the whole update, and the health gate after the restart (s).
    max_per_minute
        Units started per minute at most (None: no limit).
    window
        Maintenance window in each unit's local time (None: any time).
    gate
        Voice-quality gate settings (:class:`fleet.rollout_gates.GateSettings`).
    order_salt
        Salt of the deterministic unit order (default ``"<kind>:<version>"``).
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    version: str = Field(min_length=1, max_length=64)
    targets: TargetFilter = Field(default_factory=TargetFilter)
    canary_units: int | None = Field(default=DEFAULT_CANARY_UNITS, ge=0)
    canary_pct: float | None = Field(default=None, gt=0, le=100)
    waves_pct: list[float] = Field(default_factory=lambda: list(DEFAULT_WAVES_PCT))
    success_threshold_pct: float = Field(default=DEFAULT_SUCCESS_THRESHOLD_PCT, ge=0, le=100)
    error_threshold_pct: float = Field(default=DEFAULT_ERROR_THRESHOLD_PCT, gt=0, le=100)
    min_finished: int = Field(default=1, ge=1)
    max_parallel: int = Field(default=DEFAULT_MAX_PARALLEL, ge=1, le=500)
    unit_timeout_s: float = Field(default=DEFAULT_UNIT_TIMEOUT_S, gt=0)
    health_timeout_s: float = Field(default=60.0, gt=0)
    max_per_minute: int | None = Field(default=None, ge=1)
    window: MaintenanceWindow | None = None
    gate: GateSettings = Field(default_factory=GateSettings)
    order_salt: str | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {value!r}; expected one of {', '.join(MODEL_KINDS)}")
        return value

    @field_validator("waves_pct")
    @classmethod
    def _waves(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one wave (e.g. 100)")
        if any(not 0 < v <= 100 for v in value):
            raise ValueError(f"wave percentages must be in (0, 100], got {value}")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"wave percentages are cumulative and must increase, got {value}")
        if value[-1] != 100:
            raise ValueError(f"the last wave must reach 100 %, got {value[-1]:g} %")
        return value

    @model_validator(mode="after")
    def _canary(self) -> RolloutPlan:
        if self.canary_pct is not None and self.canary_units:
            raise ValueError("give either canary_units or canary_pct, not both")
        return self

    def salt(self) -> str:
        return self.order_salt if self.order_salt is not None else f"{self.kind}:{self.version}"


# -- groups and thresholds ------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    """One group of a split: its name, the cumulative share reached, and its unit count."""

    index: int
    name: str
    cumulative_pct: float
    size: int


def split_groups(n_targets: int, plan: RolloutPlan) -> list[GroupSpec]:
    """Split ``n_targets`` ordered units into the plan's groups (empty groups are dropped).

    The canary takes the first ``canary_units`` (or ``ceil(canary_pct % × n)``, at least 1);
    wave *i* then ends at unit ``ceil(waves_pct[i] % × n)`` (never before the end of the group
    before it). E.g. 100 targets with the defaults: 5, 0 (dropped), 20, 25, 50 units.
    """
    groups: list[GroupSpec] = []
    end = 0
    if n_targets <= 0:
        return groups
    if plan.canary_pct is not None:
        canary = max(1, math.ceil(plan.canary_pct * n_targets / 100 - 1e-9))
    else:
        canary = plan.canary_units or 0
    canary = min(canary, n_targets)
    if canary:
        end = canary
        groups.append(GroupSpec(0, "canary", 100.0 * end / n_targets, canary))
    waves = 0
    for pct in plan.waves_pct:
        stop = max(end, min(n_targets, math.ceil(pct * n_targets / 100 - 1e-9)))
        if stop > end:
            waves += 1
            groups.append(GroupSpec(len(groups), f"wave {waves}", 100.0 * stop / n_targets, stop - end))
            end = stop
    return groups


@dataclass(frozen=True)
class GroupVerdict:
    """The thresholds applied to one group's unit counts.

    Attributes
    ----------
    complete
        Every unit of the group finished.
    error_tripped
        ``failed / finished ≥ error_threshold_pct`` with at least ``min_finished`` finished (or
        the whole group finished): pause the rollout.
    success_met
        ``succeeded / size ≥ success_threshold_pct``: the next group may start once complete.
    failure_rate, success_rate
        The two shares (0–1); failure over finished units, success over the group's size.
    """

    complete: bool
    error_tripped: bool
    success_met: bool
    failure_rate: float
    success_rate: float


def group_verdict(size: int, succeeded: int, failed: int, finished: int, *,
                  success_threshold_pct: float, error_threshold_pct: float,
                  min_finished: int) -> GroupVerdict:
    """Apply a group's success and error thresholds (pure; see :class:`GroupVerdict`).

    ``finished`` counts every unit in a final state (succeeded, failed, rolled back, skipped,
    cancelled); ``failed`` counts failed and rolled-back units. Skipped units (pinned meanwhile)
    count in the size but are neither success nor failure.
    """
    failure_rate = failed / finished if finished else 0.0
    success_rate = succeeded / size if size else 1.0
    complete = finished >= size
    enough = finished >= min(min_finished, size) and finished > 0
    tripped = enough and failed > 0 and failure_rate * 100 >= error_threshold_pct - 1e-9
    return GroupVerdict(complete, tripped, success_rate * 100 >= success_threshold_pct - 1e-9,
                        failure_rate, success_rate)


# -- rate limit -----------------------------------------------------------------------------------
class RateLimiter:
    """Units started per minute at most, over a sliding 60 s window (AWS IoT ``maximumPerMinute``).

    Parameters
    ----------
    max_per_minute
        None: unlimited.
    recent
        Start times already in the window (e.g. read back from the database on resume).
    """

    def __init__(self, max_per_minute: int | None, recent: Iterable[datetime] = ()) -> None:
        self.max_per_minute = max_per_minute
        self._starts: deque[datetime] = deque(sorted(recent))

    def _trim(self, now: datetime) -> None:
        while self._starts and self._starts[0] <= now - timedelta(minutes=1):
            self._starts.popleft()

    def next_slot(self, now: datetime) -> datetime:
        """When the next unit may start: ``now`` if allowed now."""
        if self.max_per_minute is None:
            return now
        self._trim(now)
        if len(self._starts) < self.max_per_minute:
            return now
        return self._starts[len(self._starts) - self.max_per_minute] + timedelta(minutes=1)

    def allow(self, now: datetime) -> bool:
        return self.next_slot(now) <= now

    def started(self, at: datetime) -> None:
        """Record that a unit started at ``at``."""
        self._starts.append(at)


# -- preview --------------------------------------------------------------------------------------
def order_key(salt: str, serial: str) -> str:
    """Sort key of a unit: SHA-256 of ``"<salt>/<serial>"`` (stable, spreads sites and batches)."""
    return hashlib.sha256(f"{salt}/{serial}".encode()).hexdigest()


@dataclass
class PreviewUnit:
    serial: str
    unit_id: int
    site: str
    timezone: str
    current_version: str | None


@dataclass
class PreviewGroup:
    """A group as it will run: its thresholds and its units, in order."""

    index: int
    name: str
    cumulative_pct: float
    success_threshold_pct: float
    error_threshold_pct: float
    min_finished: int
    units: list[PreviewUnit] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "cumulative_pct": round(self.cumulative_pct, 2),
                "success_threshold_pct": self.success_threshold_pct,
                "error_threshold_pct": self.error_threshold_pct, "min_finished": self.min_finished,
                "units": [u.serial for u in self.units]}


@dataclass
class PlanPreview:
    """What a plan would do now: the groups with their units, and each unit left out with why."""

    plan: RolloutPlan
    groups: list[PreviewGroup]
    excluded: dict[str, str]

    @property
    def total_units(self) -> int:
        return sum(len(g.units) for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.plan.kind, "version": self.plan.version, "total_units": self.total_units,
                "groups": [g.as_dict() for g in self.groups], "excluded": dict(self.excluded)}


def pins(session: Session, kind: str) -> dict[str, str]:
    """Pinned version per serial for ``kind``."""
    return dict(session.execute(select(UnitPin.serial, UnitPin.version).where(UnitPin.kind == kind)).all())


def preview(session: Session, plan: RolloutPlan) -> PlanPreview:
    """The groups ``plan`` gives over the units in the database now (nothing is written).

    A unit is left out (with the reason in :attr:`PlanPreview.excluded`) when it fails the
    target filter, already runs ``plan.version``, is pinned to another version of the kind, or
    has no SSH address in the inventory; explicit serials that are not in the inventory are
    reported the same way. The rest are ordered by :func:`order_key` and split by
    :func:`split_groups`, so the same plan on the same inventory always gives the same groups.
    """
    excluded: dict[str, str] = {}
    pinned = pins(session, plan.kind)
    chosen: list[Unit] = []
    units = list(session.execute(select(Unit)).scalars())
    known = {u.serial for u in units}
    for serial in plan.targets.serials:
        if serial not in known:
            excluded[serial] = "not in the inventory (import it first: speakerops import)"
    for unit in units:
        why = plan.targets.matches(unit, plan.kind)
        if why is None and getattr(unit, f"{plan.kind}_version") == plan.version:
            why = f"already runs {plan.version}"
        if why is None and unit.serial in pinned and pinned[unit.serial] != plan.version:
            why = f"pinned to {plan.kind} {pinned[unit.serial]}"
        if why is None and not (unit.ssh_host and unit.ssh_port):
            why = "no SSH address in the inventory (ssh_host/ssh_port)"
        if why is None:
            chosen.append(unit)
        elif plan.targets.serials and unit.serial in plan.targets.serials or not plan.targets.serials:
            excluded[unit.serial] = why
    salt = plan.salt()
    chosen.sort(key=lambda u: order_key(salt, u.serial))
    groups: list[PreviewGroup] = []
    start = 0
    for spec in split_groups(len(chosen), plan):
        members = chosen[start:start + spec.size]
        start += spec.size
        groups.append(PreviewGroup(
            spec.index, spec.name, spec.cumulative_pct, plan.success_threshold_pct,
            plan.error_threshold_pct, plan.min_finished,
            [PreviewUnit(u.serial, u.id, u.site, u.timezone, getattr(u, f"{plan.kind}_version"))
             for u in members]))
    return PlanPreview(plan, groups, excluded)
