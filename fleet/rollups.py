"""Heartbeat rollups (1 minute, 1 hour) and retention of raw heartbeats and rollups.

Raw heartbeats (one row per unit every ~10 s) are summarized per unit per minute into
:class:`fleet.models.UnitRollup1m`, and those minutes per hour into
:class:`fleet.models.UnitRollup1h`. Latencies are kept as histograms over
:data:`fleet.models.LATENCY_EDGES_MS` so that percentiles over any span can be read back
(percentiles cannot be averaged). :func:`prune` then deletes what is past its retention.

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
    LATENCY_EDGES_MS, STAGES, Heartbeat, RollupWatermark, Unit, UnitRollup1h, UnitRollup1m,
)

logger = logging.getLogger(__name__)

#: Histogram keys of a rollup: the six pipeline stages, then end to end and the server part.
HIST_STAGES: tuple[str, ...] = (*STAGES, "e2e", "server")
#: Stages whose sum is the server part of a request (docs/unit-api.md: stt + qa + tts).
SERVER_STAGES: tuple[str, ...] = ("stt", "qa", "tts")
#: Buckets per histogram: one per upper edge plus the open last bucket.
N_BUCKETS: int = len(LATENCY_EDGES_MS) + 1
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

#: Retention defaults, from issue #4: raw heartbeats 24 h, 1-minute rollups 30 days,
#: 1-hour rollups one year.
RAW_KEEP = timedelta(hours=24)
MINUTE_KEEP = timedelta(days=30)
HOUR_KEEP = timedelta(days=365)

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
    """

    minutes_written: int
    hours_written: int


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


def _percentiles(counts: np.ndarray, q: float) -> np.ndarray:
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
    return float(_percentiles(np.asarray(counts)[None, :], q)[0])


