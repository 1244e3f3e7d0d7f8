"""What the Feedback page shows, computed off the GUI thread (no Qt here): the filtered feedback
rows, daily volume / CSAT / correction rate, the per-model-version comparison with bootstrap 95 %
confidence intervals beside the registry's offline evaluation, the tile figures, and the free texts
that :mod:`feedback.topics` groups into topics.

Reads SQLAlchemy over ``feedback`` (``feedback.models``), ``units``, ``heartbeats``,
``model_versions`` and ``tickets``; it never writes. The definitions are those of
:mod:`feedback.trends` (and ``speakerops trends``; the page's tooltips repeat them), and the
version comparison is computed by :func:`feedback.trends.version_comparison` itself:

* **CSAT**: share of ratings 4–5 among all ratings (the usual "top-two-box" CSAT).
* **Correction rate**: share of answers the user corrected right after (the online counterpart
  of accuracy; Amazon measures Alexa defects through such reformulations). Repeats and cancels
  are counted apart. Its 95 % interval: :func:`feedback.trends.bootstrap_rate_ci` (units
  resampled when a version has >= 20 units, else items; 1,000 replicates).
* **Complaint**: a rating of 1 or 2. **Complaints per 1,000 unit-days** divides by the unit-days
  on the version (:func:`feedback.trends.unit_days`: each unit from when it was first seen to the
  end of the period, split at the version changes its heartbeats show; units without heartbeats
  count on their current version). With a site filter, only that site's units count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, or_, select

from feedback import trends
from feedback.models import Feedback, Ticket
from feedback.trend_data import load_units, load_version_history, offline_evaluations

logger = logging.getLogger(__name__)

#: Rows the table holds at most (newest first); the trends use every row of the period.
PAGE_SIZE = 5000
#: Bootstrap replicates for the 95 % intervals (those of ``speakerops trends``; seed fixed so figures are stable).
N_BOOT = 1000
VERSION_KINDS: tuple[str, ...] = ("stt", "qa", "tts")
#: Series the volume chart can split by: key → (frame column, label).
SERIES_BY: dict[str, tuple[str, str]] = {
    "feature": ("feature", "feature"), "version": ("version", "model version"), "site": ("site", "site"),
    "hardware": ("hardware_rev", "hardware revision"), "rating": ("rating", "rating"),
}
#: Offline figures shown beside the online ones (``ModelVersion.evaluation`` summary keys).
OFFLINE_KEYS: tuple[tuple[str, str], ...] = (("wer", "WER"), ("intent_accuracy", "intent accuracy"),
                                             ("answer_accuracy", "answer accuracy"))
FRAME_COLUMNS = ("id", "submitted_at", "unit", "site", "hardware_rev", "household_id", "feature", "intent",
                 "rating", "text", "corrected", "repeated", "cancelled", "stt_version", "qa_version",
                 "tts_version", "unit_id", "version", "day", "defect")


@dataclass(frozen=True)
class FeedbackQuery:
    """The page's filters. ``since`` is aware UTC; ``version`` is a version of ``version_kind``;
    ``corrected`` True/False/None (any); ``text`` a case-insensitive substring of the free text,
    intent or unit serial. ``day``/``series`` are the chart drill-down: they narrow the table only."""

    since: datetime
    version_kind: str = "stt"
    feature: str | None = None
    version: str | None = None
    rating: int | None = None
    corrected: bool | None = None
    site: str | None = None
    text: str = ""
    series_by: str = "feature"
    day: date | None = None
    series: str | None = None

    def without_drill(self) -> FeedbackQuery:
        return replace(self, day=None, series=None)


@dataclass(frozen=True)
class FeedbackLoad:
    """One snapshot of the page."""

    query: FeedbackQuery
    rows: tuple[dict[str, Any], ...]
    matching: int
    volume: pd.DataFrame          # index day (date), one column per series, counts
    rates: pd.DataFrame           # index day: n, csat, correction_rate
    versions: pd.DataFrame        # one row per version: see version_comparison
    figures: dict[str, Any]
    options: dict[str, tuple[str, ...]]
    now: datetime
    notes: tuple[str, ...] = field(default_factory=tuple)


def _unit_table():
    from fleet.models import Unit

    return Unit


def read_frame(session: Any, q: FeedbackQuery) -> pd.DataFrame:
    """Feedback rows of the period matching the filters (not the drill-down), with the unit's
    serial, site and hardware revision, as a frame (:data:`FRAME_COLUMNS`); ``version`` is the
    ``version_kind`` version, ``defect`` corrected|repeated|cancelled (the table's flag; the
    correction rate counts ``corrected`` only, as :mod:`feedback.trends` does)."""
    unit = _unit_table()
    vcol = {"stt": Feedback.stt_version, "qa": Feedback.qa_version, "tts": Feedback.tts_version}[q.version_kind]
    stmt = (select(Feedback.id, Feedback.submitted_at, unit.serial, unit.site, unit.hardware_rev,
                   Feedback.household_id, Feedback.feature, Feedback.intent, Feedback.rating, Feedback.text,
                   Feedback.corrected, Feedback.repeated, Feedback.cancelled, Feedback.stt_version,
                   Feedback.qa_version, Feedback.tts_version, Feedback.unit_id)
            .join(unit, unit.id == Feedback.unit_id).where(Feedback.submitted_at >= q.since))
    if q.feature:
        stmt = stmt.where(Feedback.feature == q.feature)
    if q.version:
        stmt = stmt.where(vcol == q.version)
    if q.rating is not None:
        stmt = stmt.where(Feedback.rating == q.rating)
    if q.corrected is not None:
        stmt = stmt.where(Feedback.corrected.is_(q.corrected))
    if q.site:
        stmt = stmt.where(unit.site == q.site)
    if q.text.strip():
        like = f"%{q.text.strip().lower()}%"
        stmt = stmt.where(or_(func.lower(Feedback.text).like(like), func.lower(Feedback.intent).like(like),
                              func.lower(unit.serial).like(like)))
    rows = session.execute(stmt.order_by(Feedback.submitted_at.desc(), Feedback.id.desc())).all()
    df = pd.DataFrame(rows, columns=list(FRAME_COLUMNS[:17]))
    df["version"] = df[f"{q.version_kind}_version"]
    if len(df):
        df["day"] = [t.date() for t in df["submitted_at"]]
        df["defect"] = df["corrected"].astype(bool) | df["repeated"].astype(bool) | df["cancelled"].astype(bool)
    else:
        df["day"], df["defect"] = pd.Series(dtype=object), pd.Series(dtype=bool)
    return df


def drill(df: pd.DataFrame, q: FeedbackQuery) -> pd.DataFrame:
    """The rows of the drill-down (day and series value), or all rows."""
    out = df
    if q.day is not None:
        out = out[out["day"] == q.day]
    if q.series is not None:
        col = SERIES_BY[q.series_by][0]
        out = out[out[col].astype(str) == str(q.series)]
    return out


def daily_volume(df: pd.DataFrame, by: str = "feature") -> pd.DataFrame:
    """Feedback items per UTC day (rows, sorted) and series value (columns)."""
    if not len(df):
        return pd.DataFrame()
    col = SERIES_BY[by][0]
    keys = df[col].astype(object).where(df[col].notna(), "(none)").astype(str)
    return df.assign(series=keys).pivot_table(index="day", columns="series", values="id", aggfunc="count",
                                              fill_value=0).sort_index()


def daily_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per UTC day: ``n``, ``csat`` (share of ratings 4–5) and ``correction_rate`` (share corrected, 0–1)."""
    if not len(df):
        return pd.DataFrame(columns=["n", "csat", "correction_rate"])
    g = df.assign(sat=df["rating"] >= 4, fixed=df["corrected"].astype(bool)).groupby("day")
    return pd.DataFrame({"n": g["id"].count(), "csat": g["sat"].mean(),
                         "correction_rate": g["fixed"].mean()}).sort_index()


