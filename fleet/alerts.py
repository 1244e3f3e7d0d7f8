"""Alerting: rules on unit figures and on the SLO burn rate, evaluated in bulk, with history.

Persisted design (survives a restart of the collector or console)
-------------------------------------------------------------------
An alert goes through the states ``pending`` → ``open`` → ``acknowledged`` → ``resolved``.
``pending`` is an extra value beside :data:`fleet.models.ALERT_STATES`: a condition seen true
but not yet for the rule's ``duration_s``. It is stored as an :class:`~fleet.models.Alert` row
with ``state="pending"``, ``pending_since`` = when it was first seen true and ``opened_at`` =
``pending_since`` (the column is not nullable); when it fires, ``state`` becomes ``open`` and
``opened_at`` the firing time. A pending row whose condition clears before firing is deleted
(it never was an alert; it has no events). Because ``pending`` is not ``resolved``, the partial
unique index ``uq_alerts_open_rule_scope`` also guarantees one pending-or-open row per
(rule, scope_key).

Every state change writes an :class:`~fleet.models.AlertEvent`: ``opened`` (by ``rule``),
``acknowledged`` and ``resolved`` (by a person, or ``auto`` when the condition cleared). A
resolved alert whose condition returns opens a new alert; the old one stays as history.

Scopes: ``fleet`` (every unit), ``site`` / ``hardware_rev`` / ``tag`` with ``scope_value``
(the units of that group), ``unit`` (``scope_value`` = serial). All give one alert per unit,
``scope_key = "unit=<serial>"``. For a unit and a metric only the most specific enabled rules
covering the unit apply (unit > tag > site = hardware_rev > fleet), so a group rule overrides
the fleet rule for its units (e.g. ``offline`` on ``tag=lab`` held 8 h). SLO burn-rate rules
(``slo_burn_1h``, ``slo_burn_6h``, ``slo_burn_24h``) have ``scope_key = "fleet"``.
"""

from __future__ import annotations

import importlib
import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.errors import FleetError
from fleet.models import SEVERITIES, Alert, AlertEvent, AlertRule, Heartbeat, Unit
from speakerops import audit

logger = logging.getLogger(__name__)


class AlertNotFound(FleetError):
    """No alert has the given id."""


class AlertStateError(FleetError):
    """The alert is not in a state that allows the action (e.g. acknowledging a resolved one)."""


class AlertRuleError(FleetError):
    """A rule's definition is invalid (unknown metric, comparison, severity or scope)."""


#: Alert states including the persisted ``pending`` (see the module docstring).
STATES_WITH_PENDING: tuple[str, ...] = ("pending", "open", "acknowledged", "resolved")

#: Unit figures read from the unit's latest heartbeat (columns of :class:`fleet.models.Heartbeat`).
HEARTBEAT_METRICS: tuple[str, ...] = (
    "temp_c", "cpu_pct", "mem_pct", "disk_free_mb", "mic_noise_dbfs", "wifi_rssi_dbm",
    "wake_false_accepts_per_h",
)
#: SLO burn-rate metrics and their windows (``fleet.slo.slo_status(session, now, window)``).
SLO_METRICS: dict[str, timedelta] = {
    "slo_burn_1h": timedelta(hours=1), "slo_burn_6h": timedelta(hours=6),
    "slo_burn_24h": timedelta(hours=24),
}
#: Every metric a rule may name. ``error_rate`` = errors / requests over
#: :data:`ERROR_RATE_WINDOW`; ``offline`` = 1.0 for a unit whose status is ``offline`` and that is
#: not flapping (a flapping unit's offline alerts are held back, as Nagios suppresses the
#: notifications of a flapping host); ``flapping`` = 1.0 for a flapping unit (:mod:`fleet.unit_states`).
METRICS: tuple[str, ...] = (*HEARTBEAT_METRICS, "error_rate", "offline", "flapping", *SLO_METRICS)
#: Window of heartbeats behind ``error_rate`` (the fleet table's 15 min, fleet.queries).
ERROR_RATE_WINDOW = timedelta(minutes=15)

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
SCOPE_KINDS: tuple[str, ...] = ("fleet", "site", "hardware_rev", "tag", "unit")
#: Specificity of a scope: for a unit and metric only the highest-ranked covering rules apply.
_SCOPE_RANK = {"fleet": 0, "site": 1, "hardware_rev": 1, "tag": 2, "unit": 3}


