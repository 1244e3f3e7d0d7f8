"""Trends product owners decide from: pandas aggregates over feedback and tickets.

Two steps, so the console can recompute on every filter change:

1. :class:`TrendCache` loads feedback (without text), tickets, units and the units' version
   history into pandas with one query per table, then refreshes incrementally (only feedback rows
   with a higher id; tickets changed since the last refresh).
2. :func:`compute_trends` (and the functions it calls, each usable alone) aggregates in memory:
   volume per day/week by feature, model version, hardware revision, site (feedback) and by
   category (tickets); CSAT; correction rate per model version with bootstrap 95 % CIs;
   complaints per 1,000 unit-days; time to first response and to resolution (median, p90);
   backlog by age bucket; SLA breaches; offline (registry) against online figures per version.

Definitions (``docs/feedback.md``):

* **CSAT** — share of ratings 4–5 (the usual top-two-box CSAT).
* **Correction rate** — share of feedback items whose user corrected right after the answer
  (the online counterpart of accuracy). CIs: percentile bootstrap (1,000 replicates), resampling
  *units* (cluster bootstrap: one unit's feedback is correlated) when a version has >= 20 units,
  else resampling items; vectorized in numpy (:func:`bootstrap_rate_ci`).
* **Complaint** — a rating of 1 or 2.
* **Unit-days** of a version — for every unit, the days between when it was first seen (its
  inventory time, first heartbeat or first feedback, whichever is earliest; not before the
  window start) and the window end, split at the version changes its heartbeats show. Before
  a unit's first heartbeat it is assumed to have run its first reported version; units without
  heartbeats count on their current version. Raw heartbeats are kept 24 h, so older changes
  are not seen: the figure is an approximation that is best for recent windows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from feedback.tickets import DONE_STATES, OPEN_STATES, PAUSED_STATES
from feedback.trend_data import (KINDS, TrendCache, TrendData, day_numbers, drill_down_ids, feedback_table,
                                 load_feedback_frame, load_ticket_frame, load_trend_data, load_units,
                                 load_version_history, offline_evaluations)

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "TrendCache", "TrendData", "Trends", "backlog_by_age", "bootstrap_rate_ci", "complaints_per_1000_unit_days",
           "compute_trends", "correction_rates", "csat", "drill_down_ids", "feedback_table", "load_feedback_frame",
           "load_ticket_frame", "load_trend_data", "load_units", "load_version_history", "offline_evaluations",
           "offline_vs_online", "sla_breaches", "sla_status", "ticket_times", "unit_days", "version_comparison",
           "volume"]

#: Backlog age buckets (upper edges, hours) and their labels.
AGE_EDGES_H: tuple[float, ...] = (0.0, 24.0, 48.0, 168.0, np.inf)
AGE_LABELS: tuple[str, ...] = ("0-24h", "24-48h", "2-7d", ">7d")


# -- aggregates (integer codes + numpy bincount: 1,000,000 rows in milliseconds) -------------------
def _codes(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes (-1 for missing) and the values they stand for."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(np.int64), pd.Index(col.cat.categories)
    codes, uniques = pd.factorize(col)
    return codes.astype(np.int64), pd.Index(uniques)


def _days(frame: pd.DataFrame, time_column: str, freq: str) -> np.ndarray:
    if freq not in ("D", "W"):
        raise ValueError(f"unknown frequency {freq!r}: use 'D' (day) or 'W' (week)")
    day = frame["day"].to_numpy(np.int64) if time_column == "submitted_at" and "day" in frame else \
        day_numbers(frame[time_column])
    return day - (day + 3) % 7 if freq == "W" else day  # ISO weeks start on Monday


def volume(frame: pd.DataFrame, by: str, freq: str = "D", time_column: str = "submitted_at") -> pd.DataFrame:
    """Counts per period (rows: period start, UTC, days/weeks with data) and value of ``by`` (columns).

    ``by`` is a column of ``frame``: ``feature``, ``stt_version``/``qa_version``/``tts_version``,
    ``hardware_rev``, ``site`` for feedback; ``category``, ``priority`` for tickets
    (``time_column="created_at"``). ``freq``: ``"D"`` (day) or ``"W"`` (ISO week, from Monday).
    """
    day = _days(frame, time_column, freq)
    if not len(frame):
        return pd.DataFrame()
    codes, values = _codes(frame[by])
    ok = codes >= 0
    if not ok.any():
        return pd.DataFrame()
    d0 = int(day[ok].min())
    span = int(day[ok].max()) - d0 + 1
    counts = np.bincount((day[ok] - d0) * len(values) + codes[ok], minlength=span * len(values))
    counts = counts.reshape(span, len(values))
    rows, cols = counts.sum(axis=1) > 0, counts.sum(axis=0) > 0
    index = pd.to_datetime(d0 + np.flatnonzero(rows), unit="D", utc=True)
    out = pd.DataFrame(counts[rows][:, cols], index=index, columns=values[cols])
    out.index.name, out.columns.name = "period", by
    return out


def csat(frame: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """CSAT (share of ratings 4–5) and count, overall or per value of ``by``."""
    good = (frame["rating"].to_numpy() >= 4).astype(np.float64)
    if by is None:
        return pd.DataFrame({"n": [len(frame)], "csat": [float(good.mean()) if len(frame) else np.nan]})
    codes, values = _codes(frame[by])
    ok = codes >= 0
    n = np.bincount(codes[ok], minlength=len(values))
    g = np.bincount(codes[ok], weights=good[ok], minlength=len(values))
    out = pd.DataFrame({"n": n, "csat": np.where(n > 0, g / np.maximum(n, 1), np.nan)}, index=values)
    out.index.name = by
    return out[out["n"] > 0]


def bootstrap_rate_ci(successes: np.ndarray, totals: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95, min_clusters: int = 20) -> tuple[float, float]:
    """Percentile bootstrap CI of ``sum(successes) / sum(totals)``.

    With at least ``min_clusters`` clusters (units) the clusters are resampled (cluster bootstrap:
    one unit's feedback is correlated) with the Poisson bootstrap — every cluster weighs Poisson(1)
    per replicate (Hanley & MacGibbon 2006; Chamandy et al. 2012, Google's large-scale variant) —
    drawn per distinct (events, items) pair as Poisson(count of clusters with that pair), one
    (n_boot x pairs) matrix in numpy. With fewer clusters the items are resampled instead, which
    for a rate is exactly a binomial draw per replicate.

    Parameters
    ----------
    successes, totals
        Per cluster: events and items, shape (clusters,).
    n_boot
        Bootstrap replicates.

    Returns
    -------
    (low, high)
        NaN when there are no items.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(totals, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    m = len(n)
    if m >= min_clusters:
        # Poisson bootstrap: each unit weighs Poisson(1) per replicate; units with the same
        # (events, items) pair add up to one Poisson(count) weight, so only distinct pairs are drawn.
        ki, ni = k.astype(np.int64), n.astype(np.int64)
        codes, counts = np.unique(ki * (int(ni.max()) + 1) + ni, return_counts=True)
        pk, pn = (codes // (int(ni.max()) + 1)).astype(np.float64), (codes % (int(ni.max()) + 1)).astype(np.float64)
        draws = rng.poisson(counts, size=(n_boot, len(counts))).astype(np.float64)
        num, den = draws @ pk, draws @ pn
        boot = num[den > 0] / den[den > 0]
    else:
        boot = rng.binomial(int(total), k.sum() / total, size=n_boot) / total
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(low), float(high)


def correction_rates(frame: pd.DataFrame, kind: str = "qa", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per ``<kind>_version``: n, corrections, rate with its 95 % CI (:func:`bootstrap_rate_ci`),
    units, repeat and cancel rates, CSAT and complaints (ratings 1–2)."""
    cols = ["n", "corrected", "correction_rate", "ci_low", "ci_high", "units", "repeat_rate", "cancel_rate", "csat",
            "complaints"]
    vc, versions = _codes(frame[f"{kind}_version"])
    ok = vc >= 0
    if not ok.any():
        return pd.DataFrame(columns=cols)
    uc = frame["unit_id"].to_numpy(np.int64)  # unit ids are small dense integers: use them as codes
    vc, uc = vc[ok], uc[ok]
    nv, nu = len(versions), int(uc.max()) + 1
    flag = {c: frame[c].to_numpy()[ok].astype(np.float64) for c in ("corrected", "repeated", "cancelled")}
    rating = frame["rating"].to_numpy()[ok]
    key = vc * nu + uc
    n_vu = np.bincount(key, minlength=nv * nu).reshape(nv, nu)
    k_vu = np.bincount(key, weights=flag["corrected"], minlength=nv * nu).reshape(nv, nu)
    n_v = n_vu.sum(axis=1)
    per = {name: np.bincount(vc, weights=w, minlength=nv) for name, w in
           (("repeated", flag["repeated"]), ("cancelled", flag["cancelled"]),
            ("good", (rating >= 4).astype(np.float64)), ("complaints", (rating <= 2).astype(np.float64)))}
    rows = {}
    for v in np.flatnonzero(n_v):
        has = n_vu[v] > 0
        low, high = bootstrap_rate_ci(k_vu[v][has], n_vu[v][has], n_boot, seed + int(v))
        n, k = int(n_v[v]), int(k_vu[v].sum())
        rows[versions[v]] = {"n": n, "corrected": k, "correction_rate": k / n, "ci_low": low, "ci_high": high,
                             "units": int(has.sum()), "repeat_rate": per["repeated"][v] / n,
                             "cancel_rate": per["cancelled"][v] / n, "csat": per["good"][v] / n,
                             "complaints": int(per["complaints"][v])}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    out.index.name = f"{kind}_version"
    return out


def first_feedback_per_unit(frame: pd.DataFrame) -> pd.Series:
    """Earliest ``submitted_at`` per unit id."""
    if not len(frame):
        return pd.Series(dtype="datetime64[ns, UTC]")
    return frame.groupby("unit_id", observed=True)["submitted_at"].min()


def unit_days(units: pd.DataFrame, history: pd.DataFrame, start: datetime, end: datetime, kind: str = "qa",
              first_feedback: pd.Series | None = None) -> pd.Series:
    """Unit-days per ``<kind>_version`` in [start, end] (approximation in the module doc)."""
    col = f"{kind}_version"
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    u = units.set_index("unit_id")
    first_seen = u["created_at"]
    if not history.empty:
        first_seen = pd.concat([first_seen, history.groupby("unit_id")["at"].min()], axis=1).min(axis=1)
    if first_feedback is not None and len(first_feedback):
        first_seen = pd.concat([first_seen, first_feedback], axis=1).min(axis=1)
    unit_start = first_seen.clip(lower=start_ts)
    parts = []
    has_hist = u.index.isin(history["unit_id"]) if not history.empty else np.zeros(len(u), bool)
    plain = u.loc[~has_hist]
    if len(plain):
        days = ((end_ts - unit_start.loc[plain.index]).dt.total_seconds() / 86400).clip(lower=0)
        parts.append(pd.DataFrame({"version": plain[col].astype(object).values, "days": days.values}))
    if not history.empty:
        h = history.sort_values(["unit_id", "at"]).reset_index(drop=True)
        seg_start = h["at"].where(h["unit_id"].eq(h["unit_id"].shift()), start_ts)
        seg_end = h.groupby("unit_id")["at"].shift(-1)
        seg_end = seg_end.where(seg_end.notna(), end_ts)
        lo = pd.concat([seg_start, h["unit_id"].map(unit_start)], axis=1).max(axis=1)
        hi = seg_end.clip(upper=end_ts)
        days = ((hi - lo).dt.total_seconds() / 86400).clip(lower=0)
        parts.append(pd.DataFrame({"version": h[col].astype(object).values, "days": days.values}))
    if not parts:
        return pd.Series(dtype=float, name="unit_days")
    out = pd.concat(parts).groupby("version")["days"].sum()
    out.name = "unit_days"
    out.index.name = col
    return out


def complaints_per_1000_unit_days(frame: pd.DataFrame, days: pd.Series, kind: str = "qa") -> pd.DataFrame:
    """Complaints (ratings 1–2) per 1,000 unit-days per ``<kind>_version``."""
    col = f"{kind}_version"
    codes, versions = _codes(frame[col])
    ok = codes >= 0
    complaints = pd.Series(np.bincount(codes[ok], weights=(frame["rating"].to_numpy()[ok] <= 2).astype(float),
                                       minlength=len(versions)), index=versions.astype(object))
    out = pd.DataFrame({"complaints": complaints[complaints.index.isin(frame[col].dropna().unique())],
                        "unit_days": days}).fillna({"complaints": 0})
    # unit-days may be 0 (a window after a version's last heartbeat) and the columns object-typed:
    # divide as floats with 0 masked out, or Python's ZeroDivisionError escapes pandas' division
    unit_days_f = pd.to_numeric(out["unit_days"], errors="coerce").astype(float)
    out["per_1000_unit_days"] = (1000.0 * pd.to_numeric(out["complaints"], errors="coerce").astype(float)
                                 / unit_days_f.where(unit_days_f > 0))
    out.index.name = col
    return out


def _hours(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 3600


def ticket_times(tickets: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Median and p90 of time to first response and to resolution, hours (tickets that got there)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, col in (("first_response_h", "first_response_at"), ("resolution_h", "resolved_at")):
        h = _hours(tickets[col] - tickets["created_at"]).dropna() if len(tickets) else pd.Series(dtype=float)
        out[name] = {"n": int(len(h)), "median": float(h.median()) if len(h) else None,
                     "p90": float(h.quantile(0.9)) if len(h) else None}
    return out


def backlog_by_age(tickets: pd.DataFrame, now: datetime) -> pd.Series:
    """Open tickets per age bucket (:data:`AGE_LABELS`: 0–24 h, 24–48 h, 2–7 d, > 7 d)."""
    open_ = tickets[tickets["state"].isin(OPEN_STATES)] if len(tickets) else tickets
    if open_.empty:
        return pd.Series(0, index=list(AGE_LABELS), name="open_tickets")
    age = _hours(pd.Timestamp(now) - open_["created_at"])
    out = pd.cut(age, list(AGE_EDGES_H), labels=list(AGE_LABELS), right=False).value_counts().reindex(list(AGE_LABELS))
    out.name = "open_tickets"
    return out.fillna(0).astype(int)


def sla_status(tickets: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Per ticket (vectorized :func:`feedback.tickets.sla_clocks`): ``response_breached``,
    ``resolution_breached``, ``resolution_status`` (running|paused|breached|completed), remaining s."""
    now_ts = pd.Timestamp(now)
    resp_el = ((tickets["first_response_at"].fillna(now_ts) - tickets["created_at"]).dt.total_seconds())
    running = tickets["resolution_running_since"].notna()
    res_el = tickets["resolution_elapsed_s"] + np.where(
        running, (now_ts - tickets["resolution_running_since"]).dt.total_seconds().fillna(0), 0.0)
    res_breached = res_el > tickets["resolution_target_s"]
    state = tickets["state"].astype(object)
    status = np.select([state.isin(DONE_STATES), res_breached, state.isin(PAUSED_STATES)],
                       ["completed", "breached", "paused"], "running")
    return pd.DataFrame({"response_breached": resp_el > tickets["response_target_s"],
                         "resolution_breached": res_breached, "resolution_status": status,
                         "resolution_remaining_s": tickets["resolution_target_s"] - res_el}, index=tickets.index)


def sla_breaches(tickets: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Per priority: tickets, first-response and resolution breaches, open tickets breaching now."""
    if tickets.empty:
        return pd.DataFrame(columns=["tickets", "response_breached", "resolution_breached", "open_breaching"])
    s = sla_status(tickets, now)
    is_open = tickets["state"].isin(OPEN_STATES)
    frame = pd.DataFrame({"priority": tickets["priority"].astype(object), "tickets": 1,
                          "response_breached": s["response_breached"], "resolution_breached": s["resolution_breached"],
                          "open_breaching": is_open & (s["response_breached"] | s["resolution_breached"])})
    return frame.groupby("priority").sum()


# -- offline against online -----------------------------------------------------------------------
def version_comparison(feedback: pd.DataFrame, units: pd.DataFrame, history: pd.DataFrame, offline: pd.DataFrame,
                       start: datetime, end: datetime, kind: str = "qa", n_boot: int = 1000, seed: int = 0,
                       first_feedback: pd.Series | None = None) -> pd.DataFrame:
    """Per ``<kind>_version``, online figures beside the registry's offline ones.

    Parameters
    ----------
    feedback
        Feedback rows (columns ``unit_id``, ``<kind>_version``, ``rating``, ``corrected``,
        ``repeated``, ``cancelled``, ``submitted_at``), e.g. :attr:`TrendData.feedback` or a
        filtered frame of the console's Feedback page.
    units, history
        :func:`load_units` and :func:`load_version_history` (the exposure for unit-days; pass the
        units of a site only to count that site's unit-days).
    offline
        :func:`offline_evaluations` (may be empty).
    start, end
        The window of the unit-days (aware UTC).
    first_feedback
        Earliest feedback per unit id (default: from ``feedback``).

    Returns
    -------
    pandas.DataFrame
        Index ``<kind>_version`` (versions with feedback or unit-days); the columns of
        :func:`correction_rates` (CI: :func:`bootstrap_rate_ci`), ``unit_days`` (:func:`unit_days`),
        ``per_1000_unit_days`` (complaints, ratings 1–2) and the registry's ``offline_*`` columns.
    """
    online = correction_rates(feedback, kind, n_boot=n_boot, seed=seed)
    if first_feedback is None:
        first_feedback = first_feedback_per_unit(feedback)
    days = unit_days(units, history, start, end, kind, first_feedback)
    out = online.join(days, how="outer")
    out["complaints"] = out["complaints"].fillna(0)
    # unit-days may be 0 (a window after a version's last heartbeat) and the columns object-typed:
    # divide as floats with 0 masked out, or Python's ZeroDivisionError escapes pandas' division
    unit_days_f = pd.to_numeric(out["unit_days"], errors="coerce").astype(float)
    out["per_1000_unit_days"] = (1000.0 * pd.to_numeric(out["complaints"], errors="coerce").astype(float)
                                 / unit_days_f.where(unit_days_f > 0))
    if not offline.empty and {"kind", "version"} <= set(offline.columns):
        off = offline[offline["kind"] == kind].drop(columns="kind").set_index("version")
        out = out.join(off, how="left")
    out.index.name = f"{kind}_version"
    return out


def offline_vs_online(data: TrendData, start: datetime, end: datetime, kind: str = "qa", n_boot: int = 1000,
                      seed: int = 0, first_feedback: pd.Series | None = None) -> pd.DataFrame:
    """:func:`version_comparison` over a :class:`TrendData` snapshot."""
    return version_comparison(data.feedback, data.units, data.history, data.offline, start, end, kind, n_boot, seed,
                              first_feedback)


# -- all together ---------------------------------------------------------------------------------
@dataclass
class Trends:
    """Everything the Feedback page and ``speakerops trends`` show (DataFrames; see :meth:`as_dict`)."""

    window: tuple[datetime, datetime]
    feedback_rows: int
    volume: dict[str, pd.DataFrame]
    csat: float | None
    csat_by_feature: pd.DataFrame
    versions: dict[str, pd.DataFrame]
    ticket_times: dict[str, dict[str, float | None]]
    backlog: pd.Series
    sla: pd.DataFrame
    ticket_volume: pd.DataFrame

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (periods as ISO dates, NaN as None)."""
        def frame(df: pd.DataFrame, index_iso: bool = False) -> list[dict[str, Any]]:
            if df is None or df.empty:
                return []
            d = df.copy()
            if index_iso:
                d.index = [i.date().isoformat() for i in d.index]
            d = d.reset_index().astype(object)
            return d.where(pd.notna(d), None).to_dict(orient="records")

        return {"window": [self.window[0].isoformat(), self.window[1].isoformat()],
                "feedback_rows": self.feedback_rows, "csat": self.csat,
                "csat_by_feature": frame(self.csat_by_feature),
                "volume": {k: frame(v, index_iso=True) for k, v in self.volume.items()},
                "versions": {k: frame(v) for k, v in self.versions.items()},
                "tickets": {"times": self.ticket_times, "backlog_by_age": self.backlog.to_dict(),
                            "sla_by_priority": frame(self.sla), "volume_by_category": frame(self.ticket_volume, True)}}


def compute_trends(data: TrendData, now: datetime, since: datetime | None = None, freq: str = "D",
                   n_boot: int = 1000, seed: int = 0) -> Trends:
    """Every trend over ``data`` from ``since`` (default: the first feedback) to ``now``, in memory.

    Tickets count when created since ``since`` or still open.
    """
    fb = data.feedback
    if since is not None:
        fb = fb[(fb["submitted_at"] >= pd.Timestamp(since)).to_numpy()]
    start = since or (fb["submitted_at"].min().to_pydatetime() if len(fb) else now - timedelta(days=1))
    sub = TrendData(fb, data.tickets, data.units, data.history, data.loaded_at, data.max_feedback_id,
                    data.feedback_count, data.offline)
    first_fb = first_feedback_per_unit(fb)
    vols = {by: volume(fb, by, freq) for by in ("feature", "stt_version", "qa_version", "tts_version",
                                                 "hardware_rev", "site")}
    tickets = data.tickets
    if since is not None and len(tickets):
        tickets = tickets[(tickets["created_at"] >= pd.Timestamp(since)) | tickets["state"].isin(OPEN_STATES)]
    return Trends(window=(start, now), feedback_rows=len(fb), volume=vols,
                  csat=float((fb["rating"] >= 4).mean()) if len(fb) else None,
                  csat_by_feature=csat(fb, "feature") if len(fb) else pd.DataFrame(),
                  versions={k: offline_vs_online(sub, start, now, k, n_boot, seed, first_fb) for k in KINDS},
                  ticket_times=ticket_times(tickets), backlog=backlog_by_age(data.tickets, now),
                  sla=sla_breaches(tickets, now),
                  ticket_volume=volume(tickets, "category", freq, "created_at") if len(tickets) else pd.DataFrame())
