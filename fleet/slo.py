"""Service-level objective, stage breakdown, fleet health aggregates and capacity planning.

The SLO is the service requirement "95 % of requests answered within 3 s end to end, server
part within 2 s" (docs/unit-api.md: end to end = the sum of the six stages, server part =
``stt`` + ``qa`` + ``tts``). Figures come from the rollup tables (``unit_rollups_1m`` for
windows up to a day, ``unit_rollups_1h`` beyond) up to their watermark, and from raw heartbeats
for the part not yet rolled up (or for everything when there are no rollups).

No Qt here: the console and the CLI call these off the GUI thread with one ``Session``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet import rollups as _rollups
from fleet.models import (
    CohortRollup1m,
    STAGES,
    Heartbeat,
    Unit,
    UnitRollup1h,
    UnitRollup1m,
)
from fleet.queries import latest_heartbeats, stream_rows
from fleet.stage_buckets import HIST_STAGES, N_BUCKETS, StageBuckets, sum_rows
from fleet.stage_cache import CohortMinuteCache

logger = logging.getLogger(__name__)

#: Share of requests that must meet both budgets (service requirements: "95 % of requests").
SLO_TARGET = 0.95
#: End-to-end budget, ms (service requirements: "answered within 3 s end to end").
E2E_BUDGET_MS = 3000.0
#: Server-part budget (stt + qa + tts), ms (service requirements: "server part within 2 s").
SERVER_BUDGET_MS = 2000.0
#: Stages of the server part (docs/unit-api.md).
SERVER_STAGES: tuple[str, ...] = ("stt", "qa", "tts")
#: The SLO windows shown by the console and ``speakerops slo``: 1 h, 24 h, 30 d.
SLO_WINDOWS: tuple[timedelta, ...] = (timedelta(hours=1), timedelta(hours=24), timedelta(days=30))
#: Windows up to this span read the 1-minute rollups, longer ones the 1-hour rollups.
MINUTE_ROLLUP_MAX_WINDOW = timedelta(days=1)
#: Requests per second one worker process serves: ``benchmarks/loop_speed.py`` on this 2-core
#: machine, 2026-11-21, service stages with the int8 qa model (README "throughput": 1.64 with
#: 1 worker, 3.28 with 2).
PER_WORKER_RPS = 1.64

HEALTH_METRICS: tuple[str, ...] = (
    "cpu_pct", "temp_c", "mem_pct", "disk_free_mb", "mic_noise_dbfs", "wifi_rssi_dbm",
    "wake_false_accepts_per_h",
)
GROUP_KEYS: tuple[str, ...] = (
    "site", "hardware_rev", "firmware_version", "stt_version", "qa_version", "tts_version",
)
GroupKey = Literal["site", "hardware_rev", "firmware_version", "stt_version", "qa_version", "tts_version"]


# -- cohorts ------------------------------------------------------------------------------------
#: A slice of the fleet (see :class:`fleet.rollups.Cohort`).
Cohort = _rollups.Cohort

_COHORT_FIELDS = ("site", "hardware_rev", "firmware_version", "stt_version", "qa_version", "tts_version")


def as_cohort(cohort: Any | None) -> Cohort | None:
    """``cohort`` as a :class:`Cohort` (any object with its field names as attributes works);
    None for the whole fleet (also for a cohort with every field None)."""
    if cohort is None:
        return None
    c = cohort if isinstance(cohort, Cohort) else Cohort(
        **{f: getattr(cohort, f, None) for f in (*_COHORT_FIELDS, "tag")})
    return None if c.is_fleet else c


#: Which units a tally covers: the whole fleet (None), a :class:`Cohort` (its units' current
#: inventory; cohort minutes by the versions of that minute), or explicit unit ids (a rollout group).
Units = Cohort | Sequence[int] | None


def _restrict(stmt: Any, model: Any, units: Units) -> Any:
    """``stmt`` over ``model`` (heartbeats, a per-unit or the cohort rollup table) limited to ``units``."""
    if units is None:
        return stmt
    if model is CohortRollup1m:
        if not isinstance(units, Cohort) or units.tag is not None:
            raise ValueError("cohort_rollups_1m cannot answer for explicit units or a tag cohort")
        for key in _rollups.COHORT_KEY:
            if getattr(units, key) is not None:
                stmt = stmt.where(getattr(CohortRollup1m, key) == getattr(units, key))
        return stmt
    if isinstance(units, Cohort):
        return stmt.where(model.unit_id.in_(units.unit_ids()))
    return stmt.where(model.unit_id.in_(list(units) or [-1]))


def _minute_model(units: Units) -> type:
    """The minute table that can answer for ``units``: the cohort table (30 days, a few rows per
    minute) for the fleet or a cohort of inventory fields; per-unit minutes (48 h) otherwise."""
    if units is None or (isinstance(units, Cohort) and units.tag is None):
        return CohortRollup1m
    return UnitRollup1m


# -- latency accumulation (raw samples and rollup histograms) ---------------------------------
def hist_percentile(counts: Iterable[int], q: float) -> float:
    """The ``q``-th percentile (0–100), ms, of a :data:`LATENCY_EDGES_MS` histogram, linearly
    interpolated inside its bucket (:func:`fleet.rollups.hist_percentile`); NaN for an empty
    histogram."""
    value = _rollups.hist_percentile([int(c) for c in counts], q)
    return float("nan") if value is None else float(value)


@dataclass
class _Latency:
    """Latencies of one stage: exact samples (raw heartbeats) plus rollup histogram counts."""

    samples: list[float] = field(default_factory=list)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS))
    hist_total: float = 0.0
    total_ms: float = 0.0

    @property
    def count(self) -> int:
        return int(len(self.samples) + self.hist_total)

    def percentile(self, q: float) -> float:
        if self.hist_total == 0:
            return float(np.percentile(self.samples, q)) if self.samples else float("nan")
        return hist_percentile(self.hist + np.bincount(_rollups.bucket_index(self.samples), minlength=N_BUCKETS), q)

    @property
    def mean(self) -> float:
        return self.total_ms / self.count if self.count else float("nan")


@dataclass
class _Tally:
    """Request counts and per-stage latencies over a span."""

    requests: int = 0
    errors: int = 0
    e2e_over: int = 0
    server_over: int = 0
    bad_latency: int = 0  # requests over either budget
    latency: dict[str, _Latency] = field(default_factory=dict)

    def stage(self, name: str) -> _Latency:
        return self.latency.setdefault(name, _Latency())


@dataclass
class _RawLatencies:
    """Per-request latencies of raw heartbeats, gathered as flat lists then judged with numpy."""

    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    #: per stage, only the requests every stage reported (the ones that have an end to end)
    aligned: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def add(self, latency_ms: dict | None) -> None:
        if not latency_ms:
            return
        lists = [latency_ms.get(s) or [] for s in STAGES]
        n = min(len(v) for v in lists)
        for name, values in zip(STAGES, lists):
            self.stages[name].extend(values)
            self.aligned[name].extend(values if len(values) == n else values[:n])

    def per_request(self) -> dict[str, np.ndarray]:
        """Per stage (all its samples) and ``e2e``/``server`` (sums of the aligned requests), ms."""
        out = {name: np.asarray(v, dtype=float) for name, v in self.stages.items()}
        aligned = {name: np.asarray(v, dtype=float) for name, v in self.aligned.items()}
        n = len(aligned[STAGES[0]])
        out["e2e"] = sum((aligned[st] for st in STAGES), np.zeros(n))
        out["server"] = sum((aligned[st] for st in SERVER_STAGES), np.zeros(n))
        return out

    def add_to(self, tally: _Tally, stages: bool) -> None:
        """Count the requests over budget into ``tally`` and, with ``stages``, their samples."""
        per = self.per_request()
        e2e_over, server_over = per["e2e"] > E2E_BUDGET_MS, per["server"] > SERVER_BUDGET_MS
        tally.e2e_over += int(e2e_over.sum())
        tally.server_over += int(server_over.sum())
        tally.bad_latency += int((e2e_over | server_over).sum())
        if stages:
            for name, values in per.items():
                acc = tally.stage(name)
                acc.samples.extend(values.tolist())
                acc.total_ms += float(values.sum())


def _add_raw(session: Session, tally: _Tally, since: datetime, until: datetime,
             units: Units, stages: bool) -> None:
    """Raw heartbeats received in ``(since, until]``: counts summed by the database, latency JSON
    read only from heartbeats that carried requests, in batches."""
    if until <= since:
        return
    span = (Heartbeat.received_at > since, Heartbeat.received_at <= until)
    n_req, n_err = session.execute(_restrict(
        select(func.sum(Heartbeat.requests), func.sum(Heartbeat.errors)).where(*span), Heartbeat, units)).one()
    tally.requests += int(n_req or 0)
    tally.errors += int(n_err or 0)
    raw = _RawLatencies()
    for (latency,) in stream_rows(session, _restrict(
            select(Heartbeat.latency_ms).where(*span, Heartbeat.requests > 0), Heartbeat, units)):
        raw.add(latency)
    raw.add_to(tally, stages)


def _add_rollups(session: Session, tally: _Tally, model: type, since: datetime, until: datetime,
                 units: Units, stages: bool) -> None:
    """Rollup buckets starting in ``[since, until)``. Counts are summed by the database; only the
    histograms (``stages``) are read row by row. A request over both budgets is counted in
    both over-budget columns and cannot be told apart, so ``bad_latency`` takes their sum
    (compliance from rollups is conservative)."""
    if until <= since:
        return
    span = (model.bucket_start >= since, model.bucket_start < until)
    sums = session.execute(_restrict(select(
        func.sum(model.requests), func.sum(model.errors), func.sum(model.e2e_over_budget),
        func.sum(model.server_over_budget)).where(*span), model, units)).one()
    requests, errors, e2e_over, server_over = (int(v or 0) for v in sums)
    tally.requests += requests
    tally.errors += errors
    tally.e2e_over += e2e_over
    tally.server_over += server_over
    tally.bad_latency += e2e_over + server_over
    if not stages:
        return
    stmt = select(model.latency_hist, model.latency_sum_ms).where(*span, model.requests > 0)
    rows = stream_rows(session, _restrict(stmt, model, units))
    # one bucket for the whole span; the counts above are already in the tally
    _add_histograms(tally, sum_rows(((0, 0, 0, 0, 0, hists, total_ms) for hists, total_ms in rows), 1))


def _add_histograms(tally: _Tally, buckets: StageBuckets) -> None:
    """The per-stage histograms and latency sums of ``buckets`` (counts left out)."""
    if not len(buckets):
        return
    hist, total_ms = buckets.hist.sum(axis=0), buckets.sum_ms.sum(axis=0)
    for i, name in enumerate(HIST_STAGES):
        if hist[i].any():
            acc = tally.stage(name)
            acc.hist += hist[i]
            acc.hist_total += float(hist[i].sum())
            acc.total_ms += float(total_ms[i])


def _add_buckets(tally: _Tally, buckets: StageBuckets, stages: bool) -> None:
    """Summed rollup buckets (see :func:`_add_rollups` for ``bad_latency``)."""
    requests, errors, e2e_over, server_over = (int(v) for v in buckets.counts.sum(axis=0))
    tally.requests += requests
    tally.errors += errors
    tally.e2e_over += e2e_over
    tally.server_over += server_over
    tally.bad_latency += e2e_over + server_over
    if stages:
        _add_histograms(tally, buckets)


def _collect(session: Session, since: datetime, until: datetime, units: Units,
             *, hourly: bool, stages: bool = False, cache: CohortMinuteCache | None = None) -> _Tally:
    """Tally ``(since, until]`` for ``units``: whole rollup buckets before the watermarks (hours
    from ``unit_rollups_1h`` if ``hourly``, then minutes from the table :func:`_minute_model`
    picks), raw heartbeats for the rest (the unaligned head of the window and the part not yet
    rolled up). With a ``cache``, cohort minutes come from it (read once per minute)."""
    tally = _Tally()
    levels = [("1h", UnitRollup1h, timedelta(hours=1))] if hourly else []
    levels.append(("1m", _minute_model(units), timedelta(minutes=1)))
    cursor = since
    raw_head_done = False
    for level, model, step in levels:
        wm = _rollups.rollup_watermark(session, level)
        if wm is None:
            continue
        start = _rollups.ceil_to(cursor, step)
        end = min(wm, until)
        end = start + ((end - start) // step) * step if end > start else start
        if end <= start:
            continue
        if not raw_head_done:
            _add_raw(session, tally, cursor, start, units, stages)  # the unaligned head
            raw_head_done = True
        if cache is not None and model is CohortRollup1m:
            _add_buckets(tally, cache.minutes(session, units, start, end), stages)
        else:
            _add_rollups(session, tally, model, start, end, units, stages)
        cursor = end
    _add_raw(session, tally, cursor, until, units, stages)
    return tally


# -- SLO ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SloStatus:
    """SLO compliance over one window ending at the caller's ``now``.

    Attributes
    ----------
    window
        Span looked at.
    requests
        Requests handled by the units in the window.
    good
        Requests that met both budgets (end to end ≤ 3,000 ms and server part ≤ 2,000 ms) and
        did not fail. Errors count as not good.
    compliance
        ``good / requests`` (0–1); None without requests.
    e2e_compliance, server_compliance
        Share of requests within each budget alone (0–1); None without requests.
    error_budget_burn_rate
        ``(1 − compliance) / (1 − SLO_TARGET)``: 1.0 spends the error budget exactly over the
        window, 2.0 twice as fast; None without requests.
    """

    window: timedelta
    requests: int
    good: int
    compliance: float | None
    e2e_compliance: float | None
    server_compliance: float | None
    error_budget_burn_rate: float | None

    @property
    def burn_rate(self) -> float | None:
        """Alias of :attr:`error_budget_burn_rate` (used by the alert rules)."""
        return self.error_budget_burn_rate

    @property
    def met(self) -> bool | None:
        """True when compliance reaches :data:`SLO_TARGET`; None without requests."""
        return None if self.compliance is None else self.compliance >= SLO_TARGET - 1e-12

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able figures (window in seconds)."""
        return {"window_s": self.window.total_seconds(), "requests": self.requests, "good": self.good,
                "compliance": self.compliance, "e2e_compliance": self.e2e_compliance,
                "server_compliance": self.server_compliance, "burn_rate": self.burn_rate,
                "met": self.met}


