"""Per-unit model updates over real OpenSSH units from the simulator, with real faults.

After every fault the unit runs either the old or the new version — read from its ``current``
symlink over SSH and from its agent's ``/v1/info`` — the result names the failed step and why,
and a re-run converges.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from fleet.settings import SshSettings
from fleet.signing import Signer
from fleet.simulator import Simulator
from fleet.ssh import SshConnector, UnitTarget
from fleet.unit_update import Step, default_health_check, inspect_unit, rollback_unit, update_unit
from inference_core.bundles import write_manifest
from speakerops.db import make_engine, make_session_factory, upgrade

pytestmark = pytest.mark.ssh

NEW = "stt-9.0.0"


def make_bundle(root: Path, signer: Signer | None, version: str = NEW, kind: str = "stt",
                size: int = 3 << 20) -> Path:
    """A small synthetic signed bundle: two files, one in a subdirectory."""
    d = root / kind / version
    (d / "lm").mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(size))
    (d / "lm" / "words.txt").write_text("turn on the lights\nwhat time is it\n")
    write_manifest(d, kind, version, {"synthetic": True})
    if signer is not None:
        signer.sign_bundle(d)
    return d


@pytest.fixture
def session_factory(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


class Fleet:
    """A running simulator with SSH units, a connector that trusts them, and a signed bundle."""

    def __init__(self, tmp_path: Path, session_factory, n_ssh: int = 2) -> None:
        self.sim = Simulator(6, seed=3, ssh_units=n_ssh, data_dir=tmp_path / "sim").start()
        self.signer = Signer.generate()
        for unit in self.sim.ssh_units:
            unit.trust_key(self.signer.public_pem, self.signer.key_id)
        self.settings = SshSettings(client_key_path=str(tmp_path / "sim" / "client_key"),
                                    connect_timeout_s=5, command_timeout_s=20)
        self.connector = SshConnector(session_factory, self.settings, trust_on_first_use=True)
        self.session_factory = session_factory
        self.bundle = make_bundle(tmp_path / "bundles", self.signer)
        self.health = default_health_check(self.sim.agent_url)

    def target(self, i: int = 0) -> UnitTarget:
        u = self.sim.ssh_units[i]
        return UnitTarget(u.serial, u.host, u.port, u.user, str(u.root))

    def update(self, i: int = 0, **kw):
        kw.setdefault("health_timeout_s", 15.0)
        kw.setdefault("timeout_s", 60.0)
        kw.setdefault("health_check", self.health)
        return update_unit(self.connector, self.session_factory, self.target(i), "stt", NEW,
                           kw.pop("bundle", self.bundle), **kw)

    def versions(self, i: int = 0) -> tuple[str | None, str]:
        """(current over SSH, stt version the agent's /v1/info reports)."""
        state = inspect_unit(self.connector, self.session_factory, self.target(i), "stt")
        info = httpx.get(self.sim.agent_url(self.sim.ssh_units[i].serial) + "/v1/info", timeout=5).json()
        return state.current, info["models"]["stt"]

    def close(self) -> None:
        self.sim.stop()


@pytest.fixture
def fleet(tmp_path, session_factory):
    f = Fleet(tmp_path, session_factory)
    yield f
    f.close()


def test_happy_path_then_rerun_is_a_no_op(fleet):
    old, _ = fleet.versions()
    steps = []
    res = fleet.update(on_step=lambda s, d: steps.append(s))
    assert res.ok, res.error
    assert res.step_reached == Step.DONE and not res.rolled_back and res.error is None
    assert res.previous_version == old and res.new_version == NEW
    assert res.bytes_sent > 3 << 20
    assert fleet.versions() == (NEW, NEW)
    order = [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s]
    assert order == [Step.CONNECT, Step.CHECK_SPACE, Step.UPLOAD, Step.VERIFY, Step.SWITCH, Step.RESTART,
                     Step.HEALTH_GATE, Step.DONE]
    state = inspect_unit(fleet.connector, None, fleet.target(), "stt")
    assert state.previous == old and NEW in state.installed and state.journal is None
    assert state.staged == ()
    root = fleet.sim.ssh_units[0].root
    assert (root / "models/stt" / NEW / "manifest.sig").is_file()

    again = fleet.update()
    assert again.ok and again.bytes_sent == 0 and again.previous_version == old
    assert fleet.versions() == (NEW, NEW)
    # rollback by hand goes back to the old version
    back = rollback_unit(fleet.connector, None, fleet.target(), "stt", "operator asked")
    assert back.ok and back.new_version == old and back.previous_version == NEW
    assert fleet.versions() == (old, old)
    # and forward again: the version is installed already, nothing is uploaded
    fwd = fleet.update()
    assert fwd.ok and fwd.bytes_sent == 0 and fleet.versions() == (NEW, NEW)


def test_connection_drop_mid_upload_resumes(fleet):
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]
    dropped = threading.Event()

    staged = unit.root / "staging/stt" / NEW / "model.bin"

    def on_step(step, detail):
        if step == Step.UPLOAD and detail.get("bytes_sent", 0) >= 2 << 20 and not dropped.is_set():
            dropped.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (not staged.exists() or staged.stat().st_size < 1 << 20):
                time.sleep(0.01)  # let the unit write the first MiB, then kill sshd and its sessions
            unit.inject("unreachable")

    res = fleet.update(on_step=on_step)
    assert not res.ok and res.step_reached == Step.UPLOAD
    assert "dropped" in res.error or "connect" in res.error
    first = res.bytes_sent
    assert first >= 1 << 20
    unit.clear("unreachable")  # back on the same port
    assert fleet.versions() == (old, old)
    partial = staged.stat().st_size
    assert 1 << 20 <= partial < 3 << 20
    res2 = fleet.update()
    assert res2.ok, res2.error
    assert res2.bytes_sent < (3 << 20) + 4096 - partial + 65536  # resumed, not started over
    assert fleet.versions() == (NEW, NEW)


