"""Key rotation on real OpenSSH units from the simulator, through the CLI, on SQLite and PostgreSQL:
the signing key (trust pushed by every update and by ``keys push-trust``) and the fleet SSH key
(per-unit switch, one unit unreachable, the previous key kept and still used, ``--finish``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fleet.errors import SshAuthFailed
from fleet.inventory import import_units
from fleet.keys import LAB_ENV, PASSPHRASE_ENV, to_paramiko
from fleet.registry import import_bundle, registry_root
from fleet.settings import SshSettings
from fleet.signing import TRUSTED_KEYS_DIR, KeyStore
from fleet.simulator import Simulator
from fleet.ssh import SshConnector, UnitTarget
from fleet.unit_update import default_health_check, update_unit
from inference_core.bundles import write_manifest
from speakerops.audit import AuditEntry
from speakerops.settings import CoreSettings

pytestmark = pytest.mark.ssh


class Lab:
    """3 sshd units imported into the database; an encrypted key store (no lab opt-in)."""

    def __init__(self, tmp_path: Path, runtime, monkeypatch) -> None:
        monkeypatch.delenv(LAB_ENV, raising=False)
        monkeypatch.setenv(PASSPHRASE_ENV, "fleet keys passphrase")
        self.rt = runtime
        self.tmp = tmp_path
        self.sim_dir = tmp_path / "sim"
        self.sim = Simulator(4, seed=11, ssh_units=3, data_dir=self.sim_dir).start()
        self.units = self.sim.ssh_units
        with runtime.session_factory.begin() as s:
            import_units(s, self.sim.write_inventory(tmp_path / "inventory.csv"), runtime.clock)
        self.install_root = str(self.sim_dir / "units" / "{serial}" / "root")
        monkeypatch.setenv("SPEAKEROPS_SSH_INSTALL_ROOT", self.install_root)
        monkeypatch.setenv("SPEAKEROPS_SSH_TRUST_ON_FIRST_USE", "true")
        monkeypatch.setenv("SPEAKEROPS_SSH_CONNECT_TIMEOUT_S", "5")
        self.data_dir = CoreSettings().data_dir

    def cli(self, *args: str):
        import speakerops.cli

        return CliRunner().invoke(speakerops.cli.app, [*args, "--db-url", self.rt.db_url])

    def target(self, i: int) -> UnitTarget:
        u = self.units[i]
        return UnitTarget(u.serial, u.host, u.port, u.user, str(u.root))

    def connector(self, **settings) -> SshConnector:
        return SshConnector(self.rt.session_factory, SshSettings(connect_timeout_s=5, command_timeout_s=20,
                                                                 install_root=self.install_root, **settings),
                            data_dir=self.data_dir, trust_on_first_use=True)

    def trusted_on(self, i: int) -> set[str]:
        return {p.stem for p in (self.units[i].root / TRUSTED_KEYS_DIR).glob("*.pub")}

    def audit(self, prefix: str) -> list[AuditEntry]:
        with self.rt.session_factory() as s:
            return list(s.scalars(select(AuditEntry).where(AuditEntry.action.startswith(prefix))
                                  .order_by(AuditEntry.id)))


@pytest.fixture
def lab(tmp_path, runtime, monkeypatch):
    lab = Lab(tmp_path, runtime, monkeypatch)
    yield lab
    lab.sim.stop()


def make_bundle(root: Path, version: str, signer) -> Path:
    d = root / "stt" / version
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(256 << 10))
    write_manifest(d, "stt", version, {"synthetic": True})
    signer.sign_bundle(d)
    return d


def verify_on(unit, bundle: Path) -> subprocess.CompletedProcess:
    """The unit's own bin/verify-bundle on a bundle (its trusted keys decide)."""
    return subprocess.run([str(unit.root / "bin" / "verify-bundle"), str(bundle)], capture_output=True, text=True)


