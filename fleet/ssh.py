"""SSH to units (paramiko): host keys checked against the database, commands, confined SFTP paths,
resumable uploads.

* :class:`KnownHostsStore` — table ``known_hosts``. An unknown host key raises
  :class:`~fleet.errors.HostKeyUnknown` (carrying the fingerprint) and is recorded ``pending`` until
  an operator approves it (:func:`approve`, ``speakerops units approve-host-key SERIAL FP``); a key
  other than the approved one raises :class:`~fleet.errors.HostKeyChanged` and is always refused.
  Trust on first use is an explicit opt-in for labs (``SPEAKEROPS_SSH_TRUST_ON_FIRST_USE=1`` or
  ``trust_on_first_use=True``).
* :class:`SshConnector` opens a :class:`UnitSession` to a :class:`UnitTarget`: key file only
  (``look_for_keys=False, allow_agent=False``), a connect timeout, a larger channel window.
* :class:`UnitSession` runs commands with a timeout (``(status, stdout, stderr)``), confines remote
  paths to the unit's install root (``..``, absolute paths elsewhere and symlinks that lead out
  are refused; symlinks are resolved on the unit with SFTP ``realpath``), and uploads files over
  SFTP resuming a partial remote file from its size, with pipelined 255 KiB writes and a SHA-256
  check at the end.

Errors: :class:`~fleet.errors.UnitUnreachable` (refused, timed out, dropped),
:class:`~fleet.errors.SshAuthFailed`, :class:`~fleet.errors.RemoteCommandError`,
:class:`~fleet.errors.RemotePathError`.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import posixpath
import select
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session, sessionmaker

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
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Local read size per SFTP write call while uploading, bytes.
UPLOAD_BLOCK_BYTES = 1 << 20
TOFU_ACTOR = "trust-on-first-use"


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


def fingerprint_of(key: paramiko.PKey) -> str:
    """OpenSSH SHA256 fingerprint of a host key: ``SHA256:<base64, no padding>``."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _normalize_fingerprint(fp: str) -> str:
    fp = fp.strip()
    return fp if fp.startswith("SHA256:") else "SHA256:" + fp


# -- known hosts ----------------------------------------------------------------------------------
class KnownHostsStore:
    """The console's known-hosts store over the ``known_hosts`` table.

    Parameters
    ----------
    session_factory
        Each check runs (and commits) in its own short transaction, so a pending key is recorded
        even though the connection is refused.
    trust_on_first_use
        Approve the first key a unit presents (labs only); recorded with actor
        ``trust-on-first-use`` in the audit trail.
    """

    def __init__(self, session_factory: sessionmaker[Session], clock: Clock = utc_now,
                 trust_on_first_use: bool = False) -> None:
        self._sf = session_factory
        self._clock = clock
        self.trust_on_first_use = trust_on_first_use

    def check(self, serial: str, host: str, port: int, key: paramiko.PKey) -> None:
        """Accept the key ``serial`` presented, or raise.

        Raises
        ------
        HostKeyUnknown
            No approved key for the unit yet (this one is now pending).
        HostKeyChanged
            The unit has an approved key and this is another one.
        """
        fp = fingerprint_of(key)
        now = self._clock()
        with self._sf.begin() as session:
            rows = session.scalars(sql_select(KnownHost).where(KnownHost.serial == serial)).all()
            approved = next((r for r in rows if r.state == "approved"), None)
            row = next((r for r in rows if r.fingerprint == fp), None)
            if row is None:
                row = KnownHost(serial=serial, host=host, port=port, key_type=key.get_name(),
                                key_base64=key.get_base64(), fingerprint=fp, state="pending",
                                first_seen_at=now, last_seen_at=now)
                session.add(row)
            row.host, row.port, row.last_seen_at = host, port, now
            if approved is not None and approved.fingerprint == fp:
                return
            if approved is not None:
                row.state = "refused"
                error: FleetError = HostKeyChanged(
                    f"the host key of {serial} at {host}:{port} CHANGED: it presented {fp}, the approved "
                    f"key is {approved.fingerprint}. Refused (possible man-in-the-middle). If the unit "
                    f"was re-imaged, check the new fingerprint on the unit and approve it with "
                    f"`speakerops units approve-host-key {serial} {fp} --replace`.",
                    serial=serial, fingerprint=fp, expected=approved.fingerprint)
            elif self.trust_on_first_use:
                row.state, row.approved_by, row.approved_at = "approved", TOFU_ACTOR, now
                audit.record(session, "host_key.approve", "unit", serial, before=None,
                             after={"fingerprint": fp, "host": host, "port": port},
                             reason="trust on first use (lab opt-in)", actor=TOFU_ACTOR, clock=self._clock)
                logger.warning("trusting %s's host key %s on first use", serial, fp)
                return
            else:
                error = HostKeyUnknown(
                    f"the host key of {serial} at {host}:{port} is not approved yet: {fp}. Check it "
                    f"against the unit, then `speakerops units approve-host-key {serial} {fp}`.",
                    serial=serial, fingerprint=fp)
        raise error


