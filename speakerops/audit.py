"""The audit trail: who did what, when, to what, with the state before and after — hash-chained.

Every state-changing action of the core (rollout start/pause/resume/cancel, evaluation-gate
overrides, unit restart and pin, ticket changes, alert acknowledgements, data export and erasure,
user and role changes) calls :func:`record` inside the same transaction as the change itself, so
an action and its audit entry commit or roll back together.

Entries form a hash chain (as Certificate Transparency logs and git commits do): each entry's
``entry_hash`` is the SHA-256 of its canonical JSON *including the previous entry's hash*. Editing
or deleting any entry breaks every hash after it, which :func:`verify` (``speakerops audit
verify``) reports with the first entry that no longer matches.

Concurrent writers (several consoles and collectors on one PostgreSQL) are serialized on a
transaction-scoped advisory lock, so two entries never claim the same predecessor. SQLite
serializes writers itself.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from speakerops.db import Base
from speakerops.timeutil import Clock, ensure_utc, utc_now

logger = logging.getLogger(__name__)

#: Hash of the (virtual) entry before the first one.
GENESIS_HASH = "0" * 64
#: Key of the PostgreSQL advisory lock that serializes audit writers ("SPKRAUDT" in ASCII).
_PG_LOCK_KEY = 0x53504B5241554454 & 0x7FFFFFFFFFFFFFFF

BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntry(Base):
    """One audited action. ``before``/``after`` are JSON snapshots of what changed (or None)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target", "target_kind", "target_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    #: Who: the database login on PostgreSQL, the OS user on SQLite (see :func:`current_actor`).
    actor: Mapped[str] = mapped_column(String(128), index=True)
    #: What, dotted: ``rollout.start``, ``ticket.move``, ``alert.ack``, ``model.gate_override`` …
    action: Mapped[str] = mapped_column(String(64), index=True)
    #: What it was done to: ``rollout``/``unit``/``ticket``/``model_version``/``alert``/``user`` …
    target_kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(128))
    before: Mapped[Any | None] = mapped_column(JSON)
    after: Mapped[Any | None] = mapped_column(JSON)
    #: The operator's written reason, where the action needs one (e.g. a gate override).
    reason: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)

    def payload(self) -> dict[str, Any]:
        """The fields the hash covers, as canonical JSON-able values."""
        return {"at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "target_kind": self.target_kind, "target_id": self.target_id,
                "before": self.before, "after": self.after, "reason": self.reason,
                "prev_hash": self.prev_hash}


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so the stored value equals the hashed one (datetimes → ISO text)."""
    if value is None:
        return None
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def current_actor(session: Session) -> str:
    """Who is acting: ``current_user`` of the PostgreSQL login, else the OS user (SQLite: admin)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        return str(session.execute(text("SELECT current_user")).scalar_one())
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "admin"


def record(session: Session, action: str, target_kind: str, target_id: str | int, *,
           before: Any = None, after: Any = None, reason: str | None = None,
           actor: str | None = None, clock: Clock = utc_now) -> AuditEntry:
    """Append one entry to the audit trail in the caller's transaction (flushed, not committed).

    Parameters
    ----------
    action
        Dotted verb, e.g. ``"rollout.pause"``.
    target_kind, target_id
        What the action touched, e.g. ``("rollout", 12)``.
    before, after
        JSON-able snapshots of the state that changed (datetimes are stored as ISO 8601 text).
    reason
        The operator's written reason, where the action needs one.
    actor
        Overrides :func:`current_actor` (e.g. ``"collector:shard-1/2"`` for automatic actions).

    Raises
    ------
    ValueError
        If ``action`` or ``target_kind`` is empty.
    """
    if not action or not target_kind:
        raise ValueError("an audit entry needs an action and a target kind")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    prev = session.execute(
        select(AuditEntry.entry_hash).order_by(AuditEntry.id.desc()).limit(1)).scalar_one_or_none()
    entry = AuditEntry(at=ensure_utc(clock()), actor=actor or current_actor(session), action=action,
                       target_kind=target_kind, target_id=str(target_id), before=_jsonable(before),
                       after=_jsonable(after), reason=reason, prev_hash=prev or GENESIS_HASH)
    entry.entry_hash = _digest(entry.payload())
    session.add(entry)
    session.flush()
    logger.info("audit: %s %s %s:%s", entry.actor, action, target_kind, target_id)
    return entry


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``ok`` and, if not, the first entry id that fails and why."""

    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None


def verify(session: Session) -> VerifyResult:
    """Recompute the hash chain from the first entry and report the first break.

    Detects an edited entry (its hash no longer matches its content), a deleted entry (the next
    entry's ``prev_hash`` names a hash that is not its predecessor's) and a deleted tail only if
    the caller compares :attr:`VerifyResult.entries` with a count kept elsewhere.
    """
    prev = GENESIS_HASH
    count = 0
    for entry in session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars():
        count += 1
        if entry.prev_hash != prev:
            return VerifyResult(False, count, entry.id,
                                f"entry {entry.id} follows a missing or altered entry "
                                "(its prev_hash does not match the entry before it)")
        if _digest(entry.payload()) != entry.entry_hash:
            return VerifyResult(False, count, entry.id,
                                f"entry {entry.id} was altered after it was written (hash mismatch)")
        prev = entry.entry_hash
    return VerifyResult(True, count)


def entries(session: Session, *, target_kind: str | None = None, target_id: str | int | None = None,
            action_prefix: str | None = None, actor: str | None = None, since: datetime | None = None,
            limit: int = 500) -> list[AuditEntry]:
    """Newest first, filtered (bound parameters only: filters cannot inject SQL)."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if target_kind:
        stmt = stmt.where(AuditEntry.target_kind == target_kind)
    if target_id is not None:
        stmt = stmt.where(AuditEntry.target_id == str(target_id))
    if action_prefix:
        stmt = stmt.where(AuditEntry.action.startswith(action_prefix, autoescape=True))
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    return list(session.execute(stmt).scalars())


def count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(AuditEntry)).scalar_one())
