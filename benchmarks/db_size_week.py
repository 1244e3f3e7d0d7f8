"""Database size over a simulated week: heartbeats written, rolled up and pruned every hour.

Simulates ``--units`` units (default 200) sending a heartbeat every ``--interval-s`` (default
10 s) into a fresh SQLite file, one simulated hour per chunk (rows generated with numpy, the
same columns and ``latency_ms`` JSON shape as ``fleet.collector`` writes). After each hour it
runs ``compute_rollups`` then ``prune`` in one transaction, as ``speakerops db prune`` does.
Once per simulated day it prints the database file size (main file + WAL, after a checkpoint),
the free pages SQLite will reuse, and the row count of each table.

Retention defaults to issue #4's (raw 24 h, 1-minute rollups 30 days, 1-hour one year); with
those, raw heartbeats level off after day 1 but 1-minute rollups keep growing until day 30, so
``--minute-keep-days`` can shorten it to see the full plateau within a week. Usage::

    .venv/bin/python benchmarks/db_size_week.py [--units 200] [--days 7] [--minute-keep-days 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select, text

from fleet.models import STAGES, Heartbeat, Unit, UnitRollup1h, UnitRollup1m
from fleet.rollups import compute_rollups, prune
from speakerops.db import make_engine, make_session_factory, upgrade

#: Typical stage latencies (median ms, log-normal spread), roughly the simulator's.
STAGE_MEDIAN_MS = {"wake": 200.0, "upload": 300.0, "stt": 450.0, "qa": 150.0, "tts": 200.0, "playback": 600.0}


def heartbeats_for(unit_ids: np.ndarray, start: datetime, seconds: int, interval_s: int,
                   rng: np.random.Generator, uptime: np.ndarray) -> list[dict]:
    """One chunk of heartbeat rows (dicts for ``insert(Heartbeat)``), every unit every interval."""
    rows = []
    n_units = len(unit_ids)
    for k in range(seconds // interval_s):
        at = start + timedelta(seconds=k * interval_s)
        uptime += interval_s
        reboot = rng.random(n_units) < 1e-4
        uptime[reboot] = rng.uniform(0, interval_s, reboot.sum())
        n_req = rng.poisson(0.3, n_units)
        cpu = rng.uniform(5, 60, n_units)
        temp = rng.normal(52, 4, n_units)
        noise = rng.normal(-58, 3, n_units)
        total = int(n_req.sum())
        lat = {s: np.round(rng.lognormal(np.log(m), 0.5, total), 1) for s, m in STAGE_MEDIAN_MS.items()}
        offsets = np.concatenate([[0], np.cumsum(n_req)])
        for j in range(n_units):
            a, b = offsets[j], offsets[j + 1]
            rows.append({
                "unit_id": int(unit_ids[j]), "received_at": at, "unit_time": at, "state": "ok",
                "uptime_s": float(uptime[j]), "cpu_pct": float(cpu[j]), "temp_c": float(temp[j]), "mem_pct": 41.0,
                "disk_free_mb": 1830.0, "mic_noise_dbfs": float(noise[j]), "wifi_rssi_dbm": -61.0,
                "wake_false_accepts_per_h": 0.4, "requests": int(n_req[j]), "errors": int(n_req[j] > 2),
                "stt_version": "stt-1.4.0", "qa_version": "qa-2.1.0", "tts_version": "tts-1.0.3",
                "latency_ms": {s: lat[s][a:b].tolist() for s in STAGES},
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--interval-s", type=int, default=10)
    ap.add_argument("--minute-keep-days", type=float, default=30.0)
    ap.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    path = args.db or Path(tmp.name) / "week.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    factory = make_session_factory(engine)
    rng = np.random.default_rng(0)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with factory.begin() as s:
        s.execute(insert(Unit), [{"serial": f"SPK-{i:06d}", "agent_url": f"http://127.0.0.1/units/SPK-{i:06d}",
                                  "site": f"site-{i % 10}", "created_at": start, "updated_at": start}
                                 for i in range(args.units)])
        unit_ids = np.asarray(s.scalars(select(Unit.id).order_by(Unit.id)).all())
    uptime = rng.uniform(0, 86400, len(unit_ids))
    minute_keep = timedelta(days=args.minute_keep_days)
    print(f"{args.units} units, heartbeat every {args.interval_s} s, {args.days} days; retention raw 24 h, "
          f"1m {args.minute_keep_days:g} d, 1h 365 d; SQLite {path}")
    print(f"{'day':>3} {'file MB':>8} {'free MB':>8} {'heartbeats':>11} {'rollups_1m':>11} {'rollups_1h':>11}"
          f" {'roll+prune s/h':>14} {'wall s':>7}")
    t_start = time.perf_counter()
    roll_s = 0.0
    for hour in range(args.days * 24):
        h0 = start + timedelta(hours=hour)
        rows = heartbeats_for(unit_ids, h0, 3600, args.interval_s, rng, uptime)
        with factory.begin() as s:
            for j in range(0, len(rows), 20_000):
                s.execute(insert(Heartbeat), rows[j:j + 20_000])
        now = h0 + timedelta(hours=1)
        t0 = time.perf_counter()
        with factory.begin() as s:
            compute_rollups(s, now)
            prune(s, now, minute_keep=minute_keep)
        roll_s += time.perf_counter() - t0
        if (hour + 1) % 24 == 0:
            with engine.connect() as c:
                c.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
                page = c.execute(text("PRAGMA page_size")).scalar()
                free = c.execute(text("PRAGMA freelist_count")).scalar() * page
            size = path.stat().st_size + (Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0)
            with factory() as s:
                counts = [s.scalar(select(func.count()).select_from(m)) for m in (Heartbeat, UnitRollup1m, UnitRollup1h)]
            print(f"{(hour + 1) // 24:>3} {size / 2**20:>8.1f} {free / 2**20:>8.1f} {counts[0]:>11,} {counts[1]:>11,}"
                  f" {counts[2]:>11,} {roll_s / 24:>14.2f} {time.perf_counter() - t_start:>7.0f}", flush=True)
            roll_s = 0.0
    engine.dispose()


if __name__ == "__main__":
    main()
