"""Feedback import speed: write a CSV of N rows (default 1,000,000) for 10,000 units, import it.

Target (issue #6): 1,000,000 rows in <= 60 s. Prints rows/s, the time of a second import of the
same file (every row a duplicate), and the database used.

    .venv/bin/python benchmarks/feedback_import.py [--rows N] [--units U] [--db-url URL]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select

from feedback.ingest import import_file
from feedback.models import Feedback
from fleet.models import Unit
from speakerops.db import make_engine, make_session_factory, upgrade

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
FEATURES = ("weather", "news", "schedule", "music", "qa", "none")
INTENTS = {"weather": "weather.forecast", "news": "news.read", "schedule": "schedule.add", "music": "music.play",
           "qa": "qa.capital", "none": ""}
TEXTS = ("it did not understand me", "wrong city for the weather", "great, thanks",
         "played the wrong song, call me at 010-1234-5678", "", "", "", "")


def write_csv(path: Path, rows: int, units: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    unit = rng.integers(1, units + 1, rows)
    secs = rng.integers(0, 90 * 86400, rows)
    feat = rng.integers(0, len(FEATURES), rows)
    rating = rng.integers(1, 6, rows)
    corrected = rng.random(rows) < 0.1
    text = rng.integers(0, len(TEXTS), rows)
    base = NOW - timedelta(days=90)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["unit_serial", "household_id", "submitted_at", "feature", "intent", "rating", "text",
                    "corrected", "submission_id"])
        for i in range(rows):
            fe = FEATURES[feat[i]]
            w.writerow([f"SPK-{unit[i]:06d}", f"hh-{unit[i]:06d}", (base + timedelta(seconds=int(secs[i]))).isoformat(),
                        fe, INTENTS[fe], int(rating[i]), TEXTS[text[i]], "true" if corrected[i] else "false",
                        f"app-{i}"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--db-url", default=None, help="default: a fresh SQLite file in a temp dir")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db_url or f"sqlite:///{tmp}/bench.db"
        engine = make_engine(url)
        upgrade(engine)
        sf = make_session_factory(engine)
        with sf.begin() as s:
            s.execute(insert(Unit), [dict(serial=f"SPK-{i:06d}", agent_url=f"http://127.0.0.1/{i}", created_at=NOW,
                                          updated_at=NOW, consent_feedback_text=i % 3 != 0, qa_version="qa-2.1.0",
                                          stt_version="stt-1.4.0", tts_version="tts-1.0.3")
                                     for i in range(1, args.units + 1)])
        path = Path(tmp) / "feedback.csv"
        t = time.perf_counter()
        write_csv(path, args.rows, args.units)
        print(f"wrote {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
        for attempt in ("first import", "same file again"):
            t = time.perf_counter()
            with sf.begin() as s:
                report = import_file(s, path, lambda: NOW)
            dt = time.perf_counter() - t
            print(f"{attempt}: {dt:.1f} s ({args.rows / dt:,.0f} rows/s) on {engine.dialect.name}: "
                  f"{report.imported:,} imported, {report.duplicates:,} duplicates, {report.rejected:,} rejected")
        with sf() as s:
            print(f"rows in feedback: {s.scalar(select(func.count()).select_from(Feedback)):,}")
        engine.dispose()


if __name__ == "__main__":
    main()
