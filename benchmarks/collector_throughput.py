"""Collector throughput against a bare-aiohttp baseline, on the real simulator over real HTTP.

Starts ``speakerops sim --units N`` in its own process, imports its inventory into a fresh SQLite
(or ``--db-url``) database, then times:

* baseline: a bare ``aiohttp.ClientSession`` fetching every unit's ``/v1/health`` once with the
  same concurrency, without parsing or database writes;
* collector: ``Collector.run_cycle()`` (fetch, validate, batched insert, unit updates).

Prints polls per second for both and their ratio (target ≥ 0.6). Usage::

    .venv/bin/python benchmarks/collector_throughput.py --units 10000 --concurrency 200 --cycles 3
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from sqlalchemy import select

from fleet.collector import Collector
from fleet.inventory import import_units
from fleet.models import Unit
from fleet.settings import CollectorSettings
from speakerops.db import make_engine, make_session_factory, upgrade


async def baseline(urls: list[str], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(url: str) -> None:
            async with sem:
                try:
                    async with session.get(url) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass
        t0 = time.perf_counter()
        await asyncio.gather(*(one(u) for u in urls))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--db-url", default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp) / "inv.csv"
        proc = subprocess.Popen([sys.executable, "-m", "speakerops.cli", "sim", "--units", str(args.units),
                                 "--inventory", str(inv), "--data-dir", str(Path(tmp) / "sim")],
                                stdout=subprocess.PIPE, text=True)
        try:
            while not (proc.stdout.readline() or "SIMULATOR READY").startswith("SIMULATOR READY"):
                pass
            engine = make_engine(args.db_url or f"sqlite:///{tmp}/bench.db")
            upgrade(engine)
            factory = make_session_factory(engine)
            from speakerops.timeutil import utc_now
            with factory.begin() as s:
                import_units(s, inv, utc_now)
                urls = [u + "/v1/health" for u in s.scalars(select(Unit.agent_url))]
            settings = CollectorSettings(concurrency=args.concurrency)
            collector = Collector(factory, utc_now, settings)

            async def run() -> tuple[list[float], list[float], list[int]]:
                base, coll, ok = [], [], []
                for _ in range(args.cycles):
                    base.append(await baseline(urls, args.concurrency))
                    r = await collector.run_cycle()
                    coll.append(r.duration_s)
                    ok.append(r.ok)
                await collector.aclose()
                return base, coll, ok

            base, coll, ok = asyncio.run(run())
            b, c = min(base), min(coll)
            print(f"units={args.units} concurrency={args.concurrency} cycles={args.cycles} db={engine.dialect.name}")
            print(f"baseline (bare aiohttp, no parse/db): best {b:.2f} s = {args.units / b:,.0f} polls/s")
            print(f"collector (parse + batched writes):   best {c:.2f} s = {args.units / c:,.0f} polls/s "
                  f"(ok per cycle: {ok})")
            print(f"ratio collector/baseline: {b / c:.2f}  (target >= 0.6)")
            engine.dispose()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