def test_corrupted_upload_is_refused_then_rerun_converges(fleet):
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]

    def on_step(step, detail):
        if step == Step.VERIFY:
            unit.inject("corrupt", path=f"staging/stt/{NEW}/model.bin")

    res = fleet.update(on_step=on_step)
    assert not res.ok and res.step_reached == Step.VERIFY and not res.rolled_back
    assert "does not match its SHA-256" in res.error and "model.bin" in res.error
    assert fleet.versions() == (old, old)
    assert not (unit.root / "staging/stt" / NEW).exists()  # thrown away: the retry uploads again
    res2 = fleet.update()
    assert res2.ok and res2.bytes_sent > 3 << 20
    assert fleet.versions() == (NEW, NEW)


def test_unsigned_and_untrusted_bundles_are_refused_by_the_unit(fleet, tmp_path):
    old, _ = fleet.versions()
    unsigned = make_bundle(tmp_path / "unsigned", None, size=1000)
    res = fleet.update(bundle=unsigned)
    assert not res.ok and res.step_reached == Step.VERIFY and "not signed" in res.error
    other = make_bundle(tmp_path / "other", Signer.generate(), size=1000)
    res = fleet.update(bundle=other)
    assert not res.ok and res.step_reached == Step.VERIFY and "does not trust" in res.error
    altered = make_bundle(tmp_path / "altered", fleet.signer, size=1000)
    text = (altered / "manifest.json").read_text().replace('"synthetic": true', '"synthetic": false')
    (altered / "manifest.json").write_text(text)
    res = fleet.update(bundle=altered)
    assert not res.ok and res.step_reached == Step.VERIFY and "signature does not match" in res.error
    assert fleet.versions() == (old, old)


def test_full_disk_refused_before_upload(fleet):
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]
    try:
        unit.inject("disk_full", size_kb=256)  # a real tmpfs on staging/
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        res = fleet.update()
        assert not res.ok and res.step_reached == Step.CHECK_SPACE
        assert "not enough free space" in res.error and res.bytes_sent == 0
        assert fleet.versions() == (old, old)
        # with the space check relaxed the upload itself hits the full disk: still the old version
        res = fleet.update(space_margin_bytes=-(10 << 20))
        assert not res.ok and res.step_reached == Step.UPLOAD and "space" in res.error.lower()
        assert fleet.versions() == (old, old)
    finally:
        unit.clear("disk_full")
    res = fleet.update()
    assert res.ok, res.error
    assert fleet.versions() == (NEW, NEW)


def test_health_gate_failure_rolls_back(fleet):
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]
    unit.inject("unhealthy", version=NEW)
    res = fleet.update(health_timeout_s=4.0)
    assert not res.ok and res.rolled_back and res.step_reached == Step.HEALTH_GATE
    assert "health gate" in res.error and res.previous_version == old
    assert fleet.versions() == (old, old)
    state = inspect_unit(fleet.connector, None, fleet.target(), "stt")
    assert state.journal is None and NEW in state.installed
    unit.clear("unhealthy")
    res2 = fleet.update()
    assert res2.ok and res2.bytes_sent == 0  # installed already: no upload again
    assert fleet.versions() == (NEW, NEW)


def test_unreachable_unit_fails_at_connect(fleet):
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]
    unit.inject("unreachable")
    res = fleet.update()
    assert not res.ok and res.step_reached == Step.CONNECT and "cannot connect" in res.error
    unit.clear("unreachable")
    assert fleet.versions() == (old, old)
    assert fleet.update().ok and fleet.versions() == (NEW, NEW)


