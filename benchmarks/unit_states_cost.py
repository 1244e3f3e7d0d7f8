"""What per-group offline thresholds and flap detection add to a collector cycle at 10,000 units.

Measures, on a fresh database holding ``--units`` units (default 10,000):

* ``observe``: flap detection for every unit in one cycle (98 % steady units, 2 % answering every
  other poll, as the simulator's fleet: ``fleet.simulator.behaviour``), pure Python;
* ``OfflineThresholds.refresh`` as the collector calls it once per cycle: with no policy (the
  common case: one query on ``offline_policies``), with policies unchanged (one query plus a
  set check), and when policies or units changed (re-reading sites, revisions and tags and
  resolving every unit: at most once per :data:`fleet.unit_states.UNIT_GROUPS_REFRESH`);
* the cycle's bulk ``UPDATE units`` (one row per unit, as ``Collector._write`` does) without and
  with the four flap-detection columns, which only rows whose flap state changed carry.

Prints the median and max of ``--repeats`` runs in ms. SQLite by default; ``--db-url`` names
another database (e.g. a fresh PostgreSQL one). Usage::

    .venv/bin/python benchmarks/unit_states_cost.py [--units 10000] [--repeats 7] [--db-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from fleet.models import OfflinePolicy, Unit
from fleet.unit_states import OfflineThresholds, observe
from speakerops.db import make_engine, make_session_factory, upgrade


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs), max(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--db-url", default=None)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.db_url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    now = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
    sites = ["seoul-home", "busan-office", "lab-1", "daejeon-home"]
    with factory.begin() as s:
        s.execute(delete(OfflinePolicy))
        s.execute(delete(Unit))
        s.execute(insert(Unit), [
            {"serial": f"BENCH-{i:06d}", "agent_url": f"http://127.0.0.1:1/units/{i}", "status": "online",
             "site": sites[i % 4], "hardware_rev": f"hw-{'abc'[i % 3]}", "tags": ["lab"] if i % 10 == 0 else [],
             "poll_failures": 0, "created_at": now, "updated_at": now} for i in range(args.units)])
        ids = list(s.scalars(select(Unit.id).order_by(Unit.id)))
    print(f"{args.units:,} units on {engine.dialect.name}; median / max of {args.repeats} runs, ms "
          "(a shared 2-core machine: re-run on a quiet one before relying on a figure)")

    # flap detection over one cycle
    histories = {uid: ("1" * 21 if k % 50 else "10" * 10 + "1") for k, uid in enumerate(ids)}

    def one_cycle_of_observe() -> None:
        for k, uid in enumerate(ids):
            answered = True if k % 50 else bool(len(histories[uid]) % 2)
            st = observe(histories[uid], k % 50 == 0, None, answered, now)
            histories[uid] = st.state_history

    med, mx = _timed(one_cycle_of_observe, args.repeats)
    print(f"observe() for every unit (2 % flapping):        {med:8.1f} / {mx:8.1f}")

    # the thresholds cache, as Collector._load_targets calls it
    cache = OfflineThresholds(15.0)
    clock = [now]

    def refresh() -> None:
        with factory() as s:
            cache.refresh(s, ids, clock[0])

    med, mx = _timed(refresh, args.repeats)
    print(f"refresh(), no policy:                           {med:8.1f} / {mx:8.1f}")
    with factory.begin() as s:
        s.add_all([OfflinePolicy(scope_kind="tag", scope_value="lab", offline_after_s=43200, created_by="bench",
                                 created_at=now),
                   OfflinePolicy(scope_kind="site", scope_value="lab-1", offline_after_s=3600, created_by="bench",
                                 created_at=now)])
    refresh()
    med, mx = _timed(refresh, args.repeats)
    print(f"refresh(), policies unchanged (every cycle):    {med:8.1f} / {mx:8.1f}")

    def refresh_stale() -> None:
        clock[0] += timedelta(minutes=2)   # past UNIT_GROUPS_REFRESH: re-read groups, resolve all
        refresh()

    med, mx = _timed(refresh_stale, args.repeats)
    print(f"refresh(), groups re-read (<= once a minute):   {med:8.1f} / {mx:8.1f}")
    print(f"  units with their own threshold: {sum(cache.offline_after_s(i) != 15.0 for i in ids):,}")

    # the cycle's bulk update, without and with the flap columns (only rows whose flap state
    # changed carry them: FlapState.changed_columns; steady units interleave with flapping ones)
    base = [{"id": uid, "status": "online", "last_heartbeat_at": now, "last_poll_at": now, "last_poll_error": None,
             "poll_failures": 0, "updated_at": now} for uid in ids]
    flap = []
    for k, row in enumerate(base):
        old = histories[row["id"]]
        st = observe(old, k % 50 == 0, None, True if k % 50 else bool(len(old) % 2), now)
        flap.append({**row, **st.changed_columns(old, k % 50 == 0)})
    print(f"  rows carrying flap columns: {sum('state_history' in r for r in flap):,}")

    def write(rows: list[dict]) -> Callable[[], None]:
        def go() -> None:
            with factory.begin() as s:
                s.execute(update(Unit), rows)
        return go

    med0, mx0 = _timed(write(base), args.repeats)
    med1, mx1 = _timed(write(flap), args.repeats)
    print(f"bulk UPDATE units, before:                       {med0:8.1f} / {mx0:8.1f}")
    print(f"bulk UPDATE units, with changed flap columns:    {med1:8.1f} / {mx1:8.1f}   ({med1 - med0:+.1f} ms)")
    # SQLAlchemy sends one executemany per run of consecutive rows with the same columns:
    # rows sorted by their column set need only a few
    grouped = sorted(flap, key=lambda r: tuple(sorted(r)))
    med2, mx2 = _timed(write(grouped), args.repeats)
    print(f"  ... rows grouped by their columns first:       {med2:8.1f} / {mx2:8.1f}   ({med2 - med0:+.1f} ms)")
    engine.dispose()
    tmp.cleanup()


if __name__ == "__main__":
    main()
