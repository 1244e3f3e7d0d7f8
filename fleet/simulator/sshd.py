"""Real OpenSSH servers for simulated units, each over its own on-unit install root.

An :class:`SshUnit` owns ``<data_dir>/units/<serial>/``: an ed25519 host key, an ``sshd_config``,
the sshd log and pid file, and ``root/``, the unit's install root with the layout of
docs/unit-api.md ("On-unit layout"). Logins use the one client key of the simulator
(``<data_dir>/client_key``, see :func:`ensure_client_key`); the login user is the user running the
simulator. The simulator's HTTP agent reads the ``current`` symlinks and the restart marker of the
root on every request (:meth:`SshUnit.models`, :meth:`SshUnit.restart_marker_ns`).

Needs Debian's ``openssh-server`` (``/usr/sbin/sshd``) and ``ssh-keygen``.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from fleet.models import MODEL_KINDS
from fleet.simulator.behaviour import MODEL_VERSIONS, UnitSpec

logger = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
#: Seconds to wait for an sshd to accept TCP connections.
START_TIMEOUT_S = 10.0

_RESTART_SCRIPT = """#!/bin/sh
# Restarts the voice service (simulated): touches the restart marker the unit agent watches.
set -e
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/run"
touch "$root/run/restart"
echo "$(date -u +%Y-%m-%dT%H:%M:%S+00:00) INFO voice: service restarted" >> "$root/logs/voice.log"
echo "voice service restarted"
exit 0
"""


def _require_openssh() -> str:
    if not os.path.exists(SSHD):
        raise RuntimeError(
            f"{SSHD} not found: SSH units need Debian's openssh-server "
            "(apt-get install openssh-server; `make run` / `make test` install it)"
        )
    keygen = shutil.which(SSH_KEYGEN)
    if keygen is None:
        raise RuntimeError("ssh-keygen not found: install Debian's openssh-client")
    return keygen


def _keygen(path: Path, comment: str) -> None:
    keygen = _require_openssh()
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    path.chmod(0o600)


def ensure_client_key(data_dir: Path) -> tuple[Path, Path]:
    """Create (once per ``data_dir``) the client key SSH units accept, and the authorized_keys.

    Returns
    -------
    (Path, Path)
        ``<data_dir>/client_key`` (ed25519 private key, OpenSSH format, no passphrase) and
        ``<data_dir>/authorized_keys`` holding its public half.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    key = data_dir / "client_key"
    if not key.exists() or not key.with_suffix(".pub").exists():
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        _keygen(key, "speakerops-simulator-client")
        logger.info("created simulator client key %s", key)
    authorized = data_dir / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    return key, authorized


