"""The collector against the real simulator over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time

import pytest
from sqlalchemy import delete, func, select

from fleet.collector import BackgroundCollector, Collector
from fleet.inventory import import_units
from fleet.models import AlertRule, CollectorStatus, Heartbeat, Unit
from fleet.settings import CollectorSettings
from fleet.simulator import Simulator

FAST = CollectorSettings(interval_s=10, connect_timeout_s=0.5, read_timeout_s=0.8, retries=1, backoff_s=0.01)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Simulator:
    simulator = Simulator(24, seed=7, data_dir=tmp_path_factory.mktemp("sim"))
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def fleet(runtime, sim, tmp_path):
    """The runtime's database holding the simulator's first 12 units, all faults cleared.

    Only units the simulator keeps online in its normal behaviour are used, so that every
    failure below is one the test caused.
    """
    path = tmp_path / "inventory.csv"
    sim.write_inventory(path)
    for spec in sim.units:
        sim.set_fault(spec.serial, "none")
    with runtime.session_factory.begin() as s:
        import_units(s, path, runtime.clock)
        healthy = _always_answering(sim)[:12]
        s.execute(delete(Unit).where(Unit.serial.not_in(healthy)))
    return healthy


def _always_answering(sim: Simulator) -> list[str]:
    async def probe() -> list[str]:
        import httpx

        async with httpx.AsyncClient(timeout=2) as c:
            ok = []
            for spec in sim.units:
                try:
                    r1 = await c.get(sim.agent_url(spec.serial) + "/v1/health")
                    r2 = await c.get(sim.agent_url(spec.serial) + "/v1/health")
                except httpx.HTTPError:
                    continue
                if r1.status_code == r2.status_code == 200 and r1.json()["state"] == "ok":
                    ok.append(spec.serial)
            return ok
    return asyncio.run(probe())


def _cycle(runtime, **kw):
    collector = Collector(runtime.session_factory, runtime.clock, kw.pop("settings", FAST), **kw)

    async def go():
        try:
            return await collector.run_cycle()
        finally:
            await collector.aclose()
    return asyncio.run(go())


def test_cycle_stores_a_heartbeat_per_unit_and_marks_units_online(runtime, fleet) -> None:
    result = _cycle(runtime)
    assert (result.polled, result.ok, result.failed, result.written, result.pending) == (12, 12, 0, 12, 0)
    with runtime.session_factory() as s:
        units = s.scalars(select(Unit)).all()
        assert {u.status for u in units} == {"online"}
        assert all(u.last_heartbeat_at == runtime.clock() and u.last_poll_error is None for u in units)
        assert all(u.stt_version and u.qa_version and u.tts_version for u in units)
        hbs = s.scalars(select(Heartbeat)).all()
        assert len(hbs) == 12
        assert all(0 <= h.cpu_pct <= 100 and h.mic_noise_dbfs < 0 and h.uptime_s >= 0 for h in hbs)
        status = s.scalars(select(CollectorStatus)).one()
        assert (status.units_polled, status.units_ok, status.units_failed) == (12, 12, 0)


FAULTS = {
    "offline": "closed the connection",
    "slow": "timeout",
    "malformed": "not valid JSON",
    "truncated": "not valid JSON",
    "http_error": "HTTP 503",
    "wrong_serial": "identity mismatch",
    "missing_field": "cpu_pct",
}


def test_each_bad_unit_gets_a_clear_error_and_no_other_heartbeat_is_lost(runtime, sim, fleet) -> None:
    bad = dict(zip(fleet, FAULTS, strict=False))
    for serial, fault in bad.items():
        sim.set_fault(serial, fault, delay_s=3.0)
    result = _cycle(runtime)
    assert result.ok == len(fleet) - len(bad) and result.failed == len(bad)
    with runtime.session_factory() as s:
        errors = dict(s.execute(select(Unit.serial, Unit.last_poll_error)).all())
        written = set(s.scalars(select(Unit.serial).join(Heartbeat)))
    for serial, fault in bad.items():
        assert FAULTS[fault] in (errors[serial] or ""), (fault, errors[serial])
        assert result.outcomes[serial].error == errors[serial]
    assert written == set(fleet) - set(bad)


def test_unit_goes_offline_after_one_and_a_half_intervals(runtime, sim, fleet) -> None:
    serial = fleet[0]
    _cycle(runtime)
    sim.set_fault(serial, "offline")
    runtime.clock.advance(10)
    _cycle(runtime)
    with runtime.session_factory() as s:
        unit = s.scalar(select(Unit).where(Unit.serial == serial))
        assert unit.status == "online" and unit.poll_failures == 1  # missed one poll: 10 s < 15 s
    runtime.clock.advance(5)
    _cycle(runtime)
    with runtime.session_factory() as s:
        unit = s.scalar(select(Unit).where(Unit.serial == serial))
        assert unit.status == "offline" and unit.poll_failures == 2
        assert unit.status_changed_at == runtime.clock()
    sim.set_fault(serial, "none")
    runtime.clock.advance(10)
    _cycle(runtime)
    with runtime.session_factory() as s:
        unit = s.scalar(select(Unit).where(Unit.serial == serial))
        assert (unit.status, unit.poll_failures, unit.last_poll_error) == ("online", 0, None)


def test_shards_split_the_fleet_without_overlap_or_gap(runtime, fleet) -> None:
    first = _cycle(runtime, shard=(1, 2))
    second = _cycle(runtime, shard=(2, 2))
    assert set(first.outcomes).isdisjoint(second.outcomes)
    assert set(first.outcomes) | set(second.outcomes) == set(fleet)


def test_background_collector_reports_cycles_and_stops(runtime, fleet) -> None:
    seen = []
    done = threading.Event()

    def on_cycle(result):
        seen.append(result)
        if result.ok == len(fleet):  # a first cycle on a busy machine may time some units out
            done.set()

    bg = BackgroundCollector(Collector(runtime.session_factory, runtime.clock, FAST), on_cycle)
    bg.start()
    assert done.wait(30), f"no cycle polled every unit within 30 s: {[r.ok for r in seen]}"
    bg.stop()
    assert not bg.is_running
    assert any(r.ok == len(fleet) for r in seen)
    assert not any(t.name == "speakerops-collector" for t in threading.enumerate())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_locked_database_keeps_heartbeats_in_memory_until_it_returns(runtime, fleet, monkeypatch) -> None:
    from speakerops import db as dbmod
    from speakerops.db import make_engine, make_session_factory

    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    engine = make_engine(runtime.db_url)
    factory = make_session_factory(engine)
    collector = Collector(factory, runtime.clock, FAST)
    db_file = runtime.db_url.removeprefix("sqlite:///")

    async def two_cycles():
        holder = sqlite3.connect(db_file, timeout=0)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            locked = await collector.run_cycle()
        finally:
            holder.rollback()
            holder.close()
        # a unit deleted while its heartbeats wait must not block the others
        with runtime.session_factory.begin() as s:
            s.execute(delete(Unit).where(Unit.serial == fleet[-1]))
        runtime.clock.advance(10)
        back = await collector.run_cycle()
        await collector.aclose()
        return locked, back

    locked, back = asyncio.run(two_cycles())
    engine.dispose()
    assert locked.db_error and "locked" in locked.db_error and locked.pending == 12 and locked.written == 0
    assert back.db_error is None and back.pending == 0
    assert back.written == 11 + 11  # both cycles' heartbeats of the 11 remaining units
    with runtime.session_factory() as s:
        per_unit = dict(s.execute(select(Unit.serial, func.count(Heartbeat.id)).join(Heartbeat).group_by(Unit.serial)).all())
    assert per_unit == {serial: 2 for serial in fleet[:-1]}


def test_cli_collect_once_json(runtime, fleet) -> None:
    from typer.testing import CliRunner

    from speakerops.cli import app

    result = CliRunner().invoke(app, ["collect", "--once", "--json", "--db-url", runtime.db_url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["polled"] == 12 and data["ok"] == 12 and data["failures"] == {}


def test_bad_shard_is_refused_with_a_clear_message(runtime) -> None:
    from typer.testing import CliRunner

    from speakerops.cli import app

    result = CliRunner().invoke(app, ["collect", "--once", "--shard", "3/2", "--db-url", runtime.db_url])
    assert result.exit_code == 1 and "between 1 and N" in result.stderr


def test_maintenance_runs_beside_the_next_cycle_and_finishes_before_stop(runtime, fleet, monkeypatch) -> None:
    """run() does rollups/alerts/pruning in a worker thread: a slow maintenance (a slow
    database, injected) neither lengthens the cycle nor runs twice at once, and stop waits for it."""
    collector = Collector(runtime.session_factory, runtime.clock, FAST)
    real_maintain = collector._maintain
    running, finished = threading.Event(), []

    def slow_maintain(now):
        running.set()
        time.sleep(1.5)
        real_maintain(now)
        finished.append(now)

    monkeypatch.setattr(collector, "_maintain", slow_maintain)

    async def go():
        first = await collector.run_cycle(background_maintenance=True)
        await asyncio.to_thread(running.wait, 5)
        runtime.clock.advance(10)
        second = await collector.run_cycle(background_maintenance=True)  # the first still maintains
        during = list(finished)
        await collector.wait_maintenance()
        await collector.aclose()
        return first, second, during

    first, second, during = asyncio.run(go())
    assert first.ok == second.ok == len(fleet)
    assert second.duration_s < 1.5 and during == []  # the cycle did not wait for the maintenance
    assert len(finished) == 1  # the second cycle's maintenance was skipped, not queued
    with runtime.session_factory() as s:  # the maintenance really ran: the built-in alert rules
        assert s.scalar(select(func.count()).select_from(AlertRule)) >= 1
    assert collector.last_maintenance_error is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_child_collector_stops_when_its_console_is_killed(runtime) -> None:
    """The console runs ``speakerops collect`` as a child with SPEAKEROPS_PARENT_PID; after a
    ``kill -9`` of the parent (no chance to stop it) the child notices and exits by itself."""
    import os
    import signal
    import subprocess
    import sys

    parent_code = (
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, SPEAKEROPS_PARENT_PID=str(os.getpid()))\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'speakerops.cli', 'collect', '--db-url', {runtime.db_url!r}],"
        " env=env, stdout=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the child is up and collecting: its status row is there
        with runtime.session_factory() as s:
            names = list(s.scalars(select(CollectorStatus.name)))
        if any(n.endswith(f":{child_pid}") for n in names):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the child collector wrote no status row ({names})")
    os.kill(child_pid, 0)  # still running while its parent lives
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        try:  # reap it if it was re-parented to us (a subreaper)
            os.waitpid(child_pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.5)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the collector kept running after its console was killed")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_console_collector_process_runs_nicer_and_stops(runtime) -> None:
    """The console's child collector runs COLLECTOR_NICE steps nicer than the console (the GUI
    thread gets the cores first) and ``stop`` ends it."""
    import os

    from console.app import COLLECTOR_NICE, CollectorProcess

    proc = CollectorProcess(runtime.db_url)
    proc.start()
    try:
        assert proc.is_running
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == os.getpriority(os.PRIO_PROCESS, 0) + COLLECTOR_NICE
    finally:
        proc.stop(10)
    assert not proc.is_running
