"""Feedback ingestion: CSV/JSONL files, the app endpoint and the simulator, through one validator.

Interchange format (a contract, documented in ``docs/feedback.md``): CSV with a header row, or
JSON Lines, with the fields ``unit_serial``, ``household_id``, ``submitted_at`` (ISO 8601 with an
offset), ``feature``, ``intent``, ``rating`` (1–5), ``text``, ``corrected`` (true/false) and
``submission_id`` (optional). Also accepted: ``repeated``, ``cancelled`` (true/false) and
``stt_version``/``qa_version``/``tts_version`` (else looked up from the unit's heartbeats at
``submitted_at``, else the unit's current versions).

Every row is validated on its own. A bad row is reported (line, field, what was wrong, what to do)
and the others go on; a duplicate (same ``submission_id``, or — without one — the same unit,
household, time, rating and text) is kept once, within a file and across imports (a unique index
and ``INSERT … ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL alike). Text longer than
:data:`MAX_TEXT_CHARS` is truncated (with a warning); more than :data:`RATE_LIMIT_PER_HOUR`
rows of one household in one hour of ``submitted_at`` are rejected as a flood.

Encodings of files: UTF-8 with a byte-order mark, UTF-8, cp949 (Korean Windows), Latin-1 — tried
in that order; cp949 is taken only when its decoding reads as Korean (most non-ASCII characters
Hangul), else Latin-1, which decodes any bytes.

Speed (1,000,000 rows; figures in ``docs/feedback.md``): well-formed rows take a cached fast path
(:mod:`feedback.fastpath`, same records, anything unusual goes through :func:`validate_record`);
PostgreSQL rows are COPYed into a stage and merged while the next chunk is validated
(:mod:`feedback.pgstage`); SQLite rows go through one Core ``executemany`` per chunk.
"""

from __future__ import annotations

import bisect
import codecs
import getpass
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session

from feedback.errors import FeedbackFormatError
from feedback.fastpath import FastValidator
from feedback.pgstage import PgStage
from feedback.readers import (KNOWN_FIELDS, OPTIONAL_FIELDS, REQUIRED_FIELDS, Record, RowError, csv_records,
                              detect_encoding, detect_format, jsonl_records)
from feedback.models import FEATURES, Feedback, FeedbackImport
from feedback.privacy import redact
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

__all__ = ["KNOWN_FIELDS", "OPTIONAL_FIELDS", "REQUIRED_FIELDS", "ImportReport", "Ingestor", "Record", "RowError",
           "detect_encoding", "import_file", "ingest_records", "load_units", "validate_record"]

#: Longest free text stored, characters (longer text is truncated, with a warning in the report).
MAX_TEXT_CHARS = 2000
#: Most rows one household may submit within one clock hour of ``submitted_at`` (per file or request).
RATE_LIMIT_PER_HOUR = 30
#: A ``submitted_at`` later than the server clock plus this is refused (clock skew allowance).
FUTURE_TOLERANCE = timedelta(minutes=5)
#: Rows per bulk insert.
CHUNK_ROWS = 5000
#: Rows per PostgreSQL COPY + merge (:mod:`feedback.pgstage`; fewer, larger merges overlap better).
PG_CHUNK_ROWS = 20_000
#: SQLite page cache during an import, KiB (index updates of 1,000,000 rows thrash the 2 MB default).
SQLITE_IMPORT_CACHE_KIB = 131072
#: Errors kept in a report (all are counted).
MAX_REPORTED_ERRORS = 10_000

_HOUSEHOLD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")
_PHONE_LIKE = re.compile(r"^\+?[\d\s().\-]{7,}$")
_INTENT_RE = re.compile(r"^[a-z]+(\.[a-z_]+)?$")
_NO_VERSIONS = (None, None, None)
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}


@dataclass
class ImportReport:
    """What an import did. ``rejected`` counts rows; ``errors`` lists problems (several per row possible)."""

    origin: str
    source: str
    import_id: int | None = None
    format: str | None = None
    encoding: str | None = None
    rows_total: int = 0
    imported: int = 0
    duplicates_in_file: int = 0
    duplicates_existing: int = 0
    rejected: int = 0
    text_withheld: int = 0
    redactions: int = 0
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    #: Submission ids stored by this import (only kept for small batches: the endpoint's answer).
    imported_ids: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.duplicates_in_file + self.duplicates_existing

    def as_dict(self) -> dict[str, Any]:
        return {"import_id": self.import_id, "origin": self.origin, "source": self.source, "format": self.format,
                "encoding": self.encoding, "rows_total": self.rows_total, "imported": self.imported,
                "duplicates_in_file": self.duplicates_in_file, "duplicates_existing": self.duplicates_existing,
                "rejected": self.rejected, "text_withheld": self.text_withheld, "redactions": self.redactions,
                "errors": [e.as_dict() for e in self.errors], "warnings": [w.as_dict() for w in self.warnings]}


