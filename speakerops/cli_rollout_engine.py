"""``speakerops rollout plan|start|run|status|pause|resume|cancel|retry|pin`` — the staged rollout
engine's verbs (issue #5 part 2; :mod:`fleet.rollout`). Registered by
:func:`speakerops.cli_rollout.register`; documented in docs/rollouts.md."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from typing import Annotated, Any

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

rollout_app = typer.Typer(help="Staged rollouts of model versions over SSH (docs/rollouts.md).",
                          no_args_is_help=True)

_Sites = Annotated[list[str] | None, typer.Option("--site", help="Only units at this site (repeatable).")]
_Hw = Annotated[list[str] | None, typer.Option("--hardware-rev", help="Only this hardware revision (repeatable).")]
_Tags = Annotated[list[str] | None, typer.Option("--tag", help="Only units with this tag (repeatable; all must match).")]
_From = Annotated[list[str] | None, typer.Option("--from-version", help="Only units now on this version (repeatable).")]
_Units = Annotated[list[str] | None, typer.Option("--unit", help="Only this serial (repeatable).")]
_Exclude = Annotated[list[str] | None, typer.Option("--exclude", help="Never this serial (repeatable).")]
_Canary = Annotated[int | None, typer.Option("--canary", min=0, help="Canary group size in units (default 5; 0: none).")]
_CanaryPct = Annotated[float | None, typer.Option("--canary-pct", help="Canary group as a percentage of the targets.")]
_Waves = Annotated[str, typer.Option("--waves", help="Cumulative wave percentages after the canary.")]
_Success = Annotated[float, typer.Option("--success-pct", help="Group success threshold, percent (next group).")]
_Error = Annotated[float, typer.Option("--error-pct", help="Group error threshold, percent (pause).")]
_MinFinished = Annotated[int, typer.Option("--min-finished", min=1,
                                           help="Finished units before the error threshold applies.")]
_Parallel = Annotated[int, typer.Option("--parallel", min=1, help="Parallel SSH sessions at most.")]
_UnitTimeout = Annotated[float, typer.Option("--unit-timeout-s", help="Per-unit timeout, seconds.")]
_HealthTimeout = Annotated[float, typer.Option("--health-timeout-s", help="Health gate timeout per unit, seconds.")]
_Rate = Annotated[int | None, typer.Option("--rate", min=1, help="Units started per minute at most.")]
_Window = Annotated[str | None, typer.Option("--window", help="Maintenance window in unit local time, e.g. 02:00-05:00.")]
_Soak = Annotated[float, typer.Option("--gate-soak-s", help="Service seconds after a group before the voice-quality gate.")]
_NoGate = Annotated[bool, typer.Option("--no-gate", help="Skip the voice-quality gate.")]


def _build_plan(kind: str, version: str, site: list[str] | None, hardware_rev: list[str] | None,
                tag: list[str] | None, from_version: list[str] | None, unit: list[str] | None,
                exclude: list[str] | None, canary: int | None, canary_pct: float | None, waves: str,
                success_pct: float, error_pct: float, min_finished: int, parallel: int, unit_timeout_s: float,
                health_timeout_s: float, rate: int | None, window: str | None, gate_soak_s: float,
                no_gate: bool) -> Any:
    from pydantic import ValidationError

    from fleet.rollout_plan import RolloutPlan

    try:
        wave_list = [float(w) for w in waves.split(",") if w.strip()]
    except ValueError as exc:
        raise _fail(f"--waves {waves!r}: give cumulative percentages separated by commas, e.g. 5,25,50,100") from exc
    win = None
    if window:
        start, sep, end = window.partition("-")
        if not sep:
            raise _fail(f"--window {window!r}: give START-END in the unit's local time, e.g. 02:00-05:00")
        win = {"start": start.strip(), "end": end.strip()}
    data: dict[str, Any] = {
        "kind": kind, "version": version,
        "targets": {"sites": site or [], "hardware_revs": hardware_rev or [], "tags": tag or [],
                    "current_versions": from_version or [], "serials": unit or [], "exclude_serials": exclude or []},
        "waves_pct": wave_list, "success_threshold_pct": success_pct, "error_threshold_pct": error_pct,
        "min_finished": min_finished, "max_parallel": parallel, "unit_timeout_s": unit_timeout_s,
        "health_timeout_s": health_timeout_s, "max_per_minute": rate, "window": win,
        "gate": {"enabled": not no_gate, "soak_s": gate_soak_s}}
    if canary_pct is not None:
        data.update(canary_pct=canary_pct, canary_units=None)
    elif canary is not None:
        data["canary_units"] = canary
    try:
        return RolloutPlan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'plan'}: {e['msg']}" for e in exc.errors())
        raise _fail(f"invalid rollout plan: {problems}") from exc


def _preview_text(pv: Any) -> str:
    lines = [f"{pv.plan.kind} {pv.plan.version}: {pv.total_units} units in {len(pv.groups)} groups"
             + (f", window {pv.plan.window.label()}" if pv.plan.window else "")
             + (f", at most {pv.plan.max_per_minute}/min" if pv.plan.max_per_minute else "")]
    for g in pv.groups:
        shown = ", ".join(u.serial for u in g.units[:8]) + (" …" if len(g.units) > 8 else "")
        lines.append(f"  {g.index}  {g.name:<8} {len(g.units):>5} units → {g.cumulative_pct:5.1f} %  "
                     f"(success ≥ {g.success_threshold_pct:g} %, pause at {g.error_threshold_pct:g} % failed "
                     f"after {g.min_finished})  {shown}")
    if pv.excluded:
        lines.append(f"  excluded {len(pv.excluded)}: " + "; ".join(
            f"{n} × {why}" for why, n in Counter(pv.excluded.values()).most_common(5)))
    return "\n".join(lines)


@rollout_app.command("plan")
def rollout_plan(ctx: typer.Context, kind: Annotated[str, typer.Argument(help="stt, qa or tts.")],
                 version: Annotated[str, typer.Argument(help="Registry version to install.")],
                 site: _Sites = None, hardware_rev: _Hw = None, tag: _Tags = None, from_version: _From = None,
                 unit: _Units = None, exclude: _Exclude = None, canary: _Canary = None, canary_pct: _CanaryPct = None,
                 waves: _Waves = "5,25,50,100", success_pct: _Success = 50.0, error_pct: _Error = 50.0,
                 min_finished: _MinFinished = 1, parallel: _Parallel = 20, unit_timeout_s: _UnitTimeout = 600.0,
                 health_timeout_s: _HealthTimeout = 60.0, rate: _Rate = None, window: _Window = None,
                 gate_soak_s: _Soak = 300.0, no_gate: _NoGate = False,
                 as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Preview the groups a rollout would run now (nothing is written)."""
    from fleet.rollout_plan import preview

    plan = _build_plan(kind, version, site, hardware_rev, tag, from_version, unit, exclude, canary, canary_pct,
                       waves, success_pct, error_pct, min_finished, parallel, unit_timeout_s, health_timeout_s,
                       rate, window, gate_soak_s, no_gate)
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        pv = preview(session, plan)
    _emit(pv.as_dict(), as_json, _preview_text(pv))


