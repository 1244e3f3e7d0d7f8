"""Rollout controls: create, start, pause, resume, cancel, retry, pin — and status.

Each control is a service function over a :class:`~sqlalchemy.orm.Session` (the caller commits)
that writes the new state and its audit entry (:func:`speakerops.audit.record`) in the same
transaction. Controls work from any process: the runner (:class:`fleet.rollout.RolloutRunner`)
re-reads the rollout's state between units and obeys it.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.errors import FleetError
from fleet.models import MODEL_KINDS, Unit
from fleet.rollout_models import (
    ROLLOUT_FINAL,
    UNIT_FAILED,
    UNIT_FINAL,
    Rollout,
    RolloutGroup,
    RolloutUnit,
    UnitPin,
)
from fleet.rollout_plan import PlanPreview, RolloutPlan, preview
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Actor of the runner's automatic actions in the audit trail.
RUNNER_ACTOR = "rollout-runner"


class RolloutError(FleetError):
    """A rollout control was refused: unknown rollout, wrong state, gate, nothing to do."""


class RolloutGateRefused(RolloutError):
    """The registry's gate does not allow the version (and no override reason was given)."""


def registry_gate(session: Session, kind: str, version: str) -> tuple[bool, str]:
    """Ask the model registry (:func:`fleet.registry.rollout_gate`) whether ``kind``/``version``
    may be rolled out: ``(allowed, why)``. A version whose offline evaluation failed (or that was
    never evaluated) is refused unless the registry holds an operator's override.

    Raises
    ------
    RolloutError
        The version is not in the registry.
    """
    from fleet.models import ModelVersion
    from fleet.registry import rollout_gate

    mv = session.execute(select(ModelVersion).where(ModelVersion.kind == kind,
                                                    ModelVersion.version == version)).scalar_one_or_none()
    if mv is None:
        raise RolloutError(f"{kind} version {version!r} is not in the model registry; import it first "
                           "(speakerops models import BUNDLE_DIR)")
    decision = rollout_gate(session, mv)
    return bool(decision.allowed), str(decision.reason)