# -- validation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitInfo:
    id: int
    consent_text: bool
    versions: tuple[str | None, str | None, str | None]


def load_units(session: Session) -> dict[str, UnitInfo]:
    """Serial → :class:`UnitInfo` of every unit (one query)."""
    from fleet.models import Unit

    rows = session.execute(select(Unit.serial, Unit.id, Unit.consent_feedback_text, Unit.stt_version,
                                  Unit.qa_version, Unit.tts_version))
    return {r[0]: UnitInfo(r[1], bool(r[2]), (r[3], r[4], r[5])) for r in rows}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean: use true or false")


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def content_hash(serial: str, household: str, submitted_at: datetime, rating: int, text: str | None) -> str:
    """De-duplication key of a row without ``submission_id``: ``h:`` + 32 hex of a SHA-256."""
    key = "\x1f".join((serial, household, submitted_at.isoformat(), str(rating), text or ""))
    return "h:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def household_ok(household: str) -> bool:
    """True if a (stripped, non-empty) household id passes :func:`validate_record`'s checks."""
    return not (_PHONE_LIKE.match(household) or "@" in household) and bool(_HOUSEHOLD_RE.match(household))


def intent_ok(intent: str, feature: str) -> bool:
    """True if a (stripped, lower-case, non-empty) intent is valid for a (valid) ``feature``."""
    return bool(_INTENT_RE.match(intent)) and len(intent) <= 64 and intent.split(".")[0] == feature


