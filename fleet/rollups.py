"""Heartbeat rollups (per unit and per cohort) and the retention that keeps the database bounded.

Raw heartbeats (one row per unit every ~10 s) are summarized per unit per minute into
:class:`fleet.models.UnitRollup1m`, per cohort per minute into
:class:`fleet.models.CohortRollup1m` (units sharing site, hardware revision, firmware and model
versions), and per-unit minutes per hour into :class:`fleet.models.UnitRollup1h`. Latencies
are kept as histograms over :data:`fleet.models.LATENCY_EDGES_MS` so that percentiles over any
span can be read back (percentiles cannot be averaged). :func:`prune` then deletes what is past
its retention.

Retention (issue #4: raw 24 h, 1-minute rollups 30 days, 1-hour rollups a year, a database
that stays bounded, 10,000 units on one workstation):

=====================  =========  ==========================================================
tier                   kept       read by
=====================  =========  ==========================================================
raw heartbeats         24 h       the part not yet rolled up; exact figures of the last day
per-unit minutes       48 h       per-unit "last hour / day" charts, SLO windows <= 1 day,
                                  tag cohorts, the rollout voice-quality gate
cohort minutes         30 days    the Service flow page over a chosen window and cohort,
                                  the fleet's peak request rate (capacity)
per-unit hours         1 year     per-unit month charts, the 30-day SLO window
=====================  =========  ==========================================================

Why per-unit minutes are not kept 30 days: at 10,000 units that is 432 M rows (30 d x 1,440
min x 10,000), ~1.2 KB each with the latency histograms and indexes on SQLite
(``benchmarks/db_size_week.py``), ~530 GB: not bounded in any useful sense. Nothing reads
one unit's minutes older than a day (a unit's month view reads hours), so they are kept 48 h
(a day of charts plus a day of slack for a stalled hour rollup); fleet and cohort minutes,
which the Service flow page does read over 30 days, come from ``cohort_rollups_1m``, whose
size grows with the number of cohorts (tens to a few hundred), not units. Projected for
10,000 units in 40 cohorts: raw and per-unit minutes level off at ~65 GB after two days;
cohort minutes add 2.5 GB by day 30 and per-unit hours 127 GB by a year (78 GB at 30 days,
195 GB at a year, against 569 GB at 30 days with per-unit minutes kept 30 days). Measured
sizes per row and the PostgreSQL figures: docs/monitoring.md, "Retention".

Service functions: they take a ``Session`` and never commit; the caller's unit of work does.
No Qt here; the console and the CLI call these off the GUI thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import Select, String, cast, delete, func, insert, select
from sqlalchemy.orm import Session

from fleet.models import (
    LATENCY_EDGES_MS, STAGES, CohortRollup1m, Heartbeat, RollupWatermark, Unit, UnitRollup1h, UnitRollup1m,
)

from fleet.stage_buckets import BATCH_ROWS, COUNT_COLUMNS, HIST_STAGES, N_BUCKETS, StageBuckets, sum_rows

logger = logging.getLogger(__name__)

#: Stages whose sum is the server part of a request (docs/unit-api.md: stt + qa + tts).
SERVER_STAGES: tuple[str, ...] = ("stt", "qa", "tts")
_EDGES = np.asarray(LATENCY_EDGES_MS, dtype=float)
#: Lower edge of each bucket, ms (0 for the first).
_LOWER = np.concatenate([[0.0], _EDGES])

#: A bucket is rolled up only once it ended at least this long ago, so heartbeats still in
#: flight (a collector cycle writes its batch after polling, 10 s by default) are not missed.
GRACE = timedelta(seconds=30)
#: End-to-end latency budget per request, ms (the voice service's 3 s answer target).
E2E_BUDGET_MS: float = 3000.0
#: Server-part latency budget per request (stt + qa + tts), ms.
SERVER_BUDGET_MS: float = 2000.0
#: How far before a window the previous heartbeat of each unit is looked up to detect a reboot
#: on the window's first heartbeat (uptime decrease). A unit silent for longer than this whose
#: uptime went down is not counted as a reboot (60 polls at the default 10 s interval).
REBOOT_LOOKBACK = timedelta(minutes=10)
#: Largest span of heartbeats read in one query; a longer backlog (first run, or after a pause)
#: is rolled in chunks of this size so memory stays bounded (~360 k rows for 10,000 units).
CHUNK_1M = timedelta(hours=1)
#: Largest span of 1-minute rows read in one query when rolling hours.
CHUNK_1H = timedelta(hours=6)

#: Retention defaults (module docstring). Raw heartbeats 24 h (issue #4).
RAW_KEEP = timedelta(hours=24)
#: Per-unit minutes: 48 h, the per-unit "last day" charts and SLO windows up to a day plus a
#: day of slack (issue #4's 30 days would be 432 M rows at 10,000 units; module docstring).
UNIT_MINUTE_KEEP = timedelta(hours=48)
#: Cohort minutes: 30 days (issue #4's "1-minute rollups for 30 days").
COHORT_MINUTE_KEEP = timedelta(days=30)
#: Issue #4's 1-minute retention, kept by the cohort tier.
MINUTE_KEEP = COHORT_MINUTE_KEEP
#: Per-unit hours: one year (issue #4).
HOUR_KEEP = timedelta(days=365)

#: Columns that name a cohort in ``cohort_rollups_1m`` (the fields of :class:`Cohort` but ``tag``).
COHORT_KEY: tuple[str, ...] = ("site", "hardware_rev", "firmware_version", "stt_version", "qa_version",
                               "tts_version")
#: Watermark level: cohort minutes are complete from this minute on (older per-unit minutes,
#: rolled up before migration 0010, are still being copied; see :func:`compute_rollups`).
COHORT_FROM_LEVEL = "c1m_from"

_MEAN_FIGURES = ("cpu_pct", "temp_c", "mem_pct", "mic_noise_dbfs", "wifi_rssi_dbm",
                 "wake_false_accepts_per_h")
_ROLLUP_MODELS = {"1m": UnitRollup1m, "1h": UnitRollup1h}


@dataclass(frozen=True)
class RollupResult:
    """What one :func:`compute_rollups` call wrote.

    Attributes
    ----------
    minutes_written
        ``UnitRollup1m`` rows inserted (unit × minute).
    hours_written
        ``UnitRollup1h`` rows inserted (unit × hour).
    cohort_minutes_written
        ``CohortRollup1m`` rows inserted (cohort × minute), backfilled ones included.
    """

    minutes_written: int
    hours_written: int
    cohort_minutes_written: int = 0


# -- histograms -----------------------------------------------------------------------------------
def bucket_index(values_ms: np.ndarray | Sequence[float]) -> np.ndarray:
    """Histogram bucket of each latency, ms: bucket ``i`` holds ``(edges[i-1], edges[i]]``,
    the last bucket everything above ``LATENCY_EDGES_MS[-1]``."""
    return np.searchsorted(_EDGES, np.asarray(values_ms, dtype=float), side="left")


def histogram(values_ms: Iterable[float]) -> list[int]:
    """Counts per :data:`LATENCY_EDGES_MS` bucket (``N_BUCKETS`` ints) of latencies in ms."""
    idx = bucket_index(np.fromiter(values_ms, dtype=float))
    return np.bincount(idx, minlength=N_BUCKETS).astype(int).tolist()


def merge_hist(a: Sequence[int] | None, b: Sequence[int] | None) -> list[int]:
    """Bucket-wise sum of two histograms over :data:`LATENCY_EDGES_MS`; None or [] counts as empty."""
    out = np.zeros(N_BUCKETS, dtype=np.int64)
    for h in (a, b):
        if h is not None and len(h):
            out += np.asarray(h, dtype=np.int64)
    return out.tolist()


def hist_percentiles(counts: np.ndarray, q: float) -> np.ndarray:
    """Vectorized :func:`hist_percentile` over rows of ``counts`` (shape (n, N_BUCKETS)); NaN if empty."""
    counts = np.asarray(counts, dtype=float).reshape(-1, N_BUCKETS)
    total = counts.sum(axis=1)
    cum = np.cumsum(counts, axis=1)
    rank = np.clip(q, 0.0, 100.0) / 100.0 * total
    # first non-empty bucket whose cumulative count reaches the rank
    reach = (cum >= rank[:, None] - 1e-9) & (counts > 0)
    i = np.argmax(reach, axis=1)
    rows = np.arange(len(counts))
    before = cum[rows, i] - counts[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((rank - before) / counts[rows, i], 0.0, 1.0)
    lower = _LOWER[i]
    upper = np.where(i < len(_EDGES), _EDGES[np.minimum(i, len(_EDGES) - 1)], _LOWER[i])
    value = lower + frac * (upper - lower)
    return np.where(total > 0, value, np.nan)


def hist_percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q``-th percentile (ms) of the latencies counted in a histogram.

    Parameters
    ----------
    counts
        Counts per :data:`LATENCY_EDGES_MS` bucket (``len(edges) + 1`` ints).
    q
        Percentile, 0–100.

    Returns
    -------
    float or None
        Interpolated linearly inside the bucket holding the rank (bucket 0 spans 0 ms to the
        first edge); a rank in the open last bucket reports its lower edge (20,000 ms).
        None when the histogram is empty.
    """
    if counts is None or len(counts) == 0 or sum(counts) == 0:
        return None
    if len(counts) != N_BUCKETS:
        raise ValueError(f"histogram has {len(counts)} buckets; expected {N_BUCKETS}")
    return float(hist_percentiles(np.asarray(counts)[None, :], q)[0])


