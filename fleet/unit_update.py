"""Install one model version on one unit over SSH: the per-unit steps a rollout runs.

:func:`update_unit` goes through :class:`Step` in order::

    connect (host key checked) → check_space (df: bundle × 2 + margin) → upload (staging/<kind>/
    <version>/, resumable) → verify (unit-side bin/verify-bundle: SHA-256 of every file and the
    Ed25519 signature) → switch (move into models/<kind>/<version>/, ``previous`` → old current,
    ``current`` → new, each ``ln -sfn`` + ``mv -T``) → restart (bin/restart-voice-service) →
    health_gate (the agent reports the new version and a healthy state) → done

Any failure after the switch rolls the unit back (``current`` and ``previous`` restored, service
restarted) and the result says ``rolled_back=True`` with the reason.

Crash safety: before the switch, a journal ``<root>/run/update-<kind>.json`` records the version
and the links as they were (``from_current``, ``from_previous``) and the phase (``switching`` →
``switched`` → ``restarted``; ``rolling_back`` during a rollback); it is removed when the unit is
done. Running :func:`update_unit` again after an interruption at any point converges: files
already staged are not sent again, a version already installed is not uploaded, a switch is
redone from the journal, a restart is not repeated once done, an interrupted rollback is
finished first. A unit that already runs the version without a journal only gets the health
check.

:func:`update_unit` never raises for unit-level failures: it returns an
:class:`UnitUpdateResult` with ``ok=False``, the step reached and the error.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleet.errors import FleetError, UnitUpdateError
from fleet.models import Unit
from fleet.settings import SshSettings
from fleet.ssh import SshConnector, UnitSession, UnitTarget
from speakerops.timeutil import Clock, utc_now

__all__ = [
    "Step", "UnitModelState", "UnitTarget", "UnitUpdateResult", "default_health_check", "inspect_unit",
    "rollback_unit", "target_for_unit", "update_unit",
]

logger = logging.getLogger(__name__)

#: Free space kept beyond the bundle's two copies (staging + installed), bytes.
SPACE_MARGIN_BYTES = 16 << 20
#: Seconds between health checks during the health gate.
HEALTH_POLL_S = 0.5
#: Seconds a rollback may take (its own budget: it also runs after a unit timed out).
ROLLBACK_TIMEOUT_S = 120.0


class Step(StrEnum):
    """Per-unit update steps, in order (``rollback`` only after a failure past the switch)."""

    CONNECT = "connect"
    CHECK_SPACE = "check_space"
    UPLOAD = "upload"
    VERIFY = "verify"
    SWITCH = "switch"
    RESTART = "restart"
    HEALTH_GATE = "health_gate"
    DONE = "done"
    ROLLBACK = "rollback"


@dataclass
class UnitUpdateResult:
    """What happened on one unit. ``step_reached`` is the step that failed when ``ok`` is False
    (``rollback`` when the rollback itself failed), ``done`` on success."""

    serial: str
    ok: bool
    step_reached: Step
    bytes_sent: int
    error: str | None
    rolled_back: bool
    previous_version: str | None
    new_version: str
    started_at: datetime
    finished_at: datetime

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "ok": self.ok, "step_reached": str(self.step_reached),
                "bytes_sent": self.bytes_sent, "error": self.error, "rolled_back": self.rolled_back,
                "previous_version": self.previous_version, "new_version": self.new_version,
                "started_at": self.started_at.isoformat(), "finished_at": self.finished_at.isoformat()}


@dataclass(frozen=True)
class UnitModelState:
    """A unit's versions of one kind as its install root says (from :func:`inspect_unit`)."""

    serial: str
    kind: str
    current: str | None
    previous: str | None
    installed: tuple[str, ...] = ()
    staged: tuple[str, ...] = ()
    #: The update journal if an update was interrupted (see the module docstring), else None.
    journal: dict[str, Any] | None = None


