"""Text for figures and times as the operator reads them: numbers with their unit, times in the
viewer's local zone with the zone shown, "—" for a missing figure (never "nan")."""

from __future__ import annotations

import logging
import math
from datetime import datetime, tzinfo
from typing import Any

logger = logging.getLogger(__name__)

#: Shown for a missing figure (NaN, None, NaT).
MISSING = "—"


def local_zone() -> tzinfo:
    """The viewer's local time zone (from the ``TZ`` environment or the system)."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def local_zone_name(when: datetime | None = None) -> str:
    """Abbreviation of the viewer's zone at ``when`` (default now), e.g. ``"KST"`` or ``"UTC"``."""
    moment = when if when is not None and when.tzinfo is not None else datetime.now().astimezone()
    return moment.astimezone().tzname() or "local"


def is_missing(value: Any) -> bool:
    """True for None, NaN and NaT."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NaT compare unequal to themselves
    except (TypeError, ValueError):
        return False


def to_datetime(value: Any) -> datetime | None:
    """A ``datetime`` from a ``datetime`` or ``pandas.Timestamp``; None when missing."""
    if is_missing(value):
        return None
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    return None


def format_local_time(value: Any, *, now: datetime | None = None, zone: bool = False,
                      seconds: bool = True) -> str:
    """An aware time in the viewer's zone: ``"15:30:02"`` today, ``"11-20 15:30"`` on other days.

    Parameters
    ----------
    value
        Aware ``datetime`` / ``Timestamp``; naive values are taken as UTC.
    now
        Aware "now" deciding whether the date is shown (default: the current time).
    zone
        Append the zone abbreviation, e.g. ``"15:30:02 KST"``.
    seconds
        Show seconds on today's times.
    """
    dt = to_datetime(value)
    if dt is None:
        return MISSING
    if dt.tzinfo is None:
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    local = dt.astimezone()
    today = (now or datetime.now().astimezone()).astimezone().date()
    if local.date() == today:
        text = local.strftime("%H:%M:%S" if seconds else "%H:%M")
    else:
        text = local.strftime("%Y-%m-%d %H:%M")
    return f"{text} {local.tzname()}" if zone else text


def format_full_time(value: Any) -> str:
    """Date, time and zone in the viewer's zone, e.g. ``"2026-11-21 15:30:02 KST"``."""
    dt = to_datetime(value)
    if dt is None:
        return MISSING
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def format_age(seconds: float | None) -> str:
    """A duration as the operator says it: ``"8 s"``, ``"4 min"``, ``"3 h 10 min"``, ``"2 d 4 h"``."""
    if seconds is None or is_missing(seconds):
        return MISSING
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        h, rem = divmod(int(s), 3600)
        return f"{h} h {rem // 60} min"
    d, rem = divmod(int(s), 86400)
    return f"{d} d {rem // 3600} h"


def format_number(value: Any, decimals: int = 0, unit: str = "") -> str:
    """A figure with thousands separators and an optional unit: ``"1,830 MiB"``; ``"—"`` if
    missing."""
    if is_missing(value):
        return MISSING
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isinf(number):
        return "∞"
    text = f"{number:,.{decimals}f}"
    if text.startswith("-"):
        text = "−" + text[1:]  # a real minus sign reads better in dBFS/dBm columns
    return f"{text} {unit}".rstrip() if unit else text


def format_text(value: Any) -> str:
    """A text field; ``"—"`` when missing or empty."""
    if is_missing(value) or value == "":
        return MISSING
    return str(value)