def test_rotate_signing_then_update_pushes_trust_to_a_unit_that_only_knew_the_old_key(lab, monkeypatch):
    store = KeyStore(lab.data_dir)
    old = store.signer()
    for u in lab.units:
        u.trust_key(old.public_pem, old.key_id)
    monkeypatch.setenv("SPEAKEROPS_SSH_CLIENT_KEY_PATH", str(lab.sim_dir / "client_key"))  # the user's own key file

    r = lab.cli("keys", "rotate-signing", "--no-push", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    new_id = data["current"]
    assert data["previous"] == old.key_id != new_id and sorted(data["trusted"]) == sorted([old.key_id, new_id])
    assert all(lab.trusted_on(i) == {old.key_id} for i in range(3))  # units missed the rotation

    # new imports are signed with the new key
    src = make_bundle(lab.tmp / "src", "stt-9.2.0", old)
    with lab.rt.session_factory.begin() as s:
        mv = import_bundle(s, src, registry_root(lab.data_dir), KeyStore(lab.data_dir).signer(), lab.rt.clock)
        assert mv.key_id == new_id
        bundle = Path(mv.source_path)
    assert "does not trust" in verify_on(lab.units[0], bundle).stderr  # the unit alone would refuse it

    connector = lab.connector(client_key_path=str(lab.sim_dir / "client_key"))
    res = update_unit(connector, lab.rt.session_factory, lab.target(0), "stt", "stt-9.2.0", bundle,
                      health_check=default_health_check(lab.sim.agent_url), health_timeout_s=15, timeout_s=60)
    assert res.ok, res.error
    assert lab.units[0].models()["stt"] == "stt-9.2.0"
    assert lab.trusted_on(0) == {old.key_id, new_id}  # learnt during the update; the old one kept

    # a bundle signed with the old key still installs: the old key stays trusted
    legacy = make_bundle(lab.tmp / "legacy", "stt-9.1.5", old)
    res = update_unit(connector, lab.rt.session_factory, lab.target(1), "stt", "stt-9.1.5", legacy,
                      health_check=default_health_check(lab.sim.agent_url), health_timeout_s=15, timeout_s=60)
    assert res.ok, res.error

    # push-trust: every unit now, per unit (one unreachable: reported, the others go on)
    lab.units[2].inject("unreachable")
    r = lab.cli("keys", "push-trust", "--json")
    assert r.exit_code == 2, r.output
    units = json.loads(r.stdout)["units"]
    assert units[lab.units[0].serial]["ok"] and units[lab.units[1].serial]["ok"]
    assert not units[lab.units[2].serial]["ok"] and "cannot connect" in units[lab.units[2].serial]["detail"]
    lab.units[2].clear()
    r = lab.cli("keys", "push-trust")
    assert r.exit_code == 0, r.output
    assert all(lab.trusted_on(i) == {old.key_id, new_id} for i in range(3))
    assert verify_on(lab.units[2], bundle).returncode == 0

    actions = [e.action for e in lab.audit("keys.")]
    assert actions == ["keys.rotate_signing", "keys.push_trust", "keys.push_trust"]
    assert lab.audit("keys.push_trust")[0].after["units"][lab.units[2].serial]["ok"] is False
    for p in (lab.data_dir / "keys").iterdir():
        assert b"PRIVATE KEY" not in p.read_bytes(), p


def test_rotate_ssh_with_one_unit_unreachable_keeps_the_previous_key_until_finish(lab):
    sim_key = lab.sim_dir / "client_key"
    old_blob = sim_key.with_suffix(".pub").read_text().split()[1]
    r = lab.cli("keys", "import-ssh", str(sim_key), "--json")
    assert r.exit_code == 0, r.output
    s0, s1, s2 = (u.serial for u in lab.units)

    lab.units[2].inject("unreachable")
    r = lab.cli("keys", "rotate-ssh", "--json")
    assert r.exit_code == 2, r.output  # partial: two switched, one reported
    data = json.loads(r.stdout)
    assert data["units"][s0]["ok"] and data["units"][s1]["ok"], data
    assert not data["units"][s2]["ok"] and "cannot connect" in data["units"][s2]["detail"]
    assert data["pending"] == [s2]
    store = KeyStore(lab.data_dir)
    new_line = store.ssh_current().public
    new_blob = new_line.split()[1]
    for u in lab.units[:2]:
        text = u.authorized_keys.read_text()
        assert new_blob in text and old_blob not in text
    assert old_blob in lab.units[2].authorized_keys.read_text()
    assert new_blob not in lab.units[2].authorized_keys.read_text()

    r = lab.cli("keys", "rotate-ssh", "--finish")
    assert r.exit_code == 1 and s2 in r.output and "previous key is kept" in r.output
    assert KeyStore(lab.data_dir).ssh_previous().key_id == data["from"]
    r = lab.cli("keys", "status", "--json")
    status = json.loads(r.stdout)
    assert status["ssh"]["units_pending"] == [s2] and status["backend"] == "file"
    assert status["protection"] == "passphrase" and status["ssh"]["in_use"] == "store"

    # rollouts keep working: the connector reaches switched units with the new key, the missed one
    # with the previous key
    lab.units[2].clear()
    connector = lab.connector()
    for i in range(3):
        with connector.connect(lab.target(i)) as s:
            assert s.run("echo ok").stdout == "ok\n"
    new_key = to_paramiko(next(k for info, k in store.ssh_private_keys() if info.key_id == data["to"]))
    with pytest.raises(SshAuthFailed, match="refused"):
        connector.connect(lab.target(2), pkey=new_key)

    r = lab.cli("keys", "rotate-ssh", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)["units"]
    assert again[s0]["detail"] == "already switched" and again[s2]["ok"]
    assert old_blob not in lab.units[2].authorized_keys.read_text()
    r = lab.cli("keys", "rotate-ssh", "--finish", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["removed"] == data["from"]
    store = KeyStore(lab.data_dir)
    assert store.ssh_previous() is None and [i.key_id for i, _ in store.ssh_private_keys()] == [data["to"]]
    connector = lab.connector()
    for i in range(3):
        with connector.connect(lab.target(i)) as s:
            assert s.run("echo ok").stdout == "ok\n"

    rotations = lab.audit("keys.rotate_ssh")
    assert [e.action for e in rotations] == ["keys.rotate_ssh", "keys.rotate_ssh", "keys.rotate_ssh_finish"]
    assert rotations[0].after["units"][s2]["ok"] is False and rotations[0].after["started"] is True
    assert rotations[1].after["units"][s2]["ok"] is True
    assert len(lab.audit("keys.import_ssh")) == 1
    for p in (lab.data_dir / "keys").iterdir():
        assert b"PRIVATE KEY" not in p.read_bytes(), p


def test_rotate_ssh_refuses_a_user_key_file_and_reports_units_without_store(lab, monkeypatch):
    monkeypatch.setenv("SPEAKEROPS_SSH_CLIENT_KEY_PATH", str(lab.sim_dir / "client_key"))
    r = lab.cli("keys", "rotate-ssh")
    assert r.exit_code == 1 and "import-ssh" in r.output
    monkeypatch.delenv("SPEAKEROPS_SSH_CLIENT_KEY_PATH")
    monkeypatch.delenv(PASSPHRASE_ENV)
    r = lab.cli("keys", "rotate-ssh")  # no key yet, and nothing may be stored in plain text
    assert r.exit_code == 1 and PASSPHRASE_ENV in r.output
    with pytest.raises(SshAuthFailed, match="import-ssh"):
        lab.connector().connect(lab.target(0))