def target_for_unit(unit: Unit, settings: SshSettings | None = None) -> UnitTarget:
    """The SSH target of an inventoried unit; the install root from ``settings.install_root``.

    Raises
    ------
    UnitUpdateError
        The unit has no SSH address in the inventory.
    """
    settings = settings or SshSettings()
    if not unit.ssh_host or not unit.ssh_port:
        raise UnitUpdateError(f"unit {unit.serial} has no SSH address in the inventory (ssh_host, "
                              "ssh_port); add it and re-import the inventory")
    import getpass

    return UnitTarget(unit.serial, unit.ssh_host, int(unit.ssh_port), unit.ssh_user or getpass.getuser(),
                      settings.install_root.replace("{serial}", unit.serial))


# -- remote layout helpers -------------------------------------------------------------------------
class _Remote:
    """Paths and small operations on one unit's install root for one kind."""

    def __init__(self, s: UnitSession, kind: str) -> None:
        self.s = s
        self.kind = kind
        self.root = s.root
        self.models = s.resolve(f"models/{kind}")
        self.staging_kind = s.resolve(f"staging/{kind}")
        self.journal_path = s.resolve(f"run/update-{kind}.json")

    def link(self, name: str) -> str | None:
        try:
            return posixpath.basename(self.s.sftp.readlink(posixpath.join(self.models, name)).rstrip("/"))
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        try:
            self.s.sftp.stat(path)
            return True
        except OSError:
            return False

    def read_journal(self) -> dict[str, Any] | None:
        try:
            with self.s.sftp.open(self.journal_path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            return data if isinstance(data, dict) else None
        except OSError:
            return None
        except ValueError:
            logger.warning("%s: unreadable update journal %s, ignored", self.s.target.serial, self.journal_path)
            return None

    def write_journal(self, journal: dict[str, Any]) -> None:
        self.s.run(f"mkdir -p -- {shlex.quote(posixpath.dirname(self.journal_path))}", check=True)
        tmp = self.journal_path + ".tmp"
        with self.s.sftp.open(tmp, "wb") as f:
            f.write(json.dumps(journal, sort_keys=True).encode("utf-8"))
        self.s.sftp.posix_rename(tmp, self.journal_path)

    def remove_journal(self) -> None:
        self.s.run(f"rm -f -- {shlex.quote(self.journal_path)}")

    def set_links(self, current: str, previous: str | None, timeout_s: float) -> None:
        """``previous`` then ``current``, each atomically (``ln -sfn`` to ``.tmp`` + ``mv -T``)."""
        q = shlex.quote
        cmds = [f"cd {q(self.models)}"]
        if previous:
            cmds.append(f"ln -sfn {q(previous)} previous.tmp && mv -T previous.tmp previous")
        cmds.append(f"ln -sfn {q(current)} current.tmp && mv -T current.tmp current")
        self.s.run(" && ".join(cmds), timeout_s, check=True)

    def restart(self, timeout_s: float) -> None:
        self.s.run(shlex.quote(posixpath.join(self.root, "bin", "restart-voice-service")), timeout_s, check=True)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise _TimedOut(f"the unit did not finish within its timeout of {self.seconds:g} s "
                            "(a unit stuck in progress counts as failed)")
        return left if cap is None else min(left, cap)


class _TimedOut(FleetError):
    pass


class _Cancelled(FleetError):
    pass


def _safe_on_step(on_step: Callable[[Step, dict], None], step: Step, detail: dict[str, Any]) -> None:
    try:
        on_step(step, detail)
    except Exception:  # noqa: BLE001 - a progress callback must not break the unit's update
        logger.exception("on_step callback failed at %s", step)


# -- update ----------------------------------------------------------------------------------------
def update_unit(connector: SshConnector, session_factory: sessionmaker[Session] | None, target: UnitTarget,
                kind: str, version: str, bundle_dir: Path, *,
                health_check: Callable[[str, str, str], bool],
                health_timeout_s: float = 60.0, timeout_s: float = 600.0,
                on_step: Callable[[Step, dict], None] = lambda s, d: None,
                cancelled: Callable[[], bool] = lambda: False, clock: Clock = utc_now,
                space_margin_bytes: int = SPACE_MARGIN_BYTES,
                rollback_timeout_s: float = ROLLBACK_TIMEOUT_S) -> UnitUpdateResult:
    """Install ``kind``/``version`` from the signed bundle ``bundle_dir`` on one unit.

    Parameters
    ----------
    connector
        Opens the SSH session (host key checked against its known-hosts store).
    session_factory
        Kept for the contract; the connector holds the known-hosts store. May be None.
    target
        The unit (:func:`target_for_unit`).
    bundle_dir
        A bundle directory with ``manifest.json`` and ``manifest.sig`` (the registry's stored
        copy, :attr:`fleet.models.ModelVersion.source_path`).
    health_check
        ``(serial, kind, version) -> bool``, one check, True when the unit reports ``version`` and
        a healthy state (:func:`default_health_check`); polled every 0.5 s for up to
        ``health_timeout_s``.
    timeout_s
        Budget for the whole unit, seconds; past it the unit fails (and rolls back if switched).
    on_step
        ``(step, detail)`` at the start of every step, and during the upload with
        ``{"bytes_sent", "bytes_total", "file"}``. Exceptions from it are logged and ignored.
    cancelled
        Checked before each step up to the switch; after the switch the unit finishes or rolls back.
    space_margin_bytes
        Free space needed beyond two copies of the bundle.
    rollback_timeout_s
        Separate budget for a rollback.

    Returns
    -------
    UnitUpdateResult
        Never raises for unit-level failures (unreachable, host key, disk, verify, restart,
        health, timeout, unexpected errors): ``ok=False`` with ``step_reached`` and ``error``.
    """
    started = clock()
    res = UnitUpdateResult(target.serial, False, Step.CONNECT, 0, None, False, None, version, started, started)
    deadline = _Deadline(timeout_s)
    run = _UpdateRun(connector, target, kind, version, Path(bundle_dir), health_check, health_timeout_s,
                     on_step, cancelled, deadline, space_margin_bytes, rollback_timeout_s, res)
    try:
        run.execute()
        res.ok, res.step_reached, res.error = True, Step.DONE, None
        _safe_on_step(on_step, Step.DONE, {"bytes_sent": res.bytes_sent})
    except Exception as exc:  # noqa: BLE001 - every unit failure becomes a result
        if not isinstance(exc, FleetError | OSError):
            logger.exception("%s: unexpected error at %s", target.serial, res.step_reached)
        res.error = (res.error + "; " if res.error else "") + str(exc)
        res.ok = False
        logger.warning("%s: update to %s failed at %s: %s", target.serial, version, res.step_reached, res.error)
    res.finished_at = clock()
    return res


@dataclass
class _UpdateRun:
    connector: SshConnector
    target: UnitTarget
    kind: str
    version: str
    bundle_dir: Path
    health_check: Callable[[str, str, str], bool]
    health_timeout_s: float
    on_step: Callable[[Step, dict], None]
    cancelled: Callable[[], bool]
    deadline: _Deadline
    margin: int
    rollback_timeout_s: float
    res: UnitUpdateResult
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def step(self, step: Step, **detail: Any) -> None:
        self.res.step_reached = step
        _safe_on_step(self.on_step, step, detail)

    def check_cancel(self) -> None:
        if self.cancelled():
            raise _Cancelled(f"cancelled before {self.res.step_reached}; the unit was not changed")

    def execute(self) -> None:
        from inference_core.bundles import load_bundle
        from inference_core.errors import ModelLoadError

        try:
            bundle = load_bundle(self.bundle_dir, verify=False)
        except ModelLoadError as exc:
            raise UnitUpdateError(f"bundle {self.bundle_dir}: {exc}") from exc
        if (bundle.kind, bundle.version) != (self.kind, self.version):
            raise UnitUpdateError(f"{self.bundle_dir} holds {bundle.kind}/{bundle.version}, not "
                                  f"{self.kind}/{self.version}")
        self.files = dict(bundle.manifest["files"])
        self.check_cancel()
        self.step(Step.CONNECT)
        with self.connector.connect(self.target, self.deadline.left(self.connector.settings.connect_timeout_s)) as s:
            self.s = s
            r = self.remote = _Remote(s, self.kind)
            journal = r.read_journal()
            if journal and journal.get("phase") == "rolling_back":
                self.finish_rollback(journal, "an earlier rollback was interrupted")
                journal = None
            elif journal and journal.get("version") != self.version:
                logger.warning("%s: dropping the journal of an interrupted update to %s", self.target.serial,
                               journal.get("version"))
                r.remove_journal()
                journal = None
            current, previous = r.link("current"), r.link("previous")
            if journal is not None:  # our own update was interrupted after the switch began
                self.res.previous_version = journal.get("from_current")
                self.after_verify(journal)
                return
            self.res.previous_version = current
            if current == self.version:
                self.res.previous_version = previous
                self.step(Step.HEALTH_GATE, already_current=True)
                self.health_gate(rollback_on_failure=False)
                return
            installed = posixpath.join(r.models, self.version)
            if r.exists(posixpath.join(installed, "manifest.json")):
                source = installed  # installed earlier (e.g. the version before): verify it again
            else:
                source = self.stage()
            self.step(Step.VERIFY, dir=source)
            self.check_cancel()
            res = s.run(f"{shlex.quote(posixpath.join(r.root, 'bin', 'verify-bundle'))} {shlex.quote(source)}",
                        self.deadline.left(s.settings.command_timeout_s))
            if res.status != 0:
                s.run(f"rm -rf -- {shlex.quote(source)}")  # the next attempt uploads it again
                raise UnitUpdateError(f"the unit refused the bundle: {res.stderr.strip() or res.stdout.strip()}")
            self.step(Step.SWITCH)
            self.check_cancel()
            if source != installed:
                s.run(f"mkdir -p -- {shlex.quote(r.models)} && rm -rf -- {shlex.quote(installed)} && "
                      f"mv -T -- {shlex.quote(source)} {shlex.quote(installed)}",
                      self.deadline.left(s.settings.command_timeout_s), check=True)
            journal = {"kind": self.kind, "version": self.version, "from_current": current,
                       "from_previous": previous, "phase": "switching"}
            r.write_journal(journal)
            self.after_verify(journal)

    def stage(self) -> str:
        """check_space and upload; returns the staging directory."""
        s, r = self.s, self.remote
        staging = posixpath.join(r.staging_kind, self.version)
        names = [*self.files, "manifest.json", "manifest.sig"]
        names = [n for n in names if n in self.files or (self.bundle_dir / n).is_file()]
        total = sum((self.bundle_dir / n).stat().st_size for n in names)
        self.step(Step.CHECK_SPACE, bytes_total=total)
        self.check_cancel()
        s.makedirs(posixpath.relpath(staging, r.root))
        staged = 0
        for n in names:
            try:
                staged += s.sftp.stat(posixpath.join(staging, n)).st_size or 0
            except OSError:
                pass
        need = max(0, 2 * total - staged) + self.margin
        out = s.run(f"df -Pk -- {shlex.quote(staging)} {shlex.quote(r.models)}",
                    self.deadline.left(s.settings.command_timeout_s), check=True).stdout
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 6 and cols[3].isdigit() and int(cols[3]) * 1024 < need:
                raise UnitUpdateError(f"not enough free space on {cols[5]}: {int(cols[3]) / 1024:.1f} MiB free, "
                                      f"{need / 2**20:.1f} MiB needed (bundle {total / 2**20:.1f} MiB × 2 + "
                                      f"margin); free space on the unit and retry")
        self.step(Step.UPLOAD, bytes_sent=0, bytes_total=total)
        done_before = 0
        from inference_core.bundles import sha256_file

        for n in names:
            self.check_cancel()
            self.deadline.left()
            local = self.bundle_dir / n
            parent = posixpath.dirname(n)
            if parent:
                s.makedirs(posixpath.relpath(posixpath.join(staging, parent), r.root))

            def progress(sent: int, _n: str = n, _base: int = done_before) -> None:
                self.res.bytes_sent = _base + sent
                _safe_on_step(self.on_step, Step.UPLOAD,
                              {"bytes_sent": self.res.bytes_sent, "bytes_total": total, "file": _n})
                self.deadline.left()  # a hung transfer fails the unit (raises out of the upload)

            sha = self.files[n]["sha256"] if n in self.files else sha256_file(local)
            done_before += s.upload(local, posixpath.relpath(posixpath.join(staging, n), r.root),
                                    sha256=sha, progress=progress)
            self.res.bytes_sent = done_before
        return staging

    def after_verify(self, journal: dict[str, Any]) -> None:
        """switch → restart → health gate, from the journal's phase; roll back on failure."""
        r = self.remote
        try:
            phase = journal.get("phase")
            if phase in ("switching", None):
                self.step(Step.SWITCH)
                r.set_links(self.version, journal.get("from_current"), self.deadline.left(60.0))
                journal["phase"] = "switched"
                r.write_journal(journal)
                phase = "switched"
            if phase == "switched":
                self.step(Step.RESTART)
                r.restart(self.deadline.left(self.s.settings.command_timeout_s))
                journal["phase"] = "restarted"
                r.write_journal(journal)
            self.step(Step.HEALTH_GATE)
            self.health_gate(rollback_on_failure=True)
            r.remove_journal()
            self.s.run(f"rm -rf -- {shlex.quote(posixpath.join(r.staging_kind, self.version))}")
        except Exception as exc:  # noqa: BLE001 - past the switch: any failure rolls back
            failed_at = self.res.step_reached
            reason = f"{failed_at} failed: {exc}"
            self.res.error = reason
            self.rollback(journal, reason)
            self.res.step_reached = failed_at
            raise UnitUpdateError(f"rolled back to {journal.get('from_current')}") from exc

    def health_gate(self, rollback_on_failure: bool) -> None:
        budget = self.deadline.left(self.health_timeout_s)
        end = time.monotonic() + budget
        while True:
            try:
                if self.health_check(self.target.serial, self.kind, self.version):
                    return
            except Exception as exc:  # noqa: BLE001 - a failing check is an unhealthy answer
                logger.debug("%s: health check error: %s", self.target.serial, exc)
            if time.monotonic() >= end:
                what = "did not report" if rollback_on_failure else "already runs but does not report"
                raise UnitUpdateError(f"the unit {what} {self.kind} {self.version} with a healthy state "
                                      f"within {budget:.0f} s (health gate)")
            time.sleep(HEALTH_POLL_S)

    def rollback(self, journal: dict[str, Any], reason: str) -> None:
        self.step(Step.ROLLBACK, reason=reason)
        try:
            try:
                self.finish_rollback(journal, reason)
            except Exception as first:  # noqa: BLE001 - e.g. the connection dropped: reconnect once
                logger.warning("%s: rollback over the old connection failed (%s); reconnecting",
                               self.target.serial, first)
                with self.connector.connect(self.target) as s2:
                    self.s, self.remote = s2, _Remote(s2, self.kind)
                    self.finish_rollback(journal, reason)
        except Exception as exc:  # noqa: BLE001
            self.res.error = f"{reason}; ROLLBACK FAILED: {exc} (the next run finishes it)"
            self.res.step_reached = Step.ROLLBACK
            raise
        self.res.rolled_back = True

    def finish_rollback(self, journal: dict[str, Any], reason: str) -> None:
        r = self.remote
        journal = {**journal, "phase": "rolling_back", "reason": reason}
        r.write_journal(journal)
        old = journal.get("from_current")
        if old:
            r.set_links(old, journal.get("from_previous"), ROLLBACK_TIMEOUT_S)
            r.restart(self.rollback_timeout_s)
        r.remove_journal()
        logger.warning("%s: rolled back %s to %s (%s)", self.target.serial, self.kind, old, reason)


# -- inspection and manual rollback ----------------------------------------------------------------
def inspect_unit(connector: SshConnector, session_factory: sessionmaker[Session] | None, target: UnitTarget,
                 kind: str) -> UnitModelState:
    """Read a unit's ``current``/``previous`` links, installed and staged versions, and journal.

    Raises
    ------
    UnitUnreachable, HostKeyUnknown, HostKeyChanged, SshAuthFailed, RemotePathError
        As :meth:`SshConnector.connect` and :meth:`UnitSession.resolve`.
    """
    with connector.connect(target) as s:
        r = _Remote(s, kind)

        def listdir(path: str) -> tuple[str, ...]:
            try:
                return tuple(sorted(n for n in s.sftp.listdir(path)
                                    if n not in ("current", "previous") and not n.endswith(".tmp")))
            except OSError:
                return ()

        return UnitModelState(target.serial, kind, r.link("current"), r.link("previous"),
                              listdir(r.models), listdir(r.staging_kind), r.read_journal())


def rollback_unit(connector: SshConnector, session_factory: sessionmaker[Session] | None, target: UnitTarget,
                  kind: str, reason: str, *, clock: Clock = utc_now,
                  timeout_s: float = ROLLBACK_TIMEOUT_S) -> UnitUpdateResult:
    """Switch a unit back to its ``previous`` version (or finish an interrupted update's rollback)
    and restart the voice service. Never raises for unit failures.

    Returns
    -------
    UnitUpdateResult
        ``step_reached=rollback``; ``new_version`` is the version now current, ``previous_version``
        the one rolled back from; ``ok`` False with ``error`` if there is nothing to roll back to
        or the unit failed.
    """
    started = clock()
    res = UnitUpdateResult(target.serial, False, Step.ROLLBACK, 0, None, False, None, "", started, started)
    try:
        with connector.connect(target, timeout_s) as s:
            r = _Remote(s, kind)
            journal = r.read_journal()
            current, previous = r.link("current"), r.link("previous")
            res.previous_version = current
            if journal and journal.get("from_current"):
                back_to, keep_previous = journal["from_current"], journal.get("from_previous")
            elif previous and previous != current:
                back_to, keep_previous = previous, current
            else:
                raise UnitUpdateError(f"{target.serial} has no previous {kind} version to roll back to "
                                      f"(current {current}, previous {previous})")
            r.write_journal({"kind": kind, "version": current, "from_current": back_to,
                             "from_previous": keep_previous, "phase": "rolling_back", "reason": reason})
            r.set_links(back_to, keep_previous, timeout_s)
            r.restart(timeout_s)
            r.remove_journal()
            res.new_version, res.ok, res.rolled_back = back_to, True, True
            logger.warning("%s: %s rolled back from %s to %s (%s)", target.serial, kind, current, back_to, reason)
    except Exception as exc:  # noqa: BLE001 - a result, never an exception
        if not isinstance(exc, FleetError | OSError):
            logger.exception("%s: unexpected error during rollback", target.serial)
        res.error = str(exc)
    res.finished_at = clock()
    return res


def default_health_check(agent_url_for: Callable[[str], str], *, request_timeout_s: float = 3.0,
                         healthy_states: tuple[str, ...] = ("ok", "degraded"),
                         client: Any = None) -> Callable[[str, str, str], bool]:
    """A health check that asks the unit agent once: ``GET <agent_url>/v1/health`` (docs/unit-api.md).

    Healthy means ``models[kind] == version`` and ``state`` in ``healthy_states`` (``updating``, the
    first seconds after a restart, is not yet healthy; the gate polls again). Connection errors,
    HTTP errors and malformed bodies count as unhealthy.

    Parameters
    ----------
    agent_url_for
        ``serial -> agent base URL`` (the inventory's ``agent_url``).
    client
        An ``httpx.Client`` to reuse; one is made per check otherwise.

    Notes
    -----
    ``/v1/health`` counts requests since the previous answer, so a health-gate poll takes those
    counts from the collector's next heartbeat for the few seconds of the gate.
    """
    import httpx

    def check(serial: str, kind: str, version: str) -> bool:
        url = agent_url_for(serial).rstrip("/") + "/v1/health"
        try:
            if client is not None:
                resp = client.get(url, timeout=request_timeout_s)
            else:
                resp = httpx.get(url, timeout=request_timeout_s)
            resp.raise_for_status()
            body = resp.json()
            ok = (body.get("models") or {}).get(kind) == version and body.get("state") in healthy_states
            logger.debug("%s health: %s %s state=%s → %s", serial, kind, (body.get("models") or {}).get(kind),
                         body.get("state"), ok)
            return bool(ok)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            logger.debug("%s health check failed: %s", serial, exc)
            return False

    return check