@dataclass(frozen=True)
class BuiltinRule:
    """A rule every installation has (:func:`ensure_builtin_rules`)."""

    name: str
    metric: str
    comparison: str
    threshold: float
    duration_s: float
    severity: str


#: The built-in rules. Temperature and noise limits are the console's operating defaults;
#: the SLO thresholds are the multiwindow burn-rate alerts of Google's SRE workbook
#: ("Alerting on SLOs", table 5-8) for a 30-day error budget: burn rate 14.4 over 1 h spends
#: 2 % of the budget (page, critical). The workbook pairs burn rate 6 with a 6 h window (5 %
#: of the budget); the brief asked for it on the 24 h window, where 6 means 20 % of the budget
#: spent in a day — kept as asked, at ``warning``; ``slo_burn_6h`` is available for a rule.
BUILTIN_RULES: tuple[BuiltinRule, ...] = (
    BuiltinRule("unit offline", "offline", ">=", 1.0, 0.0, "warning"),
    BuiltinRule("unit flapping", "flapping", ">=", 1.0, 0.0, "warning"),
    BuiltinRule("hot unit", "temp_c", ">", 75.0, 300.0, "warning"),
    BuiltinRule("noisy room", "mic_noise_dbfs", ">", -40.0, 600.0, "info"),
    BuiltinRule("high error rate", "error_rate", ">", 0.05, 0.0, "warning"),
    BuiltinRule("slo fast burn", "slo_burn_1h", ">", 14.4, 0.0, "critical"),
    BuiltinRule("slo slow burn", "slo_burn_24h", ">", 6.0, 0.0, "warning"),
)


@dataclass(frozen=True)
class AlertSummary:
    """What one :func:`evaluate` did: alerts opened and resolved now, alerts still open
    (``open`` or ``acknowledged``) and conditions pending (true, not yet for the duration)."""

    opened: int
    resolved: int
    still_open: int
    pending: int


# -- rules ----------------------------------------------------------------------------------------
def ensure_builtin_rules(session: Session, now: datetime) -> int:
    """Insert the :data:`BUILTIN_RULES` missing by name (idempotent); returns how many."""
    have = set(session.scalars(select(AlertRule.name)))
    added = 0
    for b in BUILTIN_RULES:
        if b.name not in have:
            session.add(AlertRule(name=b.name, metric=b.metric, scope_kind="fleet", scope_value=None,
                                  comparison=b.comparison, threshold=b.threshold,
                                  duration_s=b.duration_s, severity=b.severity, enabled=True,
                                  builtin=True, created_at=now))
            added += 1
    session.flush()
    return added