def validate_record(raw: dict[str, Any], line: int, now: datetime, units: dict[str, UnitInfo]
                    ) -> tuple[dict[str, Any] | None, list[RowError], list[RowError]]:
    """Check one raw row (strings from CSV, JSON values from JSONL or the endpoint).

    Returns
    -------
    (record or None, errors, warnings)
        ``record`` holds the cleaned fields (``unit``, ``serial``, ``household_id``, ``submitted_at``
        aware UTC, ``feature``, ``intent``, ``rating``, ``text`` before consent/redaction, flags,
        ``versions`` tuple, ``submission_id``); None when any error was found.
    """
    errors: list[RowError] = []
    warnings: list[RowError] = []

    def bad(fld: str, msg: str) -> None:
        errors.append(RowError(line, fld, msg))

    serial = _opt_str(raw.get("unit_serial"))
    unit = None
    if serial is None:
        bad("unit_serial", "missing: give the serial of the unit the feedback is about")
    else:
        unit = units.get(serial)
        if unit is None:
            bad("unit_serial", f"unknown unit {serial!r}: import the unit first (speakerops units import) "
                               "or correct the serial")
    household = _opt_str(raw.get("household_id"))
    if household is None:
        bad("household_id", "missing: give the app's pseudonymous household id")
    elif _PHONE_LIKE.match(household) or "@" in household:
        bad("household_id", "looks like a phone number or e-mail address: send the app's pseudonymous id instead")
    elif not _HOUSEHOLD_RE.match(household):
        bad("household_id", f"{household[:40]!r} is not 1–64 letters, digits, '.', '_', ':' or '-'")
    submitted_at = None
    ts_raw = _opt_str(raw.get("submitted_at"))
    if ts_raw is None:
        bad("submitted_at", "missing: give ISO 8601 time with an offset, e.g. 2026-11-21T09:30:00+09:00")
    else:
        try:
            ts = datetime.fromisoformat(ts_raw)
        except ValueError:
            bad("submitted_at", f"{ts_raw[:40]!r} is not ISO 8601; write e.g. 2026-11-21T09:30:00+09:00")
        else:
            if ts.tzinfo is None or ts.utcoffset() is None:
                bad("submitted_at", f"{ts_raw!r} has no offset; add one (+09:00, Z) so the time is not a guess")
            else:
                submitted_at = ts.astimezone(now.tzinfo)
                if submitted_at > now + FUTURE_TOLERANCE:
                    bad("submitted_at", f"{ts_raw!r} is in the future (server time {now.isoformat(timespec='seconds')});"
                                        " check the clock of the app or of the export")
                    submitted_at = None
    feature = _opt_str(raw.get("feature"))
    if feature is None:
        bad("feature", f"missing: one of {', '.join(FEATURES)}")
    else:
        feature = feature.lower()
        if feature not in FEATURES:
            bad("feature", f"{feature[:30]!r} is not one of {', '.join(FEATURES)}")
            feature = None
    intent = _opt_str(raw.get("intent"))
    if intent is not None:
        intent = intent.lower()
        if not _INTENT_RE.match(intent) or len(intent) > 64:
            bad("intent", f"{intent[:40]!r} is not <feature>.<action>, e.g. weather.forecast")
        elif feature is not None and intent.split(".")[0] != feature:
            bad("intent", f"{intent!r} does not belong to feature {feature!r}: use {feature}.<action>")
    rating_raw = raw.get("rating")
    rating = None
    try:
        if isinstance(rating_raw, bool):
            raise ValueError
        if isinstance(rating_raw, float):
            if not rating_raw.is_integer():
                raise ValueError
            rating_raw = int(rating_raw)
        rating = int(str(rating_raw).strip()) if not isinstance(rating_raw, int) else rating_raw
    except (TypeError, ValueError):
        bad("rating", f"{str(rating_raw)[:20]!r} is not a whole number: give 1 (worst) to 5 (best)")
    else:
        if not 1 <= rating <= 5:
            bad("rating", f"{rating} is out of range: give 1 (worst) to 5 (best)")
            rating = None
    text_raw = raw.get("text")
    text = None
    if text_raw is not None and not isinstance(text_raw, str):
        bad("text", f"a JSON {type(text_raw).__name__}, not a string: send the text as a string or null")
    elif text_raw is not None and text_raw.strip():
        text = text_raw.strip()
    flags = {}
    for name in ("corrected", "repeated", "cancelled"):
        try:
            flags[name] = _bool(raw.get(name))
        except ValueError as exc:
            bad(name, str(exc))
    submission_id = _opt_str(raw.get("submission_id"))
    if submission_id is not None and len(submission_id) > 128:
        bad("submission_id", f"is {len(submission_id)} characters long; at most 128")
    versions = []
    for kind in ("stt", "qa", "tts"):
        v = _opt_str(raw.get(f"{kind}_version"))
        if v is not None and len(v) > 64:
            bad(f"{kind}_version", "longer than 64 characters")
            v = None
        versions.append(v)
    if errors:
        return None, errors, warnings
    assert serial is not None and household is not None and submitted_at is not None and rating is not None
    if submission_id is None:
        submission_id = content_hash(serial, household, submitted_at, rating, text)
    if text is not None and len(text) > MAX_TEXT_CHARS:
        warnings.append(RowError(line, "text", f"{len(text):,} characters truncated to {MAX_TEXT_CHARS:,}"))
        text = text[:MAX_TEXT_CHARS]
    return ({"unit": unit, "serial": serial, "household_id": household, "submitted_at": submitted_at,
             "feature": feature, "intent": intent, "rating": rating, "text": text, **flags,
             "versions": tuple(versions), "submission_id": submission_id}, errors, warnings)