def _get(session: Session, rollout_id: int, *, lock: bool = True) -> Rollout:
    stmt = select(Rollout).where(Rollout.id == rollout_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    rollout = session.execute(stmt).scalar_one_or_none()
    if rollout is None:
        raise RolloutError(f"no rollout #{rollout_id}; list them with `speakerops rollout status`")
    return rollout


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    """The rollout, or :class:`RolloutError` naming the id."""
    return _get(session, rollout_id, lock=False)


def refresh_counts(session: Session, rollout: Rollout) -> dict[str, int]:
    """Recount the rollout's units by state into its count columns (in the caller's transaction)."""
    session.flush()
    by_state = Counter(dict(session.execute(
        select(RolloutUnit.state, func.count()).where(RolloutUnit.rollout_id == rollout.id)
        .group_by(RolloutUnit.state)).all()))
    rollout.total_units = sum(by_state.values())
    rollout.succeeded_units = by_state["succeeded"]
    rollout.failed_units = by_state["failed"]
    rollout.rolled_back_units = by_state["rolled_back"]
    rollout.skipped_units = by_state["skipped"]
    rollout.cancelled_units = by_state["cancelled"]
    rollout.bytes_sent = int(session.execute(select(func.coalesce(func.sum(RolloutUnit.bytes_sent), 0))
                                             .where(RolloutUnit.rollout_id == rollout.id)).scalar_one())
    return dict(by_state)


def _snapshot(rollout: Rollout) -> dict[str, Any]:
    return {"state": rollout.state, "pause_reason": rollout.pause_reason, **rollout.counts()}


def create_rollout(session: Session, plan: RolloutPlan, *, clock: Clock = utc_now,
                   override_reason: str | None = None, actor: str | None = None) -> Rollout:
    """Store a rollout of ``plan`` in state ``planned``: its groups and units as :func:`preview`
    gives them now.

    Parameters
    ----------
    override_reason
        Written reason to roll out a version the registry's gate refuses (recorded in the
        rollout and the audit trail).

    Raises
    ------
    RolloutGateRefused
        The registry's gate refuses the version and no ``override_reason`` was given.
    RolloutError
        The version is not in the registry, or no unit matches the plan.
    """
    allowed, why = registry_gate(session, plan.kind, plan.version)
    if not allowed and not (override_reason and override_reason.strip()):
        raise RolloutGateRefused(
            f"the registry's gate refuses the rollout: {why} (or give this rollout a written reason: "
            "--override-reason TEXT)")
    pv: PlanPreview = preview(session, plan)
    if pv.total_units == 0:
        reasons = Counter(pv.excluded.values()).most_common(3)
        detail = "; ".join(f"{n} × {r}" for r, n in reasons) or "the inventory is empty"
        raise RolloutError(f"no unit matches the plan for {plan.kind} {plan.version} ({detail}); "
                           "widen the target filter or import units")
    now = clock()
    who = actor or audit.current_actor(session)
    rollout = Rollout(kind=plan.kind, version=plan.version, plan=plan.model_dump(mode="json"),
                      state="planned", created_by=who, created_at=now, updated_at=now,
                      gate_override_reason=None if allowed else override_reason.strip())
    session.add(rollout)
    session.flush()
    position = 0
    for g in pv.groups:
        group = RolloutGroup(rollout_id=rollout.id, index=g.index, name=g.name,
                             cumulative_pct=g.cumulative_pct, units=len(g.units),
                             success_threshold_pct=g.success_threshold_pct,
                             error_threshold_pct=g.error_threshold_pct, min_finished=g.min_finished,
                             state="pending")
        session.add(group)
        session.flush()
        for u in g.units:
            session.add(RolloutUnit(rollout_id=rollout.id, group_id=group.id, unit_id=u.unit_id,
                                    serial=u.serial, position=position, state="pending",
                                    previous_version=u.current_version, updated_at=now))
            position += 1
    refresh_counts(session, rollout)
    audit.record(session, "rollout.create", "rollout", rollout.id, after={
        "kind": plan.kind, "version": plan.version, "groups": [len(g.units) for g in pv.groups],
        "units": pv.total_units}, reason=rollout.gate_override_reason, actor=who, clock=clock)
    if not allowed:
        audit.record(session, "rollout.gate_override", "rollout", rollout.id,
                     before={"gate": why}, after={"allowed": True}, reason=rollout.gate_override_reason,
                     actor=who, clock=clock)
    logger.info("rollout #%d created: %s %s over %d units in %d groups", rollout.id, plan.kind,
                plan.version, pv.total_units, len(pv.groups))
    return rollout


def _transition(session: Session, rollout_id: int, action: str, allowed_from: tuple[str, ...],
                to: str, *, clock: Clock, actor: str | None, reason: str | None = None,
                hint: str = "") -> Rollout:
    rollout = _get(session, rollout_id)
    if rollout.state not in allowed_from:
        raise RolloutError(f"rollout #{rollout_id} is {rollout.state}; {action} needs it "
                           f"{' or '.join(allowed_from)}{hint}")
    before = _snapshot(rollout)
    now = clock()
    rollout.state = to
    rollout.updated_at = now
    if to == "running":
        rollout.pause_reason = None
        rollout.started_at = rollout.started_at or now
        rollout.finished_at = None
    elif to == "paused":
        rollout.pause_reason = reason or "paused by an operator"
    audit.record(session, f"rollout.{action}", "rollout", rollout.id, before=before,
                 after=_snapshot(rollout), reason=reason, actor=actor, clock=clock)
    return rollout


def start(session: Session, rollout_id: int, *, clock: Clock = utc_now, actor: str | None = None) -> Rollout:
    """``planned`` → ``running`` (a runner then works through it: ``speakerops rollout run``)."""
    return _transition(session, rollout_id, "start", ("planned",), "running", clock=clock, actor=actor)


def pause(session: Session, rollout_id: int, reason: str | None = None, *, clock: Clock = utc_now,
          actor: str | None = None) -> Rollout:
    """``running`` → ``paused``: no unit starts any more; units in flight finish."""
    return _transition(session, rollout_id, "pause", ("running",), "paused", clock=clock,
                       actor=actor, reason=reason)


def resume(session: Session, rollout_id: int, *, clock: Clock = utc_now, actor: str | None = None) -> Rollout:
    """``paused`` → ``running`` (after an automatic pause, too: the operator accepts the figures)."""
    return _transition(session, rollout_id, "resume", ("paused",), "running", clock=clock, actor=actor,
                       hint=" (a failed rollout needs `retry`)")


def cancel(session: Session, rollout_id: int, reason: str | None = None, *, clock: Clock = utc_now,
           actor: str | None = None) -> Rollout:
    """Stop the rollout for good: units not started become ``cancelled``; units in flight finish
    (or roll back) under the runner, which then marks the rollout ``cancelled``. With no unit
    in flight it is ``cancelled`` at once."""
    rollout = _transition(session, rollout_id, "cancel", ("planned", "running", "paused", "failed"),
                          "cancelling", clock=clock, actor=actor, reason=reason)
    now = clock()
    units = session.execute(select(RolloutUnit).where(
        RolloutUnit.rollout_id == rollout.id,
        RolloutUnit.state.in_(("pending", "waiting_window")))).scalars()
    for u in units:
        u.state, u.finished_at, u.updated_at = "cancelled", now, now
        u.error = u.error or "cancelled before it started"
    in_flight = session.execute(select(func.count()).where(
        RolloutUnit.rollout_id == rollout.id, RolloutUnit.state == "in_progress")).scalar_one()
    if not in_flight:
        rollout.state = "cancelled"
        rollout.finished_at = now
        for g in rollout.groups:
            if g.state in ("pending", "running"):
                g.state, g.finished_at = "cancelled", g.finished_at or now
    refresh_counts(session, rollout)
    return rollout


def retry(session: Session, rollout_id: int, *, clock: Clock = utc_now, actor: str | None = None) -> int:
    """Put the failed and rolled-back units back to ``pending`` and the rollout to ``running``.

    Returns the number of units retried (their ``attempts`` keep counting).

    Raises
    ------
    RolloutError
        Unknown rollout, a cancelled/cancelling one, or no failed unit to retry.
    """
    rollout = _get(session, rollout_id)
    if rollout.state in ("cancelled", "cancelling"):
        raise RolloutError(f"rollout #{rollout_id} is {rollout.state}; create a new rollout instead")
    failed = list(session.execute(select(RolloutUnit).where(
        RolloutUnit.rollout_id == rollout.id, RolloutUnit.state.in_(sorted(UNIT_FAILED)))).scalars())
    if not failed:
        raise RolloutError(f"rollout #{rollout_id} has no failed unit to retry")
    before = _snapshot(rollout)
    now = clock()
    group_ids = {u.group_id for u in failed}
    for u in failed:
        u.state, u.finished_at, u.updated_at = "pending", None, now
    for g in rollout.groups:
        if g.id in group_ids and g.state != "pending":
            g.state, g.finished_at, g.gate_result = "running", None, None
    rollout.state = "running" if rollout.state != "planned" else "planned"
    rollout.pause_reason = None
    rollout.finished_at = None
    rollout.updated_at = now
    refresh_counts(session, rollout)
    audit.record(session, "rollout.retry", "rollout", rollout.id, before=before,
                 after={**_snapshot(rollout), "retried": sorted(u.serial for u in failed)},
                 actor=actor, clock=clock)
    return len(failed)


def pin(session: Session, serial: str, kind: str, version: str, *, reason: str | None = None,
        clock: Clock = utc_now, actor: str | None = None) -> UnitPin:
    """Hold unit ``serial`` at ``kind``/``version``: rollouts that would move it skip it.

    Raises
    ------
    RolloutError
        Unknown unit or model kind.
    """
    if kind not in MODEL_KINDS:
        raise RolloutError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    if session.execute(select(Unit.id).where(Unit.serial == serial)).scalar_one_or_none() is None:
        raise RolloutError(f"no unit {serial!r} in the inventory; check the serial (speakerops units)")
    existing = session.execute(select(UnitPin).where(UnitPin.serial == serial,
                                                     UnitPin.kind == kind)).scalar_one_or_none()
    before = None if existing is None else {"version": existing.version}
    who = actor or audit.current_actor(session)
    if existing is None:
        existing = UnitPin(serial=serial, kind=kind, version=version, reason=reason, pinned_by=who,
                           pinned_at=clock())
        session.add(existing)
    else:
        existing.version, existing.reason, existing.pinned_by, existing.pinned_at = version, reason, who, clock()
    session.flush()
    audit.record(session, "unit.pin", "unit", serial, before=before,
                 after={"kind": kind, "version": version}, reason=reason, actor=who, clock=clock)
    return existing


def unpin(session: Session, serial: str, kind: str, *, clock: Clock = utc_now, actor: str | None = None) -> bool:
    """Remove a pin; False if there was none."""
    existing = session.execute(select(UnitPin).where(UnitPin.serial == serial,
                                                     UnitPin.kind == kind)).scalar_one_or_none()
    if existing is None:
        return False
    audit.record(session, "unit.unpin", "unit", serial, before={"kind": kind, "version": existing.version},
                 actor=actor, clock=clock)
    session.delete(existing)
    return True


# -- status ---------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def unit_row(u: RolloutUnit) -> dict[str, Any]:
    return {"serial": u.serial, "state": u.state, "step_reached": u.step_reached, "bytes_sent": u.bytes_sent,
            "error": u.error, "attempts": u.attempts, "previous_version": u.previous_version,
            "final_version": u.final_version, "started_at": _iso(u.started_at),
            "finished_at": _iso(u.finished_at)}


def status(session: Session, rollout_id: int, *, units: bool = True) -> dict[str, Any]:
    """The rollout, its groups (with counts by unit state) and, if ``units``, each unit's row."""
    rollout = get_rollout(session, rollout_id)
    rows = list(session.execute(select(RolloutUnit).where(RolloutUnit.rollout_id == rollout.id)
                                .order_by(RolloutUnit.position)).scalars())
    by_group: dict[int, list[RolloutUnit]] = {}
    for u in rows:
        by_group.setdefault(u.group_id, []).append(u)
    groups = []
    for g in rollout.groups:
        members = by_group.get(g.id, [])
        counts = Counter(u.state for u in members)
        waiting = counts.get("waiting_window", 0)
        groups.append({
            "index": g.index, "name": g.name, "state": g.state, "units": g.units,
            "cumulative_pct": round(g.cumulative_pct, 2), "success_threshold_pct": g.success_threshold_pct,
            "error_threshold_pct": g.error_threshold_pct, "min_finished": g.min_finished,
            "counts": dict(counts), "finished": sum(counts[s] for s in UNIT_FINAL),
            "status": (f"{waiting} waiting for window" if waiting else ""),
            "started_at": _iso(g.started_at), "finished_at": _iso(g.finished_at), "gate": g.gate_result,
            **({"units_detail": [unit_row(u) for u in members]} if units else {})})
    return {"id": rollout.id, "kind": rollout.kind, "version": rollout.version, "state": rollout.state,
            "pause_reason": rollout.pause_reason, "gate_override_reason": rollout.gate_override_reason,
            "counts": rollout.counts(), "bytes_sent": rollout.bytes_sent, "created_by": rollout.created_by,
            "created_at": _iso(rollout.created_at), "started_at": _iso(rollout.started_at),
            "finished_at": _iso(rollout.finished_at), "runner": rollout.runner,
            "runner_seen_at": _iso(rollout.runner_seen_at), "plan": rollout.plan, "groups": groups,
            "final": rollout.state in ROLLOUT_FINAL}


def list_rollouts(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first: id, kind, version, state and counts."""
    rows = session.execute(select(Rollout).order_by(Rollout.id.desc()).limit(limit)).scalars()
    return [{"id": r.id, "kind": r.kind, "version": r.version, "state": r.state, "counts": r.counts(),
             "pause_reason": r.pause_reason, "created_at": _iso(r.created_at)} for r in rows]
