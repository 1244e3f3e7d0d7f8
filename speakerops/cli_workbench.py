"""Technician-workbench verbs of the ``speakerops`` CLI (issue #7): ``speakerops unit …``.

``unit diagnose UNIT [--ticket N] [--json OUT] [--html OUT]`` collects the unit's evidence over
SSH, runs its self-test, replays its recordings with its model versions and writes the report
(docs/workbench.md); ``unit selftest``, ``unit restart``, ``unit logs``, ``unit pin`` and
``unit add-case`` are the single actions. Progress goes to stderr; Ctrl-C cancels (what was
gathered is still reported and attached), a second Ctrl-C aborts.

SSH settings come from ``SPEAKEROPS_SSH_*`` (``fleet.settings.SshSettings``); model bundles from
``<data_dir>/models`` unless ``--models-dir``.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

unit_app = typer.Typer(help="Technician workbench: diagnose one unit, self-test, restart, logs, pin.",
                       no_args_is_help=True)
ModelsDir = Annotated[Path | None, typer.Option("--models-dir", help="Bundle root (default DATA_DIR/models).")]
By = Annotated[str | None, typer.Option("--by", help="Who (default the OS / database user).")]


def _progress(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r[{fraction * 100:5.1f} %] {message[:70]:<70}")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


@contextmanager
def _cancellable() -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (the work stops at its next check); the second one aborts."""
    event = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        event.set()
        sys.stderr.write("\ncancelling… (Ctrl-C again to abort)\n")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. a test runner): no handler
        pass
    try:
        yield event
    finally:
        try:
            signal.signal(signal.SIGINT, previous)
        except (ValueError, TypeError):
            pass


def _context(rt: Any, models_dir: Path | None) -> Any:
    from fleet.settings import SshSettings
    from fleet.ssh import SshConnector
    from fleet.workbench import WorkbenchContext

    settings = SshSettings()
    connector = SshConnector(rt.session_factory, settings, data_dir=rt.settings.data_dir, clock=rt.clock)
    return WorkbenchContext(rt.session_factory, connector, rt.settings.data_dir,
                            models_dir or rt.settings.data_dir / "models", rt.clock, settings)


def _workbench_error(exc: Exception) -> typer.Exit:
    return _fail(str(exc))


@unit_app.command("diagnose")
def unit_diagnose(ctx: typer.Context,
                  unit: Annotated[str | None, typer.Argument(help="Unit serial (or give --ticket).")] = None,
                  ticket: Annotated[int | None, typer.Option("--ticket", help="Attach the report to this ticket.")] = None,
                  json_out: Annotated[Path | None, typer.Option("--json", help="Also copy report.json here.")] = None,
                  html_out: Annotated[Path | None, typer.Option("--html", help="Also copy report.html here.")] = None,
                  no_mos: Annotated[bool, typer.Option("--no-mos", help="Skip DNSMOS (faster).")] = False,
                  quick: Annotated[bool, typer.Option("--quick", help="Skip MOS, the general-LM transcript and "
                                                                      "the TTS round trip.")] = False,
                  by: By = None, models_dir: ModelsDir = None, db_url: DbUrl = None) -> None:
    """Diagnose a unit end to end: room, microphone or model? Exit 0 judged, 1 unreachable, 2 partial."""
    from fleet.workbench import DiagnoseOptions, WorkbenchError, diagnose_unit
    from inference_core.pipeline import LoopOptions

    if unit is None and ticket is None:
        raise _fail("give a unit serial or --ticket N")
    loop_options = LoopOptions(mos=not (no_mos or quick), general_transcript=not quick)
    options = DiagnoseOptions(loop_options=loop_options, tts_round_trip=not quick, actor=by)
    with _runtime(_db_url(ctx, db_url)) as rt, _cancellable() as stop:
        try:
            diag = diagnose_unit(_context(rt, models_dir), unit, ticket_id=ticket, options=options,
                                 progress=_progress, cancelled=stop.is_set)
        except WorkbenchError as exc:
            raise _workbench_error(exc) from exc
    for src, dest in ((diag.json_path, json_out), (diag.html_path, html_out)):
        if dest is not None and src is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    v = diag.report["verdict"]
    lines = [f"{diag.serial}: {v['verdict'].upper()}" + (f" ({v['stage']})" if v.get("stage") else "")]
    lines += [f"  why: {w}" for w in v["why"]]
    lines.append(f"  action: {v['action']}")
    for q in diag.report["requirements"]:
        mark = "–" if q["passed"] is None else ("✔" if q["passed"] else "✖")
        lines.append(f"  {mark} {q['label']:<30} {'—' if q['value'] is None else q['value']}")
    for p in diag.report["problems"]:
        lines.append(f"  problem: {p}")
    lines.append(f"  evidence: {diag.run_dir}" + (f" · attached to ticket #{ticket}" if diag.attached else ""))
    typer.echo("\n".join(lines))
    if diag.exit_code:
        raise typer.Exit(diag.exit_code)