def approve(session: Session, serial: str, fingerprint: str, actor: str | None = None, *,
            replace: bool = False, clock: Clock = utc_now) -> KnownHost:
    """Approve a host key a unit presented (it must have been seen: connect once first).

    Parameters
    ----------
    fingerprint
        ``SHA256:…`` as shown by the refusal (the prefix may be left out).
    replace
        Needed when the unit already has another approved key (a re-imaged unit); the old key
        becomes ``refused``.

    Raises
    ------
    FleetError
        The key was never seen for this unit, or another key is approved and ``replace`` is False.
    """
    fp = _normalize_fingerprint(fingerprint)
    rows = session.scalars(sql_select(KnownHost).where(KnownHost.serial == serial)).all()
    row = next((r for r in rows if r.fingerprint == fp), None)
    if row is None:
        seen = ", ".join(f"{r.fingerprint} ({r.state})" for r in rows) or "none"
        raise FleetError(f"no host key {fp} has been seen for unit {serial} (seen: {seen}); connect "
                         "to the unit once (e.g. start a rollout) so its key is recorded, then approve it")
    others = [r for r in rows if r.state == "approved" and r is not row]
    if others and not replace:
        raise FleetError(f"unit {serial} already has the approved key {others[0].fingerprint}; pass "
                         "--replace (replace=True) after checking the unit was re-imaged")
    before = {"approved": [r.fingerprint for r in rows if r.state == "approved"]}
    for r in others:
        r.state = "refused"
    now = clock()
    row.state, row.approved_by, row.approved_at = "approved", actor or audit.current_actor(session), now
    audit.record(session, "host_key.approve", "unit", serial, before=before,
                 after={"approved": [fp], "host": row.host, "port": row.port},
                 reason="replaces " + ", ".join(r.fingerprint for r in others) if others else None,
                 actor=row.approved_by, clock=clock)
    return row


