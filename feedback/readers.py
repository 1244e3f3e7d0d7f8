"""Reading feedback files: encoding detection (UTF-8 with BOM, UTF-8, cp949, Latin-1), CSV and JSON
Lines records with their line numbers, and the per-row problem type. See :mod:`feedback.ingest`."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import FeedbackFormatError

logger = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("unit_serial", "household_id", "submitted_at", "feature", "rating")
OPTIONAL_FIELDS: tuple[str, ...] = ("intent", "text", "corrected", "repeated", "cancelled", "submission_id",
                                    "stt_version", "qa_version", "tts_version")
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)


@dataclass(frozen=True)
class RowError:
    """One problem of one row: ``line`` (file line, or item index for requests), ``field`` and why."""

    line: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}



# -- reading files ----------------------------------------------------------------------------------
def _hangul_share(text: str) -> float:
    non_ascii = [c for c in text if ord(c) > 127]
    if not non_ascii:
        return 1.0
    return sum(1 for c in non_ascii if "\uac00" <= c <= "\ud7a3" or "\u3131" <= c <= "\u318e") / len(non_ascii)


def detect_encoding(path: Path) -> tuple[str, str]:
    """The encoding of a feedback file and the SHA-256 of its bytes.

    Order: UTF-8 with BOM, UTF-8, cp949 (accepted only if most non-ASCII characters decode to
    Hangul), Latin-1. Reads the file in 1 MiB chunks (streams; large files are fine).

    Returns
    -------
    (str, str)
        Python codec name (``utf-8-sig``, ``utf-8``, ``cp949`` or ``latin-1``) and hex SHA-256.
    """
    digest = hashlib.sha256()
    candidates = {"utf-8": codecs.getincrementaldecoder("utf-8")(), "cp949": codecs.getincrementaldecoder("cp949")()}
    alive = {"utf-8": True, "cp949": True}
    sample: list[str] = []
    first = b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if not first:
                first = chunk[:3]
            digest.update(chunk)
            for name, dec in candidates.items():
                if not alive[name]:
                    continue
                try:
                    text = dec.decode(chunk)
                    if name == "cp949" and not alive["utf-8"] and sum(map(len, sample)) < 200_000:
                        sample.append(text)
                except UnicodeDecodeError:
                    alive[name] = False
            if not alive["utf-8"] and not alive["cp949"]:
                digest.update(f.read())
                break
    for name, dec in candidates.items():
        if alive[name]:
            try:
                dec.decode(b"", final=True)
            except UnicodeDecodeError:
                alive[name] = False
    if first.startswith(codecs.BOM_UTF8) and alive["utf-8"]:
        return "utf-8-sig", digest.hexdigest()
    if alive["utf-8"]:
        return "utf-8", digest.hexdigest()
    if alive["cp949"] and _hangul_share("".join(sample)) >= 0.5:
        return "cp949", digest.hexdigest()
    return "latin-1", digest.hexdigest()


def detect_format(path: Path, encoding: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    with path.open(encoding=encoding, errors="replace") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "csv"


Record = tuple[int, dict[str, Any] | RowError]


def csv_records(f: io.TextIOBase, warnings: list[RowError]) -> Iterator[Record]:
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise FeedbackFormatError(f"line 1: the header cannot be read as CSV ({exc})") from exc
    header = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_FIELDS if c not in header]
    if missing:
        raise FeedbackFormatError(f"the header lacks the column(s) {', '.join(missing)}; the first line must name "
                                  f"the columns ({', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}), see docs/feedback.md")
    unknown = [h for h in header if h not in KNOWN_FIELDS]
    if unknown:
        warnings.append(RowError(1, ",".join(unknown), "unknown column(s) ignored; see docs/feedback.md"))
    width = len(header)
    last = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield last + 1, RowError(last + 1, "-", f"not valid CSV ({exc}); fix the quoting of this row")
            last = reader.line_num
            continue
        line = last + 1
        last = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:
            yield line, RowError(line, "-", f"has {len(row)} fields, the header has {width}: quote text that "
                                            "contains commas (\"like, this\") or fill empty fields")
            continue
        yield line, dict(zip(header, row))


def jsonl_records(f: io.TextIOBase) -> Iterator[Record]:
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, RowError(line_no, "-", f"not valid JSON ({exc.msg} at column {exc.colno}); "
                                                  "write one JSON object per line")
            continue
        if not isinstance(obj, dict):
            yield line_no, RowError(line_no, "-", f"a JSON {type(obj).__name__} instead of an object; "
                                                  "write one {...} object per line")
            continue
        yield line_no, obj