# -- model versions at a time -----------------------------------------------------------------------
class VersionLookup:
    """The (stt, qa, tts) versions a unit ran at a time, from its heartbeats.

    Few lookups query the unit's last heartbeat at or before the time (indexed). Many (a bulk
    import) first load every unit's version *change points* with one window query (``LAG`` over
    heartbeats per unit), then bisect in memory. Before a unit's first heartbeat there is no
    history: the caller falls back to the unit's current versions.
    """

    BULK_AFTER = 200

    def __init__(self, session: Session, before_query: Callable[[], None] | None = None) -> None:
        self.session = session
        self.before_query = before_query  # the PostgreSQL import waits for its merge in flight here
        self.calls = 0
        self._history: dict[int, tuple[list[float], list[tuple[str | None, ...]]]] | None = None

    def _load(self) -> None:
        from fleet.models import Heartbeat as H

        w = {"partition_by": H.unit_id, "order_by": H.received_at}
        inner = select(H.unit_id, H.received_at, H.stt_version, H.qa_version, H.tts_version,
                       func.lag(H.stt_version).over(**w).label("p_stt"),
                       func.lag(H.qa_version).over(**w).label("p_qa"),
                       func.lag(H.tts_version).over(**w).label("p_tts"),
                       func.row_number().over(**w).label("rn")).subquery()
        c = inner.c
        stmt = (select(c.unit_id, c.received_at, c.stt_version, c.qa_version, c.tts_version)
                .where(or_(c.rn == 1, c.p_stt.is_distinct_from(c.stt_version),
                           c.p_qa.is_distinct_from(c.qa_version), c.p_tts.is_distinct_from(c.tts_version)))
                .order_by(c.unit_id, c.received_at))
        history: dict[int, tuple[list[float], list[tuple[str | None, ...]]]] = {}
        for unit_id, at, stt, qa, tts in self.session.execute(stmt):
            times, vers = history.setdefault(unit_id, ([], []))
            times.append(at.timestamp())
            vers.append((stt, qa, tts))
        self._history = history

    def at(self, unit_id: int, when: datetime) -> tuple[str | None, ...] | None:
        """Versions of ``unit_id`` at ``when``, or None before its first heartbeat."""
        self.calls += 1
        if self._history is None and self.before_query is not None:
            self.before_query()
        if self._history is None and self.calls > self.BULK_AFTER:
            self._load()
        if self._history is None:
            from fleet.models import Heartbeat as H

            row = self.session.execute(
                select(H.stt_version, H.qa_version, H.tts_version)
                .where(and_(H.unit_id == unit_id, H.received_at <= when))
                .order_by(H.received_at.desc()).limit(1)).first()
            return tuple(row) if row else None
        entry = self._history.get(unit_id)
        if not entry:
            return None
        i = bisect.bisect_right(entry[0], when.timestamp()) - 1
        return entry[1][i] if i >= 0 else None


# -- the ingestor -----------------------------------------------------------------------------------
def _dialect_insert(session: Session):
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"feedback ingest supports SQLite and PostgreSQL, not {name}")
    return insert


