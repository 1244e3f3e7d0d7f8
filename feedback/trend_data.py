"""Loading feedback, tickets, units and version history into pandas for the trends, with a cache
that refreshes incrementally, and the Feedback page's table and drill-down (see :mod:`feedback.trends`).

Each table is read with one query through the raw DB-API cursor (no ORM objects: 1,000,000 rows
load in seconds, not minutes); times come back as text (SQLite) or epoch seconds (PostgreSQL)
and are converted column-wise by pandas.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from feedback.models import Feedback

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("stt", "qa", "tts")
#: Feedback columns the trends load (no text, no household: the table view reads those per page).
FEEDBACK_COLUMNS: tuple[str, ...] = ("id", "unit_id", "submitted_at", "feature", "intent", "rating", "corrected",
                                     "repeated", "cancelled", "stt_version", "qa_version", "tts_version")
TICKET_COLUMNS: tuple[str, ...] = ("id", "state", "priority", "category", "assignee", "unit_id", "origin",
                                   "stt_version", "qa_version", "tts_version", "created_at", "updated_at",
                                   "first_response_at", "resolved_at", "closed_at", "response_target_s",
                                   "resolution_target_s", "resolution_elapsed_s", "resolution_running_since")
_TIME_COLUMNS = {"submitted_at", "created_at", "updated_at", "first_response_at", "resolved_at", "closed_at",
                 "resolution_running_since", "at"}
_CATEGORICAL = {"feature", "intent", "stt_version", "qa_version", "tts_version", "source", "state", "priority",
                "category", "assignee", "origin", "site", "hardware_rev"}


def offline_evaluations(session: Session) -> pd.DataFrame:
    """Offline figures per (kind, version) from the model registry, or an empty frame when the
    registry is not installed. Uses ``ModelVersion`` (``fleet.models``, else ``fleet.registry``) attributes ``kind``, ``version``
    and ``evaluation`` (a JSON dict; its numeric top-level entries and those of its ``summary``),
    and ``evaluation_passed`` as ``offline_evaluation_passed`` (True, False or None)."""
    try:
        from fleet.models import ModelVersion  # type: ignore[attr-defined]
    except ImportError:
        try:
            from fleet.registry import ModelVersion  # type: ignore[no-redef]
        except ImportError:
            return pd.DataFrame()
    from sqlalchemy import inspect

    table = getattr(ModelVersion, "__tablename__", None)
    if not table or not inspect(session.connection()).has_table(table):
        return pd.DataFrame()
    rows = []
    for mv in session.execute(select(ModelVersion)).scalars():
        ev = getattr(mv, "evaluation", None) or {}
        flat: dict[str, Any] = {}
        for src in (ev, ev.get("summary") if isinstance(ev.get("summary"), dict) else {}):
            flat.update({f"offline_{k}": v for k, v in src.items()
                         if isinstance(v, int | float) and not isinstance(v, bool)})
        flat["offline_evaluation_passed"] = getattr(mv, "evaluation_passed", None)  # the registry's gate
        rows.append({"kind": getattr(mv, "kind", None), "version": getattr(mv, "version", None), **flat})
    return pd.DataFrame(rows)


# -- loading --------------------------------------------------------------------------------------
def _select_sql(session: Session, table: str, columns: tuple[str, ...], where: str = "") -> tuple[str, str]:
    """Plain SQL of a column select, with the dialect's placeholder; times come back as text (SQLite)
    or epoch seconds (PostgreSQL) and are converted column-wise by pandas."""
    pg = session.get_bind().dialect.name == "postgresql"
    exprs = [f"EXTRACT(EPOCH FROM {c})::float8" if pg and c in _TIME_COLUMNS else c for c in columns]
    return f"SELECT {', '.join(exprs)} FROM {table}{' WHERE ' + where if where else ''}", "%s" if pg else "?"


def _fetch(session: Session, sql: str, params: tuple[Any, ...], columns: tuple[str, ...]) -> pd.DataFrame:
    cur = session.connection().connection.dbapi_connection.cursor()
    try:
        cur.execute(sql, params)
        rows = cur.fetchall()
    finally:
        cur.close()
    frame = pd.DataFrame.from_records(rows, columns=list(columns), nrows=len(rows))
    for c in columns:
        if c in _TIME_COLUMNS:
            col = frame[c]
            if col.dtype.kind in "fi":
                frame[c] = pd.to_datetime(col, unit="s", utc=True)
            else:
                frame[c] = pd.to_datetime(col, format="ISO8601", utc=True)
        elif c in _CATEGORICAL:
            frame[c] = frame[c].astype("category")
    for c in ("corrected", "repeated", "cancelled"):
        if c in frame:
            frame[c] = frame[c].astype(bool)
    if "rating" in frame:
        frame["rating"] = frame["rating"].astype(np.int8)
    return frame


def _time_param(session: Session, value: datetime) -> Any:
    """A time bound as the driver compares it: naive UTC ISO text on SQLite, aware on PostgreSQL."""
    if session.get_bind().dialect.name == "sqlite":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", timespec="microseconds")
    return value


def load_units(session: Session) -> pd.DataFrame:
    """Units: ``unit_id, serial, site, hardware_rev, created_at, stt_version, qa_version, tts_version``."""
    cols = ("id", "serial", "site", "hardware_rev", "created_at", "stt_version", "qa_version", "tts_version")
    sql, _ = _select_sql(session, "units", cols)
    frame = _fetch(session, sql, (), cols).rename(columns={"id": "unit_id"})
    return frame


def load_version_history(session: Session) -> pd.DataFrame:
    """Version change points per unit from the heartbeats: ``unit_id, at, stt_version, qa_version,
    tts_version`` (the first heartbeat of each unit and every heartbeat whose versions differ from the
    previous one), one window query."""
    from fleet.models import Heartbeat as H

    w = {"partition_by": H.unit_id, "order_by": H.received_at}
    inner = select(H.unit_id, H.received_at, H.stt_version, H.qa_version, H.tts_version,
                   func.lag(H.stt_version).over(**w).label("p_stt"), func.lag(H.qa_version).over(**w).label("p_qa"),
                   func.lag(H.tts_version).over(**w).label("p_tts"), func.row_number().over(**w).label("rn")).subquery()
    c = inner.c
    stmt = (select(c.unit_id, c.received_at, c.stt_version, c.qa_version, c.tts_version)
            .where(or_(c.rn == 1, c.p_stt.is_distinct_from(c.stt_version), c.p_qa.is_distinct_from(c.qa_version),
                       c.p_tts.is_distinct_from(c.tts_version))).order_by(c.unit_id, c.received_at))
    rows = session.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=["unit_id", "at", "stt_version", "qa_version", "tts_version"])
    frame["at"] = pd.to_datetime(frame["at"], utc=True)
    return frame


@dataclass
class TrendData:
    """What the trends are computed from (immutable snapshot; build a new one to change it)."""

    feedback: pd.DataFrame
    tickets: pd.DataFrame
    units: pd.DataFrame
    history: pd.DataFrame
    loaded_at: datetime
    max_feedback_id: int = 0
    feedback_count: int = 0
    offline: pd.DataFrame = field(default_factory=pd.DataFrame)


def _join_units(frame: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    if frame.empty and "site" in frame:
        return frame
    u = units[["unit_id", "site", "hardware_rev"]]
    if frame["unit_id"].dtype != u["unit_id"].dtype:  # tickets without units: None → nullable ints
        frame = frame.assign(unit_id=pd.to_numeric(frame["unit_id"]).astype("Int64"))
        u = u.assign(unit_id=u["unit_id"].astype("Int64"))
    return frame.merge(u, on="unit_id", how="left")


def load_feedback_frame(session: Session, since: datetime | None = None, after_id: int | None = None) -> pd.DataFrame:
    """Feedback without text as a DataFrame (:data:`FEEDBACK_COLUMNS`; times ``datetime64[us, UTC]``,
    versions/feature/intent categorical); ``since`` filters on ``submitted_at``, ``after_id`` on id
    (the incremental refresh: one plain query; a full load: :func:`_fetch_coded`)."""
    where, params = [], []
    ph = "%s" if session.get_bind().dialect.name == "postgresql" else "?"
    if since is not None:
        where.append(f"submitted_at >= {ph}")
        params.append(_time_param(session, since))
    if after_id is not None:
        where.append(f"id > {ph}")
        params.append(after_id)
    if after_id is not None:  # an incremental refresh: few rows, one plain query (no DISTINCT scans)
        sql, _ = _select_sql(session, "feedback", FEEDBACK_COLUMNS, " AND ".join(where))
        return _fetch(session, sql, tuple(params), FEEDBACK_COLUMNS)
    return _fetch_coded(session, "feedback", FEEDBACK_COLUMNS, " AND ".join(where), tuple(params))


def _fetch_coded(session: Session, table: str, columns: tuple[str, ...], where: str,
                 params: tuple[Any, ...]) -> pd.DataFrame:
    """Read NOT NULL integer, boolean and time columns and nullable text columns of ``table``
    mostly as integers, then build the frame column-wise in numpy.

    The database hands every value back as a Python object; a million rows of five text columns
    are five million new strings, then hashed again to make them categorical. Here each text
    column (:data:`_CATEGORICAL`) comes back as its code in its sorted distinct values (a
    ``CASE`` over the values a ``SELECT DISTINCT`` found; NULL → -1; small integers are shared
    objects in CPython) and booleans as 0/1, so the rows fill one int64 matrix (``np.fromiter``).
    Times: integer microseconds since the epoch from PostgreSQL; on SQLite (where they are text,
    ``speakerops.db.UTCDateTime``) the text, parsed by pandas (faster than SQLite's date
    functions). The cold load of 1,000,000 rows: see ``docs/feedback.md``.
    """
    pg = session.get_bind().dialect.name == "postgresql"
    ph = "%s" if pg else "?"
    cond = f" WHERE {where}" if where else ""
    as_text = [c for c in columns if c in _TIME_COLUMNS and not pg]
    as_int = [c for c in columns if c not in as_text]
    cur = session.connection().connection.dbapi_connection.cursor()
    try:
        values: dict[str, list[str]] = {}
        exprs, case_params = [], []
        for c in as_int:
            if c in _CATEGORICAL:
                cur.execute(f"SELECT DISTINCT {c} FROM {table}{cond}", params)
                values[c] = sorted(str(v) for (v,) in cur.fetchall() if v is not None)
                if values[c]:
                    exprs.append(f"CASE {c} " + " ".join(f"WHEN {ph} THEN {i}" for i in range(len(values[c])))
                                 + " ELSE -1 END")
                    case_params.extend(values[c])
                else:
                    exprs.append("-1")
            elif c in _TIME_COLUMNS:
                exprs.append(f"(EXTRACT(EPOCH FROM {c}) * 1000000)::int8")
            else:
                exprs.append(f"CAST({c} AS INTEGER)")
        cur.execute(f"SELECT {', '.join(exprs + as_text)} FROM {table}{cond}", (*case_params, *params))
        rows = cur.fetchall()
    finally:
        cur.close()
    k, n = len(as_int), len(rows)
    frame: dict[str, Any] = {c: pd.to_datetime([r[k + i] for r in rows], format="ISO8601", utc=True)
                             for i, c in enumerate(as_text)}
    ints = itertools.chain.from_iterable(r[:k] for r in rows) if as_text else itertools.chain.from_iterable(rows)
    matrix = np.fromiter(ints, dtype=np.int64, count=n * k).reshape(n, k)
    del rows
    for j, c in enumerate(as_int):
        col = matrix[:, j]
        if c in _CATEGORICAL:
            frame[c] = pd.Categorical.from_codes(col, categories=pd.Index(values[c], dtype=object).astype(str)
                                                 if values[c] else pd.Index([], dtype=str))
        elif c in _TIME_COLUMNS:
            frame[c] = pd.to_datetime(col, unit="us", utc=True)
        elif c in ("corrected", "repeated", "cancelled"):
            frame[c] = col.astype(bool)
        elif c == "rating":
            frame[c] = col.astype(np.int8)
        else:
            frame[c] = col.copy()
    return pd.DataFrame({c: frame[c] for c in columns})


def load_ticket_frame(session: Session, updated_since: datetime | None = None) -> pd.DataFrame:
    """Tickets (:data:`TICKET_COLUMNS`; those updated at or after ``updated_since``) as a DataFrame."""
    sql, ph = _select_sql(session, "tickets", TICKET_COLUMNS)
    if updated_since is None:
        return _fetch(session, sql, (), TICKET_COLUMNS)
    return _fetch(session, sql + f" WHERE updated_at >= {ph}", (_time_param(session, updated_since),), TICKET_COLUMNS)


class TrendCache:
    """Keeps a :class:`TrendData` and refreshes it incrementally.

    Feedback is append-only but for purge (text only: not loaded) and erasure (rows deleted): a
    refresh loads the rows above the last id it saw, and reloads everything when the row count
    shows that rows went away. Tickets are refreshed by ``updated_at`` (changed ones replace their
    old rows). The version history (a window query over the heartbeats, which a large fleet
    fills fast) is reloaded at most every ``history_ttl_s`` seconds; units every refresh.
    """

    def __init__(self, since: datetime | None = None, history_ttl_s: float = 600.0) -> None:
        self.since = since
        self.history_ttl_s = history_ttl_s
        self.data: TrendData | None = None
        self._history_at: datetime | None = None
        self._tickets_seen_at: datetime | None = None

    def refresh(self, session: Session, now: datetime) -> TrendData:
        """Bring the snapshot up to date and return it (a new :class:`TrendData`; the old one is
        left as it was, so a table showing it can keep doing so)."""
        count, max_id = session.execute(select(func.count(), func.coalesce(func.max(Feedback.id), 0))
                                        .select_from(Feedback)).one()
        units = load_units(session)
        old = self.data
        if old is not None and max_id >= old.max_feedback_id and self.since is None and \
                count - old.feedback_count == _count_after(session, old.max_feedback_id):
            new = load_feedback_frame(session, after_id=old.max_feedback_id)
            fb = old.feedback if new.empty else _concat(old.feedback, _prepare(_join_units(new, units)))
        else:
            fb = _prepare(_join_units(load_feedback_frame(session, since=self.since), units))
        if old is not None and self._tickets_seen_at is not None:
            changed = _join_units(load_ticket_frame(session, updated_since=self._tickets_seen_at), units)
            tickets = old.tickets if changed.empty else _concat(
                old.tickets[~old.tickets["id"].isin(changed["id"])], changed)
        else:
            tickets = _join_units(load_ticket_frame(session), units)
        self._tickets_seen_at = now - timedelta(seconds=60)  # overlap: late commits of earlier updates
        if old is None or self._history_at is None or (now - self._history_at).total_seconds() >= self.history_ttl_s:
            history, self._history_at = load_version_history(session), now
        else:
            history = old.history
        self.data = TrendData(feedback=fb, tickets=tickets, units=units, history=history, loaded_at=now,
                              max_feedback_id=int(max_id), feedback_count=int(count),
                              offline=offline_evaluations(session))
        return self.data


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the ``day`` column (days since the epoch, UTC) the aggregates group on."""
    frame["day"] = day_numbers(frame["submitted_at"]) if len(frame) else np.zeros(0, np.int64)
    return frame


