"""The console's read processes (console.read_process): the pages' reads in a child process with
its own database connection, on SQLite and PostgreSQL; failures arrive as themselves; a dead
child is replaced; the child ends with its parent."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.exc import OperationalError

from console.page_reads import load_fleet, load_service_flow
from console.read_process import CHILD_SESSIONS, FixedClock, ReadProcess, ReadProcessError, RemoteError
from fleet.models import Heartbeat, Unit
from fleet.slo import STAGES

REPO = Path(__file__).resolve().parents[1]


def _seed(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        for i in range(3):
            u = Unit(serial=f"SPK-R{i}", agent_url=f"http://127.0.0.1:1/{i}", status="online", site=f"site-{i % 2}",
                     created_at=now, updated_at=now, last_heartbeat_at=now, stt_version="stt-1")
            s.add(u)
            s.flush()
            for minutes in (6, 3, 0):
                s.add(Heartbeat(unit_id=u.id, received_at=now - timedelta(minutes=minutes), state="ok", uptime_s=60,
                                cpu_pct=10.0 * (i + 1) + minutes, temp_c=40, mem_pct=20, disk_free_mb=500,
                                mic_noise_dbfs=-60, wifi_rssi_dbm=-50, wake_false_accepts_per_h=0, requests=2,
                                errors=i, latency_ms={st: [100.0 * (i + 1)] * 2 for st in STAGES}))


@pytest.fixture
def reads(runtime):
    rp = ReadProcess(runtime.db_url, name="test-reads")
    yield rp
    rp.close()


def test_fleet_and_service_flow_read_in_the_child_equal_the_in_process_reads(runtime, clock, reads) -> None:
    _seed(runtime, clock)
    child = reads.call(load_fleet, CHILD_SESSIONS, FixedClock(clock()), "SPK-R1")
    here = load_fleet(runtime.session_factory, clock, "SPK-R1")
    assert reads.pid is not None and reads.pid != os.getpid()
    pd.testing.assert_frame_equal(child.frame, here.frame)
    assert child.frame["cpu_pct"].tolist() == [10.0, 20.0, 30.0]
    assert child.detail.serial == "SPK-R1" and child.detail.latest["cpu_pct"] == 20.0
    assert child.now == clock()

    flow = reads.call(load_service_flow, CHILD_SESSIONS, FixedClock(clock()), None, timedelta(hours=1), "site",
                      "test-cache")
    again = reads.call(load_service_flow, CHILD_SESSIONS, FixedClock(clock()), None, timedelta(hours=1), "site",
                       "test-cache")  # the named cache in the child: same figures
    local = load_service_flow(runtime.session_factory, clock, None, timedelta(hours=1), "site")
    for load in (flow, again):
        assert [s.requests for s in load.slo] == [s.requests for s in local.slo]
        pd.testing.assert_frame_equal(load.breakdown, local.breakdown)
        pd.testing.assert_frame_equal(load.health, local.health)
    assert flow.options["site"] == ["site-0", "site-1"]
    assert reads.calls == 3 and reads.starts == 1


def test_failures_come_back_as_themselves_and_the_child_keeps_serving(tmp_path, reads) -> None:
    with pytest.raises(ZeroDivisionError):
        reads.call(operator.truediv, 1, 0)
    with pytest.raises(RemoteError, match="could not be sent back"):
        reads.call(threading.Lock)  # a result that cannot be pickled
    with pytest.raises(Exception, match="pickle|lambda"):
        reads.call(lambda: 1)  # refused here, before anything is sent
    assert reads.call(operator.add, 2, 3) == 5
    assert reads.starts == 1


def test_a_database_that_cannot_be_opened_is_an_operational_error(tmp_path) -> None:
    # the database path is a directory: SQLite cannot open it
    rp = ReadProcess(f"sqlite:///{tmp_path}", name="test-bad-db")
    try:
        with pytest.raises(OperationalError):
            rp.call(load_fleet, CHILD_SESSIONS, FixedClock(pd.Timestamp.now(tz="UTC").to_pydatetime()), None)
    finally:
        rp.close()


def test_a_child_killed_mid_read_fails_that_read_and_the_next_gets_a_new_child(reads) -> None:
    first = reads.call(os.getpid)
    with pytest.raises(ReadProcessError, match="ended .* during"):
        reads.call(os.kill, first, signal.SIGKILL)
    second = reads.call(os.getpid)
    assert second != first and reads.starts == 2
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


def test_session_stand_in_refuses_use_outside_a_read_process() -> None:
    with pytest.raises(ReadProcessError, match="only usable inside a read process"):
        CHILD_SESSIONS()


def test_close_stops_the_child_and_refuses_further_reads(runtime) -> None:
    rp = ReadProcess(runtime.db_url, name="test-close")
    pid = rp.call(os.getpid)
    rp.close()
    assert rp.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ReadProcessError, match="closed"):
        rp.call(os.getpid)


def test_close_during_a_read_fails_that_read_instead_of_waiting_for_it(runtime) -> None:
    rp = ReadProcess(runtime.db_url, name="test-close-busy")
    rp.call(os.getpid)  # ready
    outcome: list[BaseException] = []

    def slow_read() -> None:
        try:
            rp.call(time.sleep, 30)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    t = threading.Thread(target=slow_read)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    rp.close()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 10
    assert isinstance(outcome[0], ReadProcessError)


def test_the_child_ends_when_its_parent_is_killed_and_never_runs_the_parents_script(tmp_path) -> None:
    script = ("import os, sys; sys.path.insert(0, %r)\n"
              "from console.read_process import ReadProcess\n"
              "rp = ReadProcess('sqlite:///%s')\n"
              "print(rp.call(os.getpid), flush=True)\n"
              "os.kill(os.getpid(), 9)\n") % (str(REPO), tmp_path / "x.db")
    # a script file without a __main__ guard: the child must not run it again
    path = tmp_path / "unguarded.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert len(out.stdout.split()) == 1, out.stdout + out.stderr
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"read process {child} outlived its parent")


def test_a_read_or_a_reply_that_cannot_be_unpickled_is_an_error_and_the_child_keeps_serving(
        tmp_path, monkeypatch, runtime) -> None:
    # a module only the console has: the child cannot unpickle a read of it
    here = tmp_path / "here"
    here.mkdir()
    (here / "only_in_console.py").write_text("def answer():\n    return 42\n")
    monkeypatch.syspath_prepend(str(here))
    import only_in_console

    # a module only the child has: the console cannot unpickle a reply of it
    there = tmp_path / "there"
    there.mkdir()
    (there / "only_in_child.py").write_text("class Figure:\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(there))
    rp = ReadProcess(runtime.db_url, name="test-unpickle")
    try:
        with pytest.raises(ModuleNotFoundError, match="only_in_console"):
            rp.call(only_in_console.answer)
        with pytest.raises(RemoteError, match="could not be read here.*only_in_child"):
            rp.call(eval, "__import__('only_in_child').Figure()")
        assert rp.call(operator.add, 2, 3) == 5
        assert rp.starts == 1
    finally:
        rp.close()
