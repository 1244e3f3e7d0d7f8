"""Real OpenSSH servers for simulated units, each over its own on-unit install root.

An :class:`SshUnit` owns ``<data_dir>/units/<serial>/``: an ed25519 host key, an ``sshd_config``,
the sshd log and pid file, and ``root/``, the unit's install root with the layout of
docs/unit-api.md ("On-unit layout"). Logins use the one client key of the simulator
(``<data_dir>/client_key``, see :func:`ensure_client_key`), listed in each unit's own authorized keys
file ``<data_dir>/units/<serial>/authorized_keys`` (its ``AuthorizedKeysFile``; the unit names it in
``root/etc/ssh-authorized-keys``, where ``speakerops keys rotate-ssh`` finds it); the login user is
the user running the simulator, with its own empty home ``<data_dir>/units/<serial>/home`` (sshd's
``SetEnv HOME``; the login shell then runs none of the lab machine's startup files, as on a speaker).
The simulator's HTTP agent reads the ``current`` symlinks and the restart marker of the root on
every request (:meth:`SshUnit.models`, :meth:`SshUnit.restart_marker_ns`).

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
import sys
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
#: Faults :meth:`SshUnit.inject` causes for real (see there).
SSH_FAULTS: tuple[str, ...] = ("unreachable", "drop", "host_key_changed", "disk_full", "unhealthy", "hang",
                               "restart_fail", "corrupt")
#: Seconds to wait for an sshd to accept TCP connections.
START_TIMEOUT_S = 10.0

_RESTART_SCRIPT = """#!/bin/sh
# Restarts the voice service (simulated): touches the restart marker the unit agent watches.
# Fault hooks (SshUnit.inject): run/fault-restart-hang holds seconds to hang once (the file is
# removed first, so the next restart works); run/fault-restart-fail makes one restart fail.
set -e
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/run"
if [ -f "$root/run/fault-restart-hang" ]; then
    secs="$(cat "$root/run/fault-restart-hang")"
    rm -f "$root/run/fault-restart-hang"
    sleep "${secs:-3600}"
fi
if [ -f "$root/run/fault-restart-fail" ]; then
    rm -f "$root/run/fault-restart-fail"
    echo "voice service failed to start (injected fault)" >&2
    exit 1
