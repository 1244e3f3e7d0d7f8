"""What the Feedback page shows, computed off the GUI thread (no Qt here): the filtered feedback
rows, daily volume / CSAT / correction rate, the per-model-version comparison with bootstrap 95 %
confidence intervals beside the registry's offline evaluation, the tile figures, and the free texts
that :mod:`feedback.topics` groups into topics.

Reads SQLAlchemy over ``feedback`` (``feedback.models``), ``units``, ``heartbeats``,
``model_versions`` and ``tickets``; it never writes. Definitions (also in the page's tooltips):

* **CSAT**: share of ratings 4–5 among all ratings (the usual "top-two-box" CSAT).
* **Correction rate**: share of answers the user corrected, repeated or cancelled right after
  (the online counterpart of accuracy; Amazon measures Alexa defects through such reformulations).
* **Complaint**: a rating of 1 or 2. **Complaints per 1,000 unit-days** divides by the unit-days
  on the version: distinct (unit, UTC day) pairs with a heartbeat reporting it in the period, or,
  without heartbeats, the units on it now × the days of the period.
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

from feedback.models import Feedback, Ticket

logger = logging.getLogger(__name__)

#: Rows the table holds at most (newest first); the trends use every row of the period.
PAGE_SIZE = 5000
#: Bootstrap resamples for the 95 % intervals (percentile method; seed fixed so figures are stable).
N_BOOT = 2000
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
                 "tts_version", "version", "day", "defect")


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
    ``version_kind`` version, ``defect`` corrected|repeated|cancelled."""
    unit = _unit_table()
    vcol = {"stt": Feedback.stt_version, "qa": Feedback.qa_version, "tts": Feedback.tts_version}[q.version_kind]
    stmt = (select(Feedback.id, Feedback.submitted_at, unit.serial, unit.site, unit.hardware_rev,
                   Feedback.household_id, Feedback.feature, Feedback.intent, Feedback.rating, Feedback.text,
                   Feedback.corrected, Feedback.repeated, Feedback.cancelled, Feedback.stt_version,
                   Feedback.qa_version, Feedback.tts_version)
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
    df = pd.DataFrame(rows, columns=list(FRAME_COLUMNS[:16]))
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
    """Per UTC day: ``n``, ``csat`` (share of ratings 4–5) and ``correction_rate`` (0–1)."""
    if not len(df):
        return pd.DataFrame(columns=["n", "csat", "correction_rate"])
    g = df.assign(sat=df["rating"] >= 4).groupby("day")
    return pd.DataFrame({"n": g["id"].count(), "csat": g["sat"].mean(),
                         "correction_rate": g["defect"].mean()}).sort_index()


def bootstrap_rate_ci(successes: int, n: int, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of a proportion ``successes / n``.

    Resampling n Bernoulli outcomes with replacement draws the resampled count from
    Binomial(n, p̂); that is what this does, without materialising the rows. (nan, nan) for n = 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rates = rng.binomial(n, successes / n, size=n_boot) / n
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return float(lo), float(hi)


def unit_days(session: Any, kind: str, since: datetime, until: datetime) -> tuple[dict[str, float], str]:
    """Unit-days per version of ``kind`` in [since, until): distinct (unit, UTC day) pairs with a
    heartbeat reporting the version; without heartbeats, units on it now × days. Returns the
    mapping and how it was counted (``"heartbeats"`` or ``"current units"``)."""
    from fleet.models import Heartbeat

    unit = _unit_table()
    hb_col = getattr(Heartbeat, f"{kind}_version")
    day = func.date(Heartbeat.received_at)
    pairs = (select(Heartbeat.unit_id, day.label("d"), hb_col.label("v"))
             .where(Heartbeat.received_at >= since, Heartbeat.received_at < until, hb_col.is_not(None))
             .group_by(Heartbeat.unit_id, day, hb_col).subquery())
    counted = session.execute(select(pairs.c.v, func.count()).group_by(pairs.c.v)).all()
    if counted:
        return {v: float(n) for v, n in counted}, "heartbeats"
    days = max(1.0, (until - since).total_seconds() / 86400)
    ucol = getattr(unit, f"{kind}_version")
    current = session.execute(select(ucol, func.count()).where(ucol.is_not(None)).group_by(ucol)).all()
    return {v: n * days for v, n in current}, "current units"


def offline_figures(session: Any, kind: str) -> dict[str, dict[str, Any]]:
    """Per version of ``kind``: the registry's offline evaluation (:data:`OFFLINE_KEYS`) and gate."""
    from fleet.models import ModelVersion

    out: dict[str, dict[str, Any]] = {}
    for mv in session.execute(select(ModelVersion).where(ModelVersion.kind == kind)).scalars():
        ev = mv.evaluation or {}
        summary = ev.get("summary", ev) if isinstance(ev, dict) else {}
        out[mv.version] = {key: summary.get(key) for key, _ in OFFLINE_KEYS}
        out[mv.version]["evaluation_passed"] = mv.evaluation_passed
    return out


def version_comparison(df: pd.DataFrame, days: dict[str, float], offline: dict[str, dict[str, Any]],
                       n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per model version seen in the feedback or the registry: ``version``, ``n``,
    ``corrections``, ``correction_rate`` with ``ci_low``/``ci_high`` (bootstrap 95 %), ``csat``,
    ``complaints`` (ratings 1–2), ``unit_days``, ``complaints_per_1000_unit_days`` and the offline
    figures (``wer``, ``intent_accuracy``, ``answer_accuracy``, ``evaluation_passed``)."""
    versions = sorted(set(df["version"].dropna().astype(str)) | set(offline)) if len(df) else sorted(offline)
    out = []
    for v in versions:
        part = df[df["version"] == v] if len(df) else df
        n = int(len(part))
        k = int(part["defect"].sum()) if n else 0
        lo, hi = bootstrap_rate_ci(k, n, n_boot)
        complaints = int((part["rating"] <= 2).sum()) if n else 0
        ud = days.get(v)
        off = offline.get(v, {})
        out.append({"version": v, "n": n, "corrections": k, "correction_rate": k / n if n else None,
                    "ci_low": lo if n else None, "ci_high": hi if n else None,
                    "csat": float((part["rating"] >= 4).mean()) if n else None, "complaints": complaints,
                    "unit_days": ud, "complaints_per_1000_unit_days": complaints / ud * 1000 if ud else None,
                    **{key: off.get(key) for key, _ in OFFLINE_KEYS}, "evaluation_passed": off.get("evaluation_passed")})
    return pd.DataFrame(out)


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
    for k in ("rating", "id"):
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
        days, basis = unit_days(session, q.version_kind, q.since, now)
        offline = offline_figures(session, q.version_kind)
        open_complaints = int(session.execute(select(func.count()).select_from(Ticket).where(
            Ticket.origin == "feedback", Ticket.state.in_(OPEN_STATES))).scalar_one())
        options = _options(session, q.since)
    shown = drill(df, q)
    rows = tuple(_row_dict(r) for r in shown.head(PAGE_SIZE).to_dict("records"))
    n = len(df)
    figures = {"feedback": n, "csat": float((df["rating"] >= 4).mean()) if n else None,
               "correction_rate": float(df["defect"].mean()) if n else None, "open_complaints": open_complaints,
               "unit_days_basis": basis}
    return FeedbackLoad(q, rows, len(shown), daily_volume(df, q.series_by), daily_rates(df),
                        version_comparison(df, days, offline, n_boot), figures, options, now)


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
