"""Aware-UTC time helpers and the ``Clock`` type that services take.

Every service receives a ``clock`` (a zero-argument callable returning an aware UTC
``datetime``) from the composition root instead of calling ``datetime.now`` itself, so that
tests can freeze or advance time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Return the current time as an aware UTC ``datetime`` (the default ``Clock``)."""
    return datetime.now(UTC)


def ensure_utc(value: datetime) -> datetime:
    """Return ``value`` as aware UTC.

    Raises
    ------
    ValueError
        If ``value`` is naive: a naive time is ambiguous, so callers must say its zone.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value.isoformat()} has no time zone; pass an aware datetime (e.g. UTC)"
        )
    return value.astimezone(UTC)
