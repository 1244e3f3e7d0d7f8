"""Database size over a simulated week: heartbeats written, rolled up and pruned every hour.

Simulates ``--units`` units (default 200) sending a heartbeat every ``--interval-s`` (default
10 s) into a fresh database, one poll interval per insert (rows generated with numpy, the same
columns and ``latency_ms`` JSON shape as ``fleet.collector`` writes; 0.3 requests per heartbeat,
i.e. ~1.8 per unit-minute, above the simulator's evening peak: most minute rows carry latency
histograms; ``--requests-per-heartbeat``). Units are spread over ``--sites`` sites ×
``--hw-revs`` hardware revisions × ``--stt-versions`` STT versions (a rollout in progress),
which sets the number of cohorts. It runs ``compute_rollups``
every ``--rollup-every-min`` simulated minutes (default 60; the collector: 1) and ``prune``
every hour, as the collector's maintenance does.

Once per simulated day it prints, per table, the rows and the bytes (tables with their indexes:
SQLite's ``dbstat``; PostgreSQL's ``pg_total_relation_size``), and the whole database
(SQLite: main file + WAL after a checkpoint, and the free pages it will reuse; PostgreSQL:
``pg_database_size``). SQLite reuses the pages of deleted rows at once; PostgreSQL only after a
``VACUUM``, so on PostgreSQL the four tables are vacuumed after each hourly prune (``--vacuum
hourly``, what autovacuum does when its scale factor is small enough for a table that turns
over 1/24 of its rows an hour) or only once a day (``--vacuum daily``, to see the bloat).

At the end it divides each table's bytes by its rows and projects the steady state for
``--project-units`` (default 10,000, issue #4's fleet) from the retention: raw heartbeats
``units × 86,400 / interval × raw keep``, per-unit minutes ``units × 60 × 48 h``, cohort
minutes ``cohorts × 1,440 × 30 d``, per-unit hours ``units × 24 × days kept``. A full
10,000-unit week is feasible with ``--units 10000`` but slow on a 2-core machine (the
per-hour wall time printed by a short run, ``--days 0.25``, gives the estimate).

Usage::

    .venv/bin/python benchmarks/db_size_week.py [--units 200] [--days 7] [--db-url postgresql+psycopg://…]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, func, insert, select, text

from fleet.models import STAGES, CohortRollup1m, Heartbeat, Unit, UnitRollup1h, UnitRollup1m
from fleet.rollups import COHORT_MINUTE_KEEP, HOUR_KEEP, RAW_KEEP, UNIT_MINUTE_KEEP, compute_rollups, prune
from speakerops.db import make_engine, make_session_factory, upgrade

#: Typical stage latencies (median ms, log-normal spread), roughly the simulator's.
STAGE_MEDIAN_MS = {"wake": 200.0, "upload": 300.0, "stt": 450.0, "qa": 150.0, "tts": 200.0, "playback": 600.0}
TABLES = (Heartbeat, UnitRollup1m, CohortRollup1m, UnitRollup1h)
SHORT = {"heartbeats": "raw", "unit_rollups_1m": "unit 1m", "cohort_rollups_1m": "cohort 1m",
         "unit_rollups_1h": "unit 1h"}


def heartbeats_for(unit_ids: np.ndarray, stt: list[str], start: datetime, seconds: int, interval_s: int,
                   rng: np.random.Generator, uptime: np.ndarray, req_per_hb: float) -> Iterator[list[dict]]:
    """Heartbeat rows (dicts for ``insert(Heartbeat)``) of ``seconds`` from ``start``, one list
    per poll interval with a row for every unit."""
    n_units = len(unit_ids)
    for k in range(seconds // interval_s):
        rows = []
        at = start + timedelta(seconds=k * interval_s)
        uptime += interval_s
        reboot = rng.random(n_units) < 1e-4
        uptime[reboot] = rng.uniform(0, interval_s, reboot.sum())
        n_req = rng.poisson(req_per_hb, n_units)
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
                "stt_version": stt[j], "qa_version": "qa-2.1.0", "tts_version": "tts-1.0.3",
                "latency_ms": {s: lat[s][a:b].tolist() for s in STAGES},
            })
        yield rows


def vacuum(engine: Engine) -> None:
    """Plain ``VACUUM`` of the four tables (PostgreSQL): their dead rows' space becomes reusable."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        for m in TABLES:
            c.execute(text(f'VACUUM "{m.__tablename__}"'))