def slo_status(session: Session, now: datetime, window: timedelta, cohort: Any | None = None, *,
               cache: CohortMinuteCache | None = None) -> SloStatus:
    """SLO compliance of the requests in ``(now − window, now]``.

    Parameters
    ----------
    now
        Aware UTC end of the window (the caller's clock).
    window
        Span; up to a day reads 1-minute rollups, beyond it 1-hour rollups (plus raw heartbeats
        for what is not yet rolled up).
    cohort
        Only units matching this :class:`Cohort` (their current inventory); None: the fleet.
    """
    tally = _collect(session, now - window, now, as_cohort(cohort), hourly=window > MINUTE_ROLLUP_MAX_WINDOW,
                     cache=cache)
    n = tally.requests
    if n <= 0:
        return SloStatus(window, 0, 0, None, None, None, None)
    good = max(0, n - tally.errors - min(tally.bad_latency, n))
    compliance = good / n
    return SloStatus(
        window=window, requests=n, good=good, compliance=compliance,
        e2e_compliance=max(0.0, 1 - tally.e2e_over / n),
        server_compliance=max(0.0, 1 - tally.server_over / n),
        error_budget_burn_rate=(1 - compliance) / (1 - SLO_TARGET),
    )


def slo_report(session: Session, now: datetime, cohort: Any | None = None, *,
               cache: CohortMinuteCache | None = None) -> list[SloStatus]:
    """:func:`slo_status` for each of :data:`SLO_WINDOWS` (1 h, 24 h, 30 d), in that order."""
    return [slo_status(session, now, w, cohort, cache=cache) for w in SLO_WINDOWS]