def _runner(rt: Any) -> Any:
    from fleet.rollout import RolloutRunner
    from fleet.settings import SshSettings
    from fleet.ssh import SshConnector

    connector = SshConnector(rt.session_factory, SshSettings(), data_dir=rt.settings.data_dir, clock=rt.clock)
    return RolloutRunner(rt.session_factory, connector, rt.clock)


def _run_foreground(rt: Any, rollout_id: int, as_json: bool, follow: bool) -> None:
    from fleet.errors import FleetError
    from fleet.rollout_control import status

    stop = threading.Event()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread (a test calling the CLI from a thread)
            pass

    def progress(fraction: float, message: str) -> None:
        typer.echo(f"[{fraction:6.1%}] {message}", err=as_json)

    try:
        summary = _runner(rt).run(rollout_id, cancelled=stop.is_set, progress=progress, wait_while_paused=follow)
    except FleetError as exc:
        raise _fail(str(exc)) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    with rt.session_factory() as session:
        data = status(session, rollout_id)
    data["stopped_because"] = summary.stopped_because
    _emit(data, as_json, _status_text(data))
    counts = data["counts"]
    if data["state"] == "failed":
        raise typer.Exit(1)
    auto_paused = data["state"] == "paused" and not (data["pause_reason"] or "").startswith("paused by")
    if counts["failed"] or counts["rolled_back"] or auto_paused:
        raise typer.Exit(2)


