"""Install one model version on one unit over SSH: the per-unit steps a rollout runs.

:func:`update_unit` goes through :class:`Step` in order::

    connect (host key checked) → check_space (df: bundle × 2 + margin) → upload (staging/<kind>/
    <version>/, resumable) → verify (unit-side bin/verify-bundle: SHA-256 of every file and the
    Ed25519 signature) → switch (move into models/<kind>/<version>/, ``previous`` → old current,
    ``current`` → new, each ``ln -sfn`` + ``mv -T``) → restart (bin/restart-voice-service) →
    [SSH session closed] → health_gate (the agent reports the new version and a healthy state,
    over HTTP) → done (a new session removes the journal)

Each phase is one unit-side script (:mod:`fleet.unit_scripts`): ``prepare`` (paths confined to
the root, links, journal, staged sizes, df) right after connect; the SFTP upload; ``install``
(the store's trusted signing keys into ``etc/trusted-keys/`` — a unit that missed a key rotation
learns it here — then verify + move + journal + switch); ``restart``. A file already staged with its full size is not
sent again; the SHA-256 of every file is checked once, by ``verify-bundle`` on the unit (a
corrupt staged copy is refused and deleted, and the next attempt sends it again).

The SSH session (and the caller's ``ssh_slot``, see :func:`update_unit`) is given up before the
health gate, which only polls the unit's agent, so a runner with K slots keeps K sessions busy
while more units sit in their gates. A rollback or the clean-up after the gate opens a new one.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleet import unit_scripts as scripts
from fleet.errors import FleetError, RemoteCommandError, UnitUnreachable, UnitUpdateError
from fleet.models import Unit
from fleet.settings import SshSettings
from fleet.ssh import SshConnector, UnitSession, UnitTarget
from fleet.unit_health import default_health_check  # noqa: F401 - part of this module's API
from speakerops.timeutil import Clock, utc_now

__all__ = [
    "Step", "UnitModelState", "UnitTarget", "UnitUpdateResult", "default_health_check", "inspect_unit",
    "rollback_unit", "target_for_unit", "update_unit",
]

logger = logging.getLogger(__name__)

#: Free space kept beyond the bundle's two copies (staging + installed), bytes.
SPACE_MARGIN_BYTES = 16 << 20
#: Seconds between health checks during the health gate (SpeakerOps' choice: a unit is ready
#: at most this long before the gate sees it; four small HTTP requests a second per unit).
HEALTH_POLL_S = 0.25
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
    """Read-only SFTP look at one unit's install root for one kind (:func:`inspect_unit`)."""

    def __init__(self, s: UnitSession, kind: str) -> None:
        self.s = s
        self.models = s.resolve(f"models/{kind}")
        self.staging_kind = s.resolve(f"staging/{kind}")
        self.journal_path = s.resolve(f"run/update-{kind}.json")

    def link(self, name: str) -> str | None:
        try:
            return posixpath.basename(self.s.sftp.readlink(posixpath.join(self.models, name)).rstrip("/"))
        except OSError:
            return None

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
                rollback_timeout_s: float = ROLLBACK_TIMEOUT_S,
                ssh_slot: Any = None) -> UnitUpdateResult:
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
        a healthy state (:func:`default_health_check`); polled every :data:`HEALTH_POLL_S` for up
        to ``health_timeout_s``. The gate runs with no SSH session open.
    timeout_s
        Budget for the whole unit, seconds; past it the unit fails (and rolls back if switched).
    on_step
        ``(step, detail)`` at the start of every step, and during the upload with
        ``{"bytes_sent", "bytes_total", "file"}``. ``switch`` is reported once the unit-side
        verification (which runs in one script with the switch) accepted the bundle. Exceptions
        from it are logged and ignored.
    cancelled
        Checked before connecting, before each file of the upload and before the
        verify-and-switch script; after the switch the unit finishes or rolls back.
    space_margin_bytes
        Free space needed beyond two copies of the bundle.
    rollback_timeout_s
        Separate budget for a rollback (and for the clean-up after a passed health gate).
    ssh_slot
        Held while an SSH session to the unit is open: an object with ``acquire(timeout=s) ->
        bool`` and ``release()`` (a ``threading.BoundedSemaphore``, or a manager's proxy of one,
        shared by all units of a rollout: at most K sessions). Released before the health gate
        and taken again for the clean-up or a rollback. None: no limit.

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
                     on_step, cancelled, deadline, space_margin_bytes, rollback_timeout_s, res, ssh_slot)
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
    ssh_slot: Any = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    _holding: bool = False

    def step(self, step: Step, **detail: Any) -> None:
        self.res.step_reached = step
        _safe_on_step(self.on_step, step, detail)

    def check_cancel(self) -> None:
        if self.cancelled():
            raise _Cancelled(f"cancelled before {self.res.step_reached}; the unit was not changed")

    @contextmanager
    def session(self, budget: _Deadline | None = None) -> Iterator[UnitSession]:
        """Take an SSH slot (unless this run holds one), connect; on exit close and give it back.

        ``budget`` None: the unit's deadline, and a cancel request is honoured while waiting for
        a slot; else that budget (clean-up, rollback), not cancellable.
        """
        deadline = budget or self.deadline
        take = self.ssh_slot is not None and not self._holding
        if take:
            while not self.ssh_slot.acquire(timeout=deadline.left(0.5)):
                if budget is None:
                    self.check_cancel()
            self._holding = True
        try:
            with self.connector.connect(self.target, deadline.left(self.connector.settings.connect_timeout_s)) as s:
                yield s
        finally:
            if take:
                self._holding = False
                self.ssh_slot.release()

    def cmd_timeout(self, s: UnitSession) -> float:
        return self.deadline.left(s.settings.command_timeout_s)

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
        names = [*self.files, "manifest.json", "manifest.sig"]
        self.names = [n for n in names if n in self.files or (self.bundle_dir / n).is_file()]
        self.check_cancel()
        self.step(Step.CONNECT)
        with self.session() as s:
            view = self.prepare(s)
            journal = view.journal
            if journal and journal.get("phase") == "rolling_back":
                self.finish_rollback(s, view, journal, "an earlier rollback was interrupted")
                view = self.prepare(s)
                journal = None
            elif journal and journal.get("version") != self.version:
                logger.warning("%s: dropping the journal of an interrupted update to %s", self.target.serial,
                               journal.get("version"))
                s.run_script(f"rm -f -- {shlex.quote(view.journal_path)}", self.cmd_timeout(s))
                journal = None
            if journal is not None:  # our own update was interrupted after the switch began
                self.res.previous_version = journal.get("from_current")
                journal = self.switch_and_restart(s, view, journal)
            elif view.current == self.version:
                self.res.previous_version = view.previous
            else:
                self.res.previous_version = view.current
                source = posixpath.join(view.models, self.version) if view.installed else self.stage(s, view)
                journal = self.install(s, view, source)
                journal = self.switch_and_restart(s, view, journal)
        if journal is None:  # already current, no journal: only the health check
            self.step(Step.HEALTH_GATE, already_current=True)
            self.health_gate(rollback_on_failure=False)
            return
        try:
            self.step(Step.HEALTH_GATE)
            self.health_gate(rollback_on_failure=True)
        except Exception as exc:  # noqa: BLE001 - past the switch: any failure rolls back
            self.fail_after_switch(exc, view, journal, None)
        self.finish(view)

    def prepare(self, s: UnitSession) -> scripts.UnitView:
        return scripts.prepare(s, self.kind, self.version, self.names, mkdirs=True, timeout_s=self.cmd_timeout(s))

    def stage(self, s: UnitSession, view: scripts.UnitView) -> str:
        """check_space and upload; returns the staging directory."""
        sizes = {n: (self.bundle_dir / n).stat().st_size for n in self.names}
        total = sum(sizes.values())
        self.step(Step.CHECK_SPACE, bytes_total=total)
        self.check_cancel()
        staged = sum(max(0, sz) for sz in view.staged_sizes)
        need = max(0, 2 * total - staged) + self.margin
        for mount, avail in view.free:
            if avail < need:
                raise UnitUpdateError(f"not enough free space on {mount}: {avail / 2**20:.1f} MiB free, "
                                      f"{need / 2**20:.1f} MiB needed (bundle {total / 2**20:.1f} MiB × 2 + "
                                      f"margin); free space on the unit and retry")
        self.step(Step.UPLOAD, bytes_sent=0, bytes_total=total)
        done_before = 0
        staging_rel = f"staging/{self.kind}/{self.version}"
        for n, remote_size in zip(self.names, view.staged_sizes, strict=True):
            self.check_cancel()
            self.deadline.left()
            if remote_size == sizes[n]:
                continue  # complete (by size); verify-bundle catches a corrupt one, which is then re-sent

            def progress(sent: int, _n: str = n, _base: int = done_before) -> None:
                self.res.bytes_sent = _base + sent
                _safe_on_step(self.on_step, Step.UPLOAD,
                              {"bytes_sent": self.res.bytes_sent, "bytes_total": total, "file": _n})
                self.deadline.left()  # a hung transfer fails the unit (raises out of the upload)

            # the prepare script checked on the unit that these paths stay inside the root
            done_before += s.upload(self.bundle_dir / n, posixpath.join(staging_rel, n), check="size",
                                    remote_size=remote_size, follow=False, progress=progress)
            self.res.bytes_sent = done_before
        return view.staging

    def install(self, s: UnitSession, view: scripts.UnitView, source: str) -> dict[str, Any]:
        """verify → move → journal → switch, one script; returns the journal (phase ``switched``)."""
        journal = {"kind": self.kind, "version": self.version, "from_current": view.current,
                   "from_previous": view.previous}
        self.step(Step.VERIFY, dir=source)
        self.check_cancel()
        trusted = getattr(self.connector, "trusted_signing_keys", dict)()  # learnt before the check
        script = scripts.install_script(view, self.version, source,
                                        posixpath.join(view.root, "bin", "verify-bundle"), journal, trusted)
        try:
            res = s.run_script(script, self.cmd_timeout(s), label=f"verify-bundle + switch {source}")
        except (RemoteCommandError, UnitUnreachable) as exc:
            self.after_uncertain_install(exc, journal)
            raise
        if "@verified" not in res.stdout:
            if res.status == scripts.EXIT_TRUST_FAILED:
                raise UnitUpdateError(f"cannot install the trusted signing keys on the unit: {res.stderr.strip()}")
            if res.status == scripts.EXIT_REFUSED:
                raise UnitUpdateError(f"the unit refused the bundle: {res.stderr.strip() or res.stdout.strip()}")
            raise UnitUpdateError(f"verify-bundle could not run (exit {res.status}): "
                                  f"{res.stderr.strip() or res.stdout.strip()}")
        self.step(Step.SWITCH)
        if "@journal" not in res.stdout:  # the links were not touched: the unit is unchanged
            raise UnitUpdateError(f"moving the verified bundle into place failed (exit {res.status}): "
                                  f"{res.stderr.strip()}")
        if "@switched" not in res.stdout:
            self.fail_after_switch(UnitUpdateError(f"switching the links failed (exit {res.status}): "
                                                   f"{res.stderr.strip()}"), view, journal, s)
        return {**journal, "phase": "switched"}

    def after_uncertain_install(self, exc: Exception, journal: dict[str, Any]) -> None:
        """The verify-and-switch script timed out or the connection dropped: if it got as far as
        the journal, roll back (a new connection); else the unit is unchanged."""
        try:
            with self.session(_Deadline(self.rollback_timeout_s)) as s2:
                view2 = scripts.prepare(s2, self.kind, self.version, [], mkdirs=False, timeout_s=self.rollback_timeout_s)
                found = view2.journal
                if found and found.get("version") == self.version and found.get("phase") != "rolling_back":
                    self.fail_after_switch(exc, view2, found, s2)
        except UnitUpdateError:
            raise
        except Exception as again:  # noqa: BLE001 - unreachable again: the next run converges from the journal
            logger.warning("%s: cannot check the unit after %s: %s", self.target.serial, exc, again)

    def switch_and_restart(self, s: UnitSession, view: scripts.UnitView, journal: dict[str, Any]) -> dict[str, Any]:
        """From the journal's phase: (switch →) restart; roll back on failure. Returns the journal."""
        try:
            phase = journal.get("phase")
            if phase in ("switching", None):
                self.step(Step.SWITCH)
                res = s.run_script(scripts.switch_script(view, self.version, journal), self.deadline.left(60.0),
                            label="switch", check=True)
                if "@switched" not in res.stdout:
                    raise UnitUpdateError(f"switching the links failed: {res.stderr.strip()}")
                journal, phase = {**journal, "phase": "switched"}, "switched"
            if phase == "switched":
                self.step(Step.RESTART)
                s.run_script(scripts.restart_script(view, journal), self.cmd_timeout(s), label="restart-voice-service",
                      check=True)
                journal = {**journal, "phase": "restarted"}
        except Exception as exc:  # noqa: BLE001 - past the switch: any failure rolls back
            self.fail_after_switch(exc, view, journal, s)
        return journal

    def finish(self, view: scripts.UnitView) -> None:
        """After the gate: remove the journal and the staging directory (a new session; over SFTP,
        which starts no shell on the unit)."""
        try:
            with self.session(_Deadline(self.rollback_timeout_s)) as s:
                try:
                    s.sftp.remove(view.journal_path)
                except FileNotFoundError:
                    pass
                try:
                    s.sftp.stat(view.staging)  # normally moved away by the install script
                    s.run_script(scripts.finish_script(view), s.settings.command_timeout_s, label="clean up",
                                 check=True)
                except FileNotFoundError:
                    pass
        except Exception as exc:  # noqa: BLE001 - the unit runs the new version and passed its gate
            logger.warning("%s: %s %s passed its health gate but the journal could not be removed (%s); "
                           "the next update of the unit drops it", self.target.serial, self.kind, self.version, exc)

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
            time.sleep(min(HEALTH_POLL_S, max(0.0, end - time.monotonic())))

    def fail_after_switch(self, exc: BaseException, view: scripts.UnitView, journal: dict[str, Any],
                          s: UnitSession | None) -> None:
        """Roll back and raise: the unit failed at the current step after its links may have changed."""
        failed_at = self.res.step_reached
        reason = f"{failed_at} failed: {exc}"
        self.res.error = reason
        self.rollback(view, journal, reason, s)
        self.res.step_reached = failed_at
        raise UnitUpdateError(f"rolled back to {journal.get('from_current')}") from exc

    def rollback(self, view: scripts.UnitView, journal: dict[str, Any], reason: str, s: UnitSession | None) -> None:
        self.step(Step.ROLLBACK, reason=reason)
        try:
            if s is not None:
                try:
                    self.finish_rollback(s, view, journal, reason)
                    self.res.rolled_back = True
                    return
                except Exception as first:  # noqa: BLE001 - e.g. the connection dropped: reconnect once
                    logger.warning("%s: rollback over the old connection failed (%s); reconnecting",
                                   self.target.serial, first)
            with self.session(_Deadline(self.rollback_timeout_s)) as s2:
                self.finish_rollback(s2, view, journal, reason)
        except Exception as exc:  # noqa: BLE001
            self.res.error = f"{reason}; ROLLBACK FAILED: {exc} (the next run finishes it)"
            self.res.step_reached = Step.ROLLBACK
            raise
        self.res.rolled_back = True

    def finish_rollback(self, s: UnitSession, view: scripts.UnitView, journal: dict[str, Any], reason: str) -> None:
        scripts.run_rollback(s, view, journal, reason, self.rollback_timeout_s)
        logger.warning("%s: rolled back %s to %s (%s)", self.target.serial, self.kind, journal.get("from_current"),
                       reason)


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
            view = scripts.prepare(s, kind, None, [], mkdirs=False, timeout_s=timeout_s)
            journal, current, previous = view.journal, view.current, view.previous
            res.previous_version = current
            if journal and journal.get("from_current"):
                back_to, keep_previous = journal["from_current"], journal.get("from_previous")
            elif previous and previous != current:
                back_to, keep_previous = previous, current
            else:
                raise UnitUpdateError(f"{target.serial} has no previous {kind} version to roll back to "
                                      f"(current {current}, previous {previous})")
            scripts.run_rollback(s, view, {"kind": kind, "version": current, "from_current": back_to,
                                    "from_previous": keep_previous}, reason, timeout_s)
            res.new_version, res.ok, res.rolled_back = back_to, True, True
            logger.warning("%s: %s rolled back from %s to %s (%s)", target.serial, kind, current, back_to, reason)
    except Exception as exc:  # noqa: BLE001 - a result, never an exception
        if not isinstance(exc, FleetError | OSError):
            logger.exception("%s: unexpected error during rollback", target.serial)
        res.error = str(exc)
    res.finished_at = clock()
    return res