# -- stage breakdown ----------------------------------------------------------------------------
BREAKDOWN_COLUMNS: tuple[str, ...] = (
    "stage", "p50_ms", "p95_ms", "baseline_p50_ms", "baseline_p95_ms", "change_p95_ms",
    "change_p95_pct", "grew_most", "requests", "requests_per_s", "errors", "error_rate",
)


def stage_breakdown(session: Session, now: datetime, window: timedelta = timedelta(hours=1),
                    baseline: timedelta = timedelta(hours=24), cohort: Any | None = None, *,
                    cache: CohortMinuteCache | None = None) -> pd.DataFrame:
    """Where the 3 s go, stage by stage: this window against the baseline window before it.

    Parameters
    ----------
    now
        Aware UTC end of the window.
    window
        The span looked at, default 1 h (the page's first tile).
    baseline
        The span just before ``window`` to compare with, default 24 h (a day smooths out the
        daily cycle of load).
    cohort
        Only units matching this :class:`Cohort`.

    Returns
    -------
    DataFrame
        One row per stage of :data:`fleet.models.STAGES` in request order, then ``server`` and
        ``e2e``; columns :data:`BREAKDOWN_COLUMNS`. Latencies in ms (NaN without samples);
        ``change_p95_ms`` / ``change_p95_pct`` compare the window's p95 with the baseline's;
        ``grew_most`` is True on the one pipeline stage (not ``server``/``e2e``) whose p95 grew
        most in ms, if any grew. ``requests``, ``requests_per_s``, ``errors`` and ``error_rate``
        (0–1) are the window's, the same on every row.
    """
    units = as_cohort(cohort)
    cur = _collect(session, now - window, now, units, hourly=window > MINUTE_ROLLUP_MAX_WINDOW, stages=True,
                   cache=cache)
    base = _collect(session, now - window - baseline, now - window, units,
                    hourly=baseline > MINUTE_ROLLUP_MAX_WINDOW, stages=True, cache=cache)
    rows = []
    for name in (*STAGES, "server", "e2e"):
        c, b = cur.stage(name), base.stage(name)
        p95, bp95 = c.percentile(95), b.percentile(95)
        change = p95 - bp95
        rows.append({
            "stage": name, "p50_ms": c.percentile(50), "p95_ms": p95,
            "baseline_p50_ms": b.percentile(50), "baseline_p95_ms": bp95,
            "change_p95_ms": change, "change_p95_pct": change / bp95 * 100 if bp95 else float("nan"),
            "grew_most": False,
        })
    df = pd.DataFrame(rows)
    stage_rows = df[df["stage"].isin(STAGES) & (df["change_p95_ms"] > 0)]
    if len(stage_rows):
        df.loc[stage_rows["change_p95_ms"].idxmax(), "grew_most"] = True
    seconds = window.total_seconds()
    df["requests"] = cur.requests
    df["requests_per_s"] = cur.requests / seconds if seconds else float("nan")
    df["errors"] = cur.errors
    df["error_rate"] = cur.errors / cur.requests if cur.requests else float("nan")
    return df[list(BREAKDOWN_COLUMNS)]


