"""What one Service-flow refresh costs at steady state, with and without the cohort-minute cache.

The page refreshes every 10 s. Its SLO tiles, stage breakdown (last hour against the 24 h
before) and day chart sum ``cohort_rollups_1m``: at 10,000 simulated units about 700 cohorts
(site × hardware revision × firmware × model versions; ``speakerops sim --units 10000``) a
minute, so a day is ~1 M rows of histogram JSON. This fills a fresh database with ``--cohorts``
cohorts × ``--hours`` hours of cohort minutes (synthetic histograms, the real table and JSON
shapes) and its watermarks, then times ``console.pages.service_flow.load_service_flow``
(whole fleet, day chart):

* ``uncached``: every refresh reads every minute (the page before ``fleet.stage_cache``);
* ``cached, first``: the page's first refresh with a :class:`fleet.stage_cache.CohortMinuteCache`;
* ``cached, next``: a refresh after one more minute was rolled up (what every later refresh costs).

Prints wall and CPU seconds of each (median of ``--repeats``) and the ratio uncached / cached-next.
Python's automatic garbage collection is off during the loads, as in the console (which collects
on its GUI thread, ``console.app.GuiThreadGarbageCollector``); ``--gc`` leaves it on, as in the
CLI (about twice the time for the JSON-heavy first read).
SQLite by default (``--db-url`` for another database, e.g. a fresh PostgreSQL one). Usage::

    .venv/bin/python benchmarks/service_flow_load.py [--cohorts 700] [--hours 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from console.pages.service_flow import load_service_flow
from fleet.models import CohortRollup1m, RollupWatermark
from fleet.rollups import COHORT_FROM_LEVEL, HIST_STAGES, N_BUCKETS
from fleet.stage_cache import CohortMinuteCache
from speakerops.db import make_engine, make_session_factory, upgrade

NOW = datetime(2026, 11, 21, 12, 0, 30, tzinfo=UTC)


def _minute_rows(rng: np.random.Generator, start: datetime, cohorts: int) -> list[dict]:
    rows = []
    for c in range(cohorts):
        hist = {s: np.bincount(rng.integers(3, 14, 6), minlength=N_BUCKETS)[:N_BUCKETS].tolist() for s in HIST_STAGES}
        rows.append({
            "bucket_start": start, "site": f"site-{c % 12}", "hardware_rev": f"hw-{c % 3}",
            "firmware_version": f"fw-{c % 5}", "stt_version": f"stt-{c % 4}", "qa_version": f"qa-{c // 60}",
            "tts_version": "tts-1", "units": 14, "heartbeats": 84, "requests": 6, "errors": 0, "reboots": 0,
            "e2e_over_budget": 0, "server_over_budget": 0, "latency_hist": hist,
            "latency_sum_ms": {s: 1000.0 for s in HIST_STAGES},
        })
    return rows


def fill(session_factory, cohorts: int, hours: float, rng: np.random.Generator) -> datetime:
    """Cohort minutes up to the minute before ``NOW``; returns the 1-minute watermark."""
    wm = NOW.replace(second=0) - timedelta(minutes=1)
    first = wm - timedelta(hours=hours)
    t = first
    with session_factory.begin() as s:
        s.add_all([RollupWatermark(level="1m", computed_until=wm),
                   RollupWatermark(level=COHORT_FROM_LEVEL, computed_until=first)])
    while t < wm:
        with session_factory.begin() as s:
            for _ in range(60):
                if t >= wm:
                    break
                s.execute(insert(CohortRollup1m), _minute_rows(rng, t, cohorts))
                t += timedelta(minutes=1)
    return wm


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohorts", type=int, default=700, help="cohorts per minute (default 700: 10,000 simulated units)")
    ap.add_argument("--hours", type=float, default=25.0, help="hours of cohort minutes (default 25)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--gc", action="store_true", help="leave automatic garbage collection on (as the CLI)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.db_url or f"sqlite:///{Path(tmp.name) / 'flow.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sf = make_session_factory(engine)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    wm = fill(sf, args.cohorts, args.hours, rng)
    rows = int(args.hours * 60) * args.cohorts
    print(f"database: {rows:,} cohort minutes ({args.cohorts} cohorts × {args.hours:g} h) in "
          f"{time.perf_counter() - t0:.0f} s; {url.split('://')[0]}")

    if not args.gc:
        gc.collect()
        gc.disable()
    clock = lambda: NOW  # noqa: E731
    span = timedelta(days=1)
    uncached = [_timed(lambda: load_service_flow(sf, clock, None, span, "site")) for _ in range(args.repeats)]
    firsts, nexts = [], []
    for i in range(args.repeats):
        cache = CohortMinuteCache()
        firsts.append(_timed(lambda: load_service_flow(sf, clock, None, span, "site", cache)))
        # one more minute rolled up, the clock a minute on: what each later refresh reads
        with sf.begin() as s:
            s.execute(insert(CohortRollup1m), _minute_rows(rng, wm + timedelta(minutes=i), args.cohorts))
            s.get(RollupWatermark, "1m").computed_until = wm + timedelta(minutes=i + 1)
        later = lambda i=i: NOW + timedelta(minutes=i + 1)  # noqa: E731
        nexts.append(_timed(lambda: load_service_flow(sf, later, None, span, "site", cache)))

    def show(label: str, runs: list[tuple[float, float]]) -> float:
        wall = statistics.median(r[0] for r in runs)
        print(f"  {label:<16} wall {wall:7.2f} s   CPU {statistics.median(r[1] for r in runs):7.2f} s")
        return wall

    print("load_service_flow (whole fleet, day chart), median of", args.repeats)
    a = show("uncached", uncached)
    show("cached, first", firsts)
    b = show("cached, next", nexts)
    print(f"ratio uncached / cached next refresh: {a / b:.1f}×")
    engine.dispose()


if __name__ == "__main__":
    main()