class Ingestor:
    """Validates, de-duplicates, rate-limits, redacts and bulk-inserts feedback rows of one batch.

    Use :func:`import_file` or :func:`ingest_records`; this class is their shared engine.
    """

    def __init__(self, session: Session, clock: Clock, *, source: str, origin: str,
                 rate_limit_per_hour: int | None = RATE_LIMIT_PER_HOUR, units: dict[str, UnitInfo] | None = None,
                 keep_ids: bool = False, actor: str | None = None) -> None:
        self.session = session
        self.now = clock()
        self.units = units if units is not None else load_units(session)
        self.rate_limit = rate_limit_per_hour
        self.keep_ids = keep_ids
        self.report = ImportReport(origin=origin, source=source)
        self.batch = FeedbackImport(source=source, origin=origin[:255], started_at=self.now,
                                    actor=actor or _os_user())
        session.add(self.batch)
        session.flush()
        self.report.import_id = self._batch_id = self.batch.id
        self._source = source
        self._fast = FastValidator({k: v for k, v in self.units.items() if k == k.strip()}, self.now,
                                   future_tolerance=FUTURE_TOLERANCE, max_text_chars=MAX_TEXT_CHARS,
                                   content_hash=content_hash, household_ok=household_ok, intent_ok=intent_ok)
        self._seen: dict[str, int] = {}
        self._per_hour: dict[tuple[str, int], int] = {}
        self._buffer: list[dict[str, Any]] = []
        self._queued = 0
        insert = _dialect_insert(session)(Feedback.__table__).on_conflict_do_nothing(index_elements=["submission_id"])
        # RETURNING only where the caller needs the ids (the endpoint): a plain executemany is faster.
        self._insert = insert.returning(Feedback.__table__.c.submission_id) if keep_ids else insert
        self._sqlite = session.get_bind().dialect.name == "sqlite"
        self._pg = session.get_bind().dialect.name == "postgresql"
        # PostgreSQL: COPY into a stage, merged while the next chunk is validated (feedback.pgstage).
        self._stage = PgStage(session, {"received_at": self.now, "source": source, "import_id": self._batch_id}) \
            if self._pg and not keep_ids else None
        self.versions = VersionLookup(session, self._stage.wait if self._stage is not None else None)
        if self._sqlite:  # a bigger page cache for the index updates of a bulk import (default 2 MB)
            session.execute(text(f"PRAGMA cache_size=-{SQLITE_IMPORT_CACHE_KIB}"))

    def _reject(self, errors: list[RowError]) -> None:
        self.report.rejected += 1
        room = MAX_REPORTED_ERRORS - len(self.report.errors)
        if room > 0:
            self.report.errors.extend(errors[:room])

    def add(self, line: int, raw: dict[str, Any] | RowError) -> None:
        """Validate one row and queue it for insertion (or report it)."""
        self.report.rows_total += 1
        if isinstance(raw, RowError):
            self._reject([raw])
            return
        rec = self._fast(raw)  # the well-formed majority; anything else gets the full checks and messages
        if rec is None:
            rec, errors, warnings = validate_record(raw, line, self.now, self.units)
        else:
            errors = warnings = []
        if warnings:
            self.report.warnings.extend(warnings[: max(0, MAX_REPORTED_ERRORS - len(self.report.warnings))])
        if rec is None:
            self._reject(errors)
            return
        sid = rec["submission_id"]
        first = self._seen.get(sid)
        if first is not None:
            self.report.duplicates_in_file += 1
            return
        self._seen[sid] = line
        if self.rate_limit is not None:
            key = (rec["household_id"], int(rec["submitted_at"].timestamp() // 3600))
            n = self._per_hour.get(key, 0) + 1
            self._per_hour[key] = n
            if n > self.rate_limit:
                hour = datetime.fromtimestamp(key[1] * 3600, tz=self.now.tzinfo)
                self._reject([RowError(line, "household_id",
                                       f"flood: more than {self.rate_limit} rows of household "
                                       f"{rec['household_id']!r} in the hour from {hour:%Y-%m-%d %H:00} UTC; "
                                       "check the app for a retry loop (the first rows were kept)")])
                return
        self._buffer.append(self._row(rec))
        if len(self._buffer) >= (CHUNK_ROWS if self._stage is None else PG_CHUNK_ROWS):
            self.flush()

    def _row(self, rec: dict[str, Any]) -> dict[str, Any]:
        unit: UnitInfo = rec["unit"]
        text = rec["text"]
        withheld = False
        n_red = 0
        if text is not None:
            if not unit.consent_text:
                text, withheld = None, True
                self.report.text_withheld += 1
            else:
                text, n_red = redact(text)
                self.report.redactions += n_red
        given = rec["versions"]
        if None not in given:
            versions, vsource = given, "given"
        else:
            found = self.versions.at(unit.id, rec["submitted_at"])
            base, vsource = (found, "heartbeat") if found is not None else (unit.versions, "unit")
            if given == _NO_VERSIONS:
                versions = base
            else:
                vsource = "given"
                versions = tuple(g if g is not None else b for g, b in zip(given, base))
        return {"unit_id": unit.id, "household_id": rec["household_id"], "submitted_at": rec["submitted_at"],
                "received_at": self.now, "feature": rec["feature"], "intent": rec["intent"],
                "rating": rec["rating"], "text": text, "redactions": n_red if n_red < 32767 else 32767,
                "text_withheld": withheld, "corrected": rec["corrected"], "repeated": rec["repeated"],
                "cancelled": rec["cancelled"], "stt_version": versions[0], "qa_version": versions[1],
                "tts_version": versions[2], "versions_source": vsource, "submission_id": rec["submission_id"],
                "source": self._source, "import_id": self._batch_id}

    def flush(self) -> None:
        """Insert the queued rows (``ON CONFLICT DO NOTHING`` on ``submission_id``)."""
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        self._queued += len(rows)
        if self._stage is not None:
            self._stage.write(rows)
            return
        result = self.session.execute(self._insert, rows)
        if self.keep_ids:
            self.report.imported_ids.extend(result.scalars().all())

    def close(self) -> None:
        """On an error path: end the PostgreSQL merge in flight (the caller rolls back)."""
        if self._stage is not None:
            self._stage.close()

    def finish(self, clock: Clock) -> ImportReport:
        """Flush, store the batch counts and audit the import; returns the report."""
        self.flush()
        if self._stage is not None:
            self._stage.finish()
        if self.keep_ids:
            self.report.imported = len(self.report.imported_ids)
        else:
            self.report.imported = int(self.session.execute(
                select(func.count()).select_from(Feedback).where(Feedback.import_id == self.batch.id)).scalar_one())
        self.report.duplicates_existing = self._queued - self.report.imported
        if self._sqlite:
            self.session.execute(text("PRAGMA cache_size=-2000"))
        b = self.batch
        b.finished_at = clock()
        b.rows_total, b.rows_imported = self.report.rows_total, self.report.imported
        b.rows_duplicate, b.rows_rejected = self.report.duplicates, self.report.rejected
        from speakerops import audit

        audit.record(self.session, "feedback.import", "feedback_import", b.id, after={
            "origin": b.origin, "source": b.source, "imported": b.rows_imported, "duplicates": b.rows_duplicate,
            "rejected": b.rows_rejected}, actor=b.actor, clock=clock)
        logger.info("feedback import %s (%s): %d imported, %d duplicates, %d rejected", b.id, b.origin,
                    b.rows_imported, b.rows_duplicate, b.rows_rejected)
        return self.report


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


Progress = Callable[[float, str], None]


def import_file(session: Session, path: Path, clock: Clock = utc_now, *, encoding: str | None = None,
                rate_limit_per_hour: int | None = RATE_LIMIT_PER_HOUR, source: str = "import",
                progress: Progress | None = None) -> ImportReport:
    """Import a CSV or JSONL feedback file (format in the module doc and ``docs/feedback.md``).

    Parameters
    ----------
    path
        ``.csv`` or ``.jsonl``/``.ndjson`` (else sniffed: a first line starting with ``{`` is JSONL).
    encoding
        Codec to use instead of detecting one (:func:`detect_encoding`).
    rate_limit_per_hour
        Rows per household per hour of ``submitted_at`` kept (None: no limit).
    progress
        Called with (fraction of the file's bytes read, message) every chunk.

    Returns
    -------
    ImportReport
        Counts and per-row errors; the caller commits (``with session_factory.begin()``).

    Raises
    ------
    FeedbackFormatError
        If the file is missing, empty of a header, or its header lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise FeedbackFormatError(f"{path} does not exist or is not a file; give the path of a .csv or .jsonl export")
    if encoding is None:
        encoding, sha = detect_encoding(path)
    else:
        try:
            codecs.lookup(encoding)
        except LookupError as exc:
            raise FeedbackFormatError(f"unknown encoding {encoding!r}; use utf-8, cp949 or latin-1") from exc
        _, sha = detect_encoding(path)
    fmt = detect_format(path, encoding)
    ing = Ingestor(session, clock, source=source, origin=path.name, rate_limit_per_hour=rate_limit_per_hour)
    ing.report.format, ing.report.encoding = fmt, encoding
    ing.batch.file_sha256, ing.batch.encoding = sha, encoding
    size = max(1, path.stat().st_size)
    try:
        with path.open("r", encoding=encoding, newline="" if fmt == "csv" else None, errors="strict") as f:
            records = csv_records(f, ing.report.warnings) if fmt == "csv" else jsonl_records(f)
            for i, (line, raw) in enumerate(records):
                ing.add(line, raw)
                if progress is not None and i % CHUNK_ROWS == CHUNK_ROWS - 1:
                    progress(min(1.0, f.buffer.tell() / size) if hasattr(f, "buffer") else 0.0,
                             f"{ing.report.rows_total:,} rows read")
        report = ing.finish(clock)
    except BaseException:
        ing.close()
        raise
    if progress is not None:
        progress(1.0, f"{report.imported:,} imported")
    return report


def ingest_records(session: Session, records: Iterable[dict[str, Any]], clock: Clock = utc_now, *,
                   source: str, origin: str, rate_limit_per_hour: int | None = RATE_LIMIT_PER_HOUR,
                   units: dict[str, UnitInfo] | None = None, keep_ids: bool = False,
                   actor: str | None = None, first_line: int = 1) -> ImportReport:
    """Validate and store records given as dicts (the endpoint, the simulator); lines count from
    ``first_line`` (the endpoint uses 0: item indexes). Same rules and report as :func:`import_file`."""
    ing = Ingestor(session, clock, source=source, origin=origin, rate_limit_per_hour=rate_limit_per_hour,
                   units=units, keep_ids=keep_ids, actor=actor)
    try:
        for i, raw in enumerate(records, start=first_line):
            if not isinstance(raw, dict):
                raw = RowError(i, "-", f"a JSON {type(raw).__name__} instead of an object")
            ing.add(i, raw)
        return ing.finish(clock)
    except BaseException:
        ing.close()
        raise
