"""Staged rollouts over real OpenSSH units from the simulator, on SQLite and PostgreSQL.

After every scenario each unit runs either the old or the new version — read from its agent's
``/v1/info`` — and the database (``units.stt_version``, ``rollout_units``) says which.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fleet.inventory import import_units
from fleet.models import ModelVersion, Unit
from fleet.rollout import RolloutRunner
from fleet.rollout_control import RolloutError, RolloutGateRefused, cancel, create_rollout, pause, resume, retry
from fleet.rollout_models import Rollout, RolloutGroup, RolloutUnit
from fleet.rollout_plan import RolloutPlan
from fleet.settings import SshSettings
from fleet.signing import Signer
from fleet.simulator import Simulator
from fleet.ssh import SshConnector
from inference_core.bundles import write_manifest
from speakerops import audit
from speakerops.timeutil import utc_now

pytestmark = pytest.mark.ssh

NEW = "stt-9.1.0"
REPO = Path(__file__).resolve().parents[1]


def make_bundle(root: Path, signer: Signer, kind: str = "stt", version: str = NEW, size: int = 2 << 20) -> Path:
    d = root / kind / version
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(size))
    write_manifest(d, kind, version, {"synthetic": True})
    signer.sign_bundle(d)
    return d


def register(session, bundle: Path, signer: Signer, *, passed: bool | None = True, kind: str = "stt",
             version: str = NEW) -> ModelVersion:
    """The registry row of a signed bundle (as ``speakerops models import`` leaves it)."""
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    sig = json.loads((bundle / "manifest.sig").read_text())
    mv = ModelVersion(kind=kind, version=version, files=manifest["files"],
                      artifact_bytes=sum(f["bytes"] for f in manifest["files"].values()),
                      manifest_sha256=sig["manifest_sha256"], signature=sig["signature"], key_id=sig["key_id"],
                      created_at=utc_now(), source_path=str(bundle), evaluation_passed=passed,
                      requirements=[{"key": "wer", "label": "WER ≤ 0.2", "passed": bool(passed)}])
    session.add(mv)
    return mv


class Lab:
    """A simulator with ``n_ssh`` real sshd units imported into the database, a signed bundle
    registered, and a connector/runner that reach the units."""

    def __init__(self, tmp_path: Path, runtime, n_ssh: int = 6, bundle_bytes: int = 2 << 20) -> None:
        self.rt = runtime
        self.sim_dir = tmp_path / "sim"
        self.sim = Simulator(n_ssh + 2, seed=7, ssh_units=n_ssh, data_dir=self.sim_dir).start()
        self.signer = Signer.generate()
        for u in self.sim.ssh_units:
            u.trust_key(self.signer.public_pem, self.signer.key_id)
        self.old = {u.serial: u.models()["stt"] for u in self.sim.ssh_units}
        with runtime.session_factory.begin() as s:
            report = import_units(s, self.sim.write_inventory(tmp_path / "inventory.csv"), runtime.clock)
            assert report.imported == n_ssh + 2
            self.bundle = make_bundle(tmp_path / "bundles", self.signer, size=bundle_bytes)
            register(s, self.bundle, self.signer)
        self.install_root = str(self.sim_dir / "units" / "{serial}" / "root")
        self.settings = SshSettings(client_key_path=str(self.sim_dir / "client_key"), connect_timeout_s=5,
                                    command_timeout_s=30, install_root=self.install_root)
        self.connector = SshConnector(runtime.session_factory, self.settings, trust_on_first_use=True)
        self.http = httpx.Client(timeout=5)

    def runner(self, **kw) -> RolloutRunner:
        kw.setdefault("poll_s", 0.1)
        return RolloutRunner(self.rt.session_factory, self.connector, utc_now, install_root=self.install_root, **kw)

    def plan(self, **kw) -> RolloutPlan:
        kw = {"kind": "stt", "version": NEW, "canary_units": 2, "waves_pct": [50, 100], "health_timeout_s": 20,
              "unit_timeout_s": 120, "gate": {"soak_s": 0}, **kw}
        return RolloutPlan(**kw)

    def create(self, **kw) -> int:
        with self.rt.session_factory.begin() as s:
            return create_rollout(s, self.plan(**kw), clock=utc_now).id

    def agent_versions(self) -> dict[str, str]:
        return {u.serial: self.http.get(self.sim.agent_url(u.serial) + "/v1/info").json()["models"]["stt"]
                for u in self.sim.ssh_units}

    def assert_consistent(self, rollout_id: int) -> dict[str, RolloutUnit]:
        """Every unit on the old or the new version; the database agrees; the counts are right."""
        agents = self.agent_versions()
        with self.rt.session_factory() as s:
            db = dict(s.execute(select(Unit.serial, Unit.stt_version)).all())
            rows = {u.serial: u for u in s.execute(
                select(RolloutUnit).where(RolloutUnit.rollout_id == rollout_id)).scalars()}
            r = s.get(Rollout, rollout_id)
            for serial, version in agents.items():
                assert version in (self.old[serial], NEW), (serial, version)
                assert db[serial] == version, (serial, db[serial], version)
                row = rows[serial]
                if row.state == "succeeded":
                    assert version == NEW and row.final_version == NEW
                elif row.state in ("pending", "cancelled", "failed", "rolled_back", "waiting_window"):
                    assert version == self.old[serial], (serial, row.state)
            states = [row.state for row in rows.values()]
            assert r.total_units == len(rows)
            assert r.succeeded_units == states.count("succeeded")
            assert r.failed_units == states.count("failed")
            assert r.cancelled_units == states.count("cancelled")
            assert r.rolled_back_units == states.count("rolled_back")
            assert "in_progress" not in states
        return rows

    def close(self) -> None:
        self.http.close()
        self.sim.stop()


@pytest.fixture
def lab(tmp_path, runtime):
    lab = Lab(tmp_path, runtime)
    yield lab
    lab.close()


def test_healthy_rollout_in_three_groups(lab):
    rid = lab.create()
    events: list[str] = []
    summary = lab.runner().run(rid, progress=lambda f, m: events.append(m))
    assert summary.state == "completed", summary
    assert sorted(summary.succeeded) == sorted(lab.old) and summary.failed == []
    rows = lab.assert_consistent(rid)
    assert set(lab.agent_versions().values()) == {NEW}
    assert all(r.attempts == 1 and r.step_reached == "done" and r.bytes_sent > 2 << 20 for r in rows.values())
    with lab.rt.session_factory() as s:
        r = s.get(Rollout, rid)
        assert r.counts() == {"total": 6, "succeeded": 6, "failed": 0, "rolled_back": 0, "skipped": 0,
                              "cancelled": 0}
        assert r.runner is None and r.finished_at is not None
        groups = list(s.execute(select(RolloutGroup).where(RolloutGroup.rollout_id == rid)
                                .order_by(RolloutGroup.index)).scalars())
        assert [(g.units, g.state) for g in groups] == [(2, "succeeded"), (1, "succeeded"), (3, "succeeded")]
        assert all(g.gate_result is not None and g.gate_result["passed"] for g in groups)
        by_group = {g.id: [u for u in rows.values() if u.group_id == g.id] for g in groups}
        for a, b in zip(groups, groups[1:]):  # a group starts only after the one before it finished
            assert max(u.finished_at for u in by_group[a.id]) <= min(u.started_at for u in by_group[b.id])
        actions = [e.action for e in audit.entries(s, target_kind="rollout", target_id=rid)]
        assert actions[::-1] == ["rollout.create", "rollout.start", "rollout.complete"]
        assert audit.verify(s).ok
    with pytest.raises(RolloutError, match="completed; nothing to run"):
        lab.runner().run(rid)


def test_unreachable_unit_trips_the_error_threshold_then_retry(lab):
    rid = lab.create(canary_units=2, max_parallel=1)
    with lab.rt.session_factory() as s:
        canary = [u.serial for u in s.execute(select(RolloutUnit).where(RolloutUnit.rollout_id == rid)
                                              .order_by(RolloutUnit.position)).scalars()][:2]
    dead = lab.sim.ssh_unit(canary[0])
    dead.inject("unreachable")
    summary = lab.runner().run(rid)
    assert summary.state == "paused" and summary.stopped_because == "paused"
    rows = lab.assert_consistent(rid)
    assert rows[canary[0]].state == "failed" and rows[canary[0]].step_reached == "connect"
    assert "connect" in rows[canary[0]].error
    assert [r.state for r in rows.values()].count("pending") == 5  # nothing after the failure started
    with lab.rt.session_factory() as s:
        r = s.get(Rollout, rid)
        assert r.pause_reason.startswith("error threshold: 1 of 1 finished units of group 0 (canary) failed")
        pause_entry = audit.entries(s, action_prefix="rollout.pause")[0]
        assert pause_entry.actor == "rollout-runner" and pause_entry.reason == r.pause_reason

    dead.clear("unreachable")
    with lab.rt.session_factory.begin() as s:
        assert retry(s, rid, clock=utc_now) == 1
    summary = lab.runner().run(rid)
    assert summary.state == "completed", summary
    rows = lab.assert_consistent(rid)
    assert rows[canary[0]].attempts == 2 and rows[canary[0]].state == "succeeded"
    assert all(r.attempts == 1 for s, r in rows.items() if s != canary[0])
    assert set(lab.agent_versions().values()) == {NEW}


def test_pause_resume_cancel_from_another_session(lab):
    rid = lab.create(canary_units=2, waves_pct=[50, 100], max_parallel=1)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(s=lab.runner().run(rid, wait_while_paused=True)))
    thread.start()

    def wait_for(predicate, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached"
            assert thread.is_alive() or predicate(), "runner stopped early"
            time.sleep(0.05)

    def states() -> list[str]:
        with lab.rt.session_factory() as s:
            return [u.state for u in s.execute(select(RolloutUnit).where(RolloutUnit.rollout_id == rid)
                                               .order_by(RolloutUnit.position)).scalars()]

    try:
        wait_for(lambda: states()[0] == "in_progress")
        with lab.rt.session_factory.begin() as s:  # a second session, as another process would
            pause(s, rid, "checking the canary by hand", clock=utc_now)
        wait_for(lambda: states()[0] == "succeeded")  # the unit in flight finishes
        time.sleep(1.0)
        assert states()[1:] == ["pending"] * 5  # nothing new starts while paused
        with lab.rt.session_factory.begin() as s:
            resume(s, rid, clock=utc_now)
        wait_for(lambda: states()[2] == "in_progress")  # group 1 under way
        with lab.rt.session_factory.begin() as s:
            cancel(s, rid, "wrong version", clock=utc_now)
        thread.join(120)
        assert not thread.is_alive()
    finally:
        if thread.is_alive():
            with lab.rt.session_factory.begin() as s:
                r = s.get(Rollout, rid)
                r.state = "cancelling"
            thread.join(120)
    assert box["s"].state == "cancelled"
    final = states()
    assert final[:3] == ["succeeded"] * 3 and final[3:] == ["cancelled"] * 3
    lab.assert_consistent(rid)
    with lab.rt.session_factory() as s:
        actions = [e.action for e in audit.entries(s, target_kind="rollout", target_id=rid)][::-1]
        assert actions == ["rollout.create", "rollout.start", "rollout.pause", "rollout.resume", "rollout.cancel",
                           "rollout.cancelled"]
        assert s.get(Rollout, rid).state == "cancelled"
    with lab.rt.session_factory.begin() as s, pytest.raises(RolloutError, match="is cancelled"):
        resume(s, rid, clock=utc_now)


def test_gate_refuses_a_failed_evaluation_unless_overridden(lab):
    with lab.rt.session_factory.begin() as s:
        bad = make_bundle(lab.sim_dir.parent / "bad", lab.signer, version="stt-9.2.0")
        register(s, bad, lab.signer, passed=False, version="stt-9.2.0")
    plan = lab.plan(version="stt-9.2.0")
    with lab.rt.session_factory.begin() as s, pytest.raises(RolloutGateRefused, match="override"):
        create_rollout(s, plan, clock=utc_now)
    with lab.rt.session_factory.begin() as s:
        r = create_rollout(s, plan, clock=utc_now, override_reason="hotfix for the wake word; WER regression known")
        rid = r.id
    with lab.rt.session_factory() as s:
        assert s.get(Rollout, rid).gate_override_reason.startswith("hotfix")
        assert audit.entries(s, action_prefix="rollout.gate_override")[0].reason.startswith("hotfix")
    with lab.rt.session_factory.begin() as s, pytest.raises(RolloutError, match="not in the model registry"):
        create_rollout(s, lab.plan(version="stt-0.0.0"), clock=utc_now)


def _cli_env(lab) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SPEAKEROPS_DB_URL=lab.rt.db_url, SPEAKEROPS_SSH_CLIENT_KEY_PATH=str(lab.sim_dir / "client_key"),
               SPEAKEROPS_SSH_INSTALL_ROOT=lab.install_root, SPEAKEROPS_SSH_TRUST_ON_FIRST_USE="1",
               PYTHONUNBUFFERED="1")
    return env


@pytest.mark.parametrize("then", ["resume", "cancel"])
def test_runner_killed_mid_rollout_resumes_without_redoing_units(tmp_path, runtime, then):
    """kill -9 of `speakerops rollout run` with a unit in flight after the first group; then run it
    again (or cancel it from another process first: the unit left in flight still converges)."""
    lab = Lab(tmp_path, runtime, bundle_bytes=8 << 20)
    try:
        rid = lab.create(canary_units=2, waves_pct=[50, 100], max_parallel=2)
        cmd = [sys.executable, "-m", "speakerops.cli", "rollout", "run", str(rid)]
        proc = subprocess.Popen(cmd, env=_cli_env(lab), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        killed_in_flight: list[str] = []
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                with lab.rt.session_factory() as s:
                    g0 = s.execute(select(RolloutGroup).where(RolloutGroup.rollout_id == rid,
                                                              RolloutGroup.index == 0)).scalar_one()
                    flying = [u.serial for u in s.execute(select(RolloutUnit).where(
                        RolloutUnit.rollout_id == rid, RolloutUnit.state == "in_progress",
                        RolloutUnit.group_id != g0.id)).scalars()]
                if g0.state == "succeeded" and flying:
                    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 mid-rollout, a unit in flight
                    killed_in_flight = flying
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
        assert killed_in_flight, f"the runner never reached group 1:\n{out}"
        with lab.rt.session_factory() as s:
            before = {u.serial: (u.state, u.attempts, u.started_at, u.finished_at) for u in s.execute(
                select(RolloutUnit).where(RolloutUnit.rollout_id == rid)).scalars()}
            assert s.get(Rollout, rid).state == "running"
        finished = {k: v for k, v in before.items() if v[0] == "succeeded"}
        assert len(finished) >= 2 and all(before[s][0] == "in_progress" for s in killed_in_flight)

        if then == "cancel":
            cancelled = subprocess.run([sys.executable, "-m", "speakerops.cli", "rollout", "cancel", str(rid), "--json"],
                                       env=_cli_env(lab), cwd=REPO, capture_output=True, timeout=120)
            assert cancelled.returncode == 0, cancelled.stderr.decode()
            assert json.loads(cancelled.stdout)["state"] == "cancelling"  # a unit is still in flight
        again = subprocess.run(cmd + ["--json"], env=_cli_env(lab), cwd=REPO, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stderr.decode()
        assert json.loads(again.stdout)["state"] == ("completed" if then == "resume" else "cancelled")
        rows = lab.assert_consistent(rid)
        for serial, (state, attempts, started, ended) in finished.items():  # not redone
            assert (rows[serial].attempts, rows[serial].started_at, rows[serial].finished_at) == \
                (attempts, started, ended)
        for serial in killed_in_flight:  # re-run through update_unit, which converged
            assert rows[serial].attempts == 2 and rows[serial].state == "succeeded"
        if then == "cancel":
            untouched = set(rows) - set(finished) - set(killed_in_flight)
            assert {rows[s].state for s in untouched} == {"cancelled"}
            assert all(rows[s].attempts == 0 for s in untouched)
            with lab.rt.session_factory() as s:
                assert s.get(Rollout, rid).state == "cancelled"
            return
        assert {r.state for r in rows.values()} == {"succeeded"}
        assert set(lab.agent_versions().values()) == {NEW}
        with lab.rt.session_factory() as s:
            r = s.get(Rollout, rid)
            assert r.state == "completed" and r.succeeded_units == r.total_units == 6
    finally:
        lab.close()


def test_worker_processes_and_the_voice_quality_gate_pause(lab):
    """Units updated by worker processes; then the gate, fed real heartbeats as the collector
    would store them, finds the updated canary worse than the units not yet updated and pauses."""
    from datetime import timedelta

    from tests.test_rollout_plan import heartbeats

    rid = lab.create(canary_units=2, waves_pct=[100], max_parallel=2,
                     gate={"soak_s": 2.0, "min_requests": 30})
    fed: list[bool] = []

    def progress(fraction: float, message: str) -> None:
        if "voice-quality gate at" in message and not fed:  # group 0 done, soaking: a heartbeat arrives (received now + 0.5 s)
            with lab.rt.session_factory.begin() as s:
                rows = {u.serial: u.state for u in s.execute(
                    select(RolloutUnit).where(RolloutUnit.rollout_id == rid)).scalars()}
                now = utc_now()
                for unit in s.execute(select(Unit).where(Unit.serial.in_(list(rows)))).scalars():
                    bad = rows[unit.serial] == "succeeded"
                    heartbeats(s, unit, now - timedelta(seconds=9.5), 1, requests=40, errors=8 if bad else 0,
                               e2e_ms=2600 if bad else 1700, wake_fa=0.3)
            fed.append(True)

    summary = lab.runner(workers="processes").run(rid, progress=progress)
    with lab.rt.session_factory() as s:
        gates = [g.gate_result for g in s.execute(select(RolloutGroup).where(RolloutGroup.rollout_id == rid)).scalars()]
    assert fed and summary.state == "paused", (summary, gates)
    rows = lab.assert_consistent(rid)
    assert [r.state for r in rows.values()].count("succeeded") == 2
    assert all(r.attempts == 1 and r.step_reached == "done" for r in rows.values() if r.state == "succeeded")
    with lab.rt.session_factory() as s:
        r = s.get(Rollout, rid)
        assert r.pause_reason.startswith("voice-quality gate: updated units worse than 4 units not yet updated")
        assert "error rate 20.00% vs 0.00%" in r.pause_reason and "p95 end-to-end latency" in r.pause_reason
        g0 = s.execute(select(RolloutGroup).where(RolloutGroup.rollout_id == rid, RolloutGroup.index == 0)).scalar_one()
        assert g0.gate_result["passed"] is False and g0.gate_result["group"]["requests"] == 80
        entry = audit.entries(s, action_prefix="rollout.pause")[0]
        assert entry.actor == "rollout-runner" and entry.reason == r.pause_reason
    with lab.rt.session_factory.begin() as s:  # the operator accepts the figures
        resume(s, rid, clock=utc_now)
    summary = lab.runner(workers="processes").run(rid)
    assert summary.state == "completed", summary
    lab.assert_consistent(rid)
    assert set(lab.agent_versions().values()) == {NEW}


def test_parallel_limit_counts_ssh_sessions_not_units_in_their_gate(lab):
    """K = 1: never two SSH sessions open at once, yet a unit in its health gate (which only polls
    the agent) does not hold up the next unit."""
    rid = lab.create(canary_units=0, waves_pct=[100], max_parallel=1, gate={"enabled": False})
    open_now, peak, lock = [0], [0], threading.Lock()
    real_connect = lab.connector.connect

    def counting_connect(target, timeout_s=None):  # the real connector, sessions counted
        session = real_connect(target, timeout_s)
        with lock:
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
        real_close = session.close

        def close() -> None:
            with lock:
                open_now[0] -= 1
            real_close()

        session.close = close
        return session

    lab.connector.connect = counting_connect
    overlaps: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:  # units in flight at once, as the database says
        while not stop.is_set():
            with lab.rt.session_factory() as s:
                steps = [u.step_reached for u in s.execute(select(RolloutUnit).where(
                    RolloutUnit.rollout_id == rid, RolloutUnit.state == "in_progress")).scalars()]
            if len(steps) > 1:
                overlaps.append(steps)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        summary = lab.runner().run(rid)
    finally:
        stop.set()
        watcher.join()
    assert summary.state == "completed", summary
    assert peak[0] == 1 and open_now[0] == 0
    assert any("health_gate" in steps for steps in overlaps), overlaps
    rows = lab.assert_consistent(rid)
    assert all(r.state == "succeeded" and r.attempts == 1 for r in rows.values())