def list_host_keys(session: Session, serial: str | None = None) -> list[KnownHost]:
    """Known host keys (all units, or one), by serial then first seen."""
    q = sql_select(KnownHost).order_by(KnownHost.serial, KnownHost.first_seen_at)
    if serial is not None:
        q = q.where(KnownHost.serial == serial)
    return list(session.scalars(q))


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

    def __enter__(self) -> UnitSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
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
    def run(self, command: str, timeout_s: float | None = None, *, check: bool = False) -> CommandResult:
        """Run ``command`` (a shell line) on the unit and wait for it.

        Parameters
        ----------
        timeout_s
            Seconds for the whole command; default ``settings.command_timeout_s``.
        check
            Raise on a non-zero exit status.

        Raises
        ------
        RemoteCommandError
            Timed out (the channel is closed; ``status`` None), or non-zero with ``check``.
        UnitUnreachable
            The connection dropped.
        """
        timeout_s = self.settings.command_timeout_s if timeout_s is None else timeout_s
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
                            f"{self.target.serial}: `{command}` did not finish within {timeout_s:g} s "
                            "(hung); it counts as failed", status=None,
                            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
                    if not transport.is_active():
                        raise EOFError("transport closed while the command ran")
                    select.select([chan], [], [], min(remaining, 0.5))
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._unreachable(f"`{command}`", exc) from exc
        result = CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            raise RemoteCommandError(f"{self.target.serial}: `{command}` exited {status}: "
                                     f"{result.stderr.strip() or result.stdout.strip()}",
                                     status=status, stdout=result.stdout, stderr=result.stderr)
        return result

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
               progress: Callable[[int], None] | None = None) -> int:
        """Copy ``local`` to ``remote_rel`` under the root, resuming a partial remote file.

        A remote file of the same size whose SHA-256 matches is skipped; a shorter one is continued
        from its size; a longer one, or one that does not match at the end, is written again.

        Parameters
        ----------
        sha256
            Expected SHA-256 (hex) of the file (computed locally when None).
        progress
            Called with the bytes sent by this call so far, after every block.

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
        if sha256 is None:
            from inference_core.bundles import sha256_file

            sha256 = sha256_file(local)
        remote = self.resolve(remote_rel)
        sent = 0
        for _attempt in (1, 2):
            try:
                offset = self.sftp.stat(remote).st_size or 0
            except OSError as exc:
                if not _is_missing(exc):
                    raise self._unreachable(f"stat {remote}", exc) from exc
                offset = 0
            if offset == size and self.remote_sha256(remote) == sha256:
                return sent
            if offset >= size:
                offset = 0  # complete but different, or longer: write it again
            sent += self._write_from(local, remote, offset, size, progress, sent)
            if self.remote_sha256(remote) == sha256:
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

    Parameters
    ----------
    session_factory
        For the known-hosts store.
    settings
        SSH settings (:class:`fleet.settings.SshSettings`); default from the environment.
    data_dir
        SpeakerOps data directory, for the default client key ``<data_dir>/client_key``.
    trust_on_first_use
        Overrides ``settings.trust_on_first_use`` (labs only).
    """

    def __init__(self, session_factory: sessionmaker[Session], settings: SshSettings | None = None, *,
                 data_dir: Path | None = None, clock: Clock = utc_now,
                 trust_on_first_use: bool | None = None) -> None:
        self.settings = settings or SshSettings()
        if self.settings.client_key_path:
            self.key_path = Path(self.settings.client_key_path)
        else:
            if data_dir is None:
                from speakerops.settings import CoreSettings

                data_dir = CoreSettings().data_dir
            self.key_path = Path(data_dir) / "client_key"
        tofu = self.settings.trust_on_first_use if trust_on_first_use is None else trust_on_first_use
        self.known_hosts = KnownHostsStore(session_factory, clock, trust_on_first_use=tofu)
        self._pkey: paramiko.PKey | None = None

    def _key(self) -> paramiko.PKey:
        if self._pkey is None:
            try:
                self._pkey = paramiko.PKey.from_path(self.key_path)
            except (OSError, paramiko.SSHException) as exc:
                raise SshAuthFailed(f"cannot read the SSH client key {self.key_path} ({exc}); set "
                                    "SPEAKEROPS_SSH_CLIENT_KEY_PATH or create the key") from exc
        return self._pkey

    def _transport(self, sock: Any, **kwargs: Any) -> paramiko.Transport:
        return paramiko.Transport(sock, default_window_size=self.settings.window_size,
                                  default_max_packet_size=self.settings.max_packet_size, **kwargs)

    def connect(self, target: UnitTarget, timeout_s: float | None = None) -> UnitSession:
        """Connect and authenticate to ``target``, checking its host key.

        Raises
        ------
        HostKeyUnknown, HostKeyChanged
            From the known-hosts store.
        SshAuthFailed
            The unit refused the client key.
        UnitUnreachable
            Refused, timed out, or dropped while connecting.
        """
        timeout_s = self.settings.connect_timeout_s if timeout_s is None else timeout_s
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_StorePolicy(self.known_hosts, target))
        try:
            client.connect(target.host, port=target.port, username=target.user, pkey=self._key(),
                           look_for_keys=False, allow_agent=False, timeout=timeout_s,
                           banner_timeout=timeout_s, auth_timeout=timeout_s, channel_timeout=timeout_s,
                           transport_factory=self._transport)
        except (HostKeyUnknown, HostKeyChanged, SshAuthFailed):
            client.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshAuthFailed(f"{target.serial} ({target.host}:{target.port}) refused the client key "
                                f"{self.key_path} for user {target.user} ({exc}); add its public half to the "
                                "unit's authorized_keys") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise UnitUnreachable(f"cannot connect to {target.serial} at {target.host}:{target.port} "
                                  f"({type(exc).__name__}: {exc}); check that the unit is on and its sshd "
                                  "runs, then retry") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return UnitSession(client, target, self.settings)
