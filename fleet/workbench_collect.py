"""Collect a unit's evidence over SSH/SFTP: recordings (with consent), log tails, model versions.

:func:`collect` opens one session (host key verified by the connector's known-hosts store, as for
rollouts), then, in this order:

1. **model versions** — the ``models/<kind>/current`` links and each current ``manifest.json``;
2. **consent** — ``etc/consent.json`` (what the unit holds) and ``recordings/index.jsonl`` (what
   each household said, the reference transcript);
3. **logs** — ``logs/*``, newest first, the *tail* of each within :attr:`CollectLimits.max_log_bytes`
   in all (a huge log never fills the technician's disk);
4. **recordings** — newest first, at most :attr:`CollectLimits.max_recordings` files and
   :attr:`CollectLimits.max_recording_bytes`, and only when the inventory's
   ``Unit.consent_recordings`` AND the unit's ``etc/consent.json`` both say yes (and the index does
   not mark the file ``household_consent: false``). Without consent nothing is downloaded.

Every file lands in ``<run_dir>/<kind>/`` through a ``.part`` file: a dropped connection is
reconnected (up to :attr:`CollectLimits.reconnects` times) and the download continues from the
bytes already on disk; a later :func:`collect` with the same ``run_dir`` resumes too. Complete
recordings are checked against ``sha256sum`` on the unit. ``<run_dir>/manifest.json`` lists what
was collected (sizes, SHA-256, tails, resumes) and what was not and why; it is rewritten after
every file, so an interruption keeps what was gathered.

Progress and cancellation are plain callables: ``progress(fraction, message)``, ``cancelled()``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import shlex
import stat as _stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko

from fleet.errors import FleetError, RemoteCommandError, RemotePathError, UnitUnreachable
from fleet.ssh import SshConnector, UnitSession, UnitTarget
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Cancelled = Callable[[], bool]

MODEL_KINDS: tuple[str, ...] = ("stt", "qa", "tts")
#: Recording file types collected (by suffix).
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg")
#: A model manifest or the consent file larger than this is not read, bytes.
SMALL_FILE_BYTES = 256 << 10


@dataclass(frozen=True)
class CollectLimits:
    """Bounds of one collection (SpeakerOps' choices: a technician's laptop on a home's uplink).

    * ``max_recordings = 10`` newest recordings, ``max_recording_bytes = 20 MiB`` in all
      (10 × 30 s of 16 kHz 16-bit audio is 9.6 MB);
    * ``max_log_bytes = 2 MiB`` of log tails in all, newest log first;
    * ``time_budget_s = 120``: past it the collection stops, keeping what it has;
    * ``block_bytes = 64 KiB`` per SFTP read (progress and cancel are checked per block);
    * ``reconnects = 2``: a dropped connection is reopened twice before the unit counts as gone.
    """

    max_recordings: int = 10
    max_recording_bytes: int = 20 << 20
    max_log_bytes: int = 2 << 20
    time_budget_s: float = 120.0
    block_bytes: int = 64 << 10
    reconnects: int = 2
    #: Seconds to wait before reconnecting after a drop.
    reconnect_wait_s: float = 0.5


@dataclass
class CollectedFile:
    """One file fetched from the unit. ``local`` is relative to the run directory."""

    kind: str  # recording | log | model_manifest | index | consent
    remote: str  # relative to the install root
    local: str
    remote_bytes: int
    bytes: int = 0
    sha256: str | None = None
    complete: bool = False
    #: Logs: the byte offset the collected tail starts at (0 = the whole file).
    tail_from: int = 0
    #: Bytes already on disk when a download was resumed (0 = not resumed).
    resumed_from: int = 0
    #: SHA-256 on the unit matched (None: not checked, e.g. a log tail).
    verified: bool | None = None


@dataclass
class Collection:
    """What :func:`collect` gathered from one unit (see :meth:`to_dict` for the manifest shape).

    ``status``: ``complete``; ``partial`` (the unit dropped for good, the time budget ran out, or a
    file failed); ``unreachable`` (no connection at all); ``cancelled``.
    """

    serial: str
    run_dir: Path
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "complete"
    error: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    files: list[CollectedFile] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    #: ``recordings/index.jsonl`` entries by file name (reference transcripts).
    index: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)

    def recordings(self) -> list[CollectedFile]:
        """The complete recordings, newest first."""
        return [f for f in self.files if f.kind == "recording" and f.complete]

    def path(self, f: CollectedFile) -> Path:
        return self.run_dir / f.local

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "run_dir": str(self.run_dir), "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "status": self.status, "error": self.error, "versions": self.versions, "consent": self.consent,
                "files": [asdict(f) for f in self.files], "skipped": self.skipped, "events": self.events,
                "index": self.index, "limits": self.limits,
                "bytes": sum(f.bytes for f in self.files)}

    def write_manifest(self) -> Path:
        """Write ``<run_dir>/manifest.json`` atomically."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        out = self.run_dir / "manifest.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        tmp.replace(out)
        return out


class _Stop(Exception):
    """Cancelled or out of time: stop the collection, keep what was gathered."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Gone(FleetError):
    """The unit dropped and did not come back within the reconnect budget."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dropped(s: UnitSession | None, exc: BaseException) -> bool:
    """True when ``exc`` means the connection is gone (not a file-level error)."""
    if isinstance(exc, UnitUnreachable | EOFError | paramiko.SSHException | ConnectionError):
        return True
    if s is None:
        return True
    transport = s.client.get_transport()
    return transport is None or not transport.is_active()


class _Collector:
    def __init__(self, connector: SshConnector, target: UnitTarget, col: Collection, limits: CollectLimits,
                 consent_inventory: bool, progress: Progress, cancelled: Cancelled) -> None:
        self.connector = connector
        self.target = target
        self.col = col
        self.limits = limits
        self.consent_inventory = consent_inventory
        self.progress = progress
        self.cancelled = cancelled
        self.deadline = time.monotonic() + limits.time_budget_s
        self.session: UnitSession | None = None
        self.reconnects_left = limits.reconnects
        self.planned = 1
        self.done = 0

    # -- connection -----------------------------------------------------------------------------
    def connect(self) -> UnitSession:
        if self.session is None:
            self.session = self.connector.connect(self.target, min(self.connector.settings.connect_timeout_s,
                                                                   max(1.0, self.deadline - time.monotonic())))
        return self.session

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self.session = None

    def reconnect(self, what: str, exc: BaseException) -> UnitSession:
        self.close()
        while self.reconnects_left > 0:
            self.reconnects_left -= 1
            self.check()
            time.sleep(self.limits.reconnect_wait_s)
            try:
                s = self.connect()
                self.col.events.append(f"the connection dropped during {what} ({type(exc).__name__}); reconnected")
                logger.warning("%s: connection dropped during %s; reconnected", self.target.serial, what)
                return s
            except UnitUnreachable as again:
                exc = again
        raise _Gone(f"the unit dropped during {what} and did not come back ({exc})")

    def check(self) -> None:
        if self.cancelled():
            raise _Stop("cancelled", "cancelled by the user")
        if time.monotonic() > self.deadline:
            raise _Stop("partial", f"the time budget of {self.limits.time_budget_s:g} s ran out")

    def report(self, message: str) -> None:
        try:
            self.progress(min(1.0, self.done / max(1, self.planned)), message)
        except Exception:  # noqa: BLE001 - a progress callback must not break the collection
            logger.exception("progress callback failed")

    def with_retry(self, what: str, fn: Callable[[UnitSession], Any]) -> Any:
        while True:
            s = self.connect()
            try:
                return fn(s)
            except (RemotePathError, RemoteCommandError):
                raise
            except (UnitUnreachable, OSError, EOFError, paramiko.SSHException) as exc:
                if not _dropped(s, exc):
                    raise
                self.reconnect(what, exc)

    # -- small reads ------------------------------------------------------------------------------
    def read_small(self, rel: str) -> bytes | None:
        def read(s: UnitSession) -> bytes | None:
            path = s.resolve(rel)
            try:
                st = s.sftp.stat(path)
            except FileNotFoundError:
                return None
            if (st.st_size or 0) > SMALL_FILE_BYTES:
                self.col.skipped.append({"remote": rel, "reason": f"larger than {SMALL_FILE_BYTES} bytes"})
                return None
            with s.sftp.open(path, "rb") as f:
                return f.read()
        try:
            return self.with_retry(f"reading {rel}", read)
        except (RemotePathError, RemoteCommandError, OSError) as exc:
            self.col.skipped.append({"remote": rel, "reason": str(exc)})
            return None

    def save_small(self, kind: str, rel: str, data: bytes, local: str) -> None:
        path = self.col.run_dir / local
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.col.files.append(CollectedFile(kind, rel, local, len(data), len(data), _sha256(path), True))

    def versions(self) -> None:
        for kind in MODEL_KINDS:
            def link(s: UnitSession, _k: str = kind) -> str | None:
                try:
                    return posixpath.basename(s.sftp.readlink(s.resolve(f"models/{_k}/current", follow=False))
                                              .rstrip("/"))
                except FileNotFoundError:
                    return None
            try:
                version = self.with_retry(f"reading models/{kind}/current", link)
            except (RemotePathError, OSError) as exc:
                self.col.skipped.append({"remote": f"models/{kind}/current", "reason": str(exc)})
                version = None
            self.col.versions[kind] = version
            if version:
                rel = f"models/{kind}/{version}/manifest.json"
                data = self.read_small(rel)
                if data is not None:
                    self.save_small("model_manifest", rel, data, f"models/{kind}-{version}.manifest.json")

    def consent_and_index(self) -> bool:
        data = self.read_small("etc/consent.json")
        unit_says: bool | None = None
        if data is not None:
            self.save_small("consent", "etc/consent.json", data, "unit/consent.json")
            try:
                unit_says = bool(json.loads(data.decode("utf-8")).get("recordings"))
            except (ValueError, AttributeError):
                unit_says = None
        allowed = bool(self.consent_inventory) and unit_says is True
        if not self.consent_inventory:
            reason = "the household did not consent to recordings (inventory: consent_recordings = false)"
        elif unit_says is None:
            reason = "the unit does not state its household's consent (etc/consent.json missing or unreadable)"
        elif not unit_says:
            reason = "the unit says its household withdrew consent to recordings (etc/consent.json)"
        else:
            reason = "the household consented (inventory and unit agree)"
        self.col.consent = {"inventory": bool(self.consent_inventory), "unit": unit_says, "collected": allowed,
                            "reason": reason}
        if allowed:
            index = self.read_small("recordings/index.jsonl")
            if index is not None:
                self.save_small("index", "recordings/index.jsonl", index, "recordings/index.jsonl")
                for line in index.decode("utf-8", "replace").splitlines():
                    try:
                        entry = json.loads(line)
                        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                            self.col.index[entry["file"]] = entry
                    except ValueError:
                        continue
        return allowed

    # -- listings and downloads -------------------------------------------------------------------
    def listdir(self, rel: str) -> list[paramiko.SFTPAttributes]:
        def ls(s: UnitSession) -> list[paramiko.SFTPAttributes]:
            try:
                return list(s.sftp.listdir_attr(s.resolve(rel)))
            except FileNotFoundError:
                return []
        try:
            entries = self.with_retry(f"listing {rel}", ls)
        except (RemotePathError, OSError) as exc:
            self.col.skipped.append({"remote": rel, "reason": f"cannot list: {exc}"})
            return []
        files = [e for e in entries if e.st_mode is not None and _stat.S_ISREG(e.st_mode)]
        return sorted(files, key=lambda e: (e.st_mtime or 0, e.filename), reverse=True)

    def download(self, f: CollectedFile) -> None:
        """Fetch ``f.remote`` from ``f.tail_from`` into ``f.local`` via a ``.part`` file, resuming."""
        final = self.col.run_dir / f.local
        part = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        want = f.remote_bytes - f.tail_from
        if final.exists() and final.stat().st_size == want and not part.exists():  # an earlier run got it
            self.col.events.append(f"{f.remote}: already collected by the earlier run")
        else:
            self._download_part(f, part, want)
            part.replace(final)
        f.bytes = final.stat().st_size
        f.sha256 = _sha256(final)
        f.complete = f.bytes == want

    def _download_part(self, f: CollectedFile, part: Path, want: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > want:
            part.unlink()
            have = 0
        part.touch()
        while have < want:
            self.check()

            def pull(s: UnitSession) -> None:
                nonlocal have
                if have and not f.resumed_from:
                    f.resumed_from = have
                    self.col.events.append(f"{f.remote}: resumed from byte {have:,} of {want:,}")
                path = s.resolve(f.remote)
                with s.sftp.open(path, "rb") as rf, part.open("ab") as lf:
                    rf.seek(f.tail_from + have)
                    while have < want:
                        self.check()
                        block = rf.read(min(self.limits.block_bytes, want - have))
                        if not block:
                            raise OSError(f"{f.remote} ended at {f.tail_from + have} bytes (it shrank on the unit)")
                        lf.write(block)
                        lf.flush()
                        have += len(block)
                        self.done += len(block)
                        self.report(f"{f.kind} {posixpath.basename(f.remote)}: {have:,} of {want:,} bytes")
            self.with_retry(f"the transfer of {f.remote}", pull)

    def logs(self) -> None:
        budget = self.limits.max_log_bytes
        for e in self.listdir("logs"):
            rel = f"logs/{e.filename}"
            size = int(e.st_size or 0)
            if budget <= 0:
                self.col.skipped.append({"remote": rel, "reason": f"log budget of {self.limits.max_log_bytes:,} "
                                                                  "bytes used by newer logs"})
                continue
            take = min(size, budget)
            f = CollectedFile("log", rel, f"logs/{e.filename}", size, tail_from=size - take)
            self.col.files.append(f)
            if f.tail_from:
                self.col.events.append(f"{rel}: {size:,} bytes on the unit; only its last {take:,} bytes "
                                       "were collected (log limit)")
            self.fetch(f)
            budget -= take

    def recordings(self) -> None:
        entries = [e for e in self.listdir("recordings") if e.filename.lower().endswith(AUDIO_SUFFIXES)]
        budget, count = self.limits.max_recording_bytes, 0
        for e in entries:
            rel = f"recordings/{e.filename}"
            size = int(e.st_size or 0)
            entry = self.col.index.get(e.filename, {})
            if entry.get("household_consent") is False:
                self.col.skipped.append({"remote": rel, "reason": "the index marks it without household consent"})
                continue
            if count >= self.limits.max_recordings or size > budget:
                self.col.skipped.append({"remote": rel, "reason": f"beyond the limits ({self.limits.max_recordings} "
                                                                  f"recordings, {self.limits.max_recording_bytes:,} bytes)"})
                continue
            f = CollectedFile("recording", rel, f"recordings/{e.filename}", size)
            self.col.files.append(f)
            self.fetch(f)
            budget -= size
            count += 1

    def fetch(self, f: CollectedFile) -> None:
        try:
            self.download(f)
        except (RemotePathError, RemoteCommandError, OSError) as exc:
            self.col.skipped.append({"remote": f.remote, "reason": f"download failed: {exc}"})
            self.col.status = "partial"
        self.col.write_manifest()

    def verify(self) -> None:
        """Compare complete recordings with ``sha256sum`` on the unit (one command)."""
        recs = [f for f in self.col.files if f.kind == "recording" and f.complete]
        if not recs:
            return

        def run(s: UnitSession) -> str:
            paths = " ".join(shlex.quote(s.resolve(f.remote)) for f in recs)
            return s.run(f"sha256sum -- {paths}", 30.0).stdout
        try:
            out = self.with_retry("checking SHA-256 on the unit", run)
        except (RemotePathError, RemoteCommandError, OSError) as exc:
            self.col.events.append(f"could not check SHA-256 on the unit: {exc}")
            return
        remote = {posixpath.basename(line.split(None, 1)[1].strip()): line.split()[0]
                  for line in out.splitlines() if len(line.split(None, 1)) == 2}
        for f in recs:
            got = remote.get(posixpath.basename(f.remote))
            f.verified = None if got is None else got == f.sha256
            if f.verified is False:
                f.complete = False
                self.col.skipped.append({"remote": f.remote, "reason": "its SHA-256 differs from the unit's copy"})


def collect(connector: SshConnector, target: UnitTarget, run_dir: Path, *, consent_recordings: bool,
            limits: CollectLimits | None = None, progress: Progress | None = None,
            cancelled: Cancelled | None = None, clock: Clock = utc_now,
            with_recordings: bool = True) -> Collection:
    """Collect a unit's model versions, log tails and (with consent) recordings into ``run_dir``.

    Parameters
    ----------
    connector
        Opens the SSH session; the unit's host key is checked against the known-hosts store.
    target
        The unit (``fleet.unit_update.target_for_unit``).
    run_dir
        Where the files and ``manifest.json`` go (``<data_dir>/workbench/<serial>/<timestamp>/``);
        an existing one is resumed (``.part`` files continue).
    consent_recordings
        The inventory's ``Unit.consent_recordings``; recordings are fetched only when it AND the
        unit's ``etc/consent.json`` say yes.
    limits
        Bounds in bytes and time (:class:`CollectLimits`).
    progress, cancelled
        ``progress(fraction 0–1, message)`` per block; ``cancelled()`` checked per block.
    with_recordings
        False: versions and logs only (``speakerops unit logs``).

    Returns
    -------
    Collection
        Never raises for unit failures: ``status`` and ``error`` say what happened; the manifest
        is on disk either way.
    """
    limits = limits or CollectLimits()
    run_dir = Path(run_dir)
    col = Collection(target.serial, run_dir, clock(), limits=asdict(limits))
    old = run_dir / "manifest.json"
    if old.is_file():
        col.events.append("resuming an earlier collection into the same directory")
    c = _Collector(connector, target, col, limits, consent_recordings, progress or (lambda f, m: None),
                   cancelled or (lambda: False))
    try:
        c.report("connecting")
        try:
            c.connect()
        except UnitUnreachable as exc:
            col.status, col.error = "unreachable", str(exc)
            raise _Stop("unreachable", str(exc)) from exc
        c.versions()
        allowed = c.consent_and_index() if with_recordings else False
        log_entries = c.listdir("logs")
        rec_sizes = 0
        if allowed:
            rec_sizes = sum(int(e.st_size or 0) for e in c.listdir("recordings")[: limits.max_recordings])
        elif with_recordings:
            n = len([e for e in c.listdir("recordings") if e.filename.lower().endswith(AUDIO_SUFFIXES)])
            if n:
                col.skipped.append({"remote": "recordings/", "reason": f"{n} recording(s) on the unit not collected: "
                                                                       + col.consent.get("reason", "no consent")})
        c.planned = min(sum(int(e.st_size or 0) for e in log_entries), limits.max_log_bytes) + min(
            rec_sizes, limits.max_recording_bytes)
        col.write_manifest()
        c.logs()
        if allowed:
            c.recordings()
            c.verify()
    except _Stop as stop:
        if col.status != "unreachable":
            col.status = stop.status
            col.error = str(stop)
        logger.warning("%s: collection stopped: %s", target.serial, stop)
    except _Gone as exc:
        col.status, col.error = "partial", str(exc)
        logger.warning("%s: %s", target.serial, exc)
    except FleetError as exc:  # host key refused, auth failed, path refused at the root
        col.status = "unreachable" if not col.files else "partial"
        col.error = str(exc)
        logger.warning("%s: collection failed: %s", target.serial, exc)
    finally:
        c.close()
    col.finished_at = clock()
    col.write_manifest()
    c.report("collected")
    return col