SERIES_COLUMNS: tuple[str, ...] = (
    "bucket_start", "stage", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "requests", "errors",
    "e2e_over_budget", "server_over_budget",
)


def _raw_stage_series(session: Session, since: datetime, until: datetime, bucket: timedelta,
                      units: Units) -> pd.DataFrame:
    """Per bucket and stage, percentiles from raw heartbeats (the fallback of :func:`stage_p95_series`)."""
    stmt = select(Heartbeat.received_at, Heartbeat.requests, Heartbeat.errors, Heartbeat.latency_ms).where(
        Heartbeat.received_at > since, Heartbeat.received_at <= until,
        (Heartbeat.requests > 0) | (Heartbeat.errors > 0))
    buckets: dict[datetime, tuple[_Tally, _RawLatencies]] = {}
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for at, n_req, n_err, latency in stream_rows(session, _restrict(stmt, Heartbeat, units)):
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        start = epoch + ((at - epoch) // bucket) * bucket
        t, raw = buckets.get(start) or buckets.setdefault(start, (_Tally(), _RawLatencies()))
        t.requests += int(n_req or 0)
        t.errors += int(n_err or 0)
        raw.add(latency)
    rows = []
    for start in sorted(buckets):
        t, raw = buckets[start]
        raw.add_to(t, stages=True)
        for name in (*STAGES, "server", "e2e"):
            acc = t.stage(name)
            rows.append({"bucket_start": start, "stage": name, "p50_ms": acc.percentile(50),
                         "p95_ms": acc.percentile(95), "p99_ms": acc.percentile(99), "mean_ms": acc.mean,
                         "requests": t.requests, "errors": t.errors,
                         "e2e_over_budget": t.e2e_over, "server_over_budget": t.server_over})
    return pd.DataFrame(rows, columns=list(SERIES_COLUMNS))


def stage_p95_series(session: Session, now: datetime, span: timedelta, cohort: Any | None = None, *,
                     cache: CohortMinuteCache | None = None) -> pd.DataFrame:
    """Per-stage latency over time for the page's chart: columns :data:`SERIES_COLUMNS`.

    Buckets of 1 min (span ≤ 1 h), 5 min (≤ 1 day) or 1 h: whole buckets before the rollup
    watermark from ``fleet.rollups.stage_series`` (1-minute level up to a day, 1-hour beyond;
    with a ``cache``, cohort minutes from it), the rest from raw heartbeats. ``bucket_start``
    is aware UTC; latencies in ms.
    """
    bucket = (timedelta(minutes=1) if span <= timedelta(hours=1)
              else timedelta(minutes=5) if span <= timedelta(days=1) else timedelta(hours=1))
    since = now - span
    cohort = as_cohort(cohort)
    parts = []
    raw_from = since
    level = "1m" if span <= MINUTE_ROLLUP_MAX_WINDOW else "1h"
    wm = _rollups.rollup_watermark(session, level)
    if wm is not None and wm > since:
        end = min(now, _rollups.floor_to(wm, bucket))
        end = max(end, since)
        if cache is not None and level == "1m" and (cohort is None or cohort.tag is None):
            minutes = cache.minutes(session, cohort, _rollups.ceil_to(since, timedelta(minutes=1)), end)
            rolled = _rollups.series_frame(minutes.rebucket(int(bucket.total_seconds())))
        else:
            rolled = _rollups.stage_series(session, since, end, level=level, cohort=cohort, bucket=bucket)
        parts.append(rolled.reindex(columns=list(SERIES_COLUMNS)))
        raw_from = end
    parts.append(_raw_stage_series(session, raw_from, now, bucket, cohort))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(SERIES_COLUMNS))
    return pd.concat(parts, ignore_index=True)