def add_rule(session: Session, *, name: str, metric: str, comparison: str, threshold: float,
             now: datetime, scope_kind: str = "fleet", scope_value: str | None = None,
             duration_s: float = 0.0, severity: str = "warning", enabled: bool = True) -> AlertRule:
    """Add a rule after checking it.

    Parameters
    ----------
    metric
        One of :data:`METRICS`.
    comparison
        ``>``, ``>=``, ``<`` or ``<=`` (value *comparison* threshold fires).
    threshold
        In the metric's unit (°C for ``temp_c``, dBFS, fraction 0–1 for ``error_rate``…).
    scope_kind, scope_value
        :data:`SCOPE_KINDS`; ``scope_value`` names the group (required unless ``fleet``).
    duration_s
        Seconds the condition must hold before the alert opens (default 0: at once).
    severity
        One of :data:`fleet.models.SEVERITIES` (default ``warning``).

    Raises
    ------
    AlertRuleError
        With what was wrong and the accepted values.
    """
    name = (name or "").strip()
    if not name:
        raise AlertRuleError("a rule needs a name")
    if metric not in METRICS:
        raise AlertRuleError(f"unknown metric {metric!r}; use one of: {', '.join(METRICS)}")
    if comparison not in COMPARISONS:
        raise AlertRuleError(f"unknown comparison {comparison!r}; use one of: {' '.join(COMPARISONS)}")
    if severity not in SEVERITIES:
        raise AlertRuleError(f"unknown severity {severity!r}; use one of: {', '.join(SEVERITIES)}")
    if scope_kind not in SCOPE_KINDS:
        raise AlertRuleError(f"unknown scope {scope_kind!r}; use one of: {', '.join(SCOPE_KINDS)}")
    if scope_kind == "fleet" and scope_value:
        raise AlertRuleError("a fleet rule takes no scope value; use e.g. site=<name> for a group")
    if scope_kind != "fleet" and not scope_value:
        raise AlertRuleError(f"scope {scope_kind} needs a value, e.g. {scope_kind}=<name>")
    if metric in SLO_METRICS and scope_kind != "fleet":
        raise AlertRuleError(f"{metric} is a fleet-wide figure; its rule must have scope fleet")
    try:
        threshold = float(threshold)
        duration_s = float(duration_s)
    except (TypeError, ValueError) as exc:
        raise AlertRuleError("threshold and duration must be numbers") from exc
    if not math.isfinite(threshold):
        raise AlertRuleError("threshold must be a finite number")
    if not math.isfinite(duration_s) or duration_s < 0:
        raise AlertRuleError(f"duration must be 0 s or more, got {duration_s:g}")
    if session.scalar(select(AlertRule.id).where(AlertRule.name == name)) is not None:
        raise AlertRuleError(f"a rule named {name!r} already exists; choose another name")
    rule = AlertRule(name=name, metric=metric, scope_kind=scope_kind, scope_value=scope_value or None,
                     comparison=comparison, threshold=threshold, duration_s=duration_s,
                     severity=severity, enabled=enabled, builtin=False, created_at=now)
    session.add(rule)
    session.flush()
    return rule


def list_rules(session: Session) -> list[dict[str, Any]]:
    """Every rule as a JSON-able dict, by id."""
    return [{"id": r.id, "name": r.name, "metric": r.metric, "scope_kind": r.scope_kind,
             "scope_value": r.scope_value, "comparison": r.comparison, "threshold": r.threshold,
             "duration_s": r.duration_s, "severity": r.severity, "enabled": r.enabled,
             "builtin": r.builtin} for r in session.scalars(select(AlertRule).order_by(AlertRule.id))]