@unit_app.command("selftest")
def unit_selftest(ctx: typer.Context, unit: Annotated[str, typer.Argument(help="Unit serial.")],
                  as_json: JsonOut = False, by: By = None, models_dir: ModelsDir = None, db_url: DbUrl = None) -> None:
    """Acoustic self-test: the unit plays a reference phrase; noise floor, SNR, clipping, recognition."""
    from fleet.workbench import WorkbenchError
    from fleet.workbench_actions import run_unit_selftest

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            res = run_unit_selftest(_context(rt, models_dir), unit, actor=by)
        except WorkbenchError as exc:
            raise _workbench_error(exc) from exc
    t = res["trend"]
    text = (f"{unit}: {res['verdict']} — {res['why']}\n  history: {t['n']} self-test(s), capture level change "
            f"{t['capture_level_change_db']} dB, SNR change {t['snr_change_db']} dB"
            + (" — DEGRADING" if t["degrading"] else ""))
    _emit(res, as_json, text)
    if res["verdict"] == "failed":
        raise typer.Exit(1)


@unit_app.command("restart")
def unit_restart(ctx: typer.Context, unit: Annotated[str, typer.Argument(help="Unit serial.")],
                 reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit trail).")] = None,
                 as_json: JsonOut = False, by: By = None, db_url: DbUrl = None) -> None:
    """Restart the unit's voice service over SSH (audited)."""
    from fleet.workbench import WorkbenchError
    from fleet.workbench_actions import restart_voice_service

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            res = restart_voice_service(_context(rt, None), unit, reason=reason, actor=by)
        except WorkbenchError as exc:
            raise _workbench_error(exc) from exc
    _emit(res.as_dict(), as_json, f"{unit}: {'ok' if res.ok else 'FAILED'} — {res.message}")
    if not res.ok:
        raise typer.Exit(1)


@unit_app.command("logs")
def unit_logs(ctx: typer.Context, unit: Annotated[str, typer.Argument(help="Unit serial.")],
              max_mb: Annotated[float, typer.Option("--max-mb", min=0.01, help="Log bytes to fetch, MB (tails, "
                                                                                "newest log first).")] = 2.0,
              as_json: JsonOut = False, by: By = None, db_url: DbUrl = None) -> None:
    """Fetch the tails of the unit's logs and its model versions (audited)."""
    from fleet.workbench import WorkbenchError
    from fleet.workbench_actions import collect_logs
    from fleet.workbench_collect import CollectLimits

    with _runtime(_db_url(ctx, db_url)) as rt, _cancellable() as stop:
        try:
            col = collect_logs(_context(rt, None), unit, limits=CollectLimits(max_log_bytes=int(max_mb * 1e6)),
                               progress=None if as_json else _progress, cancelled=stop.is_set, actor=by)
        except WorkbenchError as exc:
            raise _workbench_error(exc) from exc
    data = col.to_dict()
    text = [f"{unit}: {col.status}" + (f" — {col.error}" if col.error else "")]
    text += [f"  {f['remote']} → {col.run_dir / f['local']} ({f['bytes']:,} bytes"
             + (f", tail of {f['remote_bytes']:,}" if f["tail_from"] else "") + ")" for f in data["files"]]
    _emit(data, as_json, "\n".join(text))
    if col.status != "complete":
        raise typer.Exit(1 if col.status == "unreachable" else 2)


@unit_app.command("pin")
def unit_pin(ctx: typer.Context, unit: Annotated[str, typer.Argument(help="Unit serial.")],
             kind: Annotated[str, typer.Option("--kind", help="stt, qa or tts.")],
             version: Annotated[str | None, typer.Option("--version", help="Default: the unit's previous.")] = None,
             reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit trail).")] = None,
             as_json: JsonOut = False, by: By = None, db_url: DbUrl = None) -> None:
    """Pin the unit to a model version (rollouts skip it) and switch it there (audited)."""
    from fleet.workbench import WorkbenchError
    from fleet.workbench_actions import pin_unit

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            res = pin_unit(_context(rt, None), unit, kind, version, reason=reason, actor=by)
        except WorkbenchError as exc:
            raise _workbench_error(exc) from exc
    _emit(res.as_dict(), as_json, f"{unit}: {'ok' if res.ok else 'FAILED'} — {res.message}")
    if not res.ok:
        raise typer.Exit(1)


@unit_app.command("add-case")
def unit_add_case(ctx: typer.Context, unit: Annotated[str, typer.Argument(help="Unit serial.")],
                  audio: Annotated[Path, typer.Argument(help="The recording (from a diagnosis' run directory).")],
                  text: Annotated[str, typer.Option("--text", help="What was really said.")],
                  intent: Annotated[str, typer.Option("--intent", help="What was meant, e.g. weather.forecast.")],
                  testset: Annotated[str, typer.Option("--set", help="Regression set name.")] = "field-regressions",
                  note: Annotated[str, typer.Option("--note", help="Where it came from (ticket …).")] = "",
                  as_json: JsonOut = False, by: By = None, db_url: DbUrl = None) -> None:
    """Add a field recording with its corrected transcript and intent to a regression test set
    (only with the household's consent); `speakerops evaluate` runs the set's manifest."""
    from fleet.workbench import WorkbenchError, unit_info
    from fleet.workbench_actions import add_regression_case

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                info = unit_info(session, unit)
                manifest = add_regression_case(session, rt.settings.data_dir, testset, serial=unit, audio=audio,
                                               text=text, intent=intent, consent=info.consent_recordings, note=note,
                                               actor=by, clock=rt.clock)
        except WorkbenchError as exc:
            raise _workbench_error(exc) from exc
    lines = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    _emit({"manifest": str(manifest), "cases": lines}, as_json,
          f"added to {manifest} ({lines} case(s)); run `speakerops evaluate {manifest}`")


def register(app: typer.Typer) -> None:
    """Add ``speakerops unit …`` to the main CLI."""
    app.add_typer(unit_app, name="unit")