# -- fleet health aggregates --------------------------------------------------------------------
def health_aggregates(session: Session, now: datetime, by: GroupKey) -> pd.DataFrame:
    """Fleet health per group of units, from each unit's latest heartbeat.

    Parameters
    ----------
    now
        Aware UTC time of the read (kept for symmetry with the other read models; the latest
        heartbeat at or before it is used).
    by
        Unit column to group by: one of :data:`GROUP_KEYS`.

    Returns
    -------
    DataFrame
        One row per group value (sorted; units without a value under ``""``): ``by``, ``units``,
        ``online``, ``offline``, ``degraded``, ``updating`` (unit counts by ``Unit.status``), and
        per metric of :data:`HEALTH_METRICS` ``<metric>_p50``, ``<metric>_p95`` and
        ``<metric>_max`` (``disk_free_mb_min`` instead of its max: low free space is the worry),
        over the units that have a heartbeat; NaN where none has. Units as in the column names
        (%, °C, MiB, dBFS, dBm, per hour).

    Raises
    ------
    ValueError
        For a ``by`` not in :data:`GROUP_KEYS`.
    """
    if by not in GROUP_KEYS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUP_KEYS)}")
    units = pd.DataFrame(session.execute(select(Unit.id, getattr(Unit, by), Unit.status)).all(),
                         columns=["id", "group", "status"])
    latest = latest_heartbeats(session, HEALTH_METRICS, until=now)
    df = units.join(latest, on="id") if len(latest) else units.assign(**{m: np.nan for m in HEALTH_METRICS})
    df["group"] = df["group"].fillna("").astype(str)
    rows = []
    for group, g in sorted(df.groupby("group"), key=lambda kv: kv[0]):
        row: dict[str, Any] = {by: group, "units": len(g)}
        for state in ("online", "offline", "degraded", "updating"):
            row[state] = int((g["status"] == state).sum())
        for m in HEALTH_METRICS:
            v = pd.to_numeric(g[m], errors="coerce").dropna().to_numpy(dtype=float)
            row[f"{m}_p50"] = float(np.percentile(v, 50)) if len(v) else float("nan")
            row[f"{m}_p95"] = float(np.percentile(v, 95)) if len(v) else float("nan")
            if m == "disk_free_mb":
                row[f"{m}_min"] = float(v.min()) if len(v) else float("nan")
            else:
                row[f"{m}_max"] = float(v.max()) if len(v) else float("nan")
        rows.append(row)
    cols = [by, "units", "online", "offline", "degraded", "updating"]
    for m in HEALTH_METRICS:
        cols += [f"{m}_p50", f"{m}_p95", f"{m}_min" if m == "disk_free_mb" else f"{m}_max"]
    return pd.DataFrame(rows, columns=cols)


