"""Technician workbench: diagnose one unit remotely, end to end, and leave evidence on its ticket.

:func:`diagnose_unit` is the one action (``speakerops unit diagnose``, the console's Diagnostics
page)::

    unit (or the ticket's unit) → collect over SSH (fleet.workbench_collect: versions, consent,
    log tails, recordings; bounded, resumable, manifest with SHA-256) → models of the unit's
    versions from the registry (fleet.workbench_replay.resolve_bundles) → acoustic self-test over
    the agent (fleet.selftest, kept in unit_selftests) → replay of every recording with those
    models, QA on the reference, TTS round trip (fleet.workbench_replay.replay) → unit log and
    fleet figures → requirement verdicts and the overall verdict with why and the action
    (fleet.workbench_report) → report.json + report.html in the run directory → one transaction:
    workbench_runs row, audit entry, ticket attachments, ticket moved to ``diagnosing``.

Evidence lives in ``<data_dir>/workbench/<serial>/<YYYYmmddTHHMMSSZ>/``. Each step that fails is
recorded in the report's ``problems`` and the diagnosis goes on with what it has: the report is
written and attached in every case (a unit that disappears mid-diagnosis leaves what was gathered).

Progress and cancellation are plain callables, as everywhere in the core: ``progress(fraction,
message)`` with ``fraction`` in [0, 1], ``cancelled() -> bool`` (checked between steps, per SFTP
block and per recording); the console adapts them to Qt signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet.errors import FleetError
from fleet.models import Unit
from fleet.settings import SshSettings
from fleet.ssh import SshConnector, UnitTarget
from fleet.workbench_collect import Collection, CollectLimits, collect
from fleet.workbench_replay import LoopCache
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Cancelled = Callable[[], bool]
REPORT_SCHEMA = "speakerops.workbench/1"


class WorkbenchError(FleetError):
    """A diagnosis cannot start: unknown unit or ticket, or a ticket without a unit."""


@dataclass
class WorkbenchContext:
    """What the workbench needs, built once by the composition root (console or CLI).

    Parameters
    ----------
    session_factory
        Database sessions (each step opens its own short transaction).
    connector
        SSH connector (known-hosts store, client key).
    data_dir
        SpeakerOps data directory: evidence under ``workbench/``, regression sets under ``testsets/``.
    models_root
        Default bundles (``<data_dir>/models``), the fallback for unregistered versions.
    ssh_settings
        For the units' install root (``SPEAKEROPS_SSH_INSTALL_ROOT``); default the connector's.
    """

    session_factory: sessionmaker[Session]
    connector: SshConnector
    data_dir: Path
    models_root: Path
    clock: Clock = utc_now
    ssh_settings: SshSettings | None = None
    loops: LoopCache = field(default_factory=LoopCache)
    http_client: Any = None


@dataclass
class DiagnoseOptions:
    """What a diagnosis runs (each costs time). ``loop_options`` None: the full loop (MOS, general
    transcript, speaker count). ``move_ticket``: move the ticket to ``diagnosing`` when allowed."""

    limits: CollectLimits = field(default_factory=CollectLimits)
    loop_options: Any = None
    selftest: bool = True
    tts_round_trip: bool = True
    html: bool = True
    move_ticket: bool = True
    actor: str | None = None


@dataclass
class Diagnosis:
    """The outcome of :func:`diagnose_unit`: the report (plain JSON data) and where it was written."""

    serial: str
    verdict: str
    report: dict[str, Any]
    run_dir: Path
    json_path: Path | None
    html_path: Path | None
    run_id: int | None = None
    ticket_id: int | None = None
    attached: bool = False

    @property
    def exit_code(self) -> int:
        """CLI exit status: 1 unreachable, 2 partial (collection cut short or inconclusive), else 0."""
        if self.verdict == "unreachable":
            return 1
        status = self.report.get("collection", {}).get("status")
        return 2 if self.verdict == "inconclusive" or status in ("partial", "cancelled") else 0


@dataclass(frozen=True)
class UnitInfo:
    """What the workbench reads of a unit's inventory row (a plain snapshot, no session needed)."""

    unit_id: int
    serial: str
    site: str
    hardware_rev: str
    agent_url: str
    consent_recordings: bool
    versions: dict[str, str | None]
    target: UnitTarget | None
    target_error: str | None


