"""Trends speed: 1,000,000 feedback rows and 100,000 tickets (issue #6 target: recompute <= 1 s).

Fills a database (default: a SQLite file in a temp dir; ``--keep PATH`` to reuse one between runs)
with 10,000 units, their version change points, 1,000,000 feedback rows over 90 days and 100,000
tickets, then prints:

* cold load — every table into pandas with one query each (:class:`feedback.trends.TrendCache`);
* refresh — the incremental refresh with nothing new, and with 1,000 new feedback rows;
* compute — :func:`feedback.trends.compute_trends` (volume ×6, CSAT, correction rates with 1,000
  bootstrap replicates for 3 model kinds, unit-days, ticket times, backlog, SLA);
* recompute — refresh + compute, the figure the target is about.

    .venv/bin/python benchmarks/trends_speed.py [--rows N] [--tickets T] [--db-url URL] [--keep PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from feedback.models import Feedback
from feedback.trends import TrendCache, compute_trends
from speakerops.db import make_engine, make_session_factory, upgrade

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
UNITS = 10_000
FEATURES = np.array(["weather", "news", "schedule", "music", "qa", "none"])
VERSIONS = {"stt": np.array(["stt-1.2.5", "stt-1.3.2", "stt-1.4.0"]), "qa": np.array(["qa-2.0.1", "qa-2.0.4", "qa-2.1.0"]),
            "tts": np.array(["tts-1.0.1", "tts-1.0.2", "tts-1.0.3"])}
STATES = np.array(["new", "triaged", "diagnosing", "waiting_for_parts", "in_repair", "resolved", "closed"])
PRIOS = np.array(["urgent", "high", "normal", "low"])
CATS = np.array(["no_response", "misrecognition", "wrong_answer", "audio_hardware", "connectivity", "other"])


def _ts(conn, values: list[datetime]) -> list:
    if conn.dialect.name == "sqlite":
        return [v.replace(tzinfo=None).isoformat(" ", timespec="microseconds") if v else None for v in values]
    return values


def _many(conn, table: str, cols: list[str], rows: list[tuple]) -> None:
    ph = ", ".join(["?" if conn.dialect.name == "sqlite" else "%s"] * len(cols))
    for i in range(0, len(rows), 50_000):
        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({ph})", rows[i:i + 50_000])


def feedback_rows(conn, rng: np.random.Generator, n: int, start_id: int, base: datetime) -> list[tuple]:
    unit = rng.integers(1, UNITS + 1, n)
    secs = rng.integers(0, 90 * 86400, n)
    pick = lambda kind: VERSIONS[kind][np.minimum(2, rng.choice(3, n, p=[0.02, 0.13, 0.85]))]  # noqa: E731
    stt, qa, tts = pick("stt"), pick("qa"), pick("tts")
    when = _ts(conn, [base + timedelta(seconds=int(s)) for s in secs])
    rec = _ts(conn, [NOW])[0]
    rating = rng.integers(1, 6, n)
    corr = rng.random(n) < np.where(qa == "qa-2.1.0", 0.06, 0.12)
    feat = FEATURES[rng.integers(0, 6, n)]
    return [(start_id + i, int(unit[i]), f"hh-{unit[i]}", when[i], rec, feat[i], None, int(rating[i]), None, 0, False,
             bool(corr[i]), False, False, stt[i], qa[i], tts[i], "unit", f"b-{start_id + i}", "import", None)
            for i in range(n)]


FB_COLS = ["id", "unit_id", "household_id", "submitted_at", "received_at", "feature", "intent", "rating", "text",
           "redactions", "text_withheld", "corrected", "repeated", "cancelled", "stt_version", "qa_version",
           "tts_version", "versions_source", "submission_id", "source", "import_id"]


def fill(engine, rows: int, tickets: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = NOW - timedelta(days=90)
    with engine.begin() as conn:
        created = _ts(conn, [base - timedelta(days=30)])[0]
        _many(conn, "units", ["id", "serial", "hardware_rev", "site", "region", "timezone", "agent_url", "tags",
                              "consent_recordings", "consent_feedback_text", "status", "poll_failures", "created_at",
                              "updated_at", "stt_version", "qa_version", "tts_version"],
              [(i, f"SPK-{i:06d}", ["hw-a", "hw-b", "hw-c"][i % 3], f"site-{i % 8}", "r", "UTC", "http://x", "[]",
                False, True, "online", 0, created, created, "stt-1.4.0", "qa-2.1.0", "tts-1.0.3")
               for i in range(1, UNITS + 1)])
        hb_cols = ["unit_id", "received_at", "state", "uptime_s", "cpu_pct", "temp_c", "mem_pct", "disk_free_mb",
                   "mic_noise_dbfs", "wifi_rssi_dbm", "wake_false_accepts_per_h", "requests", "errors",
                   "stt_version", "qa_version", "tts_version", "latency_ms"]
        t1, t2 = _ts(conn, [NOW - timedelta(hours=20), NOW - timedelta(hours=2)])
        # every 7th unit moved from qa-2.0.4 to qa-2.1.0 (a rollout) 20 h ago .. 2 h ago
        _many(conn, "heartbeats", hb_cols, [(u, t, "ok", 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, "stt-1.4.0",
                                             q if u % 7 == 0 else "qa-2.1.0", "tts-1.0.3", "{}")
                                            for u in range(1, UNITS + 1)
                                            for t, q in ((t1, "qa-2.0.4"), (t2, "qa-2.1.0"))])
        for start in range(0, rows, 200_000):
            _many(conn, "feedback", FB_COLS, feedback_rows(conn, rng, min(200_000, rows - start), start + 1, base))
        created_s = rng.integers(0, 90 * 86400, tickets)
        state = STATES[rng.integers(0, len(STATES), tickets)]
        prio = PRIOS[rng.integers(0, 4, tickets)]
        resp = rng.exponential(6 * 3600, tickets)
        res = rng.exponential(72 * 3600, tickets)
        trows = []
        for i in range(tickets):
            c = base + timedelta(seconds=int(created_s[i]))
            answered = state[i] != "new"
            done = state[i] in ("resolved", "closed")
            first, resolved, running = _ts(conn, [c + timedelta(seconds=float(resp[i])) if answered else None,
                                                  c + timedelta(seconds=float(res[i])) if done else None,
                                                  None if done or state[i] == "waiting_for_parts" else c])
            cc = _ts(conn, [c])[0]
            trows.append((i + 1, f"t{i}", "", state[i], prio[i], CATS[i % 6], None, "manual", int(i % UNITS) + 1, None,
                          None, None, None, None, None, None, cc, cc, "bench", first, resolved, None, 0,
                          {"urgent": 3600, "high": 14400, "normal": 28800, "low": 86400}[prio[i]], 432000.0,
                          float(res[i]) / 2, running))
        _many(conn, "tickets", ["id", "title", "description", "state", "priority", "category", "assignee", "origin",
                                "unit_id", "unit_serial", "feedback_id", "household_id", "stt_version", "qa_version",
                                "tts_version", "rollout_id", "created_at", "updated_at", "created_by",
                                "first_response_at", "resolved_at", "closed_at", "reopened_count", "response_target_s",
                                "resolution_target_s", "resolution_elapsed_s", "resolution_running_since"], trows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--keep", type=Path, default=None, help="SQLite file to create once and reuse")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db_url or f"sqlite:///{args.keep or Path(tmp) / 'trends.db'}"
        engine = make_engine(url)
        sf = make_session_factory(engine)
        fresh = not (args.keep and args.keep.exists())
        upgrade(engine)
        if fresh:
            t = time.perf_counter()
            fill(engine, args.rows, args.tickets)
            print(f"filled {args.rows:,} feedback rows and {args.tickets:,} tickets in {time.perf_counter() - t:.1f} s")
            # planner statistics, as autovacuum gathers them within a minute on a live server (without
            # them PostgreSQL scans the whole table for the refresh's `id > last id`)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
        cache = TrendCache()
        with sf() as s:
            t = time.perf_counter()
            data = cache.refresh(s, NOW)
            print(f"cold load on {engine.dialect.name}: {time.perf_counter() - t:.2f} s "
                  f"({len(data.feedback):,} feedback, {len(data.tickets):,} tickets)")
        for _ in range(args.repeat):
            with sf() as s:
                t = time.perf_counter()
                data = cache.refresh(s, NOW)
                t_refresh = time.perf_counter() - t
            t = time.perf_counter()
            trends = compute_trends(data, NOW, n_boot=1000)
            t_compute = time.perf_counter() - t
            print(f"refresh (nothing new) {t_refresh:.2f} s + compute {t_compute:.2f} s = recompute "
                  f"{t_refresh + t_compute:.2f} s")
        with sf.begin() as s:
            max_id = s.scalar(select(func.max(Feedback.id)))
        with engine.begin() as conn:
            _many(conn, "feedback", FB_COLS, feedback_rows(conn, np.random.default_rng(9), 1000, max_id + 1, NOW - timedelta(days=1)))
        with sf() as s:
            t = time.perf_counter()
            data = cache.refresh(s, NOW)
            t_refresh = time.perf_counter() - t
        t = time.perf_counter()
        trends = compute_trends(data, NOW, n_boot=1000)
        t_compute = time.perf_counter() - t
        print(f"refresh (+1,000 rows) {t_refresh:.2f} s + compute {t_compute:.2f} s = recompute "
              f"{t_refresh + t_compute:.2f} s; {trends.feedback_rows:,} rows, CSAT {trends.csat:.3f}")
        qa = trends.versions["qa"]
        print(qa[["n", "correction_rate", "ci_low", "ci_high", "per_1000_unit_days"]].to_string())
        engine.dispose()


if __name__ == "__main__":
    main()
