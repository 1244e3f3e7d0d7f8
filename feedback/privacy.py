"""Privacy of feedback: redaction of identifiers, retention purge, export and erasure of a household.

Rules (a contract, documented in ``docs/feedback.md``):

* free text is stored only when the unit's household consented (``Unit.consent_feedback_text``);
  otherwise the row is kept without text and ``text_withheld`` is set;
* before storage, e-mail addresses, phone numbers (international ``+82 10-1234-5678``,
  ``+1 (555) 123-4567``; Korean ``010-1234-5678``, ``02-123-4567``, ``01012345678``), Korean
  resident registration numbers (``900101-1234567``), payment card numbers (13–19 digits) and IPv4
  addresses are replaced by ``[email]``, ``[phone]``, ``[rrn]``, ``[card]``, ``[ip]``;
* free text older than the retention period (default :data:`DEFAULT_RETENTION_DAYS`) is purged
  (``speakerops feedback purge``); ratings and flags stay for the trends;
* a household's data can be exported (JSON) and erased on request; both are audited. The audit
  entry names the household by a SHA-256 prefix only, so the trail does not keep the id it erased.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from feedback.models import Feedback, Ticket
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Free-text retention, days (a common choice for support free text; set per deployment).
DEFAULT_RETENTION_DAYS = 180

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_RRN = re.compile(r"(?<!\d)\d{6}[- ]?[1-8]\d{6}(?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.\-]?(?:\(\d{1,4}\)[\s.\-]?)?\d{1,4}(?:[\s.\-]?\d{2,4}){1,4}"  # international
    r"|\(\d{2,4}\)[\s.\-]?\d{3,4}[\s.\-]?\d{4}"                                 # (555) 123-4567
    r"|0\d{1,2}[\s.\-]?\d{3,4}[\s.\-]?\d{4}"                                     # 010-1234-5678, 02-123-4567
    r"|\d{3}[\s.\-]\d{3}[\s.\-]\d{4}"                                            # 555-123-4567
    r")(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}(?![\d.])")
_TRIGGER = re.compile(r"[@\d]")
#: Applied in this order (e-mails first: their local part may hold digits).
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("[email]", _EMAIL), ("[rrn]", _RRN), ("[ip]", _IPV4), ("[phone]", _PHONE), ("[card]", _CARD),
)


def redact(text: str) -> tuple[str, int]:
    """Replace identifiers in ``text`` (see module doc).

    Returns
    -------
    (str, int)
        The redacted text and the number of replacements.
    """
    if _TRIGGER.search(text) is None:
        return text, 0
    total = 0
    for token, pattern in PATTERNS:
        text, n = pattern.subn(token, text)
        total += n
    return text, total


def looks_like_identifier(value: str) -> bool:
    """True if ``value`` is an e-mail address or phone number (not a pseudonymous id)."""
    _, n = redact(value)
    return n > 0


def household_ref(household_id: str) -> str:
    """The pseudonymous reference the audit trail keeps for a household: ``sha256:<16 hex>``."""
    return "sha256:" + hashlib.sha256(household_id.encode("utf-8")).hexdigest()[:16]


def purge_text(session: Session, clock: Clock = utc_now, *,
               retention_days: int = DEFAULT_RETENTION_DAYS) -> int:
    """Remove the free text of feedback submitted more than ``retention_days`` ago (audited).

    Returns
    -------
    int
        Rows whose text was removed.

    Raises
    ------
    ValueError
        If ``retention_days`` < 0.
    """
    if retention_days < 0:
        raise ValueError(f"retention must be >= 0 days, got {retention_days}")
    cutoff = clock() - timedelta(days=retention_days)
    result = session.execute(update(Feedback).where(Feedback.submitted_at < cutoff, Feedback.text.is_not(None))
                             .values(text=None).execution_options(synchronize_session=False))
    n = int(result.rowcount or 0)
    audit.record(session, "feedback.purge_text", "feedback", "*", after={"rows": n, "before": cutoff.isoformat(),
                                                                         "retention_days": retention_days},
                 clock=clock)
    logger.info("purged the text of %d feedback rows older than %s", n, cutoff)
    return n


def _row(fb: Feedback, serial: str | None) -> dict[str, Any]:
    return {"id": fb.id, "unit_serial": serial, "household_id": fb.household_id,
            "submitted_at": fb.submitted_at.isoformat(), "feature": fb.feature, "intent": fb.intent,
            "rating": fb.rating, "text": fb.text, "corrected": fb.corrected, "repeated": fb.repeated,
            "cancelled": fb.cancelled, "stt_version": fb.stt_version, "qa_version": fb.qa_version,
            "tts_version": fb.tts_version, "submission_id": fb.submission_id, "source": fb.source}


def export_household(session: Session, household_id: str, clock: Clock = utc_now) -> dict[str, Any]:
    """Everything stored about a household (audited as ``feedback.export``).

    Returns
    -------
    dict
        ``{"household_id", "exported_at", "feedback": [row, ...], "tickets": [ticket, ...]}``.
    """
    from fleet.models import Unit

    rows = session.execute(select(Feedback, Unit.serial).join(Unit, Unit.id == Feedback.unit_id, isouter=True)
                           .where(Feedback.household_id == household_id).order_by(Feedback.submitted_at)).all()
    tickets = session.execute(select(Ticket).where(Ticket.household_id == household_id)
                              .order_by(Ticket.id)).scalars().all()
    data = {"household_id": household_id, "exported_at": clock().isoformat(),
            "feedback": [_row(fb, serial) for fb, serial in rows],
            "tickets": [{"id": t.id, "title": t.title, "description": t.description, "state": t.state,
                         "category": t.category, "unit_serial": t.unit_serial,
                         "created_at": t.created_at.isoformat()} for t in tickets]}
    audit.record(session, "feedback.export", "household", household_ref(household_id),
                 after={"feedback": len(data["feedback"]), "tickets": len(data["tickets"])}, clock=clock)
    return data


def erase_household(session: Session, household_id: str, clock: Clock = utc_now,
                    reason: str | None = None) -> dict[str, int]:
    """Delete a household's feedback and unlink it from tickets (audited as ``feedback.erase``).

    Tickets stay (they are repair records of the unit) but lose the household id and, for tickets
    made from the household's feedback, the description copied from it.

    Returns
    -------
    dict
        ``{"feedback_deleted": n, "tickets_scrubbed": m}``.
    """
    ids = select(Feedback.id).where(Feedback.household_id == household_id)
    scrubbed = session.execute(
        update(Ticket).where((Ticket.household_id == household_id) | Ticket.feedback_id.in_(ids))
        .values(household_id=None, feedback_id=None,
                description="[erased at the household's request]")
        .execution_options(synchronize_session=False)).rowcount or 0
    deleted = session.execute(delete(Feedback).where(Feedback.household_id == household_id)
                              .execution_options(synchronize_session=False)).rowcount or 0
    result = {"feedback_deleted": int(deleted), "tickets_scrubbed": int(scrubbed)}
    audit.record(session, "feedback.erase", "household", household_ref(household_id), after=result,
                 reason=reason, clock=clock)
    logger.info("erased household %s: %s", household_ref(household_id), result)
    return result


def count_with_text(session: Session, before: datetime | None = None) -> int:
    """Feedback rows that still hold text (submitted before ``before``, if given)."""
    stmt = select(func.count()).select_from(Feedback).where(Feedback.text.is_not(None))
    if before is not None:
        stmt = stmt.where(Feedback.submitted_at < before)
    return int(session.execute(stmt).scalar_one())