def unit_info(session: Session, serial: str, ssh_settings: SshSettings | None = None) -> UnitInfo:
    """Snapshot of the inventory row of ``serial``.

    Raises
    ------
    WorkbenchError
        Unknown serial.
    """
    from fleet.unit_update import target_for_unit

    unit = session.execute(select(Unit).where(Unit.serial == serial)).scalar_one_or_none()
    if unit is None:
        raise WorkbenchError(f"no unit {serial!r} in the inventory; check the serial (`speakerops units list`)")
    target, error = None, None
    try:
        target = target_for_unit(unit, ssh_settings)
    except FleetError as exc:
        error = str(exc)
    return UnitInfo(unit.id, unit.serial, unit.site, unit.hardware_rev, unit.agent_url, bool(unit.consent_recordings),
                    unit.model_versions(), target, error)


def _resolve_unit(session: Session, serial: str | None, ticket_id: int | None) -> str:
    if ticket_id is not None:
        from feedback.models import Ticket

        ticket = session.get(Ticket, ticket_id)
        if ticket is None:
            raise WorkbenchError(f"no ticket #{ticket_id}; list them with `speakerops tickets list`")
        if serial is None:
            if not ticket.unit_serial:
                raise WorkbenchError(f"ticket #{ticket_id} is not about a unit; give the unit's serial")
            return ticket.unit_serial
        if ticket.unit_serial and ticket.unit_serial != serial:
            raise WorkbenchError(f"ticket #{ticket_id} is about {ticket.unit_serial}, not {serial}")
    if serial is None:
        raise WorkbenchError("give a unit serial or a ticket")
    return serial