def test_changed_host_key_is_refused(fleet):
    old, _ = fleet.versions()  # trusted on first use here
    unit = fleet.sim.ssh_units[0]
    unit.inject("host_key_changed")
    res = fleet.update()
    assert not res.ok and res.step_reached == Step.CONNECT and "CHANGED" in res.error
    assert unit.host_key_fingerprint in res.error
    assert (unit.root / "models/stt/current").readlink().name == old


def test_unit_hanging_past_its_timeout_fails_and_rolls_back(fleet):
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]
    unit.inject("hang", seconds=120)
    res = fleet.update(timeout_s=8.0)
    assert not res.ok and res.rolled_back and res.step_reached == Step.RESTART
    assert "did not finish within" in res.error
    assert fleet.versions() == (old, old)
    res2 = fleet.update()
    assert res2.ok and fleet.versions() == (NEW, NEW)


def test_interrupted_after_switch_converges(fleet):
    """A crash between the switch and the restart: the journal says so, the re-run restarts and
    health-checks without uploading again."""
    old, _ = fleet.versions()
    unit = fleet.sim.ssh_units[0]

    class Crash(BaseException):
        pass

    def on_step(step, detail):
        if step == Step.RESTART:
            raise Crash  # the controlling process dies here

    with pytest.raises(Crash):
        fleet.update(on_step=_reraise(on_step))
    state = inspect_unit(fleet.connector, None, fleet.target(), "stt")
    assert state.current == NEW and state.journal["phase"] == "switched"
    res = fleet.update()
    assert res.ok and res.bytes_sent == 0 and res.previous_version == old
    assert fleet.versions() == (NEW, NEW)
    assert not (unit.root / "run/update-stt.json").exists()


def _reraise(fn):
    """on_step exceptions are swallowed; BaseException (a dying process) is not."""
    return fn


def test_cancelled_before_switch_leaves_unit_unchanged(fleet):
    old, _ = fleet.versions()
    seen = []
    res = fleet.update(on_step=lambda s, d: seen.append(s), cancelled=lambda: Step.VERIFY in seen)
    assert not res.ok and res.step_reached == Step.VERIFY and "cancelled" in res.error
    assert fleet.versions() == (old, old)


def test_bad_unit_does_not_stop_the_others(fleet):
    fleet.sim.ssh_units[1].inject("unreachable")
    results = [fleet.update(i) for i in (0, 1)]
    assert results[0].ok and not results[1].ok and results[1].step_reached == Step.CONNECT
    fleet.sim.ssh_units[1].clear()


def _established_to(port: int) -> int:
    """Open TCP connections to a local port right now (/proc/net/tcp, state 01 = ESTABLISHED)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "01" and int(cols[2].split(":")[1], 16) == port:
            count += 1
    return count


def test_health_gate_holds_no_ssh_session_and_no_slot(fleet):
    unit = fleet.sim.ssh_units[0]
    slot = threading.BoundedSemaphore(1)
    during_gate: list[tuple[bool, int]] = []

    def health(serial, kind, version):
        free = slot.acquire(blocking=False)
        if free:
            slot.release()
        during_gate.append((free, _established_to(unit.port)))
        return fleet.health(serial, kind, version)

    steps: list[Step] = []
    res = fleet.update(health_check=health, ssh_slot=slot, on_step=lambda s, d: steps.append(s))
    assert res.ok, res.error
    assert during_gate and all(free for free, _ in during_gate), during_gate
    conns = [c for _, c in during_gate]
    assert 0 in conns and all(c == 0 for c in conns[conns.index(0):]), conns  # closed (paramiko closes
    # the socket from its transport thread a moment later) and not reopened until the gate ended
    assert steps[-2:] == [Step.HEALTH_GATE, Step.DONE]
    assert slot.acquire(blocking=False)  # given back at the end
    slot.release()
    state = inspect_unit(fleet.connector, None, fleet.target(), "stt")
    assert state.journal is None and state.current == NEW  # the clean-up after the gate ran

    # a failing gate: the rollback takes a slot again (waits for it), then gives it back
    back = rollback_unit(fleet.connector, None, fleet.target(), "stt", "test")
    assert back.ok
    unit.inject("unhealthy", version=NEW)
    held = threading.Timer(1.0, slot.release)

    def health_then_hold(serial, kind, version):
        if held.ident is None and slot.acquire(blocking=False):
            held.start()  # another unit holds the only slot for a second
        return fleet.health(serial, kind, version)

    res = fleet.update(health_check=health_then_hold, ssh_slot=slot, health_timeout_s=4.0)
    assert not res.ok and res.rolled_back and res.step_reached == Step.HEALTH_GATE
    assert fleet.versions()[0] == back.new_version
    assert slot.acquire(blocking=False)
