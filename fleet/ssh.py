"""SSH to units (paramiko): host keys checked against the database, commands, confined SFTP paths,
resumable uploads.

* :class:`KnownHostsStore` (:mod:`fleet.known_hosts`, re-exported here) — table ``known_hosts``.
  An unknown host key raises :class:`~fleet.errors.HostKeyUnknown` (carrying the fingerprint) and
  is recorded ``pending`` until an operator approves it (:func:`approve`, ``speakerops units
  approve-host-key SERIAL FP``); a key other than the approved one raises
  :class:`~fleet.errors.HostKeyChanged` and is always refused. Trust on first use is an explicit
  opt-in for labs (``SPEAKEROPS_SSH_TRUST_ON_FIRST_USE=1`` or ``trust_on_first_use=True``).
* :class:`SshConnector` opens a :class:`UnitSession` to a :class:`UnitTarget`: client keys from
  :mod:`fleet.ssh_keys` only (``look_for_keys=False, allow_agent=False``), a connect timeout, a larger channel window,
  AES-GCM offered first (:data:`PREFERRED_CIPHERS`).
* :class:`UnitSession` runs commands with a timeout (``(status, stdout, stderr)``) — one
  ``exec`` each (:meth:`UnitSession.run`), or scripts fed to one shell kept per connection
  (:meth:`UnitSession.run_script`: the unit starts its login shell once) — confines remote
  paths to the unit's install root (``..``, absolute paths elsewhere and symlinks that lead out
  are refused; symlinks are resolved on the unit with SFTP ``realpath``), and uploads files over
  SFTP resuming a partial remote file from its size, with pipelined 255 KiB writes and a SHA-256
  check at the end (or a size check, for callers that verify the content on the unit anyway).

Errors: :class:`~fleet.errors.UnitUnreachable` (refused, timed out, dropped),
:class:`~fleet.errors.SshAuthFailed`, :class:`~fleet.errors.RemoteCommandError`,
:class:`~fleet.errors.RemotePathError`.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import secrets
import select
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paramiko
from sqlalchemy.orm import Session, sessionmaker

from fleet.errors import (
    HostKeyChanged,
    HostKeyUnknown,
    RemoteCommandError,
    RemotePathError,
    SshAuthFailed,
    UnitUnreachable,
)
from fleet.known_hosts import (  # noqa: F401 - re-exported: fleet.ssh is where callers find them
    TOFU_ACTOR,
    KnownHostsStore,
    approve,
    fingerprint_of,
    list_host_keys,
)
from fleet.settings import SshSettings
from fleet.ssh_keys import ClientKeys
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Local read size per SFTP write call while uploading, bytes.
UPLOAD_BLOCK_BYTES = 1 << 20
#: Ciphers offered first (then paramiko's own list, for units without them). AES-GCM authenticates
#: as it encrypts (AES-NI + carry-less multiply on both ends; no HMAC-SHA256 pass in Python's
#: packetizer). Measured here (benchmarks/rollout_vs_scp.py era, 2 cores, 50 MB to 10 sshd
#: units in parallel): paramiko's default aes128-ctr + hmac-sha2-256 198 MB/s, aes128-gcm 273 MB/s.
PREFERRED_CIPHERS: tuple[str, ...] = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass(frozen=True)
class UnitTarget:
    """Where and how to reach one unit over SSH.

    Build it from a :class:`fleet.models.Unit` with :func:`fleet.unit_update.target_for_unit`.
    ``install_root`` is the unit's root (docs/unit-api.md "On-unit layout"), absolute.
    """

    serial: str
    host: str
    port: int
    user: str
    install_root: str


class _StorePolicy(paramiko.MissingHostKeyPolicy):
    """paramiko calls this for every key (the client holds none): the store decides."""

    def __init__(self, store: KnownHostsStore, target: UnitTarget) -> None:
        self._store = store
        self._target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self._store.check(self._target.serial, self._target.host, self._target.port, key)


# -- sessions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    """What a remote command did: exit status, stdout and stderr (decoded UTF-8, replaced)."""

    status: int
    stdout: str
    stderr: str

    def __iter__(self):  # (status, stdout, stderr) = session.run(...)
        return iter((self.status, self.stdout, self.stderr))


def _is_missing(exc: OSError) -> bool:
    return getattr(exc, "errno", None) == errno.ENOENT or isinstance(exc, FileNotFoundError)


class UnitSession:
    """An open SSH connection to one unit (from :meth:`SshConnector.connect`); a context manager."""

    def __init__(self, client: paramiko.SSHClient, target: UnitTarget, settings: SshSettings) -> None:
        self.client = client
        self.target = target
        self.settings = settings
        self._sftp: paramiko.SFTPClient | None = None
        self._root_real: str | None = None
        self._shell: paramiko.Channel | None = None

    def __enter__(self) -> UnitSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._close_shell()
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self._sftp = None
        self.client.close()

    def _unreachable(self, what: str, exc: BaseException) -> UnitUnreachable:
        return UnitUnreachable(f"{self.target.serial} ({self.target.host}:{self.target.port}): {what} "
                               f"failed, the connection dropped ({type(exc).__name__}: {exc}); retry "
                               "when the unit is back (an upload resumes where it stopped)")

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._unreachable("opening SFTP", exc) from exc
        return self._sftp

    # ---- commands
    def run(self, command: str, timeout_s: float | None = None, *, check: bool = False,
            label: str | None = None) -> CommandResult:
        """Run ``command`` (a shell line, or a whole script) on the unit and wait for it.

        Parameters
        ----------
        timeout_s
            Seconds for the whole command; default ``settings.command_timeout_s``.
        check
            Raise on a non-zero exit status.
        label
            How error messages name the command (a script is long); default the command itself.

        Raises
        ------
        RemoteCommandError
            Timed out (the channel is closed; ``status`` None), or non-zero with ``check``.
        UnitUnreachable
            The connection dropped.
        """
        timeout_s = self.settings.command_timeout_s if timeout_s is None else timeout_s
        name = label or command
        deadline = time.monotonic() + timeout_s
        out, err = bytearray(), bytearray()
        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("transport closed")
            chan = transport.open_session(timeout=max(0.1, timeout_s))
            try:
                chan.exec_command(command)
                chan.shutdown_write()
                while True:
                    while chan.recv_ready():
                        out += chan.recv(1 << 16)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(1 << 16)
                    if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                        status = chan.recv_exit_status()
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RemoteCommandError(
                            f"{self.target.serial}: `{name}` did not finish within {timeout_s:g} s "
                            "(hung); it counts as failed", status=None,
                            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
                    if not transport.is_active():
                        raise EOFError("transport closed while the command ran")
                    select.select([chan], [], [], min(remaining, 0.5))
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._unreachable(f"`{name}`", exc) from exc
        result = CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            raise RemoteCommandError(f"{self.target.serial}: `{name}` exited {status}: "
                                     f"{result.stderr.strip() or result.stdout.strip()}",
                                     status=status, stdout=result.stdout, stderr=result.stderr)
        return result

    def run_script(self, script: str, timeout_s: float | None = None, *, check: bool = False,
                   label: str | None = None) -> CommandResult:
        """Run a POSIX ``sh`` script on the unit in this session's shell and wait for it.

        The session keeps one ``sh`` running (started on first use) and feeds it each script on
        its standard input, so the unit starts the login shell — and whatever its startup files
        do — once per connection rather than once per command (:meth:`run`). Each script runs in
        a subshell (``cd``, ``set``, ``exit N`` stay inside it) with standard input from
        ``/dev/null``; its output and exit status are framed by a random token.

        Parameters, return value and errors as :meth:`run`. After a timeout the shell is closed
        (the next call starts another).
        """
        timeout_s = self.settings.command_timeout_s if timeout_s is None else timeout_s
        name = label or script.strip().splitlines()[0][:60]
        deadline = time.monotonic() + timeout_s
        token = secrets.token_hex(8)
        end_out = f"\n@@{token} ".encode()
        end_err = f"\n@@{token}\n".encode()
        wrapped = (f"(\n{script}\n) </dev/null\n__rc=$?\nprintf '\\n@@{token} %d\\n' \"$__rc\"\n"
                   f"printf '\\n@@{token}\\n' >&2\n")
        out, err = bytearray(), bytearray()
        try:
            chan = self._shell_channel(timeout_s)
            chan.sendall(wrapped.encode())
            while True:
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                at = out.find(end_out)
                if at >= 0 and out.endswith(b"\n", at + len(end_out)) and err.find(end_err) >= 0:
                    status = int(out[at + len(end_out):].split(b"\n", 1)[0])
                    stdout, stderr = bytes(out[:at]), bytes(err[:err.find(end_err)])
                    break
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    self._close_shell()
                    raise EOFError(f"the unit's shell exited ({chan.recv_exit_status()}): "
                                   f"{err.decode(errors='replace').strip()[-500:]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._close_shell()  # the script may still run on the unit; the next call starts a new shell
                    raise RemoteCommandError(
                        f"{self.target.serial}: `{name}` did not finish within {timeout_s:g} s "
                        "(hung); it counts as failed", status=None,
                        stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
                select.select([chan], [], [], min(remaining, 0.5))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._close_shell()
            raise self._unreachable(f"`{name}`", exc) from exc
        result = CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
        if check and status != 0:
            raise RemoteCommandError(f"{self.target.serial}: `{name}` exited {status}: "
                                     f"{result.stderr.strip() or result.stdout.strip()}",
                                     status=status, stdout=result.stdout, stderr=result.stderr)
        return result

    def _shell_channel(self, timeout_s: float) -> paramiko.Channel:
        if self._shell is not None and not self._shell.closed and not self._shell.exit_status_ready():
            return self._shell
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("transport closed")
        chan = transport.open_session(timeout=max(0.1, timeout_s))
        chan.exec_command("exec /bin/sh")
        self._shell = chan
        return chan

    def _close_shell(self) -> None:
        if self._shell is not None:
            try:
                self._shell.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass
            self._shell = None

    # ---- paths
    @property
    def root(self) -> str:
        """The install root as the unit resolves it (symlinks followed)."""
        if self._root_real is None:
            try:
                self._root_real = self.sftp.normalize(self.target.install_root)
            except OSError as exc:
                raise RemotePathError(f"{self.target.serial}: install root {self.target.install_root} "
                                      f"cannot be resolved on the unit ({exc}); check "
                                      "SPEAKEROPS_SSH_INSTALL_ROOT") from exc
        return self._root_real

    def resolve(self, rel: str, *, follow: bool = True) -> str:
        """The absolute path on the unit of ``rel`` (relative to the install root), checked.

        Parameters
        ----------
        rel
            ``models/stt/current``, or an absolute path inside the root.
        follow
            Resolve symlinks on the unit (SFTP realpath) and check the target stays inside.

        Raises
        ------
        RemotePathError
            ``..`` components, an absolute path outside the root, or a symlink leading out.
        """
        root = posixpath.normpath(self.target.install_root)
        if posixpath.isabs(rel):
            if not (rel == root or rel.startswith(root + "/")):
                raise RemotePathError(f"{rel} is outside the install root {root} of {self.target.serial}")
            rel = rel[len(root):].lstrip("/")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise RemotePathError(f"{rel!r} contains '..'; remote paths must stay inside the install root")
        if not follow:
            return posixpath.join(root, *parts) if parts else root
        real_root = self.root
        tail: list[str] = []
        current = parts[:]
        while True:  # realpath of the deepest existing ancestor (the last parts may not exist yet)
            candidate = posixpath.join(real_root, *current) if current else real_root
            try:
                real = self.sftp.normalize(candidate)
                break
            except OSError as exc:
                if not current or not _is_missing(exc):
                    raise RemotePathError(f"{self.target.serial}: cannot resolve {candidate} ({exc})") from exc
                tail.insert(0, current.pop())
        if not (real == real_root or real.startswith(real_root.rstrip("/") + "/")):
            raise RemotePathError(f"{self.target.serial}: {rel} resolves to {real}, outside the install "
                                  f"root {real_root} (a symlink leads out); refusing it")
        return posixpath.join(real, *tail) if tail else real

    def makedirs(self, rel: str) -> str:
        """``mkdir -p`` a directory inside the root; returns its absolute path."""
        path = self.resolve(rel)
        self.run(f"mkdir -p -- {shlex.quote(path)}", check=True)
        return path

    def remote_sha256(self, path: str) -> str | None:
        """SHA-256 (hex) of a file on the unit, or None if it does not exist."""
        res = self.run(f"sha256sum -- {shlex.quote(path)}")
        if res.status != 0:
            return None
        return res.stdout.split()[0] if res.stdout.split() else None

    # ---- upload
    def upload(self, local: Path, remote_rel: str, *, sha256: str | None = None,
               progress: Callable[[int], None] | None = None, check: Literal["sha256", "size"] = "sha256",
               remote_size: int | None = None, follow: bool = True) -> int:
        """Copy ``local`` to ``remote_rel`` under the root, resuming a partial remote file.

        A remote file of the same size whose SHA-256 matches is skipped; a shorter one is continued
        from its size; a longer one, or one that does not match at the end, is written again.

        Parameters
        ----------
        sha256
            Expected SHA-256 (hex) of the file (computed locally when None and ``check`` is
            ``"sha256"``).
        progress
            Called with the bytes sent by this call so far, after every block.
        check
            ``"sha256"``: the unit hashes the file (``sha256sum``) to recognize a complete one and
            to check it after writing. ``"size"``: the size alone decides, for callers that verify
            the content on the unit afterwards anyway (``fleet.unit_update``: ``verify-bundle``)
            — a 50 MB file is then hashed once on the unit instead of twice.
        remote_size
            Size of the remote file in bytes if the caller knows it (-1: absent): saves a stat.
        follow
            False when the caller has checked on the unit that ``remote_rel`` does not lead out
            of the root through a symlink (``fleet.unit_scripts.prepare_script`` does, with
            ``realpath``): the path is then only checked here for ``..`` and the root prefix,
            without SFTP ``realpath`` round trips.

        Returns
        -------
        int
            Bytes sent over the wire by this call (0 when the file was already complete).

        Raises
        ------
        UnitUnreachable
            The connection dropped (the partial file stays for the next attempt to resume).
        RemoteCommandError
            The file on the unit does not match ``sha256`` even after writing it again, or the unit
            refused the write (e.g. ``No space left on device``).
        """
        local = Path(local)
        size = local.stat().st_size
        if sha256 is None and check == "sha256":
            from inference_core.bundles import sha256_file

            sha256 = sha256_file(local)
        remote = self.resolve(remote_rel, follow=follow)
        sent = 0
        for _attempt in (1, 2):
            if remote_size is not None:
                offset, exists, remote_size = max(remote_size, 0), remote_size >= 0, None
            else:
                try:
                    offset, exists = self.sftp.stat(remote).st_size or 0, True
                except OSError as exc:
                    if not _is_missing(exc):
                        raise self._unreachable(f"stat {remote}", exc) from exc
                    offset, exists = 0, False
            if check == "size" and exists and offset == size:
                return sent
            if check == "sha256" and offset == size and self.remote_sha256(remote) == sha256:
                return sent
            if offset >= size:
                offset = 0  # complete but different, or longer: write it again
            sent += self._write_from(local, remote, offset, size, progress, sent)  # checks the size
            if check == "size" or self.remote_sha256(remote) == sha256:
                return sent
            logger.warning("%s: %s does not match its SHA-256 after upload; writing it again",
                           self.target.serial, remote)
            self.sftp.remove(remote)
        raise RemoteCommandError(f"{self.target.serial}: {remote} does not match its SHA-256 after two "
                                 "uploads; check the unit's storage")

    def _write_from(self, local: Path, remote: str, offset: int, size: int,
                    progress: Callable[[int], None] | None, already: int) -> int:
        sent = 0
        try:
            with self.sftp.open(remote, "r+b" if offset else "wb", bufsize=0) as rf, local.open("rb") as lf:
                rf.MAX_REQUEST_SIZE = self.settings.sftp_request_bytes  # fewer, larger SFTP writes
                rf.set_pipelined(True)
                if offset:
                    rf.seek(offset)
                    lf.seek(offset)
                while True:
                    block = lf.read(UPLOAD_BLOCK_BYTES)
                    if not block:
                        break
                    rf.write(block)
                    sent += len(block)
                    if progress is not None:
                        progress(already + sent)
        except OSError as exc:
            if isinstance(exc, (socket.error, EOFError)) and not isinstance(exc, paramiko.SFTPError) \
                    and getattr(exc, "errno", None) is None:
                raise self._unreachable(f"upload of {remote}", exc) from exc
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise self._unreachable(f"upload of {remote}", exc) from exc
            raise RemoteCommandError(f"{self.target.serial}: writing {remote} failed: {exc}") from exc
        except (paramiko.SSHException, EOFError) as exc:
            raise self._unreachable(f"upload of {remote}", exc) from exc
        try:
            stored = self.sftp.stat(remote).st_size or 0
        except OSError as exc:
            raise self._unreachable(f"stat {remote}", exc) from exc
        if stored != size:  # paramiko drops the errors of pipelined writes: the size tells
            free = self.run(f"df -Pk -- {shlex.quote(posixpath.dirname(remote))}").stdout.splitlines()[-1:]
            avail = free[0].split()[3] if free and len(free[0].split()) > 3 else "?"
            raise RemoteCommandError(f"{self.target.serial}: the unit stored {stored} of {size} bytes of "
                                     f"{remote}: a write failed (free space there now {avail} KiB: the disk is "
                                     "probably full); free space on the unit and retry")
        logger.debug("%s: sent %d bytes of %s from offset %d", self.target.serial, sent, remote, offset)
        return sent


class SshConnector:
    """Opens :class:`UnitSession` s; built once by the composition root and shared by threads.

    Client keys (:class:`fleet.ssh_keys.ClientKeys`): the file in ``settings.client_key_path``, else
    the secret store's current key then, during a rotation, the previous one. The key a unit
    accepted is tried first next time.

    Parameters
    ----------
    session_factory
        For the known-hosts store.
    settings
        SSH settings (:class:`fleet.settings.SshSettings`); default from the environment.
    data_dir
        SpeakerOps data directory (the secret store ``<data_dir>/keys``); default from
        ``speakerops.settings.CoreSettings``.
    trust_on_first_use
        Overrides ``settings.trust_on_first_use`` (labs only).
    key_store
        A :class:`fleet.keys.SecretStore` to use instead of ``<data_dir>/keys``.
    """

    def __init__(self, session_factory: sessionmaker[Session], settings: SshSettings | None = None, *,
                 data_dir: Path | None = None, clock: Clock = utc_now,
                 trust_on_first_use: bool | None = None, key_store: Any = None) -> None:
        self.settings = settings or SshSettings()
        self.keys = ClientKeys(self.settings, data_dir, key_store)
        #: The key file in use, or None when the keys come from the secret store.
        self.key_path: Path | None = self.keys.key_path
        tofu = self.settings.trust_on_first_use if trust_on_first_use is None else trust_on_first_use
        self.known_hosts = KnownHostsStore(session_factory, clock, trust_on_first_use=tofu)
        self._preferred: dict[str, str] = {}

    def trusted_signing_keys(self) -> dict[str, bytes]:
        """``{key_id: public PEM}`` every unit should trust (pushed by each update); public data only."""
        return self.keys.trusted_signing_keys()

    def _transport(self, sock: Any, **kwargs: Any) -> paramiko.Transport:
        t = paramiko.Transport(sock, default_window_size=self.settings.window_size,
                               default_max_packet_size=self.settings.max_packet_size, **kwargs)
        offered = t.get_security_options().ciphers  # paramiko's, in its order of preference
        first = tuple(c for c in PREFERRED_CIPHERS if c in offered)
        t.get_security_options().ciphers = first + tuple(c for c in offered if c not in first)
        return t

    def connect(self, target: UnitTarget, timeout_s: float | None = None, *,
                pkey: paramiko.PKey | None = None) -> UnitSession:
        """Connect and authenticate to ``target``, checking its host key.

        The client keys (:meth:`fleet.ssh_keys.ClientKeys.keys`) are tried in turn, one connection
        each, the key the unit accepted last time first; ``pkey`` tries that key alone (a rotation checking a new key).

        Raises
        ------
        HostKeyUnknown, HostKeyChanged
            From the known-hosts store.
        SshAuthFailed
            The unit refused every client key, or no key can be read.
        UnitUnreachable
            Refused, timed out, or dropped while connecting.
        """
        timeout_s = self.settings.connect_timeout_s if timeout_s is None else timeout_s
        keys = [("the given key", pkey)] if pkey is not None else list(self.keys.keys())
        preferred = self._preferred.get(target.serial)
        keys.sort(key=lambda lk: lk[0] != preferred)
        refused: list[str] = []
        for label, key in keys:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_StorePolicy(self.known_hosts, target))
            try:
                client.connect(target.host, port=target.port, username=target.user, pkey=key,
                               look_for_keys=False, allow_agent=False, timeout=timeout_s,
                               banner_timeout=timeout_s, auth_timeout=timeout_s, channel_timeout=timeout_s,
                               transport_factory=self._transport)
            except (HostKeyUnknown, HostKeyChanged, SshAuthFailed):
                client.close()
                raise
            except paramiko.AuthenticationException as exc:
                client.close()
                refused.append(f"{label}: {exc}")
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                raise UnitUnreachable(f"cannot connect to {target.serial} at {target.host}:{target.port} "
                                      f"({type(exc).__name__}: {exc}); check that the unit is on and its sshd "
                                      "runs, then retry") from exc
            if pkey is None:
                self._preferred[target.serial] = label
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            return UnitSession(client, target, self.settings)
        raise SshAuthFailed(f"{target.serial} ({target.host}:{target.port}) refused the client key(s) for user "
                            f"{target.user} ({'; '.join(refused)}); add the public half to the unit's "
                            "authorized_keys (`speakerops keys status` shows it)")
