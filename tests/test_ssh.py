"""The SSH layer against real OpenSSH units: known hosts in the database (both backends), commands
with timeouts, paths confined to the install root, resumable uploads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fleet.errors import (
    FleetError,
    HostKeyChanged,
    HostKeyUnknown,
    RemoteCommandError,
    RemotePathError,
    SshAuthFailed,
    UnitUnreachable,
)
from fleet.models import KnownHost
from fleet.settings import SshSettings
from fleet.simulator import Simulator
from fleet.ssh import SshConnector, UnitTarget, approve, list_host_keys
from speakerops.audit import AuditEntry

pytestmark = pytest.mark.ssh


@pytest.fixture
def sim(tmp_path):
    with Simulator(3, seed=5, ssh_units=1, data_dir=tmp_path / "sim") as s:
        yield s


def target_of(sim) -> UnitTarget:
    u = sim.ssh_units[0]
    return UnitTarget(u.serial, u.host, u.port, u.user, str(u.root))


def connector(runtime, tmp_path, **kw) -> SshConnector:
    settings = SshSettings(client_key_path=str(tmp_path / "sim" / "client_key"), connect_timeout_s=5,
                           command_timeout_s=10)
    return SshConnector(runtime.session_factory, settings, clock=runtime.clock, **kw)


def test_unknown_key_is_pending_until_approved_then_a_changed_key_is_refused(runtime, sim, tmp_path):
    conn = connector(runtime, tmp_path)
    target = target_of(sim)
    unit = sim.ssh_units[0]
    with pytest.raises(HostKeyUnknown) as err:
        conn.connect(target)
    assert err.value.fingerprint == unit.host_key_fingerprint
    assert "approve-host-key" in str(err.value)
    with runtime.session_factory() as s:
        row = s.scalars(select(KnownHost)).one()
        assert (row.serial, row.state, row.fingerprint, row.port) == (unit.serial, "pending",
                                                                     unit.host_key_fingerprint, unit.port)
    with pytest.raises(HostKeyUnknown):  # still pending: still refused, still one row
        conn.connect(target)
    with runtime.session_factory.begin() as s:
        with pytest.raises(FleetError, match="has been seen"):
            approve(s, unit.serial, "SHA256:" + "A" * 43, actor="kim")
    with runtime.session_factory.begin() as s:
        approve(s, unit.serial, unit.host_key_fingerprint.removeprefix("SHA256:"), actor="kim",
                clock=runtime.clock)
    with conn.connect(target) as session:
        assert session.run("echo hi").stdout == "hi\n"

    old_fp = unit.host_key_fingerprint
    unit.inject("host_key_changed")
    with pytest.raises(HostKeyChanged) as err:
        conn.connect(target)
    assert err.value.expected == old_fp and err.value.fingerprint == unit.host_key_fingerprint
    with runtime.session_factory.begin() as s:
        states = {r.fingerprint: r.state for r in list_host_keys(s, unit.serial)}
        assert states == {old_fp: "approved", unit.host_key_fingerprint: "refused"}
        with pytest.raises(FleetError, match="--replace"):
            approve(s, unit.serial, unit.host_key_fingerprint, actor="kim")
    # TOFU never overrides a changed key
    with pytest.raises(HostKeyChanged):
        connector(runtime, tmp_path, trust_on_first_use=True).connect(target)
    with runtime.session_factory.begin() as s:  # re-imaged unit: replace, audited
        approve(s, unit.serial, unit.host_key_fingerprint, actor="kim", replace=True, clock=runtime.clock)
    with conn.connect(target) as session:
        assert session.run("true").status == 0
    with runtime.session_factory() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "host_key.approve")).all()
        assert [e.actor for e in entries] == ["kim", "kim"]
        assert entries[-1].reason == f"replaces {old_fp}"


def test_trust_on_first_use_is_opt_in_and_audited(runtime, sim, tmp_path):
    conn = connector(runtime, tmp_path, trust_on_first_use=True)
    with conn.connect(target_of(sim)) as session:
        assert session.run("true").status == 0
    with runtime.session_factory() as s:
        assert s.scalars(select(KnownHost)).one().approved_by == "trust-on-first-use"
        assert s.scalars(select(AuditEntry)).one().actor == "trust-on-first-use"


def test_cli_approve_host_key(runtime, sim, tmp_path):
    import speakerops.cli

    with pytest.raises(HostKeyUnknown) as err:
        connector(runtime, tmp_path).connect(target_of(sim))
    runner = CliRunner()
    res = runner.invoke(speakerops.cli.app, ["units", "host-keys", "--json", "--db-url", runtime.db_url])
    assert res.exit_code == 0 and '"state": "pending"' in res.output
    res = runner.invoke(speakerops.cli.app, ["units", "approve-host-key", sim.ssh_units[0].serial,
                                             err.value.fingerprint, "--db-url", runtime.db_url])
    assert res.exit_code == 0, res.output
    res = runner.invoke(speakerops.cli.app, ["units", "approve-host-key", "SPK-999999", "SHA256:x",
                                             "--db-url", runtime.db_url])
    assert res.exit_code == 1 and "has been seen" in res.output
    with connector(runtime, tmp_path).connect(target_of(sim)) as session:
        assert session.run("true").status == 0


def test_commands_paths_and_uploads(runtime, sim, tmp_path):
    conn = connector(runtime, tmp_path, trust_on_first_use=True)
    unit = sim.ssh_units[0]
    with conn.connect(target_of(sim)) as s:
        status, out, err = s.run("echo out; echo err >&2; exit 3")
        assert (status, out, err) == (3, "out\n", "err\n")
        with pytest.raises(RemoteCommandError, match="exited 3"):
            s.run("exit 3", check=True)
        with pytest.raises(RemoteCommandError, match="did not finish within 0.5 s"):
            s.run("sleep 30", timeout_s=0.5)
        assert s.run("echo still usable").stdout == "still usable\n"

        root = str(unit.root.resolve())
        assert s.resolve("models/stt/current").startswith(root + "/models/stt/")
        assert s.resolve("staging/new/dir/file") == root + "/staging/new/dir/file"
        assert s.resolve(root + "/logs") == root + "/logs"
        for bad in ("../etc/passwd", "models/../../x", "/etc/passwd"):
            with pytest.raises(RemotePathError):
                s.resolve(bad)
        os.symlink("/etc", unit.root / "escape")
        with pytest.raises(RemotePathError, match="outside the install root"):
            s.resolve("escape/passwd")

        local = tmp_path / "blob.bin"
        local.write_bytes(os.urandom(5 << 20))
        remote = unit.root / "staging" / "blob.bin"
        remote.write_bytes(local.read_bytes()[: 2 << 20])  # a partial file from an earlier attempt
        seen = []
        sent = s.upload(local, "staging/blob.bin", progress=seen.append)
        assert sent == 3 << 20 and seen[-1] == sent
        assert remote.read_bytes() == local.read_bytes()
        assert s.upload(local, "staging/blob.bin") == 0  # complete: skipped
        remote.write_bytes(b"x" * (6 << 20))  # longer than the file: written again
        assert s.upload(local, "staging/blob.bin") == 5 << 20
        assert remote.read_bytes() == local.read_bytes()


def test_unreachable_and_bad_key(runtime, sim, tmp_path):
    target = target_of(sim)
    sim.ssh_units[0].inject("unreachable")
    with pytest.raises(UnitUnreachable, match="cannot connect"):
        connector(runtime, tmp_path, trust_on_first_use=True).connect(target)
    sim.ssh_units[0].clear()
    bad = tmp_path / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad)], check=True)
    settings = SshSettings(client_key_path=str(bad), connect_timeout_s=5)
    with pytest.raises(SshAuthFailed, match="refused the client key"):
        SshConnector(runtime.session_factory, settings, trust_on_first_use=True).connect(target)
    with pytest.raises(SshAuthFailed, match="cannot read"):
        SshConnector(runtime.session_factory, SshSettings(client_key_path=str(tmp_path / "none")),
                     trust_on_first_use=True).connect(target)
    assert Path(tmp_path / "sim" / "client_key").exists()


def test_scripts_share_one_shell_and_uploads_checked_by_size(runtime, sim, tmp_path):
    conn = connector(runtime, tmp_path, trust_on_first_use=True)
    unit = sim.ssh_units[0]
    with conn.connect(target_of(sim)) as s:
        assert s.client.get_transport().remote_cipher == "aes128-gcm@openssh.com"  # PREFERRED_CIPHERS
        res = s.run_script("cd /\nx=1\necho out; printf 'no newline'\necho err >&2\nexit 4")
        assert (res.status, res.stdout, res.stderr) == (4, "out\nno newline", "err\n")
        res = s.run_script('pwd; echo "x=${x:-unset}"')  # cd and variables stayed in the subshell
        assert res.status == 0 and res.stdout.endswith("x=unset\n") and res.stdout != "/\n"
        shell_pid = s.run_script("echo $PPID").stdout  # the shell running the subshells
        assert s.run_script("echo $PPID").stdout == shell_pid  # one shell per connection
        with pytest.raises(RemoteCommandError, match="`nap` exited 3"):
            s.run_script("exit 3", label="nap", check=True)
        with pytest.raises(RemoteCommandError, match="did not finish within 0.5 s"):
            s.run_script("sleep 30", 0.5)
        assert s.run_script("echo again").stdout == "again\n"  # a new shell after the timeout

        local = tmp_path / "blob.bin"
        local.write_bytes(os.urandom(3 << 20))
        remote = unit.root / "staging" / "sized.bin"
        remote.write_bytes(local.read_bytes()[: 1 << 20])
        sent = s.upload(local, "staging/sized.bin", check="size")  # resumed from the size, no sha256sum
        assert sent == 2 << 20 and remote.read_bytes() == local.read_bytes()
        assert s.upload(local, "staging/sized.bin", check="size", remote_size=3 << 20) == 0  # complete by size
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        assert s.upload(empty, "staging/empty", check="size", remote_size=-1, follow=False) == 0
        assert (unit.root / "staging" / "empty").is_file()  # absent, so created even though 0 bytes
        with pytest.raises(RemotePathError):
            s.upload(empty, "../outside", check="size", follow=False)  # still checked for '..'