# -- unit figures ---------------------------------------------------------------------------------
def unit_metrics(session: Session, now: datetime) -> pd.DataFrame:
    """One row per unit: ``id``, ``serial``, ``site``, ``hardware_rev``, ``tags`` and every
    unit metric of :data:`METRICS` (NaN when unknown), in three queries."""
    units = pd.DataFrame(
        session.execute(select(Unit.id, Unit.serial, Unit.site, Unit.hardware_rev, Unit.tags,
                               Unit.status, Unit.flapping)).all(),
        columns=["id", "serial", "site", "hardware_rev", "tags", "status", "flapping"])
    latest = select(Heartbeat.unit_id, func.max(Heartbeat.id).label("hb_id")).group_by(
        Heartbeat.unit_id).subquery()
    cols = [getattr(Heartbeat, m) for m in HEARTBEAT_METRICS]
    hb = pd.DataFrame(session.execute(select(Heartbeat.unit_id, *cols).join(
        latest, latest.c.hb_id == Heartbeat.id)).all(), columns=["id", *HEARTBEAT_METRICS])
    rates = pd.DataFrame(session.execute(
        select(Heartbeat.unit_id, func.sum(Heartbeat.requests), func.sum(Heartbeat.errors))
        .where(Heartbeat.received_at > now - ERROR_RATE_WINDOW, Heartbeat.received_at <= now)
        .group_by(Heartbeat.unit_id)).all(), columns=["id", "requests", "errors"])
    df = units.merge(hb, on="id", how="left").merge(rates, on="id", how="left")
    req = pd.to_numeric(df["requests"], errors="coerce").astype(float)
    err = pd.to_numeric(df["errors"], errors="coerce").astype(float)
    df["error_rate"] = np.where(req > 0, err / req.where(req > 0, 1.0), np.nan)
    flapping = df["flapping"].eq(True)
    df["flapping"] = flapping.astype(float)
    df["offline"] = ((df["status"] == "offline") & ~flapping).astype(float)
    for m in HEARTBEAT_METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype(float)
    df["tags"] = [list(t or []) for t in df["tags"]]
    return df


def _covers(rule: AlertRule, units: pd.DataFrame) -> pd.Series:
    """Boolean mask of the units ``rule``'s scope covers."""
    kind, value = rule.scope_kind, rule.scope_value
    if kind == "fleet":
        return pd.Series(True, index=units.index)
    if kind == "tag":
        return units["tags"].map(lambda tags: value in tags)
    column = {"site": "site", "hardware_rev": "hardware_rev", "unit": "serial"}[kind]
    return units[column] == value


def _slo_burn(session: Session, now: datetime, metric: str) -> tuple[bool, float | None]:
    """(available, burn rate) from ``fleet.slo.slo_status``; (False, None) while not importable."""
    try:
        slo = importlib.import_module("fleet.slo")
        slo_status = slo.slo_status
    except (ImportError, AttributeError) as exc:
        logger.debug("SLO rule %s skipped: fleet.slo not available (%s)", metric, exc)
        return False, None
    return True, slo_status(session, now, SLO_METRICS[metric]).burn_rate


def _firing(session: Session, now: datetime, rules: list[AlertRule]
            ) -> tuple[dict[tuple[int, str], float | None], set[int]]:
    """Conditions true now, ``{(rule_id, scope_key): value}``, and ids of rules skipped."""
    true: dict[tuple[int, str], float | None] = {}
    skipped: set[int] = set()
    unit_rules = [r for r in rules if r.metric not in SLO_METRICS]
    if unit_rules:
        units = unit_metrics(session, now)
        for metric in {r.metric for r in unit_rules}:
            of_metric = [r for r in unit_rules if r.metric == metric]
            covers = {r.id: _covers(r, units).to_numpy(dtype=bool) for r in of_metric}
            rank = np.full(len(units), -1)
            for r in of_metric:
                rank = np.where(covers[r.id], np.maximum(rank, _SCOPE_RANK[r.scope_kind]), rank)
            values = units[metric].to_numpy(dtype=float)
            for r in of_metric:
                applies = covers[r.id] & (rank == _SCOPE_RANK[r.scope_kind])
                with np.errstate(invalid="ignore"):
                    hit = applies & ~np.isnan(values) & COMPARISONS[r.comparison](values, r.threshold)
                for serial, value in zip(units["serial"].to_numpy()[hit], values[hit], strict=True):
                    true[(r.id, f"unit={serial}")] = float(value)
    for r in rules:
        if r.metric in SLO_METRICS:
            available, burn = _slo_burn(session, now, r.metric)
            if not available:
                skipped.add(r.id)
            elif burn is not None and COMPARISONS[r.comparison](burn, r.threshold):
                true[(r.id, "fleet")] = float(burn)
    return true, skipped


