"""Fleet inventory: import units from CSV or JSON, list them.

File formats (a contract, documented in ``docs/inventory.md``):

* **CSV** with a header row; columns as :data:`INVENTORY_COLUMNS` (``serial`` and ``agent_url``
  required, the rest optional); ``tags`` separated by ``;``; booleans ``true``/``false`` (also
  ``yes``/``no``/``1``/``0``). UTF-8, with or without a byte-order mark.
* **JSON**: an array of objects with the same fields (``tags`` as an array or a ``;`` string), or
  **JSON Lines** (``.jsonl``): one object per line.

Each row is validated on its own: a bad row is reported with its line number and the reason and
the good rows are imported. A serial already in the database is updated (its inventory fields;
its collected state is kept); a serial repeated within one file is rejected after its first row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.errors import InventoryFormatError
from fleet.models import Unit
from speakerops.timeutil import Clock

logger = logging.getLogger(__name__)

INVENTORY_COLUMNS: tuple[str, ...] = (
    "serial", "hardware_rev", "site", "region", "timezone", "agent_url", "ssh_host", "ssh_port",
    "ssh_user", "firmware_version", "stt_version", "qa_version", "tts_version", "tags",
    "consent_recordings", "consent_feedback_text",
)

_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}


class UnitRecord(BaseModel):
    """One validated inventory row."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    serial: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    agent_url: str = Field(min_length=1, max_length=255)
    hardware_rev: str = Field("", max_length=32)
    site: str = Field("", max_length=64)
    region: str = Field("", max_length=64)
    timezone: str = Field("UTC", max_length=64)
    ssh_host: str | None = Field(None, max_length=255)
    ssh_port: int | None = Field(None, ge=1, le=65535)
    ssh_user: str | None = Field(None, max_length=64)
    firmware_version: str | None = Field(None, max_length=32)
    stt_version: str | None = Field(None, max_length=64)
    qa_version: str | None = Field(None, max_length=64)
    tts_version: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list)
    consent_recordings: bool = False
    consent_feedback_text: bool = False

    @field_validator("ssh_host", "ssh_port", "ssh_user", "firmware_version", "stt_version",
                     "qa_version", "tts_version", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("timezone", mode="before")
    @classmethod
    def _zone(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return "UTC"
        try:
            ZoneInfo(str(value).strip())
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Asia/Seoul") from exc
        return str(value).strip()

    @field_validator("agent_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL such as http://10.0.0.5:8080")
        try:
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{value!r} has an invalid port") from exc
        return value.rstrip("/")

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [t.strip() for t in value.split(";") if t.strip()]
        return value

    @field_validator("consent_recordings", "consent_feedback_text", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{value!r} is not a boolean: use true or false")


@dataclass(frozen=True)
class RowError:
    """A rejected row: its line in the file (1 = the first line), serial if known, and why."""

    line: int
    serial: str | None
    message: str


@dataclass
class ImportReport:
    """What an import did; ``errors`` lists every rejected row."""

    source: str
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.created + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "created": self.created, "updated": self.updated,
                "rejected": len(self.errors),
                "errors": [{"line": e.line, "serial": e.serial, "message": e.message} for e in self.errors]}


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InventoryFormatError(f"inventory file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise InventoryFormatError(f"{path} is a directory; give an inventory .csv, .json or .jsonl file") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryFormatError(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and import again") from exc


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]] | RowError]:
    """Yield ``(line, fields)`` per row of an inventory file, or a :class:`RowError` for a row
    that cannot even be parsed.

    Raises
    ------
    InventoryFormatError
        If the file is missing, not UTF-8, or in no known format.
    """
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and not text.lstrip().startswith("[")):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RowError(lineno, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                yield RowError(lineno, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield lineno, obj
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InventoryFormatError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        for index, obj in enumerate(data, start=1):
            if not isinstance(obj, dict):
                yield RowError(index, None, f"item {index}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield index, obj
    elif suffix in (".csv", ".txt", ""):
        reader = csv.DictReader(io.StringIO(text, newline=""), restkey="__extra__")
        if not reader.fieldnames:
            raise InventoryFormatError(f"{path} is empty: expected a header row with {', '.join(INVENTORY_COLUMNS)}")
        header = [h.strip() for h in reader.fieldnames]
        unknown = [h for h in header if h not in INVENTORY_COLUMNS]
        missing = [h for h in ("serial", "agent_url") if h not in header]
        if missing:
            raise InventoryFormatError(
                f"{path} header lacks required column(s) {', '.join(missing)}; columns are {', '.join(INVENTORY_COLUMNS)}")
        if unknown:
            raise InventoryFormatError(
                f"{path} header has unknown column(s) {', '.join(unknown)}; columns are {', '.join(INVENTORY_COLUMNS)}")
        reader.fieldnames = header
        for row in reader:
            lineno = reader.line_num
            if row.get("__extra__"):
                yield RowError(lineno, row.get("serial"), f"{len(header) + len(row['__extra__'])} fields, "
                               f"the header has {len(header)}")
                continue
            if any(v is None for v in row.values()):
                yield RowError(lineno, row.get("serial"), f"fewer fields than the header's {len(header)}")
                continue
            yield lineno, row
    else:
        raise InventoryFormatError(f"{path}: unknown inventory format {suffix!r}; use .csv, .json or .jsonl")


def import_units(session: Session, path: Path, clock: Clock) -> ImportReport:
    """Validate every row of ``path`` and create or update the good ones (by serial).

    The caller's unit of work commits. A row that fails validation, or repeats a serial seen
    earlier in the file, goes to ``ImportReport.errors`` with its line number and reason.

    Raises
    ------
    InventoryFormatError
        If the file as a whole cannot be read (see :func:`read_rows`); nothing is imported.
    """
    report = ImportReport(source=str(path))
    records: dict[str, tuple[int, UnitRecord]] = {}
    for item in read_rows(Path(path)):
        if isinstance(item, RowError):
            report.errors.append(item)
            continue
        lineno, fields = item
        try:
            record = UnitRecord.model_validate(fields)
        except ValidationError as exc:
            serial = fields.get("serial") if isinstance(fields.get("serial"), str) else None
            report.errors.append(RowError(lineno, serial, _describe(exc)))
            continue
        if record.serial in records:
            first = records[record.serial][0]
            report.errors.append(RowError(lineno, record.serial,
                                          f"duplicate serial {record.serial}: first given on line {first}; row skipped"))
            continue
        records[record.serial] = (lineno, record)

    if not records:
        return report
    now = clock()
    existing = {u.serial: u for u in session.scalars(select(Unit).where(Unit.serial.in_(list(records))))}
    for serial, (_, record) in records.items():
        values = record.model_dump()
        unit = existing.get(serial)
        if unit is None:
            session.add(Unit(**values, status="unknown", poll_failures=0, created_at=now, updated_at=now))
            report.created += 1
        else:
            for key, value in values.items():
                setattr(unit, key, value)
            unit.updated_at = now
            report.updated += 1
    session.flush()
    logger.info("imported %s: %d created, %d updated, %d rejected",
                path, report.created, report.updated, len(report.errors))
    return report


def list_units(session: Session, status: str | None = None, site: str | None = None) -> list[Unit]:
    """Units ordered by serial, optionally of one status and/or site."""
    stmt = select(Unit).order_by(Unit.serial)
    if status:
        stmt = stmt.where(Unit.status == status)
    if site:
        stmt = stmt.where(Unit.site == site)
    return list(session.scalars(stmt))


def unit_summary(unit: Unit) -> dict[str, Any]:
    """A unit as plain JSON-able data (the ``units list --json`` row)."""
    return {
        "serial": unit.serial, "status": unit.status, "hardware_rev": unit.hardware_rev, "site": unit.site,
        "region": unit.region, "timezone": unit.timezone, "agent_url": unit.agent_url,
        "ssh_host": unit.ssh_host, "ssh_port": unit.ssh_port, "ssh_user": unit.ssh_user,
        "firmware_version": unit.firmware_version, "models": unit.model_versions(), "tags": list(unit.tags or []),
        "consent_recordings": unit.consent_recordings, "consent_feedback_text": unit.consent_feedback_text,
        "last_heartbeat_at": unit.last_heartbeat_at.isoformat() if unit.last_heartbeat_at else None,
        "last_poll_error": unit.last_poll_error,
    }