# -- capacity -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CapacityPlan:
    """Server workers and machines for a peak request rate.

    Attributes
    ----------
    peak_rps
        Peak requests per second planned for.
    per_worker_rps
        Requests per second one worker process serves.
    headroom
        Spare share on top of the peak (0.3 = 30 %).
    workers
        ``ceil(peak_rps × (1 + headroom) / per_worker_rps)``.
    workers_per_machine
        Worker processes per machine.
    machines
        ``ceil(workers / workers_per_machine)``.
    """

    peak_rps: float
    per_worker_rps: float
    headroom: float
    workers: int
    workers_per_machine: int
    machines: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able figures."""
        return {"peak_rps": self.peak_rps, "per_worker_rps": self.per_worker_rps, "headroom": self.headroom,
                "workers": self.workers, "workers_per_machine": self.workers_per_machine,
                "machines": self.machines}


def capacity_plan(peak_rps: float, per_worker_rps: float = PER_WORKER_RPS, *, workers_per_machine: int = 2,
                  headroom: float = 0.3) -> CapacityPlan:
    """Workers and machines needed to serve ``peak_rps`` with ``headroom`` to spare.

    Parameters
    ----------
    peak_rps
        Peak requests per second (e.g. :func:`peak_request_rate`), ≥ 0.
    per_worker_rps
        Requests per second per worker process. Default :data:`PER_WORKER_RPS` = 1.64, measured
        by ``benchmarks/loop_speed.py`` on this machine (one worker process, int8 qa model).
    workers_per_machine
        Worker processes per machine, default 2 (the benchmark machine has 2 cores and measured
        3.28 requests/s with 2 workers, i.e. linear scaling).
    headroom
        Spare share above the peak, default 0.3 (30 %, for bursts and one machine down).

    Raises
    ------
    ValueError
        For a negative peak or headroom, or a non-positive throughput or machine size.
    """
    if peak_rps < 0 or headroom < 0:
        raise ValueError(f"peak_rps ({peak_rps}) and headroom ({headroom}) must be ≥ 0")
    if per_worker_rps <= 0 or workers_per_machine <= 0:
        raise ValueError(f"per_worker_rps ({per_worker_rps}) and workers_per_machine "
                         f"({workers_per_machine}) must be > 0")
    workers = math.ceil(round(peak_rps * (1 + headroom) / per_worker_rps, 9))
    machines = math.ceil(workers / workers_per_machine)
    return CapacityPlan(peak_rps, per_worker_rps, headroom, workers, workers_per_machine, machines)


def peak_request_rate(session: Session, now: datetime, window: timedelta = timedelta(days=7)) -> float:
    """The fleet's busiest minute in ``(now − window, now]``, requests per second.

    Max over minutes of (requests of all units in the minute) / 60, from the cohort 1-minute
    rollups (``cohort_rollups_1m``, kept 30 days) up to their watermark and raw heartbeats (grouped by the minute they were received in) after it;
    0.0 without requests. Default window 7 days: one full weekly cycle.
    """
    since = now - window
    per_minute: dict[datetime, int] = {}
    cursor = since
    wm = _rollups.rollup_watermark(session, "1m")
    if wm is not None and wm > since:
        start, end = _rollups.ceil_to(since, timedelta(minutes=1)), min(wm, now)
        if end > start:
            c = CohortRollup1m  # per-unit minutes are kept only 48 h; cohort minutes 30 days
            stmt = (select(c.bucket_start, func.sum(c.requests))
                    .where(c.bucket_start >= start, c.bucket_start < end)
                    .group_by(c.bucket_start))
            for at, n in session.execute(stmt):
                at = at if at.tzinfo else at.replace(tzinfo=UTC)
                per_minute[at] = per_minute.get(at, 0) + int(n or 0)
            cursor = max(cursor, end)
            raw_head = select(Heartbeat.received_at, Heartbeat.requests).where(
                Heartbeat.received_at > since, Heartbeat.received_at <= start)
            _add_minutes(per_minute, session.execute(raw_head))
    raw = select(Heartbeat.received_at, Heartbeat.requests).where(
        Heartbeat.received_at > cursor, Heartbeat.received_at <= now)
    _add_minutes(per_minute, session.execute(raw))
    return max(per_minute.values(), default=0) / 60.0


def _add_minutes(per_minute: dict[datetime, int], rows: Iterable[Any]) -> None:
    for at, n in rows:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        minute = at.replace(second=0, microsecond=0)
        per_minute[minute] = per_minute.get(minute, 0) + int(n or 0)


def gpu_copies_per_card(card_gb: float, model_gb: float) -> int:
    """Copies of a ``model_gb`` model that fit on one ``card_gb`` card: ``floor(card / model)``.

    A 10 GB card holds one 8 GB model and two 5 GB (or 4.9 GB) ones; only a size step below
    half (or a third…) of the card changes the count.

    Raises
    ------
    ValueError
        For a non-positive size.
    """
    if card_gb <= 0 or model_gb <= 0:
        raise ValueError(f"card_gb ({card_gb}) and model_gb ({model_gb}) must be > 0")
    return math.floor(card_gb / model_gb + 1e-9)


def gpu_cards(workers_needed: int, card_gb: float, model_gb: float) -> int:
    """Cards needed for ``workers_needed`` model copies (one per worker),
    ``ceil(workers / copies per card)``.

    Raises
    ------
    ValueError
        When the model does not fit on one card at all.
    """
    copies = gpu_copies_per_card(card_gb, model_gb)
    if copies == 0:
        raise ValueError(f"a {model_gb:g} GB model does not fit on a {card_gb:g} GB card; "
                         "choose a larger card or a smaller (e.g. int8) model")
    return math.ceil(max(0, workers_needed) / copies)