def bootstrap_rate_ci(successes: int, n: int, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of a proportion ``successes / n`` of items that are not
    grouped by unit: :func:`feedback.trends.bootstrap_rate_ci` with one cluster (a binomial draw
    per replicate). (nan, nan) for n = 0."""
    return trends.bootstrap_rate_ci(np.array([successes]), np.array([n]), n_boot, seed)


@dataclass(frozen=True)
class Exposure:
    """What the unit-days are computed from (:func:`feedback.trends.unit_days`)."""

    units: pd.DataFrame          # feedback.trend_data.load_units (of the site filter, if any)
    history: pd.DataFrame        # feedback.trend_data.load_version_history (of those units)
    first_feedback: pd.Series    # earliest feedback per unit id in the period
    offline: pd.DataFrame        # feedback.trend_data.offline_evaluations

    @property
    def basis(self) -> str:
        """How the unit-days were counted, for the page's status line."""
        return "heartbeats" if len(self.history) else "current units"


def load_exposure(session: Any, since: datetime, site: str | None = None) -> Exposure:
    """Units, their version history, first feedback per unit since ``since`` and the registry's
    evaluations (one query each)."""
    units = load_units(session)
    history = load_version_history(session)
    if site:
        units = units[(units["site"].astype(object) == site).to_numpy()]
        history = history[history["unit_id"].isin(units["unit_id"])]
    rows = session.execute(select(Feedback.unit_id, func.min(Feedback.submitted_at))
                           .where(Feedback.submitted_at >= since).group_by(Feedback.unit_id)).all()
    first = pd.Series(pd.to_datetime([r[1] for r in rows], utc=True), index=[r[0] for r in rows], dtype="datetime64[ns, UTC]")
    return Exposure(units, history, first, offline_evaluations(session))


#: The page's names for :func:`feedback.trends.version_comparison`'s columns.
_RENAME = {"corrected": "corrections", "per_1000_unit_days": "complaints_per_1000_unit_days",
           "offline_wer": "wer", "offline_intent_accuracy": "intent_accuracy",
           "offline_answer_accuracy": "answer_accuracy", "offline_evaluation_passed": "evaluation_passed"}
VERSION_FIELDS = ("version", "n", "corrections", "correction_rate", "ci_low", "ci_high", "csat", "complaints",
                  "unit_days", "complaints_per_1000_unit_days", "wer", "intent_accuracy", "answer_accuracy",
                  "evaluation_passed")


def version_comparison(df: pd.DataFrame, exposure: Exposure, kind: str, since: datetime, until: datetime,
                       n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per model version of ``kind`` with feedback or unit-days in the period, sorted:
    :data:`VERSION_FIELDS` — :func:`feedback.trends.version_comparison` (correction rate with its
    bootstrap 95 % CI, CSAT, complaints per 1,000 unit-days) under the page's column names, with
    the registry's offline figures (None where it has none)."""
    frame = df if len(df) else df.assign(unit_id=pd.Series(dtype=np.int64))
    out = trends.version_comparison(frame, exposure.units, exposure.history, exposure.offline, since, until, kind,
                                    n_boot=n_boot, first_feedback=exposure.first_feedback)
    out = out.rename(columns=_RENAME).rename_axis("version").reset_index()
    out["version"] = out["version"].astype(str)
    out["n"] = out["n"].fillna(0).astype(int)
    out["corrections"] = out["corrections"].fillna(0).astype(int)
    out["complaints"] = out["complaints"].fillna(0).astype(int)
    for col in VERSION_FIELDS:
        if col not in out:
            out[col] = None
    out = out[list(VERSION_FIELDS)].sort_values("version", kind="stable").reset_index(drop=True)
    return out.astype(object).where(out.notna(), None)


def _options(session: Any, since: datetime) -> dict[str, tuple[str, ...]]:
    unit = _unit_table()
    opts = {"site": tuple(s for (s,) in session.execute(select(unit.site).where(unit.site != "")
                                                         .group_by(unit.site).order_by(unit.site)))}
    for kind in VERSION_KINDS:
        col = getattr(Feedback, f"{kind}_version")
        opts[kind] = tuple(v for (v,) in session.execute(
            select(col).where(col.is_not(None), Feedback.submitted_at >= since).group_by(col).order_by(col)))
    return opts


def _row_dict(r: Any) -> dict[str, Any]:
    d = {k: r[k] for k in FRAME_COLUMNS if k != "day"}
    d["submitted_at"] = r["submitted_at"].to_pydatetime() if hasattr(r["submitted_at"], "to_pydatetime") \
        else r["submitted_at"]
    for k in ("rating", "id", "unit_id"):
        d[k] = int(d[k])
    for k in ("corrected", "repeated", "cancelled", "defect"):
        d[k] = bool(d[k])
    for k in ("text", "intent", "stt_version", "qa_version", "tts_version", "version"):
        if d[k] is not None and not isinstance(d[k], str):
            d[k] = None  # NaN from pandas
    return d


def load_feedback(session_factory: Callable[[], Any], clock: Callable[[], datetime], q: FeedbackQuery,
                  n_boot: int = N_BOOT) -> FeedbackLoad:
    """Everything the page shows for ``q`` in one unit of work (worker thread)."""
    from feedback.tickets import OPEN_STATES

    now = clock()
    with session_factory() as session:
        df = read_frame(session, q.without_drill())
        exposure = load_exposure(session, q.since, q.site)
        open_complaints = int(session.execute(select(func.count()).select_from(Ticket).where(
            Ticket.origin == "feedback", Ticket.state.in_(OPEN_STATES))).scalar_one())
        options = _options(session, q.since)
    shown = drill(df, q)
    rows = tuple(_row_dict(r) for r in shown.head(PAGE_SIZE).to_dict("records"))
    n = len(df)
    figures = {"feedback": n, "csat": float((df["rating"] >= 4).mean()) if n else None,
               "correction_rate": float(df["corrected"].astype(bool).mean()) if n else None,
               "open_complaints": open_complaints, "unit_days_basis": exposure.basis}
    return FeedbackLoad(q, rows, len(shown), daily_volume(df, q.series_by), daily_rates(df),
                        version_comparison(df, exposure, q.version_kind, q.since, now, n_boot), figures, options, now)


# -- topics (clustering: feedback.topics) ------------------------------------------------------
def feedback_texts(session_factory: Callable[[], Any], q: FeedbackQuery, limit: int = 20000) -> list[str]:
    """Stored (consented, redacted) free texts matching ``q`` (worker thread)."""
    with session_factory() as session:
        df = read_frame(session, q.without_drill())
    texts = [t for t in drill(df, q)["text"].head(limit) if isinstance(t, str) and t.strip()]
    return texts


def period_start(now: datetime, days: int) -> datetime:
    """Midnight UTC ``days - 1`` days before ``now``'s day (so ``days`` whole days are shown)."""
    return datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), tzinfo=now.tzinfo)