def run_dir_for(data_dir: Path, serial: str, when: Any) -> Path:
    """``<data_dir>/workbench/<serial>/<YYYYmmddTHHMMSSZ>`` (a suffix if it exists already)."""
    base = Path(data_dir) / "workbench" / serial / when.strftime("%Y%m%dT%H%M%SZ")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class _Steps:
    """Runs the steps of one diagnosis, recording problems instead of raising."""

    def __init__(self, progress: Progress | None, cancelled: Cancelled | None) -> None:
        self._progress = progress or (lambda f, m: None)
        self._cancelled = cancelled or (lambda: False)
        self.problems: list[str] = []
        self.was_cancelled = False

    def progress(self, fraction: float, message: str) -> None:
        try:
            self._progress(max(0.0, min(1.0, fraction)), message)
        except Exception:  # noqa: BLE001 - a progress callback must not break the diagnosis
            logger.exception("progress callback failed")

    def cancelled(self) -> bool:
        if not self.was_cancelled and self._cancelled():
            self.was_cancelled = True
        return self.was_cancelled

    def sub(self, start: float, end: float) -> Progress:
        return lambda f, m: self.progress(start + (end - start) * f, m)

    def attempt(self, what: str, fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one failing step must not lose the others
            if not isinstance(exc, FleetError | OSError):
                logger.exception("workbench step %s failed", what)
            self.problems.append(f"{what} failed: {exc}")
            return default


def diagnose_unit(ctx: WorkbenchContext, serial: str | None, *, ticket_id: int | None = None,
                  options: DiagnoseOptions | None = None, progress: Progress | None = None,
                  cancelled: Cancelled | None = None) -> Diagnosis:
    """Diagnose one unit end to end (see the module docstring) and attach the report to the ticket.

    Parameters
    ----------
    serial
        The unit; None to take the ticket's unit.
    ticket_id
        The A/S ticket to attach the report to (and move to ``diagnosing``).
    options
        :class:`DiagnoseOptions`.
    progress, cancelled
        Plain callbacks (module docstring). A cancelled diagnosis still writes and attaches what
        it gathered, with ``collection.status = "cancelled"``.

    Returns
    -------
    Diagnosis
        Never raises for unit, audio or model failures (they are in the report).

    Raises
    ------
    WorkbenchError
        Unknown unit or ticket (nothing was done).
    """
    from fleet import selftest as st
    from fleet import workbench_replay as wr
    from fleet import workbench_report as rep

    options = options or DiagnoseOptions()
    steps = _Steps(progress, cancelled)
    with ctx.session_factory() as session:
        serial = _resolve_unit(session, serial, ticket_id)
        info = unit_info(session, serial, ctx.ssh_settings or ctx.connector.settings)
    started = ctx.clock()
    run_dir = run_dir_for(ctx.data_dir, serial, started)
    steps.progress(0.0, f"diagnosing {serial}")

    # 1. collect
    if info.target is None:
        col = Collection(serial, run_dir, started, status="unreachable", error=info.target_error)
        col.finished_at = ctx.clock()
        col.write_manifest()
    else:
        col = collect(ctx.connector, info.target, run_dir, consent_recordings=info.consent_recordings,
                      limits=options.limits, progress=steps.sub(0.02, 0.40), cancelled=steps.cancelled,
                      clock=ctx.clock)
    versions = {k: col.versions.get(k) or v for k, v in info.versions.items()}
    for k, v in info.versions.items():
        if col.versions.get(k) and v and col.versions[k] != v:
            steps.problems.append(f"the inventory says {k} {v} but the unit runs {col.versions[k]}; replayed with "
                                  "what the unit runs")

    # 2. models of the unit's versions
    steps.progress(0.41, "loading the unit's model versions")
    loop, choices = None, []
    if not steps.cancelled():
        def load() -> Any:
            with ctx.session_factory() as session:
                bundles, found = wr.resolve_bundles(session, versions, ctx.models_root)
            choices.extend(found)
            return ctx.loops.get(bundles, options.loop_options)
        loop = steps.attempt("loading the models", load)

    # 3. acoustic self-test
    selftest: dict[str, Any] | None = None
    selftest_audio = None
    if options.selftest and not steps.cancelled():
        steps.progress(0.45, "acoustic self-test")
        res = st.run_selftest(serial, info.agent_url, recognizer=getattr(loop, "recognizer", None), clock=ctx.clock,
                              client=ctx.http_client)
        selftest_audio = res.audio_uri
        selftest = res.to_dict()

        def store() -> None:
            with ctx.session_factory.begin() as session:
                if res.verdict != "failed":
                    st.record_selftest(session, info.unit_id, res, actor=options.actor, clock=ctx.clock)
        steps.attempt("storing the self-test", store)
        with ctx.session_factory() as session:
            history = steps.attempt("reading the self-test history", lambda: st.selftest_history(session, serial), [])
        selftest["history"] = history
        selftest["trend"] = st.trend(history)

    # 4. replay
    items: list[dict[str, Any]] = []
    if loop is not None and not steps.cancelled():
        items = steps.attempt("replaying the recordings", lambda: wr.replay(
            loop, col, tts_round_trip=options.tts_round_trip, progress=steps.sub(0.5, 0.85),
            cancelled=steps.cancelled), [])
    elif loop is None and col.recordings():
        steps.problems.append(f"{len(col.recordings())} recording(s) collected but not replayed (no models loaded)")

    # 5. figures, verdicts, report
    steps.progress(0.86, "judging")
    logs = wr.log_figures(col)
    with ctx.session_factory() as session:
        fleet = steps.attempt("reading the fleet's figures",
                              lambda: wr.fleet_figures(session, serial, versions, ctx.clock()),
                              {"available": False, "why": "could not be read"})
    if steps.was_cancelled and col.status not in ("unreachable",):
        col.status, col.error = "cancelled", col.error or "cancelled by the user"
    collection = col.to_dict()
    agg = rep.aggregate(items)
    verdict = rep.overall_verdict(collection, agg, selftest, fleet, (selftest or {}).get("trend"))
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA, "serial": serial, "ticket_id": ticket_id, "started_at": started.isoformat(),
        "finished_at": ctx.clock().isoformat(),
        "unit": {"site": info.site, "hardware_rev": info.hardware_rev, "agent_url": info.agent_url,
                 "consent_recordings": info.consent_recordings, "inventory_versions": info.versions,
                 "versions": versions},
        "collection": collection, "models": wr.choices_as_dicts(choices), "selftest": selftest,
        "recordings": items, "aggregate": agg, "logs": logs, "fleet": fleet,
        "requirements": rep.requirement_verdicts(agg, logs), "verdict": verdict,
        "examined": rep.examined_summary(collection, items, selftest), "problems": steps.problems,
    }
    if ticket_id is not None and options.move_ticket:
        with ctx.session_factory() as session:
            why_not = _can_move(session, ticket_id)
        if why_not and why_not != "already diagnosing":
            steps.problems.append(f"the ticket stays where it is: {why_not}")
    json_path = steps.attempt("writing report.json", lambda: rep.write_json(report, run_dir / "report.json"))
    html_path = None
    if options.html:
        steps.progress(0.92, "writing the HTML report")
        html_path = steps.attempt("writing report.html", lambda: rep.render_html(
            report, run_dir / "report.html", run_dir=run_dir, selftest_audio=selftest_audio))
        if html_path is None and json_path is not None:  # the problem must reach the JSON too
            rep.write_json(report, run_dir / "report.json")

    # 6. record, attach, move
    steps.progress(0.96, "recording the diagnosis")
    diag = Diagnosis(serial, verdict["verdict"], report, run_dir, json_path, html_path, ticket_id=ticket_id)
    steps.attempt("recording the diagnosis", lambda: _record(ctx, info, diag, options, started))
    steps.progress(1.0, f"{serial}: {verdict['verdict']}")
    return diag