fi
touch "$root/run/restart"
echo "$(date -u +%Y-%m-%dT%H:%M:%S+00:00) INFO voice: service restarted" >> "$root/logs/voice.log"
echo "voice service restarted"
exit 0
"""

#: ``bin/verify-bundle DIR``: the unit-side check before a staged bundle is installed. Standalone
#: (stdlib + ``cryptography``); recomputes the canonical manifest bytes of ``fleet.signing``.
#: It runs once per unit update and hashes the whole bundle, so it starts lean: ``python -S`` (no
#: ``site``: ~25 ms less per start here) with ``cryptography``'s directory put on ``sys.path``
#: only for the signature check, and each file hashed through ``mmap`` (no copy per block).
_VERIFY_SCRIPT = '''#!{python} -S
"""verify-bundle DIR — refuse a model bundle unless every file matches its SHA-256 in manifest.json
and manifest.sig is a valid Ed25519 signature by a key in <root>/etc/trusted-keys/<key_id>.pub.
DIR must be .../<kind>/<version>/ matching the manifest. Exit 0 and one OK line, or exit 1."""
import base64, hashlib, json, mmap, os, sys
from pathlib import Path, PurePosixPath

CRYPTOGRAPHY_DIR = {crypto_dir!r}


def sha256_of(path):
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.sha256(m).hexdigest()

def refuse(msg):
    sys.stderr.write("verify-bundle: REFUSED: " + msg + "\\n")
    sys.exit(1)

if len(sys.argv) != 2:
    refuse("usage: verify-bundle DIR")
root = Path(__file__).resolve().parent.parent
d = Path(sys.argv[1])
try:
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    kind, version, files = manifest["kind"], manifest["version"], manifest["files"]
except (OSError, ValueError, KeyError, TypeError) as exc:
    refuse("no readable manifest.json in %s (%s)" % (d, exc))
if d.name != version or d.parent.name != kind:
    refuse("%s holds the manifest of %s/%s" % (d, kind, version))
total = 0
for name, entry in sorted(files.items()):
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or name in ("manifest.json", "manifest.sig"):
        refuse("manifest names %r, outside the bundle" % name)
    path = d / name
    if path.is_symlink() or not path.is_file():
        refuse("file %s is missing" % name)
    if path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
        refuse("file %s does not match its SHA-256 in the manifest (altered or partly copied)" % name)
    total += entry["bytes"]
for dirpath, _dirs, names in os.walk(d):
    for n in names:
        rel = Path(dirpath, n).relative_to(d).as_posix()
        if rel not in files and rel not in ("manifest.json", "manifest.sig"):
            refuse("unexpected file %s (not in the manifest)" % rel)
try:
    sig = json.loads((d / "manifest.sig").read_text(encoding="utf-8"))
    key_id, signature = str(sig["key_id"]), base64.b64decode(sig["signature"], validate=True)
except FileNotFoundError:
    refuse("the bundle is not signed (manifest.sig missing)")
except (OSError, ValueError, KeyError, TypeError) as exc:
    refuse("manifest.sig is malformed (%s)" % exc)
if not key_id.isalnum():
    refuse("bad key id %r" % key_id)
keyfile = root / "etc" / "trusted-keys" / (key_id + ".pub")
if not keyfile.is_file():
    refuse("signed by key %s, which this unit does not trust" % key_id)
sys.path.append(CRYPTOGRAPHY_DIR)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
body = {{k: v for k, v in manifest.items() if k != "signature"}}
canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
try:
    load_pem_public_key(keyfile.read_bytes()).verify(signature, canonical)
except (InvalidSignature, ValueError, TypeError):
    refuse("the signature does not match the manifest (altered after signing, or another key)")
print("OK %s %s files=%d bytes=%d key=%s" % (kind, version, len(files), total, key_id))
'''


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


def install_unit_scripts(root: Path) -> None:
    """Write the unit-side programs into ``<root>/bin`` and create ``etc/trusted-keys``.

    ``bin/verify-bundle`` runs with the interpreter running the simulator (``sys.executable``,
    which has ``cryptography``; the script is told where it is, as it starts without ``site``).
    """
    import cryptography

    for sub in ("bin", "run", "staging", "etc/trusted-keys"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, text in (("restart-voice-service", _RESTART_SCRIPT),
                       ("verify-bundle", _VERIFY_SCRIPT.format(
                           python=sys.executable, crypto_dir=str(Path(cryptography.__file__).resolve().parents[1])))):
        script = root / "bin" / name
        script.write_text(text)
        script.chmod(0o755)


def build_unit_root(spec: UnitSpec, root: Path) -> None:
    """Lay out a unit's install root (docs/unit-api.md "On-unit layout") if not there yet.

    An existing root (``models/`` present) is kept as it is: it is the unit's installed state,
    e.g. after a rollout in an earlier run on the same data directory. The unit-side scripts
    (``bin/restart-voice-service``, ``bin/verify-bundle``) are (re)written every time.
    """
    install_unit_scripts(root)
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
    # spoken requests through the unit's room and microphone, index.jsonl, etc/consent.json
    from fleet.simulator.recordings import write_unit_recordings

    write_unit_recordings(spec, root)


class SshUnit:
    """One simulated unit reachable over SSH/SFTP: a real ``sshd`` on a loopback port.

    Parameters
    ----------
    spec
        The unit (its serial, versions and consent shape the install root).
    data_dir
        Simulator data directory; the unit lives in ``<data_dir>/units/<serial>/``.
    authorized_keys
        The simulator's file of public keys (from :func:`ensure_client_key`): seeds the unit's own
        ``authorized_keys`` when it has none, or when this seed changed (a new simulator key); a
        unit's file edited by a key rotation is otherwise kept across runs.
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
        self._seed_keys = Path(authorized_keys)
        #: The unit's own authorized keys file (sshd's ``AuthorizedKeysFile``).
        self.authorized_keys = self.unit_dir / "authorized_keys"
        self._host_key = self.unit_dir / "ssh_host_ed25519_key"
        self._config = self.unit_dir / "sshd_config"
        self._pid_file = self.unit_dir / "sshd.pid"
        self._log = self.unit_dir / "sshd.log"
        #: The login's home on the unit (sshd's ``SetEnv HOME``): empty, no shell startup files.
        self.home = self.unit_dir / "home"
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
        self.home.mkdir(exist_ok=True)
        if not self._host_key.exists() or not self._host_key.with_suffix(".pub").exists():
            self._host_key.unlink(missing_ok=True)
            self._host_key.with_suffix(".pub").unlink(missing_ok=True)
            _keygen(self._host_key, f"{self.serial}-host")
        build_unit_root(self.spec, self.root)
        self._seed_authorized_keys()
        self._kill_stale()

    def _seed_authorized_keys(self) -> None:
        seed = self._seed_keys.read_text() if self._seed_keys.exists() else ""
        record = self.unit_dir / "authorized_keys.seed"
        if not self.authorized_keys.exists() or not record.exists() or record.read_text() != seed:
            self.authorized_keys.write_text(seed)
            self.authorized_keys.chmod(0o600)
            record.write_text(seed)
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "ssh-authorized-keys").write_text(f"{self.authorized_keys}\n")

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
            f"AuthorizedKeysFile {self.authorized_keys}\n"
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
            # the unit's login gets its own (empty) home, as a unit's service account has: the
            # login shell then finds no startup files. Without it every `exec` channel ran the
            # startup files of the lab machine's user (root's ~/.bashrc here runs `pyenv init`,
            # ~0.1 CPU-s per shell, which no speaker pays); bash reads ~/.bashrc for commands
            # from sshd. internal-sftp (scp, SFTP) starts no shell either way.
            f'SetEnv "HOME={self.home}"\n'
        )

    def launch(self, reuse_port: bool = False) -> None:
        """Start ``sshd`` on a free port without waiting for it (see :meth:`wait_ready`).

        ``reuse_port``: listen on the port of the previous start (a unit that comes back after
        a drop keeps its address), if there was one.
        """
        if self._proc is not None and self._proc.poll() is None:
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        if not (reuse_port and self.port):
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

    def start(self, timeout_s: float = START_TIMEOUT_S, reuse_port: bool = False) -> None:
        """Start sshd and wait until it listens; one retry on a port taken meanwhile
        (``reuse_port``: on the port of the previous start, see :meth:`launch`)."""
        for attempt in (1, 2):
            self.launch(reuse_port=reuse_port and attempt == 1)
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

    def stop(self, timeout_s: float = 5.0, unmount: bool = True) -> None:
        """Terminate the sshd and its session processes; kill them if they do not exit.

        ``unmount``: also unmount a ``disk_full`` tmpfs (:meth:`inject`) left on ``staging/``.
        """
        if unmount and os.path.ismount(self.root / "staging"):
            subprocess.run(["umount", "-l", str(self.root / "staging")], capture_output=True, timeout=30)
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
        """Installed version per kind: the targets of the ``current`` symlinks (read now).

        With the ``unhealthy`` fault (:meth:`inject`), a kind whose ``current`` is one of the
        versions listed in ``run/fault-unhealthy-versions`` reports its ``previous`` version: the
        voice service failed to load the new model and kept the old one.
        """
        versions: dict[str, str] = {}
        try:
            broken = set((self.root / "run" / "fault-unhealthy-versions").read_text().split())
        except OSError:
            broken = set()
        for kind in MODEL_KINDS:
            try:
                versions[kind] = os.path.basename(
                    os.readlink(self.root / "models" / kind / "current").rstrip("/"))
                if versions[kind] in broken:
                    versions[kind] = os.path.basename(
                        os.readlink(self.root / "models" / kind / "previous").rstrip("/"))
            except OSError:
                versions[kind] = self.spec.models[kind]
        return versions

    # ----------------------------------------------------------------- provisioning and faults
    def trust_key(self, public_pem: bytes, key_id: str) -> Path:
        """Install a registry signing key into ``etc/trusted-keys/<key_id>.pub`` (provisioning)."""
        target = self.root / "etc" / "trusted-keys" / f"{key_id}.pub"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(public_pem)
        return target

    def inject(self, fault: str, **params: object) -> None:
        """Cause a real fault on this unit (see :data:`SSH_FAULTS`).

        ``unreachable``
            Stop sshd (connections are refused); :meth:`clear` starts it on the same port.
        ``drop``
            Stop sshd now, killing live sessions (a drop mid-upload), and start it again on the
            same port: the next connection works.
        ``host_key_changed``
            Regenerate the host key and restart sshd on the same port.
        ``disk_full``
            Mount a ``size_kb`` (default 64) tmpfs over ``staging/``: a real full disk. Needs root
            (``mount``); :meth:`clear` unmounts it.
        ``unhealthy``
            After a switch to ``version`` the agent keeps reporting the previous one.
        ``hang``
            The next ``bin/restart-voice-service`` sleeps ``seconds`` (default 3600) first.
        ``restart_fail``
            The next ``bin/restart-voice-service`` exits 1.
        ``corrupt``
            Flip one byte in the middle of the file ``path`` (relative to the root).

        Raises
        ------
        ValueError
            Unknown fault.
        RuntimeError
            ``disk_full`` when the tmpfs cannot be mounted (not root).
        """
        run = self.root / "run"
        run.mkdir(parents=True, exist_ok=True)
        if fault == "unreachable":
            self.stop(unmount=False)
        elif fault == "drop":
            self.stop(unmount=False)
            self.start(reuse_port=True)
        elif fault == "host_key_changed":
            self.stop(unmount=False)
            self._host_key.unlink(missing_ok=True)
            self._host_key.with_suffix(".pub").unlink(missing_ok=True)
            _keygen(self._host_key, f"{self.serial}-host-new")
            self.host_public_key = " ".join(self._host_key.with_suffix(".pub").read_text().split()[:2])
            self.host_key_fingerprint = public_key_fingerprint(self.host_public_key)
            self.start(reuse_port=True)
        elif fault == "disk_full":
            size_kb = int(params.get("size_kb", 64))  # type: ignore[call-overload]
            staging = self.root / "staging"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True, exist_ok=True)
            res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(staging)],
                                 capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                raise RuntimeError(f"cannot mount a tmpfs on {staging}: {res.stderr.strip()} (needs root)")
        elif fault == "unhealthy":
            (run / "fault-unhealthy-versions").write_text(f"{params['version']}\n")
        elif fault == "hang":
            (run / "fault-restart-hang").write_text(f"{float(params.get('seconds', 3600.0)):g}\n")  # type: ignore[arg-type]
        elif fault == "restart_fail":
            (run / "fault-restart-fail").write_text("1\n")
        elif fault == "corrupt":
            path = self.root / str(params["path"])
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        else:
            raise ValueError(f"unknown SSH fault {fault!r}; expected one of {', '.join(SSH_FAULTS)}")
        logger.info("SSH fault %s injected into %s", fault, self.serial)

    def clear(self, fault: str | None = None) -> None:
        """Undo :meth:`inject` (one fault, or all): start sshd, unmount the tmpfs, remove fault files."""
        if fault in (None, "disk_full"):
            staging = self.root / "staging"
            if os.path.ismount(staging):
                subprocess.run(["umount", "-l", str(staging)], capture_output=True, timeout=30)
        if fault in (None, "unreachable", "drop", "host_key_changed") and not self.running:
            self.start(reuse_port=True)
        names = {"unhealthy": ["fault-unhealthy-versions"], "hang": ["fault-restart-hang"],
                 "restart_fail": ["fault-restart-fail"]}
        for key, files in names.items():
            if fault in (None, key):
                for name in files:
                    (self.root / "run" / name).unlink(missing_ok=True)

    def restart_marker_ns(self) -> int | None:
        """mtime of ``run/restart`` in ns (changes when the voice service restarts), or None."""
        try:
            return (self.root / "run" / "restart").stat().st_mtime_ns
        except OSError:
            return None