# -- computing rollups ----------------------------------------------------------------------------
def _floor(ts: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((ts - epoch) // step) * step


def _watermark(session: Session, level: str) -> datetime | None:
    return session.scalar(select(RollupWatermark.computed_until).where(RollupWatermark.level == level))


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


def _rollup_minutes(session: Session, start: datetime, end: datetime) -> int:
    """Roll raw heartbeats of [start, end) (minute-aligned) into 1-minute rows; returns rows written."""
    session.execute(delete(UnitRollup1m).where(UnitRollup1m.bucket_start >= start,
                                               UnitRollup1m.bucket_start < end))
    cols = [Heartbeat.unit_id, Heartbeat.received_at, Heartbeat.uptime_s, Heartbeat.cpu_pct, Heartbeat.temp_c,
            Heartbeat.mem_pct, Heartbeat.disk_free_mb, Heartbeat.mic_noise_dbfs, Heartbeat.wifi_rssi_dbm,
            Heartbeat.wake_false_accepts_per_h, Heartbeat.requests, Heartbeat.errors, Heartbeat.latency_ms]
    rows = session.execute(select(*cols).where(Heartbeat.received_at >= start, Heartbeat.received_at < end)).all()
    if not rows:
        return 0
    df = pd.DataFrame(rows, columns=[c.key for c in cols])
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

    keys = df[["unit_id", "bucket"]].drop_duplicates().sort_values(["unit_id", "bucket"]).reset_index(drop=True)
    keys["g"] = np.arange(len(keys))
    df = df.merge(keys, on=["unit_id", "bucket"], how="left")  # merge keeps the left order
    g = df["g"].to_numpy()
    n_groups = len(keys)
    grouped = df.groupby("g", sort=True)
    agg = grouped.agg(
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
    for stage, (hb_idx, values) in _latency_arrays(df["latency_ms"].tolist()).items():
        if not len(values):
            continue
        grp = g[hb_idx]
        flat = grp * N_BUCKETS + bucket_index(values)
        hists[stage] = np.bincount(flat, minlength=n_groups * N_BUCKETS).reshape(n_groups, N_BUCKETS)
        sums[stage] = np.bincount(grp, weights=values, minlength=n_groups)
        if stage in over:
            budget = E2E_BUDGET_MS if stage == "e2e" else SERVER_BUDGET_MS
            over[stage] = np.bincount(grp, weights=(values > budget).astype(float), minlength=n_groups).astype(np.int64)
    _insert_rows(session, UnitRollup1m, keys, agg, hists, sums, over)
    return n_groups


def _insert_rows(session: Session, model: type, keys: pd.DataFrame, agg: pd.DataFrame,
                 hists: dict[str, np.ndarray], sums: dict[str, np.ndarray], over: dict[str, np.ndarray]) -> None:
    """Insert one rollup row per group ``g`` (stages without samples are left out of the JSON)."""
    figures = [c for c in agg.columns]
    recs = agg[figures].astype(object).where(agg[figures].notna(), None).to_dict("records")
    unit_ids = keys["unit_id"].to_numpy()
    buckets = keys["bucket"].to_numpy()
    has = {s: h.sum(axis=1) > 0 for s, h in hists.items()}
    out = []
    for i, rec in enumerate(recs):
        hist = {s: h[i].tolist() for s, h in hists.items() if has[s][i]}
        row = {k: _cast(k, v) for k, v in rec.items()}
        row.update(
            unit_id=int(unit_ids[i]), bucket_start=_to_dt(buckets[i]),
            e2e_over_budget=int(over["e2e"][i]), server_over_budget=int(over["server"][i]),
            latency_hist=hist, latency_sum_ms={s: round(float(sums[s][i]), 3) for s in hist},
        )
        out.append(row)
    for j in range(0, len(out), 5000):
        session.execute(insert(model), out[j:j + 5000])


_INT_FIGURES = frozenset({"heartbeats", "requests", "errors", "reboots"})


def _cast(key: str, value: Any) -> Any:
    if value is None:
        return None
    return int(value) if key in _INT_FIGURES else _nan_none(float(value))


def _rollup_hours(session: Session, start: datetime, end: datetime) -> int:
    """Roll 1-minute rows of [start, end) (hour-aligned) into 1-hour rows; returns rows written."""
    session.execute(delete(UnitRollup1h).where(UnitRollup1h.bucket_start >= start, UnitRollup1h.bucket_start < end))
    m = UnitRollup1m
    cols = [m.unit_id, m.bucket_start, m.heartbeats, m.cpu_pct_avg, m.cpu_pct_max, m.temp_c_avg, m.temp_c_max,
            m.mem_pct_avg, m.disk_free_mb_min, m.mic_noise_dbfs_avg, m.wifi_rssi_dbm_avg,
            m.wake_false_accepts_per_h_avg, m.requests, m.errors, m.reboots, m.e2e_over_budget,
            m.server_over_budget, m.latency_hist, m.latency_sum_ms]
    rows = session.execute(select(*cols).where(m.bucket_start >= start, m.bucket_start < end)).all()
    if not rows:
        return 0
    df = pd.DataFrame(rows, columns=[c.key for c in cols])
    df["bucket"] = _epoch_s(df["bucket_start"]) // 3600 * 3600
    keys = df[["unit_id", "bucket"]].drop_duplicates().sort_values(["unit_id", "bucket"]).reset_index(drop=True)
    keys["g"] = np.arange(len(keys))
    df = df.merge(keys, on=["unit_id", "bucket"], how="left")
    g = df["g"].to_numpy()
    n_groups = len(keys)
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
    grouped = df.groupby("g", sort=True)
    agg = grouped.agg(heartbeats=("heartbeats", "sum"), cpu_pct_max=("cpu_pct_max", "max"),
                      temp_c_max=("temp_c_max", "max"), disk_free_mb_min=("disk_free_mb_min", "min"),
                      requests=("requests", "sum"), errors=("errors", "sum"), reboots=("reboots", "sum"))
    for col, v in wmean.items():
        agg[col] = v
    over = {"e2e": grouped["e2e_over_budget"].sum().to_numpy(), "server": grouped["server_over_budget"].sum().to_numpy()}
    hists, sums = _sum_hists(df["latency_hist"].tolist(), df["latency_sum_ms"].tolist(), g, n_groups)
    _insert_rows(session, UnitRollup1h, keys, agg, hists, sums, over)
    return n_groups


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


def compute_rollups(session: Session, now: datetime) -> RollupResult:
    """Roll complete minutes of raw heartbeats into 1-minute rows, and complete hours into 1-hour rows.

    Incremental: each level resumes at its :class:`fleet.models.RollupWatermark` (the first run
    starts at the oldest heartbeat's minute, resp. the oldest 1-minute row's hour) and stops at
    the last bucket that ended at least :data:`GRACE` (30 s) before ``now``; an hour is rolled
    once all its minutes are. Idempotent: the buckets being written are deleted first, so a
    re-run never double counts. Runs in the caller's transaction; never commits.

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
    limit_1m = _floor(now - GRACE, timedelta(minutes=1))
    wm = _watermark(session, "1m")
    if wm is None:
        oldest = session.scalar(select(func.min(Heartbeat.received_at)))
        wm = _floor(oldest, timedelta(minutes=1)) if oldest is not None else None
    minutes = 0
    if wm is not None and wm < limit_1m:
        start = wm
        while start < limit_1m:
            stop = min(start + CHUNK_1M, limit_1m)
            minutes += _rollup_minutes(session, start, stop)
            start = stop
        _set_watermark(session, "1m", limit_1m)
        wm = limit_1m

    hours = 0
    wm_1m = _watermark(session, "1m")
    if wm_1m is not None:
        limit_1h = _floor(wm_1m, timedelta(hours=1))
        wh = _watermark(session, "1h")
        if wh is None:
            oldest = session.scalar(select(func.min(UnitRollup1m.bucket_start)))
            wh = _floor(oldest, timedelta(hours=1)) if oldest is not None else None
        if wh is not None and wh < limit_1h:
            start = wh
            while start < limit_1h:
                stop = min(start + CHUNK_1H, limit_1h)
                hours += _rollup_hours(session, start, stop)
                start = stop
            _set_watermark(session, "1h", limit_1h)
    logger.info("rollups: %d minute rows, %d hour rows written", minutes, hours)
    return RollupResult(minutes, hours)


# -- retention ------------------------------------------------------------------------------------
def prune(session: Session, now: datetime, *, raw_keep: timedelta = RAW_KEEP, minute_keep: timedelta = MINUTE_KEEP,
          hour_keep: timedelta = HOUR_KEEP) -> dict[str, int]:
    """Delete raw heartbeats and rollups past their retention.

    Parameters
    ----------
    now
        Aware UTC time (the caller's clock).
    raw_keep
        Keep heartbeats whose ``received_at`` is within this of ``now`` (default 24 h, issue #4).
        Heartbeats not yet rolled up (at or after the 1-minute watermark) are never deleted.
    minute_keep
        Keep 1-minute rows whose ``bucket_start`` is within this (default 30 days, issue #4);
        minutes not yet rolled into hours (at or after the 1-hour watermark) are kept.
    hour_keep
        Keep 1-hour rows whose ``bucket_start`` is within this (default 365 days, issue #4).

    Returns
    -------
    dict
        Rows deleted per table name (``heartbeats``, ``unit_rollups_1m``, ``unit_rollups_1h``).
    """
    deleted = {Heartbeat.__tablename__: 0, UnitRollup1m.__tablename__: 0, UnitRollup1h.__tablename__: 0}
    wm_1m = _watermark(session, "1m")
    if wm_1m is not None:
        cutoff = min(now - raw_keep, wm_1m)
        deleted[Heartbeat.__tablename__] = session.execute(
            delete(Heartbeat).where(Heartbeat.received_at < cutoff)).rowcount or 0
    wm_1h = _watermark(session, "1h")
    if wm_1h is not None:
        cutoff = min(now - minute_keep, wm_1h)
        deleted[UnitRollup1m.__tablename__] = session.execute(
            delete(UnitRollup1m).where(UnitRollup1m.bucket_start < cutoff)).rowcount or 0
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
                 cohort: Cohort | None = None, bucket: timedelta | None = None) -> pd.DataFrame:
    """Fleet-wide (or cohort) latency percentiles per stage over time, from the rollups.

    Parameters
    ----------
    since, until
        Aware UTC; rollup buckets with ``since <= bucket_start < until``.
    level
        ``"1m"`` (kept 30 days) or ``"1h"`` (kept a year).
    cohort
        Only units of this cohort; None for the whole fleet.
    bucket
        Re-bucket to this span (a multiple of the level, e.g. 5 minutes), aligned to the epoch,
        by summing histograms and counts. None keeps the level's buckets.

    Returns
    -------
    DataFrame
        Columns :data:`STAGE_SERIES_COLUMNS`: one row per bucket that has rollups × stage of
        :data:`HIST_STAGES` (wake … playback, e2e, server), ordered by bucket then stage.
        ``p50_ms``/``p95_ms``/``p99_ms`` from the summed histogram and ``mean_ms`` (ms; NaN
        without samples), ``samples`` latencies of that stage; ``requests``, ``errors``,
        ``e2e_over_budget``, ``server_over_budget`` are the bucket's totals (the same on
        every stage row of a bucket).
    """
    model = _ROLLUP_MODELS[level]
    stmt = select(model.bucket_start, model.requests, model.errors, model.e2e_over_budget,
                  model.server_over_budget, model.latency_hist, model.latency_sum_ms).where(
        model.bucket_start >= since, model.bucket_start < until)
    if cohort is not None and not cohort.is_fleet:
        stmt = stmt.where(model.unit_id.in_(cohort.unit_ids()))
    rows = session.execute(stmt).all()
    if not rows:
        return pd.DataFrame(columns=list(STAGE_SERIES_COLUMNS))
    df = pd.DataFrame(rows, columns=["bucket_start", "requests", "errors", "e2e_over_budget", "server_over_budget",
                                     "latency_hist", "latency_sum_ms"])
    t = _epoch_s(df["bucket_start"])
    step = int(bucket.total_seconds()) if bucket else (60 if level == "1m" else 3600)
    df["b"] = t // step * step
    keys = np.sort(df["b"].unique())
    g = np.searchsorted(keys, df["b"].to_numpy())
    n = len(keys)
    totals = df.groupby(g)[["requests", "errors", "e2e_over_budget", "server_over_budget"]].sum()
    hists, sums = _sum_hists(df["latency_hist"].tolist(), df["latency_sum_ms"].tolist(), g, n)
    parts = []
    starts = [_to_dt(k) for k in keys]
    for stage in HIST_STAGES:
        h = hists.get(stage, np.zeros((n, N_BUCKETS), dtype=np.int64))
        cnt = h.sum(axis=1)
        s = sums.get(stage, np.zeros(n))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnt > 0, s / np.where(cnt > 0, cnt, 1), np.nan)
        parts.append(pd.DataFrame({
            "bucket_start": starts, "stage": stage, "p50_ms": _percentiles(h, 50), "p95_ms": _percentiles(h, 95),
            "p99_ms": _percentiles(h, 99), "mean_ms": mean, "samples": cnt.astype(int),
            **{c: totals[c].to_numpy().astype(int) for c in totals.columns},
        }))
    out = pd.concat(parts, ignore_index=True)
    out["_o"] = out["stage"].map({s: i for i, s in enumerate(HIST_STAGES)})
    out = out.sort_values(["bucket_start", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
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
        ``"1m"`` or ``"1h"``.

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
    df["e2e_p95_ms"] = _percentiles(hist, 95) if len(df) else pd.Series(dtype=float)
    for c in figures[1:]:
        if c not in ("requests", "errors", "reboots"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df[list(UNIT_SERIES_COLUMNS)].reset_index(drop=True)
