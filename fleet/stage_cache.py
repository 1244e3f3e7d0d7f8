"""Cohort minutes summed per minute, kept between refreshes of the Service-flow page.

A minute of ``cohort_rollups_1m`` does not change once the 1-minute watermark has passed it
(``fleet.rollups.compute_rollups``), yet the page sums a day of them every 10 s for the stage
breakdown's baseline and the day chart: at 10,000 units about 700 cohorts a minute, a million
rows of histogram JSON per refresh. :class:`CohortMinuteCache` reads each minute once per
cohort and keeps the per-minute sums (a :class:`fleet.stage_buckets.StageBuckets`); a refresh
then reads only the minutes rolled up since the last one. (The same idea as the feedback
trends' ``TrendCache``.)

No Qt: the console keeps one per page and passes it to ``fleet.slo`` off the GUI thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet import rollups
from fleet.models import CohortRollup1m
from fleet.stage_buckets import BATCH_ROWS, StageBuckets, sum_rows

#: Minutes kept per cohort: the breakdown's window and baseline (1 h + 24 h) and the day chart.
DEFAULT_KEEP = timedelta(hours=26)
#: Cohorts kept (least recently used dropped first): the fleet and a few selections.
DEFAULT_MAX_COHORTS = 8


@dataclass
class _Entry:
    known_from: int  # epoch s: minutes in [known_from, known_until) are in ``buckets``
    known_until: int
    buckets: StageBuckets  # only the minutes with requests


def _key(cohort: Any | None) -> tuple:
    return tuple(getattr(cohort, k, None) for k in rollups.COHORT_KEY) if cohort is not None else ()


class CohortMinuteCache:
    """Per cohort, the per-minute sums of ``cohort_rollups_1m``, read once.

    Parameters
    ----------
    keep
        Minutes older than this before the newest one asked for are dropped (default 26 h).
    max_cohorts
        Cohorts kept; the least recently used is dropped first (default 8).

    Notes
    -----
    Thread-safe (one lock); meant for one reader at a time. ``reads`` counts the database
    queries made (for tests and benchmarks).
    """

    def __init__(self, keep: timedelta = DEFAULT_KEEP, max_cohorts: int = DEFAULT_MAX_COHORTS) -> None:
        self.keep_s = int(keep.total_seconds())
        self.max_cohorts = max_cohorts
        self.reads = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def clear(self) -> None:
        """Forget everything (e.g. after a database switch)."""
        with self._lock:
            self._entries.clear()

    def minutes(self, session: Session, cohort: Any | None, start: datetime, end: datetime) -> StageBuckets:
        """Per-minute sums of the cohort's minutes in ``[start, end)`` that are rolled up.

        Parameters
        ----------
        cohort
            A :class:`fleet.rollups.Cohort` without ``tag`` (the cohort table has none), or
            None for the whole fleet.
        start, end
            Aware UTC, minute-aligned. Minutes at or after the 1-minute watermark, and before
            the cohort table's start (``c1m_from``, databases still back-filling), are not
            read or kept: the caller takes raw heartbeats / per-unit minutes for those.

        Returns
        -------
        StageBuckets
            One bucket per minute with requests, ascending.

        Raises
        ------
        ValueError
            For a cohort with a ``tag``.
        """
        if getattr(cohort, "tag", None) is not None:
            raise ValueError("cohort_rollups_1m has no tags: a tag cohort needs the per-unit minutes")
        wm = rollups.rollup_watermark(session, "1m")
        if wm is None:
            return StageBuckets.zeros([])
        lo, hi = rollups.epoch_s(start), min(rollups.epoch_s(end), rollups.epoch_s(wm))
        cohort_from = rollups.rollup_watermark(session, rollups.COHORT_FROM_LEVEL)
        if cohort_from is not None:
            lo = max(lo, rollups.epoch_s(cohort_from))
        lo, hi = lo // 60 * 60, hi // 60 * 60
        if hi <= lo:
            return StageBuckets.zeros([])
        key = _key(cohort)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or lo > entry.known_until or hi < entry.known_from:
                entry = _Entry(lo, hi, self._read(session, cohort, lo, hi))
            else:
                parts = [entry.buckets]
                if lo < entry.known_from:
                    parts.append(self._read(session, cohort, lo, entry.known_from))
                    entry.known_from = lo
                if hi > entry.known_until:
                    parts.append(self._read(session, cohort, entry.known_until, hi))
                    entry.known_until = hi
                entry.buckets = StageBuckets.concat(parts)
            horizon = hi - self.keep_s
            if entry.known_from < horizon:
                entry.buckets = entry.buckets.select(entry.buckets.starts >= horizon)
                entry.known_from = horizon
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_cohorts:
                self._entries.popitem(last=False)
            b = entry.buckets
            return b.select((b.starts >= lo) & (b.starts < hi))

    def _read(self, session: Session, cohort: Any | None, lo: int, hi: int) -> StageBuckets:
        c = CohortRollup1m
        stmt = select(c.bucket_start, c.requests, c.errors, c.e2e_over_budget, c.server_over_budget,
                      c.latency_hist, c.latency_sum_ms).where(
            c.bucket_start >= datetime.fromtimestamp(lo, UTC), c.bucket_start < datetime.fromtimestamp(hi, UTC),
            c.requests > 0)
        for k in rollups.COHORT_KEY:
            if cohort is not None and getattr(cohort, k, None) is not None:
                stmt = stmt.where(getattr(c, k) == getattr(cohort, k))
        self.reads += 1
        rows = session.execute(stmt.execution_options(yield_per=BATCH_ROWS))
        return sum_rows(((rollups.epoch_s(r[0]), *r[1:]) for r in rows), 60)