# -- computing rollups ----------------------------------------------------------------------------
def floor_to(ts: datetime, step: timedelta) -> datetime:
    """``ts`` (aware) rounded down to a multiple of ``step`` since the epoch."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((ts - epoch) // step) * step


def ceil_to(ts: datetime, step: timedelta) -> datetime:
    """``ts`` (aware) rounded up to a multiple of ``step`` since the epoch."""
    floor = floor_to(ts, step)
    return floor if floor == ts else floor + step


def rollup_watermark(session: Session, level: str) -> datetime | None:
    """Aware UTC end of what level ``level`` (``"1m"``, ``"1h"``) has rolled up; None before the first run."""
    at = session.scalar(select(RollupWatermark.computed_until).where(RollupWatermark.level == level))
    return at if at is None or at.tzinfo else at.replace(tzinfo=UTC)


def _set_watermark(session: Session, level: str, until: datetime) -> None:
    row = session.get(RollupWatermark, level)
    if row is None:
        session.add(RollupWatermark(level=level, computed_until=until))
    else:
        row.computed_until = until
    session.flush()


def _epoch_s(values: Sequence[datetime]) -> np.ndarray:
    """Aware datetimes → seconds since the epoch (int64)."""
    ts = pd.to_datetime(pd.Series(list(values), dtype=object), utc=True)
    if not len(ts):
        return np.zeros(0, dtype=np.int64)
    return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _to_dt(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(int(epoch_s), tz=UTC)


def _nan_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _latency_arrays(latencies: Sequence[dict | None]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Flatten per-heartbeat ``latency_ms`` into (heartbeat index, value ms) arrays per HIST stage.

    ``e2e`` and ``server`` sum the stages request by request (the ``i``-th value of each stage
    belongs to the same request, docs/unit-api.md) over the requests all their stages report.
    """
    lens: dict[str, list[int]] = {st: [] for st in STAGES}
    vals: dict[str, list[float]] = {st: [] for st in STAGES}
    for lat in latencies:
        lat = lat or {}
        for st in STAGES:
            v = lat.get(st) or []
            lens[st].append(len(v))
            vals[st].extend(v)
    n_hb = len(latencies)
    hb = np.arange(n_hb)
    L = {st: np.asarray(lens[st], dtype=np.int64) for st in STAGES}
    V = {st: np.asarray(vals[st], dtype=float) for st in STAGES}
    out = {st: (np.repeat(hb, L[st]), V[st]) for st in STAGES}
    # position of each value within its heartbeat's list
    pos = {st: np.arange(len(V[st])) - np.repeat(np.cumsum(L[st]) - L[st], L[st]) for st in STAGES}
    for key, parts in (("e2e", STAGES), ("server", SERVER_STAGES)):
        n = np.min(np.stack([L[st] for st in parts]), axis=0) if n_hb else np.zeros(0, dtype=np.int64)
        total = np.zeros(int(n.sum()))
        for st in parts:
            total += V[st][pos[st] < np.repeat(n, L[st])]
        out[key] = (np.repeat(hb, n), total)
    return out


