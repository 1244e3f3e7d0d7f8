"""Read models for the console and the CLI: the fleet table snapshot and a unit's detail.

These build plain data (a pandas ``DataFrame``, dataclasses) from one ``Session``; the console
calls them off the GUI thread and swaps the result into its table models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.models import STAGES, UNIT_STATES, CollectorStatus, Heartbeat, Unit, UnitRollup1m
from fleet.rollups import N_BUCKETS, bucket_index, ceil_to, floor_to, hist_percentiles, rollup_watermark
from fleet.settings import CollectorSettings
from fleet.unit_states import effective_thresholds, load_policy_index

logger = logging.getLogger(__name__)

#: Columns of :func:`fleet_snapshot`, in display order.
SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "serial", "status", "site", "region", "hardware_rev", "firmware_version",
    "stt_version", "qa_version", "tts_version", "last_heartbeat_at",
    "cpu_pct", "temp_c", "mem_pct", "disk_free_mb", "mic_noise_dbfs", "wifi_rssi_dbm",
    "wake_false_accepts_per_h", "requests", "errors", "e2e_p95_ms", "flapping", "state_change_pct",
    "offline_after_s", "last_poll_error", "id",
)


def _e2e_ms(latency_ms: dict | None) -> list[float]:
    """End-to-end latency per request (sum over the six stages), ms; [] if none reported."""
    if not latency_ms:
        return []
    series = [latency_ms.get(stage) or [] for stage in STAGES]
    n = min((len(s) for s in series), default=0)
    return [float(sum(s[i] for s in series)) for i in range(n)]


#: Rows fetched at a time where heartbeat or histogram JSON is read: each batch's decoded dicts
#: are freed before the next is fetched, so they never pile up for the garbage collector (which
#: the console runs on its GUI thread; benchmarks/gui_stall.py).
STREAM_ROWS = 2000


def stream_rows(session: Session, stmt: Any) -> Any:
    """Rows of ``stmt`` (a select), fetched :data:`STREAM_ROWS` at a time (SQLAlchemy ``yield_per``)."""
    return session.execute(stmt.execution_options(yield_per=STREAM_ROWS))


#: Health figures of a heartbeat shown per unit (the fleet table's and the health aggregates').
_HEALTH_COLUMNS: tuple[str, ...] = (
    "cpu_pct", "temp_c", "mem_pct", "disk_free_mb", "mic_noise_dbfs", "wifi_rssi_dbm",
    "wake_false_accepts_per_h",
)


def latest_heartbeats(session: Session, columns: Sequence[str] = _HEALTH_COLUMNS,
                      until: datetime | None = None) -> pd.DataFrame:
    """Each unit's latest heartbeat (received at or before ``until``), the given columns.

    The collector writes a heartbeat and its unit's ``last_heartbeat_at`` in one transaction, so
    the latest heartbeat is found by the ``(unit_id, received_at)`` index, one lookup per unit;
    units whose ``last_heartbeat_at`` is missing or after ``until`` (rows written by other
    tools, a clock in the past) fall back to the newest id per unit among their heartbeats.
    (Before: a ``max(id) … GROUP BY unit_id`` over the whole raw table, 8.6 M rows a day at
    10,000 units, for every fleet-table refresh.)

    Parameters
    ----------
    columns
        :class:`fleet.models.Heartbeat` attribute names.
    until
        Aware UTC; None: no bound.

    Returns
    -------
    DataFrame
        Indexed by unit id, one row per unit with a heartbeat, ``columns`` as floats where
        numeric (NaN for a null), else as stored.
    """
    cols = [getattr(Heartbeat, c) for c in columns]
    direct = (select(Heartbeat.unit_id, Heartbeat.id, *cols)
              .join(Unit, (Unit.id == Heartbeat.unit_id) & (Heartbeat.received_at == Unit.last_heartbeat_at)))
    stale = select(Unit.id).where(Unit.last_heartbeat_at.is_(None))
    if until is not None:
        direct = direct.where(Unit.last_heartbeat_at <= until)
        stale = select(Unit.id).where(Unit.last_heartbeat_at.is_(None) | (Unit.last_heartbeat_at > until))
    newest = select(func.max(Heartbeat.id)).where(Heartbeat.unit_id.in_(stale))
    if until is not None:
        newest = newest.where(Heartbeat.received_at <= until)
    fallback = select(Heartbeat.unit_id, Heartbeat.id, *cols).where(
        Heartbeat.id.in_(newest.group_by(Heartbeat.unit_id)))
    rows = [*session.execute(direct).all(), *session.execute(fallback).all()]
    df = pd.DataFrame(rows, columns=["unit_id", "id", *columns])
    # two heartbeats of one unit received in the same instant: keep the newer
    df = df.sort_values("id", kind="stable").drop_duplicates("unit_id", keep="last").set_index("unit_id")
    for c in columns:
        if c in _HEALTH_COLUMNS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df.drop(columns="id")


def request_figures(session: Session, since: datetime, until: datetime) -> pd.DataFrame:
    """Per unit, its requests and errors in ``(since, until]`` and their p95 end-to-end latency.

    Counts are summed by the database over the raw heartbeats (kept 24 h). The p95 comes from
    the units' 1-minute rollup histograms (``fleet.rollups``) for the whole minutes inside the
    window that are rolled up, and from the raw heartbeats' per-request latencies for the rest
    (the unaligned head and the minutes after the rollup watermark): at 10,000 units that is
    one or two minutes of raw latency JSON instead of fifteen. Without any rollup histogram the
    p95 is the exact percentile of the samples (as before rollups exist); with one, the
    percentile of the summed histogram (interpolated inside its bucket,
    :func:`fleet.rollups.hist_percentile`).

    Returns
    -------
    DataFrame
        Indexed by unit id, units with heartbeats in the window only: ``requests``, ``errors``
        (floats) and ``e2e_p95_ms`` (ms, NaN without requests).
    """
    counts = session.execute(
        select(Heartbeat.unit_id, func.sum(Heartbeat.requests), func.sum(Heartbeat.errors))
        .where(Heartbeat.received_at > since, Heartbeat.received_at <= until)
        .group_by(Heartbeat.unit_id)).all()
    out = pd.DataFrame(counts, columns=["unit_id", "requests", "errors"]).set_index("unit_id").astype(float)
    if not len(out):
        return out.assign(e2e_p95_ms=pd.Series(dtype=float))
    minute = timedelta(minutes=1)
    watermark = rollup_watermark(session, "1m")
    rolled_from = ceil_to(since, minute)
    rolled_until = min(watermark, floor_to(until, minute)) if watermark is not None else rolled_from
    hist: dict[int, np.ndarray] = {}
    raw_spans = [(since, until)]
    if rolled_until > rolled_from:
        raw_spans = [(since, rolled_from), (rolled_until, until)]
        stmt = select(UnitRollup1m.unit_id, UnitRollup1m.latency_hist["e2e"]).where(
            UnitRollup1m.bucket_start >= rolled_from, UnitRollup1m.bucket_start < rolled_until,
            UnitRollup1m.requests > 0)
        for unit_id, counts_e2e in stream_rows(session, stmt):
            if counts_e2e is not None and len(counts_e2e) == N_BUCKETS:
                acc = hist.get(unit_id)
                hist[unit_id] = np.asarray(counts_e2e, dtype=np.int64) if acc is None else acc + counts_e2e
    sample_units: list[int] = []
    sample_values: list[float] = []
    for lo, hi in raw_spans:
        if hi <= lo:
            continue
        stmt = select(Heartbeat.unit_id, Heartbeat.latency_ms).where(
            Heartbeat.received_at > lo, Heartbeat.received_at <= hi, Heartbeat.requests > 0)
        for unit_id, latency in stream_rows(session, stmt):
            if (e2e := _e2e_ms(latency)):
                sample_values.extend(e2e)
                sample_units.extend([unit_id] * len(e2e))
    out["e2e_p95_ms"] = _p95_per_unit(out.index.to_numpy(dtype=np.int64), hist,
                                      np.asarray(sample_units, dtype=np.int64), np.asarray(sample_values))
    return out


def _p95_per_unit(unit_ids: np.ndarray, hist: dict[int, np.ndarray], sample_units: np.ndarray,
                  samples: np.ndarray) -> np.ndarray:
    """p95 per unit of ``unit_ids`` (ms, NaN without data), vectorized: from its rollup histogram
    plus its raw samples bucketed where it has a histogram; else the exact 95th percentile of its
    samples (numpy's linear interpolation)."""
    n = len(unit_ids)
    out = np.full(n, np.nan)
    row = {u: i for i, u in enumerate(unit_ids.tolist())}
    s_rows = np.asarray([row.get(u, -1) for u in sample_units.tolist()], dtype=np.int64)
    keep = s_rows >= 0
    s_rows, samples = s_rows[keep], samples[keep]
    counts = np.zeros((n, N_BUCKETS), dtype=np.int64)
    for u, h in hist.items():
        if u in row:
            counts[row[u]] += h
    has_hist = counts.sum(axis=1) > 0
    if has_hist.any():
        with_hist = has_hist[s_rows]
        np.add.at(counts, (s_rows[with_hist], bucket_index(samples[with_hist])), 1)
        out[has_hist] = hist_percentiles(counts[has_hist], 95)
    exact = ~has_hist[s_rows]
    if exact.any():
        r, v = s_rows[exact], samples[exact]
        order = np.lexsort((v, r))
        r, v = r[order], v[order]
        units, start, size = np.unique(r, return_index=True, return_counts=True)
        pos = 0.95 * (size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        out[units] = v[start + lo] + (pos - lo) * (v[start + hi] - v[start + lo])
    return out


#: Window over which the fleet table's request figures are computed (requests, errors, p95 e2e).
#: A unit handles a few requests per minute at most, so one heartbeat rarely holds enough.
SNAPSHOT_WINDOW = timedelta(minutes=15)


def fleet_snapshot(session: Session, now: datetime, window: timedelta = SNAPSHOT_WINDOW,
                   default_offline_after_s: float | None = None) -> pd.DataFrame:
    """One row per unit with its inventory, state, latest health figures and request figures.

    Parameters
    ----------
    now
        Aware UTC time the window ends at (the caller's clock).
    window
        Span of heartbeats behind ``requests``, ``errors`` and ``e2e_p95_ms``.
    default_offline_after_s
        The fleet's offline threshold, seconds; None: ``CollectorSettings().offline_after_s``
        (1.5 × the poll interval).

    Returns
    -------
    DataFrame
        Columns :data:`SNAPSHOT_COLUMNS`, sorted by serial. Health figures (``cpu_pct`` …) are
        the latest heartbeat's, NaN for a unit never heard from. ``requests`` and ``errors`` are
        sums over ``window``; ``e2e_p95_ms`` is the 95th percentile end-to-end latency (sum of
        the six stages) of the requests in ``window``, ms, NaN without requests. ``flapping``
        (bool) and ``state_change_pct`` (weighted percent state change of the last 21 polls,
        0–100, NaN before the first poll) come from flap detection; ``offline_after_s`` is the
        unit's effective offline threshold, seconds (its most specific offline policy, else the
        default) — all :mod:`fleet.unit_states`.
    """
    health = latest_heartbeats(session, _HEALTH_COLUMNS)
    stmt = select(
        Unit.id, Unit.serial, Unit.status, Unit.site, Unit.region, Unit.hardware_rev,
        Unit.firmware_version, Unit.stt_version, Unit.qa_version, Unit.tts_version,
        Unit.last_heartbeat_at, Unit.last_poll_error, Unit.flapping, Unit.state_change_pct, Unit.tags,
    ).order_by(Unit.serial)
    df = pd.DataFrame(session.execute(stmt).all(),
                      columns=["id", "serial", "status", "site", "region", "hardware_rev", "firmware_version",
                               "stt_version", "qa_version", "tts_version", "last_heartbeat_at",
                               "last_poll_error", "flapping", "state_change_pct", "tags"])
    ids = df["id"].to_numpy(dtype=np.int64)
    for col in _HEALTH_COLUMNS:
        df[col] = health[col].reindex(ids).to_numpy(dtype=float) if len(health) else np.nan
    if default_offline_after_s is None:
        default_offline_after_s = CollectorSettings().offline_after_s
    df["offline_after_s"] = effective_thresholds(
        load_policy_index(session), df["serial"].tolist(), df["site"].tolist(), df["hardware_rev"].tolist(),
        df["tags"].tolist(), default_offline_after_s)
    df["flapping"] = df["flapping"].eq(True).to_numpy(dtype=bool)
    df["state_change_pct"] = pd.to_numeric(df["state_change_pct"], errors="coerce").astype(float)

    figures = request_figures(session, now - window, now)
    for col in ("requests", "errors", "e2e_p95_ms"):
        df[col] = figures[col].reindex(ids).to_numpy(dtype=float) if len(figures) else np.nan
    return df[list(SNAPSHOT_COLUMNS)].reset_index(drop=True)


def status_counts(snapshot: pd.DataFrame) -> dict[str, int]:
    """Units per state, every state of :data:`fleet.models.UNIT_STATES` present (0 if none)."""
    counts = snapshot["status"].value_counts().to_dict() if len(snapshot) else {}
    return {state: int(counts.get(state, 0)) for state in UNIT_STATES}


@dataclass(frozen=True)
class UnitDetail:
    """A unit's inventory and its latest heartbeats, for the detail panel.

    ``recent`` holds the unit's heartbeats of the last ``window`` (oldest first) as a DataFrame
    with ``received_at`` and the figures of :class:`fleet.models.Heartbeat`.
    """

    serial: str
    status: str
    inventory: dict[str, object]
    latest: dict[str, object] | None
    stage_p95_ms: dict[str, float] = field(default_factory=dict)
    recent: pd.DataFrame = field(default_factory=pd.DataFrame)


_HEARTBEAT_FIGURES = (
    "received_at", "state", "uptime_s", "cpu_pct", "temp_c", "mem_pct", "disk_free_mb",
    "mic_noise_dbfs", "wifi_rssi_dbm", "wake_false_accepts_per_h", "requests", "errors",
)


def unit_detail(session: Session, serial: str, now: datetime,
                window: timedelta = timedelta(hours=1)) -> UnitDetail | None:
    """The unit ``serial``'s inventory, latest figures and per-stage p95 latency (ms) over
    ``window`` before ``now``; None if no such unit."""
    unit = session.scalar(select(Unit).where(Unit.serial == serial))
    if unit is None:
        return None
    inventory = {
        "serial": unit.serial, "hardware_rev": unit.hardware_rev, "site": unit.site,
        "region": unit.region, "timezone": unit.timezone, "agent_url": unit.agent_url,
        "ssh": f"{unit.ssh_user}@{unit.ssh_host}:{unit.ssh_port}" if unit.ssh_host else None,
        "firmware_version": unit.firmware_version, **{f"{k}_version": v for k, v in unit.model_versions().items()},
        "tags": list(unit.tags or []), "consent_recordings": unit.consent_recordings,
        "consent_feedback_text": unit.consent_feedback_text,
        "last_heartbeat_at": unit.last_heartbeat_at, "last_poll_error": unit.last_poll_error,
        "clock_skew_s": unit.clock_skew_s,
    }
    hbs = session.scalars(
        select(Heartbeat)
        .where(Heartbeat.unit_id == unit.id, Heartbeat.received_at >= now - window)
        .order_by(Heartbeat.received_at)
    ).all()
    recent = pd.DataFrame([{k: getattr(h, k) for k in _HEARTBEAT_FIGURES} for h in hbs],
                          columns=list(_HEARTBEAT_FIGURES))
    stage_p95: dict[str, float] = {}
    for stage in STAGES:
        samples = [v for h in hbs for v in (h.latency_ms or {}).get(stage, [])]
        if samples:
            stage_p95[stage] = float(np.percentile(samples, 95))
    latest = recent.iloc[-1].to_dict() if len(recent) else None
    return UnitDetail(unit.serial, unit.status, inventory, latest, stage_p95, recent)


def collector_statuses(session: Session) -> list[CollectorStatus]:
    """Every collector's latest cycle, newest first."""
    return list(session.scalars(
        select(CollectorStatus).order_by(CollectorStatus.last_cycle_at.desc().nulls_last())
    ))
