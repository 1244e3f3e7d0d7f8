"""Typed errors of the feedback package; each message says what was wrong and what to do."""

from __future__ import annotations


class FeedbackError(Exception):
    """Base class of feedback and ticket errors."""


class FeedbackFormatError(FeedbackError):
    """A whole feedback file cannot be read (not CSV/JSONL, missing required columns, unreadable)."""


class TicketNotFound(FeedbackError):
    """No ticket with the given id."""


class InvalidTransition(FeedbackError):
    """A ticket move the workflow does not allow; the message lists the allowed moves."""

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed


class TicketInputError(FeedbackError):
    """A bad ticket field (unknown priority, category, unit or feedback item, missing file …)."""