def _group(df: pd.DataFrame, cols: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Distinct ``cols`` of ``df`` (sorted, index = group number) and each row's group number."""
    grouped = df.groupby(cols, sort=True)
    keys = grouped.size().reset_index()[cols]
    return keys, grouped.ngroup().to_numpy()


def _aggregate_heartbeats(df: pd.DataFrame, g: np.ndarray, n_groups: int,
                          latencies: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[pd.DataFrame, ...]:
    """Figures, histograms, latency sums and over-budget counts of heartbeats grouped by ``g``."""
    agg = df.groupby(g, sort=True).agg(
        heartbeats=("t", "size"), cpu_pct_avg=("cpu_pct", "mean"), cpu_pct_max=("cpu_pct", "max"),
        temp_c_avg=("temp_c", "mean"), temp_c_max=("temp_c", "max"), mem_pct_avg=("mem_pct", "mean"),
        disk_free_mb_min=("disk_free_mb", "min"), mic_noise_dbfs_avg=("mic_noise_dbfs", "mean"),
        wifi_rssi_dbm_avg=("wifi_rssi_dbm", "mean"),
        wake_false_accepts_per_h_avg=("wake_false_accepts_per_h", "mean"),
        requests=("requests", "sum"), errors=("errors", "sum"), reboots=("reboot", "sum"),
    )
    hists: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    over = {"e2e": np.zeros(n_groups, dtype=np.int64), "server": np.zeros(n_groups, dtype=np.int64)}
    for stage, (hb_idx, values) in latencies.items():
        if not len(values):
            continue
        grp = g[hb_idx]
        flat = grp * N_BUCKETS + bucket_index(values)
        hists[stage] = np.bincount(flat, minlength=n_groups * N_BUCKETS).reshape(n_groups, N_BUCKETS)
        sums[stage] = np.bincount(grp, weights=values, minlength=n_groups)
        if stage in over:
            budget = E2E_BUDGET_MS if stage == "e2e" else SERVER_BUDGET_MS
            over[stage] = np.bincount(grp, weights=(values > budget).astype(float), minlength=n_groups).astype(np.int64)
    return agg, hists, sums, over


def _with_cohort_key(session: Session, df: pd.DataFrame, unit_ids: Select) -> pd.DataFrame:
    """``df`` (rows with ``unit_id``) with the :data:`COHORT_KEY` columns: site and hardware
    revision from the unit, versions from the row's own ``*_version`` columns where set and the
    unit's inventory otherwise; ``""`` where neither knows."""
    inv = pd.DataFrame(session.execute(select(Unit.id, *(getattr(Unit, c) for c in COHORT_KEY))
                                       .where(Unit.id.in_(unit_ids))).all(), columns=["unit_id", *COHORT_KEY])
    inv = inv.set_index("unit_id")
    for col in COHORT_KEY:
        from_unit = df["unit_id"].map(inv[col])
        value = df[col].where(df[col].notna() & (df[col] != ""), from_unit) if col in df else from_unit
        df[col] = value.fillna("").astype(str)
    return df


_HEARTBEAT_COLUMNS = (
    Heartbeat.unit_id, Heartbeat.received_at, Heartbeat.uptime_s, Heartbeat.cpu_pct, Heartbeat.temp_c,
    Heartbeat.mem_pct, Heartbeat.disk_free_mb, Heartbeat.mic_noise_dbfs, Heartbeat.wifi_rssi_dbm,
    Heartbeat.wake_false_accepts_per_h, Heartbeat.requests, Heartbeat.errors, Heartbeat.latency_ms,
    Heartbeat.stt_version, Heartbeat.qa_version, Heartbeat.tts_version,
)


def _rollup_minutes(session: Session, start: datetime, end: datetime) -> tuple[int, int]:
    """Roll raw heartbeats of [start, end) (minute-aligned) into per-unit and per-cohort 1-minute
    rows; returns (unit rows, cohort rows) written."""
    for model in (UnitRollup1m, CohortRollup1m):
        session.execute(delete(model).where(model.bucket_start >= start, model.bucket_start < end))
    in_window = (Heartbeat.received_at >= start, Heartbeat.received_at < end)
    rows = session.execute(select(*_HEARTBEAT_COLUMNS).where(*in_window)).all()
    if not rows:
        return 0, 0
    df = pd.DataFrame(rows, columns=[c.key for c in _HEARTBEAT_COLUMNS])
    df["t"] = _epoch_s(df["received_at"])
    df["bucket"] = df["t"] // 60 * 60
    # the previous heartbeat of each unit before the window, for a reboot on its first heartbeat
    prev = session.execute(
        select(Heartbeat.unit_id, Heartbeat.received_at, Heartbeat.uptime_s)
        .where(Heartbeat.received_at >= start - REBOOT_LOOKBACK, Heartbeat.received_at < start)
    ).all()
    ctx = pd.DataFrame(prev, columns=["unit_id", "received_at", "uptime_s"])
    ctx["t"] = _epoch_s(ctx["received_at"])
    ctx = ctx.sort_values(["unit_id", "t"]).groupby("unit_id", as_index=False).last()
    ctx["orig"] = -1
    df["orig"] = np.arange(len(df))
    allhb = pd.concat([ctx[["unit_id", "t", "uptime_s", "orig"]], df[["unit_id", "t", "uptime_s", "orig"]]],
                      ignore_index=True).sort_values(["unit_id", "t", "orig"], kind="stable")
    dec = ((allhb["uptime_s"].diff() < 0) & (allhb["unit_id"].diff() == 0)).to_numpy()
    mine = allhb["orig"].to_numpy() >= 0
    reboot = np.zeros(len(df), dtype=np.int64)
    reboot[allhb["orig"].to_numpy()[mine]] = dec[mine]
    df["reboot"] = reboot

    latencies = _latency_arrays(df["latency_ms"].tolist())  # once, for both groupings
    keys, g = _group(df, ["unit_id", "bucket"])
    _insert_rows(session, UnitRollup1m, keys, *_aggregate_heartbeats(df, g, len(keys), latencies))
    _with_cohort_key(session, df, select(Heartbeat.unit_id).where(*in_window).distinct())
    ckeys, cg = _group(df, ["bucket", *COHORT_KEY])
    agg, hists, sums, over = _aggregate_heartbeats(df, cg, len(ckeys), latencies)
    agg["units"] = df.groupby(cg, sort=True)["unit_id"].nunique()
    _insert_rows(session, CohortRollup1m, ckeys, agg, hists, sums, over)
    return len(keys), len(ckeys)


def _insert_rows(session: Session, model: type, keys: pd.DataFrame, agg: pd.DataFrame,
                 hists: dict[str, np.ndarray], sums: dict[str, np.ndarray], over: dict[str, np.ndarray]) -> None:
    """Insert one rollup row per group (row ``i`` of ``keys`` and of each figure): the key
    columns of ``keys`` (``bucket`` as ``bucket_start``); stages without samples are left out
    of the JSON."""
    figures = [c for c in agg.columns]
    recs = agg[figures].astype(object).where(agg[figures].notna(), None).to_dict("records")
    key_recs = keys.drop(columns="bucket").to_dict("records")
    buckets = keys["bucket"].to_numpy()
    has = {s: h.sum(axis=1) > 0 for s, h in hists.items()}
    out = []
    for i, rec in enumerate(recs):
        hist = {s: h[i].tolist() for s, h in hists.items() if has[s][i]}
        row = {k: _cast(k, v) for k, v in rec.items()}
        row.update(
            key_recs[i], bucket_start=_to_dt(buckets[i]),
            e2e_over_budget=int(over["e2e"][i]), server_over_budget=int(over["server"][i]),
            latency_hist=hist, latency_sum_ms={s: round(float(sums[s][i]), 3) for s in hist},
        )
        out.append(row)
    for j in range(0, len(out), 5000):
        session.execute(insert(model), out[j:j + 5000])


_INT_FIGURES = frozenset({"heartbeats", "requests", "errors", "reboots", "units"})


def _cast(key: str, value: Any) -> Any:
    if value is None:
        return None
    return int(value) if key in _INT_FIGURES else _nan_none(float(value))


_MINUTE_FIGURES = ("heartbeats", "cpu_pct_avg", "cpu_pct_max", "temp_c_avg", "temp_c_max", "mem_pct_avg",
                   "disk_free_mb_min", "mic_noise_dbfs_avg", "wifi_rssi_dbm_avg", "wake_false_accepts_per_h_avg",
                   "requests", "errors", "reboots", "e2e_over_budget", "server_over_budget", "latency_hist",
                   "latency_sum_ms")


def _combine_minutes(df: pd.DataFrame, g: np.ndarray, n_groups: int) -> tuple[pd.DataFrame, ...]:
    """Per-unit 1-minute rows (columns :data:`_MINUTE_FIGURES`) combined by group ``g``: counts
    and histograms summed, means weighted by heartbeats, max/min over the rows."""
    w = df["heartbeats"].astype(float)
    wmean = {}
    for col in ("cpu_pct_avg", "temp_c_avg", "mem_pct_avg", "mic_noise_dbfs_avg", "wifi_rssi_dbm_avg",
                "wake_false_accepts_per_h_avg"):
        x = pd.to_numeric(df[col], errors="coerce").astype(float)
        ok = x.notna()
        num = np.bincount(g[ok], weights=(x[ok] * w[ok]).to_numpy(), minlength=n_groups)
        den = np.bincount(g[ok], weights=w[ok].to_numpy(), minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            wmean[col] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    for col in ("cpu_pct_max", "temp_c_max", "disk_free_mb_min"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    grouped = df.groupby(g, sort=True)
    agg = grouped.agg(heartbeats=("heartbeats", "sum"), cpu_pct_max=("cpu_pct_max", "max"),
                      temp_c_max=("temp_c_max", "max"), disk_free_mb_min=("disk_free_mb_min", "min"),
                      requests=("requests", "sum"), errors=("errors", "sum"), reboots=("reboots", "sum"))
    for col, v in wmean.items():
        agg[col] = v
    over = {"e2e": grouped["e2e_over_budget"].sum().to_numpy(), "server": grouped["server_over_budget"].sum().to_numpy()}
    hists, sums = _sum_hists(df["latency_hist"].tolist(), df["latency_sum_ms"].tolist(), g, n_groups)
    return agg, hists, sums, over


def _read_minutes(session: Session, start: datetime, end: datetime) -> pd.DataFrame:
    m = UnitRollup1m
    cols = [m.unit_id, m.bucket_start, *(getattr(m, c) for c in _MINUTE_FIGURES)]
    rows = session.execute(select(*cols).where(m.bucket_start >= start, m.bucket_start < end)).all()
    return pd.DataFrame(rows, columns=[c.key for c in cols])


def _rollup_hours(session: Session, start: datetime, end: datetime) -> int:
    """Roll 1-minute rows of [start, end) (hour-aligned) into 1-hour rows; returns rows written."""
    session.execute(delete(UnitRollup1h).where(UnitRollup1h.bucket_start >= start, UnitRollup1h.bucket_start < end))
    df = _read_minutes(session, start, end)
    if df.empty:
        return 0
    df["bucket"] = _epoch_s(df["bucket_start"]) // 3600 * 3600
    keys, g = _group(df, ["unit_id", "bucket"])
    _insert_rows(session, UnitRollup1h, keys, *_combine_minutes(df, g, len(keys)))
    return len(keys)


def _backfill_cohort_minutes(session: Session, start: datetime, end: datetime) -> int:
    """Cohort rows of [start, end) from the per-unit 1-minute rows (for minutes rolled up before
    migration 0010); versions from the units' current inventory, as those rows do not keep
    them. Returns rows written."""
    session.execute(delete(CohortRollup1m).where(CohortRollup1m.bucket_start >= start,
                                                 CohortRollup1m.bucket_start < end))
    df = _read_minutes(session, start, end)
    if df.empty:
        return 0
    df["bucket"] = _epoch_s(df["bucket_start"])
    ids = select(UnitRollup1m.unit_id).where(UnitRollup1m.bucket_start >= start, UnitRollup1m.bucket_start < end)
    _with_cohort_key(session, df, ids.distinct())
    keys, g = _group(df, ["bucket", *COHORT_KEY])
    agg, hists, sums, over = _combine_minutes(df, g, len(keys))
    agg["units"] = df.groupby(g, sort=True)["unit_id"].nunique()
    _insert_rows(session, CohortRollup1m, keys, agg, hists, sums, over)
    return len(keys)


def _sum_hists(hist_json: Sequence[dict | None], sum_json: Sequence[dict | None], g: np.ndarray,
               n_groups: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per group ``g[i]`` of each row, summed histograms (n_groups × N_BUCKETS) and latency sums per stage."""
    hists: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    for stage in HIST_STAGES:
        idx = [i for i, h in enumerate(hist_json) if h and stage in h]
        if not idx:
            continue
        mat = np.asarray([hist_json[i][stage] for i in idx], dtype=np.int64)
        out = np.zeros((n_groups, N_BUCKETS), dtype=np.int64)
        np.add.at(out, g[idx], mat)
        hists[stage] = out
        s = np.asarray([float((sum_json[i] or {}).get(stage, 0.0)) for i in idx])
        sums[stage] = np.bincount(g[idx], weights=s, minlength=n_groups)
    return hists, sums


def _backfill_pending(session: Session) -> bool:
    """Per-unit minutes older than the cohort tier's start (:data:`COHORT_FROM_LEVEL`) still wait to
    be copied into ``cohort_rollups_1m``."""
    cohort_from = rollup_watermark(session, COHORT_FROM_LEVEL)
    oldest = session.scalar(select(func.min(UnitRollup1m.bucket_start)))
    return oldest is not None and (cohort_from is None or oldest < cohort_from)


def _backfill_step(session: Session) -> int:
    """Copy one :data:`CHUNK_1H` of per-unit minutes older than the cohort tier's start into
    cohort rows, newest first, and move the start back; returns cohort rows written."""
    cohort_from = rollup_watermark(session, COHORT_FROM_LEVEL) or rollup_watermark(session, "1m")
    if cohort_from is None:
        return 0
    older = UnitRollup1m.bucket_start < cohort_from
    oldest, newest = session.execute(select(func.min(UnitRollup1m.bucket_start),
                                            func.max(UnitRollup1m.bucket_start)).where(older)).one()
    if oldest is None:
        return 0
    end = min(cohort_from, floor_to(newest, timedelta(minutes=1)) + timedelta(minutes=1))  # skip a gap
    start = max(floor_to(oldest, timedelta(minutes=1)), end - CHUNK_1H)
    written = _backfill_cohort_minutes(session, start, end)
    _set_watermark(session, COHORT_FROM_LEVEL, start)
    logger.info("cohort rollups: backfilled %d rows from per-unit minutes of %s to %s", written, start, end)
    return written


def compute_rollups(session: Session, now: datetime) -> RollupResult:
    """Roll complete minutes of raw heartbeats into per-unit and per-cohort 1-minute rows, and
    complete hours into per-unit 1-hour rows.

    Incremental: each level resumes at its :class:`fleet.models.RollupWatermark` (the first run
    starts at the oldest heartbeat's minute, resp. the oldest 1-minute row's hour) and stops at
    the last bucket that ended at least :data:`GRACE` (30 s) before ``now``; an hour is rolled
    once all its minutes are. The per-unit and cohort minute rows come from the same heartbeats
    in one pass and share the ``1m`` watermark. Idempotent: the buckets being written are
    deleted first, so a re-run never double counts. Runs in the caller's transaction; never
    commits.

    Per-unit minutes rolled up before the cohort tier existed (a database upgraded past
    migration 0010) are copied into cohort rows, newest first, :data:`CHUNK_1H` per call, so
    that :func:`prune` does not drop their 30 days of fleet minutes.

    Parameters
    ----------
    session
        The caller's unit of work.
    now
        Aware UTC time (the caller's clock).

    Returns
    -------
    RollupResult
        Rows written per level.

    Notes
    -----
    A heartbeat written with a ``received_at`` before the watermark (held back for longer than
    the grace) is not rolled up; ``prune`` later deletes it with the other raw rows.
    """
    limit_1m = floor_to(now - GRACE, timedelta(minutes=1))
    cohorts = _backfill_step(session)
    wm = rollup_watermark(session, "1m")
    if wm is None:
        oldest = session.scalar(select(func.min(Heartbeat.received_at)))
        wm = floor_to(oldest, timedelta(minutes=1)) if oldest is not None else None
    minutes = 0
    if wm is not None and wm < limit_1m:
        start = wm
        while start < limit_1m:
            stop = min(start + CHUNK_1M, limit_1m)
            unit_rows, cohort_rows = _rollup_minutes(session, start, stop)
            minutes += unit_rows
            cohorts += cohort_rows
            start = stop
        _set_watermark(session, "1m", limit_1m)
        cohort_from = rollup_watermark(session, COHORT_FROM_LEVEL)
        if cohort_from is None or wm < cohort_from:
            _set_watermark(session, COHORT_FROM_LEVEL, wm)

    hours = 0
    wm_1m = rollup_watermark(session, "1m")
    if wm_1m is not None:
        limit_1h = floor_to(wm_1m, timedelta(hours=1))
        wh = rollup_watermark(session, "1h")
        if wh is None:
            oldest = session.scalar(select(func.min(UnitRollup1m.bucket_start)))
            wh = floor_to(oldest, timedelta(hours=1)) if oldest is not None else None
        if wh is not None and wh < limit_1h:
            start = wh
            while start < limit_1h:
                stop = min(start + CHUNK_1H, limit_1h)
                hours += _rollup_hours(session, start, stop)
                start = stop
            _set_watermark(session, "1h", limit_1h)
    logger.info("rollups: %d unit minute rows, %d cohort minute rows, %d unit hour rows written",
                minutes, cohorts, hours)
    return RollupResult(minutes, hours, cohorts)


# -- retention ------------------------------------------------------------------------------------
def prune(session: Session, now: datetime, *, raw_keep: timedelta = RAW_KEEP,
          unit_minute_keep: timedelta = UNIT_MINUTE_KEEP, cohort_minute_keep: timedelta = COHORT_MINUTE_KEEP,
          hour_keep: timedelta = HOUR_KEEP) -> dict[str, int]:
    """Delete raw heartbeats and rollups past their retention (module docstring: why these).

    Parameters
    ----------
    now
        Aware UTC time (the caller's clock).
    raw_keep
        Keep heartbeats whose ``received_at`` is within this of ``now`` (default 24 h, issue #4).
        Heartbeats not yet rolled up (at or after the 1-minute watermark) are never deleted.
    unit_minute_keep
        Keep per-unit 1-minute rows whose ``bucket_start`` is within this (default 48 h,
        :data:`UNIT_MINUTE_KEEP`); minutes not yet rolled into hours (at or after the 1-hour
        watermark) are kept, and all of them while older ones still wait to be copied into
        cohort rows (see :func:`compute_rollups`).
    cohort_minute_keep
        Keep cohort 1-minute rows within this (default 30 days, issue #4's "1-minute rollups
        for 30 days").
    hour_keep
        Keep per-unit 1-hour rows within this (default 365 days, issue #4).

    Returns
    -------
    dict
        Rows deleted per table name (``heartbeats``, ``unit_rollups_1m``,
        ``cohort_rollups_1m``, ``unit_rollups_1h``).

    Raises
    ------
    ValueError
        For a negative retention.
    """
    keeps = {"raw_keep": raw_keep, "unit_minute_keep": unit_minute_keep,
             "cohort_minute_keep": cohort_minute_keep, "hour_keep": hour_keep}
    for name, keep in keeps.items():
        if keep < timedelta(0):
            raise ValueError(f"{name} is {keep}; a retention must be 0 or more")
    deleted = {m.__tablename__: 0 for m in (Heartbeat, UnitRollup1m, CohortRollup1m, UnitRollup1h)}
    wm_1m = rollup_watermark(session, "1m")
    if wm_1m is not None:
        cutoff = min(now - raw_keep, wm_1m)
        deleted[Heartbeat.__tablename__] = session.execute(
            delete(Heartbeat).where(Heartbeat.received_at < cutoff)).rowcount or 0
    wm_1h = rollup_watermark(session, "1h")
    if wm_1h is not None and not _backfill_pending(session):
        cutoff = min(now - unit_minute_keep, wm_1h)
        deleted[UnitRollup1m.__tablename__] = session.execute(
            delete(UnitRollup1m).where(UnitRollup1m.bucket_start < cutoff)).rowcount or 0
    deleted[CohortRollup1m.__tablename__] = session.execute(
        delete(CohortRollup1m).where(CohortRollup1m.bucket_start < now - cohort_minute_keep)).rowcount or 0
    deleted[UnitRollup1h.__tablename__] = session.execute(
        delete(UnitRollup1h).where(UnitRollup1h.bucket_start < now - hour_keep)).rowcount or 0
    logger.info("prune: %s", deleted)
    return deleted


# -- reading --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cohort:
    """A slice of the fleet by inventory; every field None means "any" (all None = whole fleet).

    ``tag`` matches units whose ``tags`` list contains it exactly.
    """

    site: str | None = None
    hardware_rev: str | None = None
    firmware_version: str | None = None
    stt_version: str | None = None
    qa_version: str | None = None
    tts_version: str | None = None
    tag: str | None = None

    def apply(self, stmt: Select) -> Select:
        """``stmt`` (a select over :class:`Unit`, or joined to it) with this cohort's conditions added."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "tag":
                # portable "JSON list contains": the serialized list holds "<tag>" (json.dumps form)
                needle = json.dumps(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                stmt = stmt.where(cast(Unit.tags, String).like(f"%{needle}%", escape="\\"))
            else:
                stmt = stmt.where(getattr(Unit, f.name) == value)
        return stmt

    def unit_ids(self) -> Select:
        """A ``select(Unit.id)`` of the cohort's units (for ``IN`` filters)."""
        return self.apply(select(Unit.id))

    @property
    def is_fleet(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


STAGE_SERIES_COLUMNS: tuple[str, ...] = (
    "bucket_start", "stage", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "samples", "requests", "errors",
    "e2e_over_budget", "server_over_budget",
)


def stage_series(session: Session, since: datetime, until: datetime, *, level: Literal["1m", "1h"] = "1m",
                 cohort: Cohort | None = None, bucket: timedelta | None = None,
                 source: Literal["auto", "unit", "cohort"] = "auto") -> pd.DataFrame:
    """Fleet-wide (or cohort) latency percentiles per stage over time, from the rollups.

    Parameters
    ----------
    since, until
        Aware UTC; rollup buckets with ``since <= bucket_start < until``.
    level
        ``"1m"`` (cohort minutes kept 30 days, per-unit minutes 48 h) or ``"1h"`` (per-unit
        hours, kept a year).
    cohort
        Only units of this cohort; None for the whole fleet.
    bucket
        Re-bucket to this span (a multiple of the level, e.g. 5 minutes), aligned to the epoch,
        by summing histograms and counts. None keeps the level's buckets.
    source
        Which minute table: ``"auto"`` reads ``cohort_rollups_1m`` for the whole fleet or a
        cohort of :data:`COHORT_KEY` fields (any window up to 30 days) and ``unit_rollups_1m``
        for a ``tag`` cohort (only the last 48 h exist); ``"unit"``/``"cohort"`` force one
        (for checks). ``level="1h"`` always reads ``unit_rollups_1h``. The cohort table places
        a request under the versions its unit ran in that minute, the per-unit table under the
        unit's current inventory: the two differ only for units whose versions changed.

    Returns
    -------
    DataFrame
        Columns :data:`STAGE_SERIES_COLUMNS`: one row per bucket with requests × stage of
        :data:`HIST_STAGES` (wake … playback, e2e, server), ordered by bucket then stage.
        ``p50_ms``/``p95_ms``/``p99_ms`` from the summed histogram and ``mean_ms`` (ms; NaN
        without samples), ``samples`` latencies of that stage; ``requests``, ``errors``,
        ``e2e_over_budget``, ``server_over_budget`` are the bucket's totals (the same on
        every stage row of a bucket).

    Raises
    ------
    ValueError
        For ``source="cohort"`` with a ``tag`` cohort or with ``level="1h"`` (the cohort table
        has neither), or an unknown level or source.
    """
    if level not in _ROLLUP_MODELS or source not in ("auto", "unit", "cohort"):
        raise ValueError(f"level {level!r} / source {source!r}: use level '1m' or '1h' and "
                         "source 'auto', 'unit' or 'cohort'")
    tagged = cohort is not None and cohort.tag is not None
    if source == "cohort" and (tagged or level != "1m"):
        raise ValueError("cohort_rollups_1m holds minutes by site, hardware revision, firmware and versions: "
                         "it cannot answer a tag cohort or level '1h'; use source='unit' or 'auto'")
    use_cohorts = level == "1m" and (source == "cohort" or (source == "auto" and not tagged))
    model: Any = CohortRollup1m if use_cohorts else _ROLLUP_MODELS[level]
    stmt = select(model.bucket_start, model.requests, model.errors, model.e2e_over_budget,
                  model.server_over_budget, model.latency_hist, model.latency_sum_ms).where(
        model.bucket_start >= since, model.bucket_start < until, model.requests > 0)
    if use_cohorts and cohort is not None:
        for key in COHORT_KEY:
            if getattr(cohort, key) is not None:
                stmt = stmt.where(getattr(CohortRollup1m, key) == getattr(cohort, key))
    elif cohort is not None and not cohort.is_fleet:
        stmt = stmt.where(model.unit_id.in_(cohort.unit_ids()))
    step = int(bucket.total_seconds()) if bucket else (60 if level == "1m" else 3600)
    rows = session.execute(stmt.execution_options(yield_per=BATCH_ROWS))
    return series_frame(sum_rows(((epoch_s(r[0]), *r[1:]) for r in rows), step))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_s(at: datetime) -> int:
    """Whole seconds since the epoch of an aware (or naive UTC) datetime."""
    d = (at if at.tzinfo else at.replace(tzinfo=UTC)) - _EPOCH
    return d.days * 86400 + d.seconds


def series_frame(buckets: StageBuckets) -> pd.DataFrame:
    """:func:`stage_series`'s frame (columns :data:`STAGE_SERIES_COLUMNS`) from summed buckets:
    one row per bucket × stage of :data:`HIST_STAGES`, percentiles from the histograms."""
    if not len(buckets):
        return pd.DataFrame(columns=list(STAGE_SERIES_COLUMNS))
    n, n_stages = len(buckets), len(HIST_STAGES)
    hist = buckets.hist.reshape(n * n_stages, N_BUCKETS)  # bucket-major: row i*8+s
    cnt = hist.sum(axis=1)
    total_ms = buckets.sum_ms.reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, total_ms / np.where(cnt > 0, cnt, 1), np.nan)
    out = pd.DataFrame({
        "bucket_start": np.repeat(np.asarray([_to_dt(k) for k in buckets.starts], dtype=object), n_stages),
        "stage": np.tile(np.asarray(HIST_STAGES, dtype=object), n),
        "p50_ms": hist_percentiles(hist, 50), "p95_ms": hist_percentiles(hist, 95),
        "p99_ms": hist_percentiles(hist, 99), "mean_ms": mean, "samples": cnt.astype(int),
    })
    for j, col in enumerate(COUNT_COLUMNS):
        out[col] = np.repeat(buckets.counts[:, j].astype(int), n_stages)
    return out[list(STAGE_SERIES_COLUMNS)]


UNIT_SERIES_COLUMNS: tuple[str, ...] = (
    "bucket_start", "heartbeats", "cpu_pct_avg", "cpu_pct_max", "temp_c_avg", "temp_c_max", "mem_pct_avg",
    "disk_free_mb_min", "mic_noise_dbfs_avg", "wifi_rssi_dbm_avg", "wake_false_accepts_per_h_avg",
    "requests", "errors", "reboots", "e2e_p95_ms",
)


def unit_series(session: Session, serial: str, since: datetime, until: datetime, *,
                level: Literal["1m", "1h"] = "1m") -> pd.DataFrame:
    """One unit's rolled-up figures over time.

    Parameters
    ----------
    serial
        The unit's serial; an unknown serial gives an empty frame.
    since, until
        Aware UTC; buckets with ``since <= bucket_start < until``.
    level
        ``"1m"`` (kept 48 h, :data:`UNIT_MINUTE_KEEP`: an older span returns only what is
        left, so ask ``"1h"`` for a month) or ``"1h"`` (kept a year).

    Returns
    -------
    DataFrame
        Columns :data:`UNIT_SERIES_COLUMNS`, one row per bucket with rollups, oldest first:
        means/max/min as in :class:`fleet.models.UnitRollup1m` (°C, %, MiB, dBFS, dBm, per hour),
        ``requests``/``errors``/``reboots`` sums, ``e2e_p95_ms`` from the end-to-end histogram
        (ms, NaN without requests).
    """
    model = _ROLLUP_MODELS[level]
    figures = [c for c in UNIT_SERIES_COLUMNS if c != "e2e_p95_ms"]
    stmt = (select(*(getattr(model, c) for c in figures), model.latency_hist)
            .join(Unit, Unit.id == model.unit_id)
            .where(Unit.serial == serial, model.bucket_start >= since, model.bucket_start < until)
            .order_by(model.bucket_start))
    rows = session.execute(stmt).all()
    df = pd.DataFrame(rows, columns=[*figures, "latency_hist"])
    hist = np.asarray([(h or {}).get("e2e") or [0] * N_BUCKETS for h in df["latency_hist"]],
                      dtype=float).reshape(-1, N_BUCKETS)
    df["e2e_p95_ms"] = hist_percentiles(hist, 95) if len(df) else pd.Series(dtype=float)
    for c in figures[1:]:
        if c not in ("requests", "errors", "reboots"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df[list(UNIT_SERIES_COLUMNS)].reset_index(drop=True)