def _record(ctx: WorkbenchContext, info: UnitInfo, diag: Diagnosis, options: DiagnoseOptions, started: Any) -> None:
    """One transaction: the run row, the audit entry, the ticket's attachments and move."""
    from feedback import tickets
    from feedback.errors import InvalidTransition
    from fleet.workbench_models import WorkbenchRun

    r = diag.report
    with ctx.session_factory.begin() as session:
        who = options.actor or audit.current_actor(session)
        run = WorkbenchRun(unit_id=info.unit_id, serial=info.serial, ticket_id=diag.ticket_id, started_at=started,
                           finished_at=ctx.clock(), status=r["collection"]["status"], verdict=diag.verdict,
                           why=r["verdict"]["why"], action=r["verdict"]["action"], run_dir=str(diag.run_dir),
                           report_json=str(diag.json_path) if diag.json_path else None,
                           report_html=str(diag.html_path) if diag.html_path else None,
                           recordings_examined=r["aggregate"]["examined"],
                           bytes_collected=int(r["collection"].get("bytes") or 0), actor=who)
        session.add(run)
        session.flush()
        diag.run_id = run.id
        audit.record(session, "unit.diagnose", "unit", info.serial,
                     after={"run_id": run.id, "verdict": diag.verdict, "ticket_id": diag.ticket_id,
                            "status": run.status, "run_dir": run.run_dir}, actor=who, clock=ctx.clock)
        if diag.ticket_id is None:
            return
        for path in (diag.json_path, diag.html_path):
            if path is not None:
                tickets.attach(session, diag.ticket_id, path, ctx.clock, kind="diagnostic_report", actor=who)
        manifest = diag.run_dir / "manifest.json"
        if manifest.is_file():
            tickets.attach(session, diag.ticket_id, manifest, ctx.clock, kind="other", actor=who)
        diag.attached = True
        if options.move_ticket and _can_move(session, diag.ticket_id) is None:
            try:
                tickets.move(session, diag.ticket_id, "diagnosing", ctx.clock, actor=who,
                             note=f"workbench diagnosis #{run.id}: {diag.verdict}")
            except InvalidTransition as exc:  # moved by someone else meanwhile
                logger.warning("ticket #%s not moved: %s", diag.ticket_id, exc)


def _can_move(session: Session, ticket_id: int) -> str | None:
    """None if the ticket can move to ``diagnosing`` (or is there), else why not."""
    from feedback.models import Ticket
    from feedback.tickets import TRANSITIONS

    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return f"ticket #{ticket_id} no longer exists"
    if ticket.state == "diagnosing":
        return "already diagnosing"
    if "diagnosing" not in TRANSITIONS.get(ticket.state, ()):
        return (f"ticket #{ticket_id} is {ticket.state}; the workflow allows "
                f"{', '.join(TRANSITIONS.get(ticket.state, ())) or 'no move'} from there, not diagnosing")
    return None
