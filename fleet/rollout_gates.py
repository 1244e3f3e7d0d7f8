"""The voice-quality gate of a rollout: after each group, do its units serve worse than the rest?

None of hawkBit, Mender, AWS IoT Jobs or balena has this gate (issue #5). After a group finishes,
its updated units' service figures since the update are compared with the units of the same
rollout not yet updated, over the same span (so time of day and load affect both sides alike):

* error rate: failed requests / requests (heartbeats and rollups, :mod:`fleet.slo`);
* p95 end-to-end latency, ms (the sum of the six stages per request, docs/unit-api.md);
* wake-word false accepts per hour (mean of the units' heartbeats);
* correction rate: rated answers the user corrected, repeated or cancelled right after (Amazon's
  reformulation defects) / rated answers, from the ``feedback`` table when it exists (issue #6).

When no unit is left to compare with (the last group), the group is compared with its own units
over the same span before the update. The rollout pauses when any figure is worse by more than
its margin; the figures go into the pause reason.

Default margins are SpeakerOps choices, not field figures: +2 percentage points of errors
(a healthy fleet errs ~1–5 %, so +2 points is a clear step, not noise), +10 % of p95 latency
(the stage-breakdown view flags changes of that size), +0.5 false accepts per hour, +3 points
of corrections; fewer than 30 requests on either side is too little to judge (the gate passes
and says so, unless ``require_data``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Table, case, func, inspect, select
from sqlalchemy.orm import Session

from fleet.models import Heartbeat, Unit, UnitRollup1m
from fleet.slo import _collect

logger = logging.getLogger(__name__)

#: Feedback rows needed on a side before its correction rate is compared.
MIN_FEEDBACK_ROWS = 20


class GateSettings(BaseModel):
    """Voice-quality gate settings (see the module docstring for the defaults' reasoning).

    Attributes
    ----------
    enabled
        Run the gate after each group.
    soak_s
        Seconds of service after a group finished before its figures are judged (heartbeats
        arrive every 10 s; rollups every minute). 300 s by default.
    min_requests
        Requests needed on each side to judge; fewer → not judged.
    require_data
        Pause when there are too few requests to judge (default: pass, and say so).
    error_rate_margin
        Absolute increase of the error rate (0–1) that pauses.
    p95_margin_pct
        Relative increase of p95 end-to-end latency, percent, that pauses.
    wake_fa_margin_per_h
        Absolute increase of wake-word false accepts per hour that pauses.
    correction_rate_margin
        Absolute increase of the correction rate (0–1) that pauses.
    baseline_s
        Shortest span of the group's own pre-update baseline (when no control units are left), s.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    soak_s: float = Field(default=300.0, ge=0)
    min_requests: int = Field(default=30, ge=0)
    require_data: bool = False
    error_rate_margin: float = Field(default=0.02, ge=0)
    p95_margin_pct: float = Field(default=10.0, ge=0)
    wake_fa_margin_per_h: float = Field(default=0.5, ge=0)
    correction_rate_margin: float = Field(default=0.03, ge=0)
    baseline_s: float = Field(default=3600.0, gt=0)


@dataclass
class ServiceFigures:
    """Service figures of a set of units over a span (None where there was nothing to measure)."""

    units: int
    requests: int
    errors: int
    error_rate: float | None
    p95_e2e_ms: float | None
    wake_fa_per_h: float | None
    correction_rate: float | None = None


@dataclass
class GateResult:
    """The gate's verdict: ``passed``, the figures on both sides, and what was worse."""

    passed: bool
    judged: bool
    compared_with: str
    since: datetime
    until: datetime
    group: ServiceFigures
    control: ServiceFigures
    worse: list[str] = field(default_factory=list)
    note: str = ""

    def reason(self) -> str:
        """One line for a pause reason or a status line."""
        if not self.judged:
            return f"voice-quality gate not judged: {self.note}"
        if self.passed:
            return f"voice-quality gate passed against {self.compared_with}"
        return (f"voice-quality gate: updated units worse than {self.compared_with} — "
                + "; ".join(self.worse))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"], data["until"] = self.since.isoformat(), self.until.isoformat()
        data["reason"] = self.reason()
        return data


def _feedback_table(session: Session) -> Table | None:
    bind = session.get_bind()
    try:
        if not inspect(bind).has_table("feedback"):
            return None
        from sqlalchemy import MetaData

        return Table("feedback", MetaData(), autoload_with=bind)
    except Exception:  # noqa: BLE001 - the gate must not fail on a table it only reads
        logger.exception("cannot read the feedback table; correction rate left out")
        return None


def _corrections(session: Session, table: Table, ids: list[int], since: datetime,
                 until: datetime) -> tuple[int, int] | None:
    """(answers the user corrected, repeated or cancelled; feedback rows) of these units in
    ``(since, until]``, or None if the table lacks the columns (issue #6's ``feedback``)."""
    cols = table.c
    time_col = next((cols[n] for n in ("submitted_at", "received_at") if n in cols), None)
    flags = [cols[n] for n in ("corrected", "repeated", "cancelled") if n in cols]
    if time_col is None or "unit_id" not in cols or not flags:
        return None
    defect = flags[0].is_(True)
    for flag in flags[1:]:
        defect = defect | flag.is_(True)
    stmt = select(func.count(), func.sum(case((defect, 1), else_=0))).select_from(table).where(
        cols["unit_id"].in_(ids or [-1]), time_col > since, time_col <= until)
    try:
        total, defects = session.execute(stmt).one()
    except Exception:  # noqa: BLE001 - the gate must not fail on a table it only reads
        logger.exception("cannot count corrections in the feedback table")
        return None
    return int(defects or 0), int(total or 0)


def _wake_fa(session: Session, ids: list[int], since: datetime, until: datetime) -> float | None:
    """Mean wake-word false accepts per hour over heartbeats (raw, else 1-minute rollups)."""
    raw = session.execute(select(func.avg(Heartbeat.wake_false_accepts_per_h)).where(
        Heartbeat.unit_id.in_(ids or [-1]), Heartbeat.received_at > since,
        Heartbeat.received_at <= until)).scalar_one()
    if raw is not None:
        return float(raw)
    rolled = session.execute(select(
        func.sum(UnitRollup1m.wake_false_accepts_per_h_avg * UnitRollup1m.heartbeats),
        func.sum(UnitRollup1m.heartbeats)).where(
        UnitRollup1m.unit_id.in_(ids or [-1]), UnitRollup1m.bucket_start >= since,
        UnitRollup1m.bucket_start < until)).one()
    return float(rolled[0]) / float(rolled[1]) if rolled[1] else None


def service_figures(session: Session, serials: list[str], since: datetime, until: datetime) -> ServiceFigures:
    """Error rate, p95 end-to-end latency, wake false accepts and correction rate of ``serials``
    over ``(since, until]`` (aware UTC), from heartbeats, rollups and feedback."""
    ids = list(session.execute(select(Unit.id).where(Unit.serial.in_(serials or [""]))).scalars())
    tally = _collect(session, since, until, ids or [-1], hourly=False, stages=True)
    p95 = tally.stage("e2e").percentile(95) if tally.stage("e2e").count else float("nan")
    n = tally.requests
    figures = ServiceFigures(
        units=len(ids), requests=n, errors=tally.errors,
        error_rate=(tally.errors / n) if n else None,
        p95_e2e_ms=None if math.isnan(p95) else round(float(p95), 1),
        wake_fa_per_h=_wake_fa(session, ids, since, until))
    table = _feedback_table(session)
    counted = _corrections(session, table, ids, since, until) if table is not None else None
    if counted is not None and counted[1] >= MIN_FEEDBACK_ROWS:
        figures.correction_rate = counted[0] / counted[1]
    return figures


def voice_quality_gate(session: Session, updated: list[str], control: list[str], since: datetime,
                       until: datetime, settings: GateSettings) -> GateResult:
    """Compare the updated units' service since ``since`` with ``control`` (see module docstring).

    Parameters
    ----------
    updated
        Serials of the group's units that now run the new version.
    control
        Serials not yet updated; empty → the updated units' own span of the same length (at
        least ``settings.baseline_s``) before ``since``.
    since, until
        The span judged (aware UTC): from the group's first update to now.

    Returns
    -------
    GateResult
        ``passed`` False when some figure is worse by more than its margin (listed in
        ``worse`` with both values), or when there is too little data and
        ``settings.require_data``.
    """
    group = service_figures(session, updated, since, until)
    if control:
        compared_with = f"{len(control)} units not yet updated"
        ctrl = service_figures(session, control, since, until)
    else:
        span = max(until - since, timedelta(seconds=settings.baseline_s))
        compared_with = f"the same units in the {span.total_seconds() / 60:.0f} min before the update"
        ctrl = service_figures(session, updated, since - span, since)
    result = GateResult(True, True, compared_with, since, until, group, ctrl)
    if min(group.requests, ctrl.requests) < settings.min_requests:
        result.judged = False
        result.passed = not settings.require_data
        result.note = (f"too few requests to judge ({group.requests} updated, {ctrl.requests} "
                       f"compared; needs {settings.min_requests} each)")
        return result
    checks = [
        ("error rate", group.error_rate, ctrl.error_rate, lambda g, c: g - c > settings.error_rate_margin,
         lambda v: f"{v:.2%}", f"+{settings.error_rate_margin:.1%} allowed"),
        ("p95 end-to-end latency", group.p95_e2e_ms, ctrl.p95_e2e_ms,
         lambda g, c: g > c * (1 + settings.p95_margin_pct / 100), lambda v: f"{v:,.0f} ms",
         f"+{settings.p95_margin_pct:g} % allowed"),
        ("wake false accepts", group.wake_fa_per_h, ctrl.wake_fa_per_h,
         lambda g, c: g - c > settings.wake_fa_margin_per_h, lambda v: f"{v:.2f}/h",
         f"+{settings.wake_fa_margin_per_h:g}/h allowed"),
        ("correction rate", group.correction_rate, ctrl.correction_rate,
         lambda g, c: g - c > settings.correction_rate_margin, lambda v: f"{v:.2%}",
         f"+{settings.correction_rate_margin:.1%} allowed"),
    ]
    for name, g, c, worse, fmt, allowed in checks:
        if g is None or c is None:
            continue
        if worse(g, c):
            result.worse.append(f"{name} {fmt(g)} vs {fmt(c)} ({allowed})")
    result.passed = not result.worse
    return result