@rollout_app.command("start")
def rollout_start(ctx: typer.Context, kind: Annotated[str, typer.Argument(help="stt, qa or tts.")],
                  version: Annotated[str, typer.Argument(help="Registry version to install.")],
                  site: _Sites = None, hardware_rev: _Hw = None, tag: _Tags = None, from_version: _From = None,
                  unit: _Units = None, exclude: _Exclude = None, canary: _Canary = None,
                  canary_pct: _CanaryPct = None, waves: _Waves = "5,25,50,100", success_pct: _Success = 50.0,
                  error_pct: _Error = 50.0, min_finished: _MinFinished = 1, parallel: _Parallel = 20,
                  unit_timeout_s: _UnitTimeout = 600.0, health_timeout_s: _HealthTimeout = 60.0,
                  rate: _Rate = None, window: _Window = None, gate_soak_s: _Soak = 300.0, no_gate: _NoGate = False,
                  override_reason: Annotated[str | None, typer.Option(
                      "--override-reason", help="Written reason to roll out a version the registry's gate refuses.")] = None,
                  detach: Annotated[bool, typer.Option("--detach", help="Create and start only; `rollout run ID` "
                                                       "(another process) does the work.")] = False,
                  follow: Annotated[bool, typer.Option("--follow", help="Keep running while paused.")] = False,
                  as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Create a rollout from the plan options, start it, and run it in the foreground."""
    from fleet.errors import FleetError
    from fleet.rollout_control import create_rollout, start, status

    plan = _build_plan(kind, version, site, hardware_rev, tag, from_version, unit, exclude, canary, canary_pct,
                       waves, success_pct, error_pct, min_finished, parallel, unit_timeout_s, health_timeout_s,
                       rate, window, gate_soak_s, no_gate)
    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                rollout = create_rollout(session, plan, clock=rt.clock, override_reason=override_reason)
                start(session, rollout.id, clock=rt.clock)
                rollout_id = rollout.id
        except FleetError as exc:
            raise _fail(str(exc)) from exc
        typer.echo(f"rollout #{rollout_id} started: {plan.kind} {plan.version}", err=as_json)
        if detach:
            with rt.session_factory() as session:
                data = status(session, rollout_id, units=False)
            _emit(data, as_json, f"run it with: speakerops rollout run {rollout_id}")
            return
        _run_foreground(rt, rollout_id, as_json, follow)


@rollout_app.command("run")
def rollout_run(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(metavar="ID")],
                follow: Annotated[bool, typer.Option("--follow", help="Keep running while paused (resume from "
                                                     "another shell).")] = False,
                as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Run or resume rollout ID in the foreground (safe to kill: run it again to resume).

    Exit status 0 when done (or paused/cancelled by an operator), 1 when the rollout failed, 2 when
    units failed or a threshold or the voice-quality gate paused it."""
    with _runtime(_db_url(ctx, db_url)) as rt:
        _run_foreground(rt, rollout_id, as_json, follow)


def _status_text(d: dict[str, Any]) -> str:
    c = d["counts"]
    lines = [f"rollout #{d['id']} {d['kind']} {d['version']}: {d['state'].upper()}"
             + (f" — {d['pause_reason']}" if d.get("pause_reason") else ""),
             f"  units {c['total']}: {c['succeeded']} succeeded, {c['failed']} failed, {c['rolled_back']} rolled "
             f"back, {c['skipped']} skipped, {c['cancelled']} cancelled; {d['bytes_sent'] / 1e6:,.1f} MB sent"
             + (f"; runner {d['runner']}" if d.get("runner") else "")]
    for g in d["groups"]:
        counts = ", ".join(f"{n} {st}" for st, n in sorted(g["counts"].items()))
        gate = g.get("gate") or {}
        lines.append(f"  group {g['index']} {g['name']:<8} {g['state']:<10} {g['units']:>4} units: {counts}"
                     + (f" — {g['status']}" if g.get("status") else "")
                     + (f" [{gate['reason']}]" if gate.get("reason") else ""))
        for u in g.get("units_detail", []):
            lines.append(f"      {u['serial']:<14}{u['state']:<15}{u['step_reached'] or '-':<12}"
                         f"{u['attempts']:>2}×  {(u['bytes_sent'] or 0) / 1e6:8.1f} MB  "
                         f"{u['previous_version'] or '-'} → {u['final_version'] or '-'}"
                         + (f"  {u['error']}" if u['error'] else ""))
    return "\n".join(lines)


@rollout_app.command("status")
def rollout_status(ctx: typer.Context,
                   rollout_id: Annotated[int | None, typer.Argument(metavar="[ID]", help="Omit to list rollouts.")] = None,
                   units: Annotated[bool, typer.Option("--units", help="Show every unit.")] = False,
                   as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Show a rollout (groups, counts, per-unit results with --units) or list the latest rollouts."""
    from fleet.errors import FleetError
    from fleet.rollout_control import list_rollouts, status

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        if rollout_id is None:
            rows = list_rollouts(session)
            _emit(rows, as_json, "\n".join(
                f"#{r['id']:<5}{r['kind']:<5}{r['version']:<22}{r['state']:<11}{r['counts']['succeeded']}/"
                f"{r['counts']['total']} succeeded, {r['counts']['failed'] + r['counts']['rolled_back']} failed"
                for r in rows) or "no rollouts")
            return
        try:
            data = status(session, rollout_id, units=units or as_json)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, _status_text(data))


_NOTES = {"pause": "the runner finishes the units in flight and starts no more",
          "resume": "a runner continues it (speakerops rollout run ID if none is running)",
          "cancel": "units not started are cancelled; units in flight finish or roll back",
          "retry": "failed units back to pending; run it again (speakerops rollout run ID)"}


def _control(ctx: typer.Context, verb: str, rollout_id: int, as_json: bool, db_url: str | None,
             reason: str | None = None) -> None:
    from fleet import rollout_control as rc
    from fleet.errors import FleetError

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                if verb == "retry":
                    retried = rc.retry(session, rollout_id, clock=rt.clock)
                elif verb in ("pause", "cancel"):
                    getattr(rc, verb)(session, rollout_id, reason, clock=rt.clock)
                else:
                    getattr(rc, verb)(session, rollout_id, clock=rt.clock)
            with rt.session_factory() as session:
                data = rc.status(session, rollout_id, units=False)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    if verb == "retry":
        data["retried"] = retried
    _emit(data, as_json, f"rollout #{rollout_id} {data['state']}: "
                         + (f"{retried} " if verb == "retry" else "") + _NOTES[verb])


@rollout_app.command("pause")
def rollout_pause(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(metavar="ID")],
                  reason: Annotated[str | None, typer.Option("--reason", help="Why (shown in status).")] = None,
                  as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Pause a running rollout (from any process)."""
    _control(ctx, "pause", rollout_id, as_json, db_url, reason)


@rollout_app.command("resume")
def rollout_resume(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(metavar="ID")],
                   as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Resume a paused rollout (also after an automatic pause: you accept the figures)."""
    _control(ctx, "resume", rollout_id, as_json, db_url)


@rollout_app.command("cancel")
def rollout_cancel(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(metavar="ID")],
                   reason: Annotated[str | None, typer.Option("--reason", help="Why (audit trail).")] = None,
                   as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Cancel a rollout: pending units are cancelled, units in flight finish or roll back."""
    _control(ctx, "cancel", rollout_id, as_json, db_url, reason)


@rollout_app.command("retry")
def rollout_retry(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(metavar="ID")],
                  as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Put the failed and rolled-back units back to pending (run the rollout again after)."""
    _control(ctx, "retry", rollout_id, as_json, db_url)


@rollout_app.command("pin")
def rollout_pin(ctx: typer.Context, serial: Annotated[str, typer.Argument(help="Unit serial.")],
                kind: Annotated[str, typer.Argument(help="stt, qa or tts.")],
                version: Annotated[str, typer.Argument(help="The version to hold it at.")],
                reason: Annotated[str | None, typer.Option("--reason", help="Why (audit trail).")] = None,
                remove: Annotated[bool, typer.Option("--remove", help="Remove the pin instead.")] = False,
                as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Pin a unit to a model version: rollouts that would move it skip it."""
    from fleet.errors import FleetError
    from fleet.rollout_control import pin, unpin

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                if remove:
                    data: dict[str, Any] = {"serial": serial, "kind": kind,
                                            "removed": unpin(session, serial, kind, clock=rt.clock)}
                else:
                    p = pin(session, serial, kind, version, reason=reason, clock=rt.clock)
                    data = {"serial": p.serial, "kind": p.kind, "version": p.version, "reason": p.reason,
                            "pinned_by": p.pinned_by, "pinned_at": p.pinned_at.isoformat()}
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    text = (f"{serial} {kind}: pin {'removed' if data.get('removed') else 'not found'}" if remove
            else f"{serial} pinned to {kind} {version}")
    _emit(data, as_json, text)