def table_bytes(engine: Engine, path: Path | None) -> tuple[dict[str, int], int, int]:
    """Bytes per table (with its indexes), the whole database's bytes, and free (reusable) bytes."""
    names = [m.__tablename__ for m in TABLES]
    if engine.dialect.name == "sqlite":
        with engine.connect() as c:
            c.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            page = c.execute(text("PRAGMA page_size")).scalar()
            free = c.execute(text("PRAGMA freelist_count")).scalar() * page
            owner = dict(c.execute(text("SELECT name, tbl_name FROM sqlite_master")).all())
            per: dict[str, int] = dict.fromkeys(names, 0)
            for name, size in c.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all():
                table = owner.get(name, name)
                if table in per:
                    per[table] += int(size)
        wal = Path(f"{path}-wal")
        total = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return per, total, free
    vacuum(engine)
    with engine.connect() as c:
        per = {name: int(c.execute(text("SELECT pg_total_relation_size(:t)"), {"t": name}).scalar())
               for name in names}
        total = int(c.execute(text("SELECT pg_database_size(current_database())")).scalar())
    return per, total, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--days", type=float, default=7.0, help="simulated days (hours are whole; 0.25 = 6 h)")
    ap.add_argument("--interval-s", type=int, default=10)
    ap.add_argument("--requests-per-heartbeat", type=float, default=0.3,
                    help="mean requests per heartbeat (0.3: above the simulator's evening peak of ~0.25)")
    ap.add_argument("--rollup-every-min", type=int, default=60,
                    help="roll up every this many simulated minutes (the collector: 1); prune hourly")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--hw-revs", type=int, default=2)
    ap.add_argument("--stt-versions", type=int, default=2)
    ap.add_argument("--raw-keep-hours", type=float, default=RAW_KEEP / timedelta(hours=1))
    ap.add_argument("--unit-minute-keep-hours", type=float, default=UNIT_MINUTE_KEEP / timedelta(hours=1))
    ap.add_argument("--cohort-minute-keep-days", type=float, default=COHORT_MINUTE_KEEP / timedelta(days=1))
    ap.add_argument("--project-units", type=int, default=10_000)
    ap.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    ap.add_argument("--db-url", help="a database URL instead (e.g. an empty PostgreSQL database)")
    ap.add_argument("--vacuum", choices=("hourly", "daily"), default="hourly",
                    help="PostgreSQL: VACUUM the tables after each hourly prune (as autovacuum with a small "
                         "scale factor would) or only before each daily size reading")
    args = ap.parse_args()
    if args.units < 1 or args.days <= 0 or args.interval_s < 1 or not 1 <= args.rollup_every_min <= 60:
        ap.error("--units, --days and --interval-s must be positive, --rollup-every-min 1 to 60")

    tmp = tempfile.TemporaryDirectory()
    path = None if args.db_url else (args.db or Path(tmp.name) / "week.db")
    engine = make_engine(args.db_url or f"sqlite:///{path}")
    upgrade(engine)
    factory = make_session_factory(engine)
    rng = np.random.default_rng(0)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    stt_of = [f"stt-1.{4 + i // (args.sites * args.hw_revs) % args.stt_versions}.0" for i in range(args.units)]
    with factory.begin() as s:
        s.execute(insert(Unit), [{"serial": f"SPK-{i:06d}", "agent_url": f"http://127.0.0.1/units/SPK-{i:06d}",
                                  "site": f"site-{i % args.sites}", "hardware_rev": f"hw-{i // args.sites % args.hw_revs}",
                                  "stt_version": stt_of[i], "created_at": start, "updated_at": start}
                                 for i in range(args.units)])
        unit_ids = np.asarray(s.scalars(select(Unit.id).order_by(Unit.id)).all())
    uptime = rng.uniform(0, 86400, len(unit_ids))
    keeps = {"raw_keep": timedelta(hours=args.raw_keep_hours),
             "unit_minute_keep": timedelta(hours=args.unit_minute_keep_hours),
             "cohort_minute_keep": timedelta(days=args.cohort_minute_keep_days)}
    where = args.db_url.split("@")[-1] if args.db_url else f"SQLite {path}"
    print(f"{args.units} units, heartbeat every {args.interval_s} s, {args.days:g} days; retention raw "
          f"{args.raw_keep_hours:g} h, unit 1m {args.unit_minute_keep_hours:g} h, cohort 1m "
          f"{args.cohort_minute_keep_days:g} d, unit 1h 365 d; {where}")
    head = "".join(f" {SHORT[m.__tablename__] + ' rows':>15} {'MB':>7}" for m in TABLES)
    print(f"{'day':>5}{head} {'db MB':>8} {'free MB':>8} {'roll+prune s/h':>14} {'wall s':>7}")
    t_start = time.perf_counter()
    roll_s, hours_in_line = 0.0, 0
    n_hours = max(1, round(args.days * 24))
    per: dict[str, int] = {}
    counts: dict[str, int] = {}
    for hour in range(n_hours):
        h0 = start + timedelta(hours=hour)
        step = timedelta(minutes=args.rollup_every_min)
        for m0 in range(0, 60, args.rollup_every_min):
            t = h0 + m0 * timedelta(minutes=1)
            span = int(min(step, h0 + timedelta(hours=1) - t).total_seconds())
            for rows in heartbeats_for(unit_ids, stt_of, t, span, args.interval_s, rng, uptime,
                                       args.requests_per_heartbeat):
                with factory.begin() as s:
                    s.execute(insert(Heartbeat), rows)
            now = t + timedelta(seconds=span)
            t0 = time.perf_counter()
            with factory.begin() as s:
                compute_rollups(s, now)
                if now == h0 + timedelta(hours=1):
                    prune(s, now, **keeps)
            roll_s += time.perf_counter() - t0
        if engine.dialect.name == "postgresql" and args.vacuum == "hourly":
            vacuum(engine)
        hours_in_line += 1
        if (hour + 1) % 24 == 0 or hour + 1 == n_hours:
            per, total, free = table_bytes(engine, path)
            with factory() as s:
                counts = {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}
            cells = "".join(f" {counts[m.__tablename__]:>15,} {per[m.__tablename__] / 2**20:>7.1f}" for m in TABLES)
            print(f"{(hour + 1) / 24:>5.2f}{cells} {total / 2**20:>8.1f} {free / 2**20:>8.1f}"
                  f" {roll_s / hours_in_line:>14.2f} {time.perf_counter() - t_start:>7.0f}", flush=True)
            roll_s, hours_in_line = 0.0, 0
    with factory() as s:
        cohorts = s.scalar(select(func.count()).select_from(
            select(*(getattr(CohortRollup1m, k) for k in ("site", "hardware_rev", "firmware_version", "stt_version",
                                                          "qa_version", "tts_version"))).distinct().subquery()))
    engine.dispose()
    project(args, per, counts, cohorts)