def public_key_fingerprint(public_key_line: str) -> str:
    """OpenSSH SHA256 fingerprint (``SHA256:...``) of an ``"ssh-ed25519 AAAA..."`` line."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Process ids of all descendants of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tone_wav(path: Path, freq_hz: float, seconds: float = 1.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.2 * np.sin(2 * np.pi * freq_hz * t) * np.minimum(1.0, 20 * t)  # soft start
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((signal * 32767).astype("<i2").tobytes())


def _install_model(models_dir: Path, kind: str, version: str) -> None:
    vdir = models_dir / kind / version
    if (vdir / "manifest.json").exists():
        return
    vdir.mkdir(parents=True, exist_ok=True)
    payload = f"{kind} {version} simulated weights\n".encode() * 32
    (vdir / "model.bin").write_bytes(payload)
    manifest = {
        "kind": kind,
        "version": version,
        "files": {"model.bin": {"sha256": hashlib.sha256(payload).hexdigest(),
                                "bytes": len(payload)}},
    }
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _set_link(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def build_unit_root(spec: UnitSpec, root: Path) -> None:
    """Lay out a unit's install root (docs/unit-api.md "On-unit layout") if not there yet.

    An existing root (``models/`` present) is kept as it is: it is the unit's installed state,
    e.g. after a rollout in an earlier run on the same data directory.
    """
    if (root / "models").is_dir():
        return
    for sub in ("staging", "logs", "recordings", "bin", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for kind in MODEL_KINDS:
        versions = MODEL_VERSIONS[kind]
        current = spec.models[kind]
        pos = versions.index(current) if current in versions else len(versions) - 1
        previous = versions[max(0, pos - 1)]
        for version in {current, previous}:
            _install_model(root / "models", kind, version)
        _set_link(root / "models" / kind / "current", current)
        _set_link(root / "models" / kind / "previous", previous)
    script = root / "bin" / "restart-voice-service"
    script.write_text(_RESTART_SCRIPT)
    script.chmod(0o755)
    rng = np.random.default_rng([spec.seed, spec.index, 0x10C])
    start = datetime.now(UTC) - timedelta(hours=2)
    lines = [f"{start.isoformat(timespec='seconds')} INFO voice: service started "
             f"(stt={spec.stt_version} qa={spec.qa_version} tts={spec.tts_version})"]
    for i in range(40):
        when = (start + timedelta(seconds=180 * (i + 1))).isoformat(timespec="seconds")
        e2e = float(rng.lognormal(np.log(1800), 0.25))
        if rng.random() < 0.05:
            lines.append(f"{when} ERROR voice: request failed: qa timeout after 3000 ms")
        else:
            lines.append(f"{when} INFO voice: request ok e2e_ms={e2e:.0f}")
    (root / "logs" / "voice.log").write_text("\n".join(lines) + "\n")
    if spec.consent_recordings:
        for i, freq in enumerate((440.0, 660.0)):
            _tone_wav(root / "recordings" / f"req-{i + 1:04d}.wav", freq)


class SshUnit:
    """One simulated unit reachable over SSH/SFTP: a real ``sshd`` on a loopback port.

    Parameters
    ----------
    spec
        The unit (its serial, versions and consent shape the install root).
    data_dir
        Simulator data directory; the unit lives in ``<data_dir>/units/<serial>/``.
    authorized_keys
        File of public keys allowed to log in (from :func:`ensure_client_key`).
    host
        Listen address (loopback).
    """

    def __init__(self, spec: UnitSpec, data_dir: Path, authorized_keys: Path,
                 host: str = "127.0.0.1") -> None:
        self.spec = spec
        self.serial = spec.serial
        self.host = host
        self.user = getpass.getuser()
        self.port = 0
        self.unit_dir = Path(data_dir) / "units" / spec.serial
        self.root = self.unit_dir / "root"
        self._authorized_keys = Path(authorized_keys)
        self._host_key = self.unit_dir / "ssh_host_ed25519_key"
        self._config = self.unit_dir / "sshd_config"
        self._pid_file = self.unit_dir / "sshd.pid"
        self._log = self.unit_dir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.prepare()
        self.host_public_key = " ".join(
            self._host_key.with_suffix(".pub").read_text().split()[:2])
        self.host_key_fingerprint = public_key_fingerprint(self.host_public_key)

    def __repr__(self) -> str:
        return f"SshUnit({self.serial!r}, port={self.port})"

    def prepare(self) -> None:
        """Create the unit directory, host key (kept across runs) and install root."""
        _require_openssh()
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        if not self._host_key.exists() or not self._host_key.with_suffix(".pub").exists():
            self._host_key.unlink(missing_ok=True)
            self._host_key.with_suffix(".pub").unlink(missing_ok=True)
            _keygen(self._host_key, f"{self.serial}-host")
        build_unit_root(self.spec, self.root)
        self._kill_stale()

    def _kill_stale(self) -> None:
        """Stop an sshd left running by a crashed earlier run on this unit directory."""
        try:
            pid = int(self._pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self._config).encode() in cmdline:
            logger.warning("stopping stale sshd %d of %s", pid, self.serial)
            with contextlib.suppress(OSError):
                os.kill(pid, 15)

    def _write_config(self) -> None:
        self._config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self._host_key}\n"
            f"AuthorizedKeysFile {self._authorized_keys}\n"
            f"PidFile {self._pid_file}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PrintMotd no\n"
            "UseDNS no\n"
            "MaxStartups 100:30:200\n"
            "Subsystem sftp internal-sftp\n"
        )

    def launch(self) -> None:
        """Start ``sshd`` on a free port without waiting for it (see :meth:`wait_ready`)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self._write_config()
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self._config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the sshd accepts TCP connections.

        Raises
        ------
        RuntimeError
            If sshd exits or does not listen within ``timeout_s``; the message holds its stderr.
        """
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"sshd of {self.serial} exited with status {self._proc.returncode}: "
                    f"{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.5):
                logger.info("sshd of %s listening on %s:%d", self.serial, self.host, self.port)
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sshd of {self.serial} did not listen on {self.host}:{self.port} within "
                    f"{timeout_s:.0f} s: {self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace").strip()[-2000:] or "(no output)"
        except OSError:
            return "(no log)"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start sshd and wait until it listens; one retry on a port taken meanwhile."""
        for attempt in (1, 2):
            self.launch()
            try:
                self.wait_ready(timeout_s)
                return
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self._log_tail():
                    raise
                self._proc = None

    @property
    def running(self) -> bool:
        """True while the sshd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the sshd, or None if not started."""
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the sshd and its session processes; kill them if they do not exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            sessions = _descendants(proc.pid)  # sshd sessions run in their own process groups
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout_s)
            deadline = time.monotonic() + timeout_s
            while sessions and time.monotonic() < deadline:
                sessions = [pid for pid in sessions if _alive(pid)]
                time.sleep(0.02)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        self._pid_file.unlink(missing_ok=True)
        logger.info("sshd of %s stopped", self.serial)

    def models(self) -> dict[str, str]:
        """Installed version per kind: the targets of the ``current`` symlinks (read now)."""
        versions: dict[str, str] = {}
        for kind in MODEL_KINDS:
            try:
                versions[kind] = os.path.basename(
                    os.readlink(self.root / "models" / kind / "current").rstrip("/"))
            except OSError:
                versions[kind] = self.spec.models[kind]
        return versions

    def restart_marker_ns(self) -> int | None:
        """mtime of ``run/restart`` in ns (changes when the voice service restarts), or None."""
        try:
            return (self.root / "run" / "restart").stat().st_mtime_ns
        except OSError:
            return None