def _concat(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Append ``new`` to ``old`` keeping categorical columns categorical (categories are united)."""
    new = new.copy()
    old_cols = {}
    for c in old.columns:
        if isinstance(old[c].dtype, pd.CategoricalDtype) and c in new:
            extra = pd.Index(new[c].dropna().astype(object).unique()).difference(old[c].cat.categories)
            cats = old[c].cat.categories.append(extra) if len(extra) else old[c].cat.categories
            old_cols[c] = old[c].cat.set_categories(cats) if len(extra) else old[c]
            new[c] = pd.Categorical(new[c].astype(object), categories=cats)
    if old_cols:
        old = old.assign(**old_cols)
    return pd.concat([old, new], ignore_index=True)


def _count_after(session: Session, after_id: int) -> int:
    return int(session.execute(select(func.count()).select_from(Feedback).where(Feedback.id > after_id)).scalar_one())


def load_trend_data(session: Session, now: datetime, since: datetime | None = None) -> TrendData:
    """One-shot load (no cache) of everything :func:`compute_trends` needs."""
    return TrendCache(since).refresh(session, now)



def feedback_table(session: Session, *, since: datetime | None = None, until: datetime | None = None,
                   feature: str | None = None, version: tuple[str, str] | None = None,
                   unit_serial: str | None = None, site: str | None = None, hardware_rev: str | None = None,
                   max_rating: int | None = None, with_text: bool | None = None, ids: list[int] | None = None,
                   limit: int = 10_000) -> pd.DataFrame:
    """The Feedback page's table: newest first, filtered, with text and the unit's serial/site/hw.

    ``version`` is ``(kind, version)``, e.g. ``("qa", "qa-2.1.0")``; ``ids`` selects rows a chart
    point drilled down to. Columns: id, submitted_at, serial, site, hardware_rev, household_id,
    feature, intent, rating, corrected, repeated, cancelled, text, stt/qa/tts_version, source.
    """
    from fleet.models import Unit

    cols = [Feedback.id, Feedback.submitted_at, Unit.serial, Unit.site, Unit.hardware_rev, Feedback.household_id,
            Feedback.feature, Feedback.intent, Feedback.rating, Feedback.corrected, Feedback.repeated,
            Feedback.cancelled, Feedback.text, Feedback.stt_version, Feedback.qa_version, Feedback.tts_version,
            Feedback.source]
    stmt = select(*cols).join(Unit, Unit.id == Feedback.unit_id)
    conds = []
    if since is not None:
        conds.append(Feedback.submitted_at >= since)
    if until is not None:
        conds.append(Feedback.submitted_at < until)
    if feature:
        conds.append(Feedback.feature == feature)
    if version:
        if version[0] not in KINDS:
            raise ValueError(f"unknown model kind {version[0]!r}: use stt, qa or tts")
        conds.append(getattr(Feedback, f"{version[0]}_version") == version[1])
    if unit_serial:
        conds.append(Unit.serial == unit_serial)
    if site:
        conds.append(Unit.site == site)
    if hardware_rev:
        conds.append(Unit.hardware_rev == hardware_rev)
    if max_rating is not None:
        conds.append(Feedback.rating <= max_rating)
    if with_text is not None:
        conds.append(Feedback.text.is_not(None) if with_text else Feedback.text.is_(None))
    if ids is not None:
        conds.append(Feedback.id.in_(ids))
    if conds:
        stmt = stmt.where(*conds)
    rows = session.execute(stmt.order_by(Feedback.submitted_at.desc(), Feedback.id.desc()).limit(limit)).all()
    frame = pd.DataFrame(rows, columns=[c.key for c in cols])
    frame["submitted_at"] = pd.to_datetime(frame["submitted_at"], utc=True)
    return frame


def drill_down_ids(frame: pd.DataFrame, period_start: datetime, freq: str = "D", **equals: Any) -> list[int]:
    """Feedback ids behind one chart point: the day (``freq="D"``) or ISO week (``"W"``) starting at
    ``period_start`` and column values ``equals`` (e.g. ``qa_version="qa-2.0.4"``) — pass them to
    :func:`feedback_table` ``ids=``."""
    if freq not in ("D", "W"):
        raise ValueError(f"unknown frequency {freq!r}: use 'D' (day) or 'W' (week)")
    day = day_numbers(frame["submitted_at"])
    if freq == "W":
        day = day - (day + 3) % 7
    target = int(np.datetime64(pd.Timestamp(period_start).tz_convert(UTC).tz_localize(None), "D").astype(np.int64))
    mask = day == target
    for col, value in equals.items():
        mask &= (frame[col].astype(object) == value).to_numpy()
    return frame.loc[mask, "id"].astype(int).tolist()


def day_numbers(times: pd.Series) -> np.ndarray:
    """Days since 1970-01-01 (UTC) of aware times, int64 (1970-01-01 was a Thursday)."""
    return times.dt.tz_convert(UTC).dt.tz_localize(None).to_numpy().astype("datetime64[D]").astype(np.int64)