def project(args: argparse.Namespace, per: dict[str, int], counts: dict[str, int], cohorts: int) -> None:
    """Print bytes per row per tier and the projected sizes for ``--project-units``."""
    bpr = {t: per[t] / counts[t] for t in per if counts.get(t)}
    print("\nbytes per row (table + indexes): " + ", ".join(f"{SHORT[t]} {b:,.0f}" for t, b in bpr.items()))
    if len(bpr) < len(TABLES):
        print("(a tier has no rows yet: run at least a few hours to project)")
        return
    n = args.project_units
    per_day = 86_400 / args.interval_s
    raw_rows = n * per_day * (args.raw_keep_hours + 1) / 24  # + up to one prune interval (1 h)
    unit_1m = n * 60 * (args.unit_minute_keep_hours + 1)
    print(f"projection for {n:,} units, {cohorts} cohorts (the same mix), heartbeat every {args.interval_s} s:")
    print(f"{'after':>9} {'raw GB':>8} {'unit 1m GB':>10} {'cohort 1m GB':>12} {'unit 1h GB':>10} {'total GB':>9}"
          f"   (per-unit 1m for 30 d instead: GB)")
    print(f"(each further cohort adds {1440 * args.cohort_minute_keep_days * bpr['cohort_rollups_1m'] / 1e9:.2f} GB "
          f"at 30 days, whatever the units in it)")
    for days in (2, 7, 30, 365):
        tiers = {"heartbeats": min(raw_rows, n * per_day * days),
                 "unit_rollups_1m": min(unit_1m, n * 1440 * days),
                 "cohort_rollups_1m": cohorts * 1440 * min(days, args.cohort_minute_keep_days),
                 "unit_rollups_1h": n * 24 * min(days, HOUR_KEEP / timedelta(days=1))}
        gb = {t: rows * bpr[t] / 1e9 for t, rows in tiers.items()}
        old = n * 1440 * min(days, 30) * bpr["unit_rollups_1m"] / 1e9
        print(f"{days:>7} d {gb['heartbeats']:>8.1f} {gb['unit_rollups_1m']:>10.1f} {gb['cohort_rollups_1m']:>12.2f}"
              f" {gb['unit_rollups_1h']:>10.1f} {sum(gb.values()):>9.1f}   ({old:,.0f})")


if __name__ == "__main__":
    main()
