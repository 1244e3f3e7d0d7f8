"""A/S tickets: workflow, SLA timers, history, attachments (``docs/tickets.md``).

Workflow::

    new → triaged → diagnosing → waiting_for_parts ⇄ in_repair → resolved → closed
                        └──────────────→ resolved (a software fix: no repair)
    reopen: resolved / closed → triaged

SLA (the Jira Service Management model): two clocks per ticket.

* **First response** runs from creation until the ticket first leaves ``new``.
* **Resolution** runs while the ticket is open, *pauses* in ``waiting_for_parts`` and stops at
  ``resolved``; a reopen continues it (time already used stays used).

Each clock is ``running``, ``paused``, ``breached`` (past its target and not done) or
``completed`` (done; ``breached`` tells whether it was late). Targets per priority are
:data:`SLA_TARGETS_S`, kept on the ticket when it is created or its priority changes.

Every change writes a :class:`TicketEvent` (the history) and an audit entry in the same
transaction.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback.errors import InvalidTransition, TicketInputError, TicketNotFound
from feedback.models import CATEGORIES, PRIORITIES, Feedback, Ticket, TicketAttachment, TicketEvent
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

H = 3600.0
#: (first response, resolution) targets per priority, seconds, calendar time. First response
#: 1 / 4 / 8 / 24 h follows the usual priority-based policies of Zendesk and Jira Service
#: Management setups (urgent 1 h … low 24 h); resolution 1 / 3 / 5 / 10 days is our choice for
#: hardware A/S (a repair with parts takes days; time waiting for parts does not count).
SLA_TARGETS_S: dict[str, tuple[float, float]] = {
    "urgent": (1 * H, 24 * H),
    "high": (4 * H, 72 * H),
    "normal": (8 * H, 120 * H),
    "low": (24 * H, 240 * H),
}
#: p1…p4 as aliases of the priorities.
PRIORITY_ALIASES: dict[str, str] = {"p1": "urgent", "p2": "high", "p3": "normal", "p4": "low"}

#: Allowed moves from each state.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "new": ("triaged",),
    "triaged": ("diagnosing",),
    "diagnosing": ("waiting_for_parts", "in_repair", "resolved"),
    "waiting_for_parts": ("in_repair",),
    "in_repair": ("waiting_for_parts", "resolved"),
    "resolved": ("closed", "triaged"),
    "closed": ("triaged",),
}
OPEN_STATES = frozenset({"new", "triaged", "diagnosing", "waiting_for_parts", "in_repair"})
#: States in which the resolution clock is paused.
PAUSED_STATES = frozenset({"waiting_for_parts"})
DONE_STATES = frozenset({"resolved", "closed"})
ATTACHMENT_KINDS: tuple[str, ...] = ("diagnostic_report", "log", "photo", "audio", "other")


def normalize_priority(value: str) -> str:
    """``urgent|high|normal|low`` or ``p1…p4`` → the priority name.

    Raises
    ------
    TicketInputError
        If ``value`` is neither.
    """
    v = value.strip().lower()
    v = PRIORITY_ALIASES.get(v, v)
    if v not in PRIORITIES:
        raise TicketInputError(f"unknown priority {value!r}: use urgent, high, normal, low (or p1–p4)")
    return v


def _category(value: str) -> str:
    v = value.strip().lower().replace(" ", "_")
    if v not in CATEGORIES:
        raise TicketInputError(f"unknown category {value!r}: use one of {', '.join(CATEGORIES)}")
    return v


@dataclass(frozen=True)
class SlaClock:
    """One SLA clock of a ticket at a time: target, used and remaining seconds, and its status."""

    name: str
    target_s: float
    elapsed_s: float
    status: str  # running | paused | breached | completed
    breached: bool

    @property
    def remaining_s(self) -> float:
        """Seconds left (negative when late)."""
        return self.target_s - self.elapsed_s

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target_s": self.target_s, "elapsed_s": round(self.elapsed_s, 1),
                "remaining_s": round(self.remaining_s, 1), "status": self.status, "breached": self.breached}


def sla_clocks(ticket: Ticket, now: datetime) -> tuple[SlaClock, SlaClock]:
    """The (first response, resolution) clocks of ``ticket`` at ``now``."""
    if ticket.first_response_at is not None:
        el = (ticket.first_response_at - ticket.created_at).total_seconds()
        first = SlaClock("first_response", ticket.response_target_s, el, "completed", el > ticket.response_target_s)
    else:
        el = (now - ticket.created_at).total_seconds()
        late = el > ticket.response_target_s
        first = SlaClock("first_response", ticket.response_target_s, el, "breached" if late else "running", late)
    el = ticket.resolution_elapsed_s
    if ticket.resolution_running_since is not None:
        el += (now - ticket.resolution_running_since).total_seconds()
    late = el > ticket.resolution_target_s
    if ticket.state in DONE_STATES:
        status = "completed"
    elif late:
        status = "breached"
    elif ticket.state in PAUSED_STATES:
        status = "paused"
    else:
        status = "running"
    return first, SlaClock("resolution", ticket.resolution_target_s, el, status, late)


def _get(session: Session, ticket_id: int) -> Ticket:
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        raise TicketNotFound(f"no ticket #{ticket_id}; list them with `speakerops tickets list`")
    return ticket


def _event(session: Session, ticket: Ticket, kind: str, actor: str, at: datetime, *, from_state: str | None = None,
           to_state: str | None = None, detail: dict[str, Any] | None = None, note: str | None = None) -> None:
    session.add(TicketEvent(ticket_id=ticket.id, at=at, actor=actor, kind=kind, from_state=from_state,
                            to_state=to_state, detail=detail or {}, note=note))


def _actor(session: Session, actor: str | None) -> str:
    return actor or audit.current_actor(session)


def last_rollout_for_unit(session: Session, unit_id: int) -> int | None:
    """Id of the rollout that last touched the unit (``fleet.rollout_models.RolloutUnit``), or None
    when rollouts are not installed or none touched it. Uses ``RolloutUnit.unit_id``,
    ``.rollout_id``, ``.started_at``, ``.finished_at``."""
    try:
        from fleet.rollout_models import RolloutUnit
    except ImportError:
        return None
    from sqlalchemy import inspect

    if not inspect(session.connection()).has_table(RolloutUnit.__tablename__):
        logger.info("rollout tables not migrated yet: no rollout link for unit %s", unit_id)
        return None
    when = func.coalesce(RolloutUnit.finished_at, RolloutUnit.started_at)
    return session.execute(select(RolloutUnit.rollout_id)
                           .where(RolloutUnit.unit_id == unit_id, when.is_not(None))
                           .order_by(when.desc(), RolloutUnit.id.desc()).limit(1)).scalar_one_or_none()


def create_ticket(session: Session, clock: Clock = utc_now, *, title: str, description: str = "",
                  priority: str = "normal", category: str = "other", assignee: str | None = None,
                  unit_serial: str | None = None, feedback_id: int | None = None,
                  actor: str | None = None) -> Ticket:
    """Create a ticket by hand, from a unit (``unit_serial``) or from a feedback item (``feedback_id``).

    A ticket from feedback takes its unit, household and (if not given) a description from the
    feedback. The unit's current model versions and the rollout that last touched it are recorded.

    Raises
    ------
    TicketInputError
        Empty title, unknown priority/category/unit/feedback item.
    """
    from fleet.models import Unit

    now = clock()
    actor = _actor(session, actor)
    title = title.strip()
    if not title:
        raise TicketInputError("a ticket needs a title: say what is wrong in a few words")
    prio, cat = normalize_priority(priority), _category(category)
    unit = fb = None
    if feedback_id is not None:
        fb = session.get(Feedback, feedback_id)
        if fb is None:
            raise TicketInputError(f"no feedback item #{feedback_id}; check the id in the Feedback table")
        unit = session.get(Unit, fb.unit_id)
    if unit_serial:
        by_serial = session.execute(select(Unit).where(Unit.serial == unit_serial)).scalar_one_or_none()
        if by_serial is None:
            raise TicketInputError(f"unknown unit {unit_serial!r}; check the serial (speakerops units list)")
        if unit is not None and unit.id != by_serial.id:
            raise TicketInputError(f"feedback #{feedback_id} is about {unit.serial}, not {unit_serial}")
        unit = by_serial
    if fb is not None and not description:
        description = fb.text or f"rating {fb.rating} on {fb.intent or fb.feature}" + (
            " (corrected)" if fb.corrected else "")
    response_s, resolution_s = SLA_TARGETS_S[prio]
    ticket = Ticket(title=title[:200], description=description, state="new", priority=prio, category=cat,
                    assignee=assignee, origin="feedback" if fb else "unit" if unit else "manual",
                    unit_id=unit.id if unit else None, unit_serial=unit.serial if unit else None,
                    feedback_id=fb.id if fb else None, household_id=fb.household_id if fb else None,
                    stt_version=unit.stt_version if unit else None, qa_version=unit.qa_version if unit else None,
                    tts_version=unit.tts_version if unit else None,
                    rollout_id=last_rollout_for_unit(session, unit.id) if unit else None,
                    created_at=now, updated_at=now, created_by=actor, response_target_s=response_s,
                    resolution_target_s=resolution_s, resolution_elapsed_s=0.0, resolution_running_since=now,
                    reopened_count=0)
    session.add(ticket)
    session.flush()
    _event(session, ticket, "created", actor, now, to_state="new",
           detail={"priority": prio, "category": cat, "origin": ticket.origin, "unit": ticket.unit_serial,
                   "feedback_id": ticket.feedback_id, "assignee": assignee})
    audit.record(session, "ticket.create", "ticket", ticket.id, after=snapshot(ticket), actor=actor, clock=clock)
    return ticket


def snapshot(ticket: Ticket) -> dict[str, Any]:
    """The fields of a ticket the audit trail and the CLI show."""
    return {"id": ticket.id, "title": ticket.title, "state": ticket.state, "priority": ticket.priority,
            "category": ticket.category, "assignee": ticket.assignee, "unit": ticket.unit_serial,
            "feedback_id": ticket.feedback_id, "rollout_id": ticket.rollout_id,
            "versions": {"stt": ticket.stt_version, "qa": ticket.qa_version, "tts": ticket.tts_version}}


def move(session: Session, ticket_id: int, to_state: str, clock: Clock = utc_now, *, actor: str | None = None,
         note: str | None = None) -> Ticket:
    """Move a ticket to ``to_state`` (see :data:`TRANSITIONS`), updating its SLA clocks.

    Raises
    ------
    TicketNotFound
        No such ticket.
    InvalidTransition
        The workflow does not allow the move; ``.allowed`` (and the message) list the moves that are.
    """
    ticket = _get(session, ticket_id)
    to_state = to_state.strip().lower().replace(" ", "_").replace("-", "_")
    allowed = TRANSITIONS.get(ticket.state, ())
    if to_state not in allowed:
        raise InvalidTransition(
            f"ticket #{ticket.id} cannot move from {ticket.state} to {to_state}; allowed: "
            f"{', '.join(allowed) or 'none'}", allowed)
    now = clock()
    actor = _actor(session, actor)
    before = snapshot(ticket)
    frm = ticket.state
    if ticket.resolution_running_since is not None:
        ticket.resolution_elapsed_s += max(0.0, (now - ticket.resolution_running_since).total_seconds())
        ticket.resolution_running_since = None
    if frm == "new" and ticket.first_response_at is None:
        ticket.first_response_at = now
    if to_state == "resolved":
        ticket.resolved_at = now
    elif to_state == "closed":
        ticket.closed_at = now
    elif to_state == "triaged" and frm in DONE_STATES:
        ticket.reopened_count += 1
        ticket.resolved_at = ticket.closed_at = None
    if to_state in OPEN_STATES and to_state not in PAUSED_STATES:
        ticket.resolution_running_since = now
    ticket.state = to_state
    ticket.updated_at = now
    kind = "reopened" if to_state == "triaged" and frm in DONE_STATES else "moved"
    _event(session, ticket, kind, actor, now, from_state=frm, to_state=to_state, note=note)
    audit.record(session, "ticket.move", "ticket", ticket.id, before=before, after=snapshot(ticket), reason=note,
                 actor=actor, clock=clock)
    session.flush()
    return ticket


def update(session: Session, ticket_id: int, clock: Clock = utc_now, *, actor: str | None = None,
           assignee: str | None = None, unassign: bool = False, priority: str | None = None,
           category: str | None = None, note: str | None = None) -> Ticket:
    """Assign, re-prioritize (new SLA targets), re-categorize or comment on a ticket.

    Raises
    ------
    TicketNotFound, TicketInputError
    """
    ticket = _get(session, ticket_id)
    now = clock()
    actor = _actor(session, actor)
    before = snapshot(ticket)
    changes: dict[str, list[Any]] = {}
    if unassign or assignee is not None:
        new = None if unassign else assignee.strip() or None
        if new != ticket.assignee:
            changes["assignee"] = [ticket.assignee, new]
            ticket.assignee = new
    if priority is not None:
        prio = normalize_priority(priority)
        if prio != ticket.priority:
            changes["priority"] = [ticket.priority, prio]
            ticket.priority = prio
            ticket.response_target_s, ticket.resolution_target_s = SLA_TARGETS_S[prio]
    if category is not None:
        cat = _category(category)
        if cat != ticket.category:
            changes["category"] = [ticket.category, cat]
            ticket.category = cat
    if not changes and not note:
        return ticket
    ticket.updated_at = now
    kind = "assigned" if set(changes) == {"assignee"} else "comment" if not changes else "edited"
    _event(session, ticket, kind, actor, now, detail=changes, note=note)
    audit.record(session, f"ticket.{'comment' if kind == 'comment' else 'update'}", "ticket", ticket.id,
                 before=before, after=snapshot(ticket), reason=note, actor=actor, clock=clock)
    session.flush()
    return ticket


def attach(session: Session, ticket_id: int, path: Path, clock: Clock = utc_now, *, kind: str = "diagnostic_report",
           actor: str | None = None) -> TicketAttachment:
    """Attach a file by path, recording its SHA-256 and size (the file stays where it is).

    Raises
    ------
    TicketNotFound
    TicketInputError
        If the file does not exist or ``kind`` is unknown.
    """
    ticket = _get(session, ticket_id)
    if kind not in ATTACHMENT_KINDS:
        raise TicketInputError(f"unknown attachment kind {kind!r}: use one of {', '.join(ATTACHMENT_KINDS)}")
    path = Path(path).resolve()
    if not path.is_file():
        raise TicketInputError(f"{path} is not a file; give the path of the report or log to attach")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    now = clock()
    actor = _actor(session, actor)
    att = TicketAttachment(ticket_id=ticket.id, path=str(path), kind=kind, sha256=h.hexdigest(),
                           size_bytes=path.stat().st_size, added_at=now, added_by=actor)
    session.add(att)
    ticket.updated_at = now
    session.flush()
    detail = {"attachment_id": att.id, "path": att.path, "kind": kind, "sha256": att.sha256,
              "size_bytes": att.size_bytes}
    _event(session, ticket, "attached", actor, now, detail=detail)
    audit.record(session, "ticket.attach", "ticket", ticket.id, after=detail, actor=actor, clock=clock)
    return att


def ticket_detail(session: Session, ticket_id: int, now: datetime) -> dict[str, Any]:
    """A ticket with its SLA clocks, allowed moves, history (oldest first) and attachments.

    Raises
    ------
    TicketNotFound
    """
    t = _get(session, ticket_id)
    first, resolution = sla_clocks(t, now)
    events = session.execute(select(TicketEvent).where(TicketEvent.ticket_id == t.id)
                             .order_by(TicketEvent.at, TicketEvent.id)).scalars().all()
    atts = session.execute(select(TicketAttachment).where(TicketAttachment.ticket_id == t.id)
                           .order_by(TicketAttachment.id)).scalars().all()
    return {**snapshot(t), "description": t.description, "origin": t.origin, "household_id": t.household_id,
            "created_at": t.created_at.isoformat(), "updated_at": t.updated_at.isoformat(),
            "created_by": t.created_by, "first_response_at": _iso(t.first_response_at),
            "resolved_at": _iso(t.resolved_at), "closed_at": _iso(t.closed_at), "reopened_count": t.reopened_count,
            "sla": {"first_response": first.as_dict(), "resolution": resolution.as_dict()},
            "allowed_moves": list(TRANSITIONS.get(t.state, ())),
            "history": [{"at": e.at.isoformat(), "actor": e.actor, "kind": e.kind, "from": e.from_state,
                         "to": e.to_state, "detail": e.detail, "note": e.note} for e in events],
            "attachments": [{"id": a.id, "path": a.path, "kind": a.kind, "sha256": a.sha256,
                             "size_bytes": a.size_bytes, "added_at": a.added_at.isoformat(),
                             "added_by": a.added_by} for a in atts]}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def ticket_queue(session: Session, now: datetime, *, state: str | None = None, open_only: bool = False,
                 assignee: str | None = None, priority: str | None = None, unit_serial: str | None = None,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """Tickets for the queue, most urgent first (breached, then by resolution time left), each with
    its SLA badge: ``sla_badge`` is ``breached``, ``at_risk`` (less than 25 % of a target left),
    ``paused``, ``ok`` or ``done`` — for the clocks still running; ``sla_breached`` is True when
    any clock ever missed its target (e.g. a late first response on a ticket now in repair).

    Raises
    ------
    TicketInputError
        Unknown ``state`` or ``priority``.
    """
    from feedback.models import TICKET_STATES

    stmt = select(Ticket)
    if state:
        if state not in TICKET_STATES:
            raise TicketInputError(f"unknown state {state!r}: use one of {', '.join(TICKET_STATES)}")
        stmt = stmt.where(Ticket.state == state)
    if open_only:
        stmt = stmt.where(Ticket.state.in_(OPEN_STATES))
    if assignee:
        stmt = stmt.where(Ticket.assignee == assignee)
    if priority:
        stmt = stmt.where(Ticket.priority == normalize_priority(priority))
    if unit_serial:
        stmt = stmt.where(Ticket.unit_serial == unit_serial)
    rows = []
    for t in session.execute(stmt.order_by(Ticket.id.desc()).limit(limit)).scalars():
        first, res = sla_clocks(t, now)
        if t.state in DONE_STATES:
            badge = "done"
        elif first.status == "breached" or res.status == "breached":
            badge = "breached"
        elif res.status == "paused":
            badge = "paused"
        elif (first.status == "running" and first.remaining_s < 0.25 * first.target_s) or \
                res.remaining_s < 0.25 * res.target_s:
            badge = "at_risk"
        else:
            badge = "ok"
        rows.append({**snapshot(t), "created_at": t.created_at.isoformat(), "age_s": (now - t.created_at).total_seconds(),
                     "sla_badge": badge, "sla_breached": first.breached or res.breached, "first_response": first.as_dict(), "resolution": res.as_dict()})
    order = {"breached": 0, "at_risk": 1, "ok": 2, "paused": 3, "done": 4}
    rows.sort(key=lambda r: (order[r["sla_badge"]], r["resolution"]["remaining_s"]))
    return rows
