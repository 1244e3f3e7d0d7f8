"""Feedback and A/S ticket tables (issue #6).

* :class:`Feedback` — one rating a household gave through the companion app (or an import, or
  the simulator), linked to the unit and to the model versions running when it was submitted.
* :class:`FeedbackImport` — one import batch (a file, an HTTP request or a simulator run) with
  its counts; every feedback row names the batch it came in with.
* :class:`Ticket`, :class:`TicketEvent`, :class:`TicketAttachment` — A/S tickets, their full
  history of changes and their attachments (diagnostic reports from the technician workbench).

Times are aware UTC (``speakerops.db.UTCDateTime``); units are in column names. Consent is the
unit's ``consent_feedback_text`` (one household per unit): see ``docs/feedback.md``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from speakerops.db import Base

BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

#: Features a feedback item can concern (the service's intent families; ``none`` = out of domain).
FEATURES: tuple[str, ...] = ("weather", "news", "schedule", "music", "qa", "none")
#: Where a feedback row came from.
SOURCES: tuple[str, ...] = ("app", "import", "simulator")
#: How the model versions of a row were found: given in the row, from the unit's heartbeat at
#: ``submitted_at``, or the unit's current versions (no history covers the time).
VERSION_SOURCES: tuple[str, ...] = ("given", "heartbeat", "unit")


class FeedbackImport(Base):
    """One batch of feedback: a file import, an HTTP request to the endpoint or a simulator run."""

    __tablename__ = "feedback_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    #: File name (imports), ``POST /v1/feedback`` (endpoint) or ``simulate`` (simulator).
    origin: Mapped[str] = mapped_column(String(255), default="")
    #: SHA-256 of the file's bytes (imports only).
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    encoding: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    rows_total: Mapped[int] = mapped_column(default=0)
    rows_imported: Mapped[int] = mapped_column(default=0)
    rows_duplicate: Mapped[int] = mapped_column(default=0)
    rows_rejected: Mapped[int] = mapped_column(default=0)
    #: Who started it (OS user, ``app`` or ``simulator``).
    actor: Mapped[str] = mapped_column(String(128), default="")


class Feedback(Base):
    """One feedback item: a rating 1–5 of one answer, with optional free text."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_unit_submitted", "unit_id", "submitted_at"),
        Index("ix_feedback_household_submitted", "household_id", "submitted_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    #: Pseudonymous household id from the app (never a name, e-mail or phone number).
    household_id: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(index=True)
    #: When SpeakerOps stored it.
    received_at: Mapped[datetime]
    feature: Mapped[str] = mapped_column(String(16))
    #: ``<feature>.<action>``, e.g. ``weather.forecast``; None when the app did not say.
    intent: Mapped[str | None] = mapped_column(String(64))
    rating: Mapped[int] = mapped_column(SmallInteger)
    #: Free text, redacted, at most ``ingest.MAX_TEXT_CHARS``; None without consent or after purge.
    text: Mapped[str | None] = mapped_column(Text)
    #: Identifiers (e-mails, phone numbers …) replaced in ``text`` before storage.
    redactions: Mapped[int] = mapped_column(SmallInteger, default=0)
    #: Text was given but not stored because the household did not consent.
    text_withheld: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The user corrected / repeated / cancelled right after the answer.
    corrected: Mapped[bool] = mapped_column(Boolean, default=False)
    repeated: Mapped[bool] = mapped_column(Boolean, default=False)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    stt_version: Mapped[str | None] = mapped_column(String(64))
    qa_version: Mapped[str | None] = mapped_column(String(64))
    tts_version: Mapped[str | None] = mapped_column(String(64))
    #: ``given`` | ``heartbeat`` | ``unit`` (:data:`VERSION_SOURCES`).
    versions_source: Mapped[str] = mapped_column(String(16))
    #: De-duplication key: the app's submission id, else ``h:`` + a content hash.
    submission_id: Mapped[str] = mapped_column(String(160), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    import_id: Mapped[int | None] = mapped_column(ForeignKey("feedback_imports.id", ondelete="SET NULL"),
                                                  index=True)


#: Ticket states in workflow order (``docs/tickets.md``).
TICKET_STATES: tuple[str, ...] = (
    "new", "triaged", "diagnosing", "waiting_for_parts", "in_repair", "resolved", "closed",
)
#: Priorities, most urgent first (p1 … p4).
PRIORITIES: tuple[str, ...] = ("urgent", "high", "normal", "low")
CATEGORIES: tuple[str, ...] = (
    "no_response", "misrecognition", "wrong_answer", "audio_hardware", "connectivity", "other",
)


class Ticket(Base):
    """One A/S ticket with its SLA clocks.

    The resolution clock accumulates ``resolution_elapsed_s`` over the segments in which it ran;
    ``resolution_running_since`` is set while it runs (None while paused in ``waiting_for_parts``
    or stopped in ``resolved``/``closed``). See :mod:`feedback.tickets`.
    """

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(20), default="new", index=True)
    priority: Mapped[str] = mapped_column(String(8), default="normal", index=True)
    category: Mapped[str] = mapped_column(String(20), default="other", index=True)
    assignee: Mapped[str | None] = mapped_column(String(128), index=True)
    #: ``unit`` | ``feedback`` | ``manual``.
    origin: Mapped[str] = mapped_column(String(16), default="manual")
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id", ondelete="SET NULL"), index=True)
    #: Serial as of creation (kept if the unit is later deleted).
    unit_serial: Mapped[str | None] = mapped_column(String(64))
    feedback_id: Mapped[int | None] = mapped_column(BigIntPK, ForeignKey("feedback.id", ondelete="SET NULL"))
    household_id: Mapped[str | None] = mapped_column(String(64), index=True)
    #: The unit's model versions when the ticket was created.
    stt_version: Mapped[str | None] = mapped_column(String(64))
    qa_version: Mapped[str | None] = mapped_column(String(64))
    tts_version: Mapped[str | None] = mapped_column(String(64))
    #: The rollout that last touched the unit before creation (``rollouts.id``; no FK: optional table).
    rollout_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128), default="")
    #: First move out of ``new`` (stops the first-response clock).
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    reopened_count: Mapped[int] = mapped_column(default=0)
    #: SLA targets in force for this ticket (from its priority at creation or last priority change).
    response_target_s: Mapped[float]
    resolution_target_s: Mapped[float]
    resolution_elapsed_s: Mapped[float] = mapped_column(default=0.0)
    resolution_running_since: Mapped[datetime | None]


class TicketEvent(Base):
    """One change of a ticket: created, moved, assigned, priority, attached, comment, edited."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str | None] = mapped_column(String(20))
    #: What changed, e.g. ``{"assignee": ["kim", "lee"]}``; a note for comments.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str | None] = mapped_column(Text)


class TicketAttachment(Base):
    """A file attached to a ticket (diagnostic report, photo, log), by path with its checksum."""

    __tablename__ = "ticket_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    #: ``diagnostic_report`` | ``log`` | ``photo`` | ``audio`` | ``other``.
    kind: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    added_at: Mapped[datetime]
    added_by: Mapped[str] = mapped_column(String(128))