def _message(rule: AlertRule, scope_key: str, value: float | None) -> str:
    shown = "?" if value is None else f"{value:.4g}"
    return f"{rule.name}: {rule.metric} {shown} {rule.comparison} {rule.threshold:g} on {scope_key}"


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(session: Session, now: datetime) -> AlertSummary:
    """Evaluate every enabled rule at ``now`` and persist the outcome (no commit).

    A true condition without a not-resolved alert creates a ``pending`` row; it opens once it
    has held ``duration_s`` (a duration of 0 opens at once). While true, ``last_seen_at`` and
    ``value`` follow. A false condition (or a rule disabled, a unit gone or now covered by a
    more specific rule) resolves the alert with ``resolved_by="auto"`` or deletes a pending
    row. Alerts of SLO rules skipped because ``fleet.slo`` is not importable are left as they are.

    Returns
    -------
    AlertSummary
    """
    rules = {r.id: r for r in session.scalars(select(AlertRule))}
    enabled = [r for r in rules.values() if r.enabled]
    true, skipped = _firing(session, now, enabled)
    existing = {(a.rule_id, a.scope_key): a for a in session.scalars(
        select(Alert).where(Alert.state != "resolved"))}
    opened = resolved = 0
    for key, alert in existing.items():
        if key in true or alert.rule_id in skipped:
            continue
        if alert.state == "pending":
            session.delete(alert)
            continue
        alert.state, alert.resolved_at, alert.resolved_by = "resolved", now, "auto"
        session.add(AlertEvent(alert_id=alert.id, at=now, kind="resolved", actor="auto",
                               detail="condition cleared"))
        resolved += 1
    session.flush()  # the resolved rows leave the partial unique index before new ones enter
    for key, value in true.items():
        rule = rules[key[0]]
        alert = existing.get(key)
        if alert is None:
            alert = Alert(rule_id=rule.id, scope_key=key[1], state="pending", severity=rule.severity,
                          pending_since=now, opened_at=now, last_seen_at=now, value=value,
                          message=_message(rule, key[1], value))
            session.add(alert)
        alert.last_seen_at, alert.value = now, value
        if alert.state == "pending":
            alert.message = _message(rule, key[1], value)
            held_s = (now - (alert.pending_since or now)).total_seconds()
            if held_s >= rule.duration_s:
                alert.state, alert.opened_at = "open", now
                session.flush()
                session.add(AlertEvent(alert_id=alert.id, at=now, kind="opened", actor="rule",
                                       detail=alert.message))
                opened += 1
    session.flush()
    counts = dict(session.execute(select(Alert.state, func.count()).group_by(Alert.state)).all())
    summary = AlertSummary(opened, resolved, counts.get("open", 0) + counts.get("acknowledged", 0),
                           counts.get("pending", 0))
    logger.debug("alerts evaluated at %s: %s", now.isoformat(), summary)
    return summary


# -- operator actions -----------------------------------------------------------------------------
def _get(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None or alert.state == "pending":
        raise AlertNotFound(f"no alert #{alert_id}; `speakerops alerts list` shows the alerts")
    return alert


def acknowledge(session: Session, alert_id: int, actor: str, now: datetime) -> Alert:
    """Mark open alert ``alert_id`` acknowledged by ``actor`` at ``now``.

    Raises
    ------
    AlertNotFound
        No such alert.
    AlertStateError
        The alert is not ``open``.
    """
    alert = _get(session, alert_id)
    if alert.state != "open":
        raise AlertStateError(f"alert #{alert_id} is {alert.state}; only open alerts can be acknowledged")
    alert.state, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", now, actor
    session.add(AlertEvent(alert_id=alert.id, at=now, kind="acknowledged", actor=actor, detail=""))
    audit.record(session, "alert.ack", "alert", alert.id, before={"state": "open"},
                 after={"state": "acknowledged"}, actor=actor, clock=lambda: now)
    return alert


def resolve(session: Session, alert_id: int, actor: str, now: datetime) -> Alert:
    """Resolve alert ``alert_id`` (open or acknowledged) by hand. If its condition still holds,
    the next :func:`evaluate` opens a new alert.

    Raises
    ------
    AlertNotFound
        No such alert.
    AlertStateError
        The alert is already resolved.
    """
    alert = _get(session, alert_id)
    if alert.state == "resolved":
        raise AlertStateError(f"alert #{alert_id} is already resolved (by {alert.resolved_by})")
    before = alert.state
    alert.state, alert.resolved_at, alert.resolved_by = "resolved", now, actor
    session.add(AlertEvent(alert_id=alert.id, at=now, kind="resolved", actor=actor, detail="by hand"))
    audit.record(session, "alert.resolve", "alert", alert.id, before={"state": before},
                 after={"state": "resolved"}, actor=actor, clock=lambda: now)
    return alert


# -- reads ----------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def list_alerts(session: Session, state: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Alerts newest first as JSON-able dicts (times ISO 8601 UTC).

    Parameters
    ----------
    state
        ``open``, ``acknowledged``, ``resolved`` or ``pending``; None: all but pending.
    limit
        Rows at most (default 500, a screenful of history).

    Raises
    ------
    AlertStateError
        For an unknown state.
    """
    stmt = select(Alert, AlertRule).join(AlertRule, AlertRule.id == Alert.rule_id)
    if state is None:
        stmt = stmt.where(Alert.state != "pending")
    elif state in STATES_WITH_PENDING:
        stmt = stmt.where(Alert.state == state)
    else:
        raise AlertStateError(f"unknown state {state!r}; use one of: {', '.join(STATES_WITH_PENDING)}")
    rows = session.execute(stmt.order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)).all()
    return [{"id": a.id, "rule_id": r.id, "rule": r.name, "metric": r.metric, "severity": a.severity,
             "scope_key": a.scope_key, "state": a.state, "pending_since": _iso(a.pending_since),
             "opened_at": _iso(a.opened_at), "last_seen_at": _iso(a.last_seen_at),
             "acknowledged_at": _iso(a.acknowledged_at), "acknowledged_by": a.acknowledged_by,
             "resolved_at": _iso(a.resolved_at), "resolved_by": a.resolved_by, "value": a.value,
             "message": a.message} for a, r in rows]


def alert_events(session: Session, alert_id: int) -> list[dict[str, Any]]:
    """The history of alert ``alert_id``, oldest first: ``at`` (ISO UTC), ``kind``, ``actor``,
    ``detail``."""
    return [{"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "detail": e.detail}
            for e in session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id)
                                     .order_by(AlertEvent.at, AlertEvent.id))]


def open_count(session: Session) -> int:
    """Alerts in state ``open`` (not acknowledged, not pending)."""
    return int(session.scalar(select(func.count()).select_from(Alert).where(Alert.state == "open")) or 0)


def state_counts(session: Session) -> dict[str, int]:
    """Alerts per state (``open``, ``acknowledged``, ``resolved``) and not-resolved ``critical``."""
    counts = dict(session.execute(select(Alert.state, func.count()).group_by(Alert.state)).all())
    critical = session.scalar(select(func.count()).select_from(Alert).where(
        Alert.state.in_(("open", "acknowledged")), Alert.severity == "critical")) or 0
    return {"open": int(counts.get("open", 0)), "acknowledged": int(counts.get("acknowledged", 0)),
            "resolved": int(counts.get("resolved", 0)), "critical": int(critical)}


__all__ = [
    "BUILTIN_RULES", "METRICS", "SCOPE_KINDS", "AlertNotFound", "AlertRuleError", "AlertStateError",
    "AlertSummary", "acknowledge", "add_rule", "alert_events", "ensure_builtin_rules",
    "evaluate", "list_alerts", "list_rules", "open_count", "resolve", "state_counts", "unit_metrics",
]
