"""The ``speakerops`` command line: every console action as a verb, ``--json`` for scripts.

``speakerops`` alone opens the console on the configured database. Exit status: 0 success,
1 failure (the message says what was wrong and what to do), 2 partial success (e.g. an import
that rejected some rows; the report lists them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

logger = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=False, help=__doc__,
                  context_settings={"help_option_names": ["-h", "--help"]})
units_app = typer.Typer(help="Fleet inventory: import and list units.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and status.", no_args_is_help=True)
app.add_typer(units_app, name="units")
app.add_typer(db_app, name="db")

@app.callback(invoke_without_command=True)
def root(ctx: typer.Context, db_url: DbUrl = None,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False) -> None:
    """SpeakerOps: operations console for a smart-speaker voice service."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = {"db_url": db_url}
    if ctx.invoked_subcommand is None:
        from console.app import main as console_main

        raise typer.Exit(console_main([], db_url=db_url, collect=True))


# -- units ----------------------------------------------------------------------------------------
@units_app.command("import")
def units_import(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="CSV, JSON or JSONL inventory.")],
                 as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Import units from an inventory file (docs/inventory.md); bad rows are reported by line."""
    from fleet.errors import InventoryFormatError
    from fleet.inventory import import_units

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                report = import_units(session, file, rt.clock)
        except InventoryFormatError as exc:
            raise _fail(str(exc)) from exc
        except OperationalError as exc:
            raise _fail(f"the database refused the import ({str(exc.orig).strip()}); nothing was imported. "
                        "If another process holds the SQLite file locked, try again when it is done.") from exc
    lines = [f"{report.created} created, {report.updated} updated, {len(report.errors)} rejected ({file})"]
    lines += [f"  line {e.line}{f' [{e.serial}]' if e.serial else ''}: {e.message}" for e in report.errors]
    _emit(report.as_dict(), as_json, "\n".join(lines))
    if report.errors:
        raise typer.Exit(2)


@units_app.command("list")
def units_list(ctx: typer.Context, as_json: JsonOut = False,
               status: Annotated[str | None, typer.Option(help="Only units in this state.")] = None,
               site: Annotated[str | None, typer.Option(help="Only units at this site.")] = None,
               db_url: DbUrl = None) -> None:
    """List units with their state, site and model versions."""
    from fleet.inventory import list_units, unit_summary

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        rows = [unit_summary(u) for u in list_units(session, status=status, site=site)]
    header = f"{'serial':<14}{'status':<10}{'site':<18}{'hw':<7}{'stt':<12}{'qa':<12}{'tts':<12}last heartbeat"
    text = [header] + [
        f"{r['serial']:<14}{r['status']:<10}{r['site'][:17]:<18}{r['hardware_rev']:<7}"
        f"{r['models']['stt'] or '-':<12}{r['models']['qa'] or '-':<12}{r['models']['tts'] or '-':<12}"
        f"{r['last_heartbeat_at'] or '-'}" for r in rows
    ]
    _emit(rows, as_json, "\n".join(text) + f"\n{len(rows)} units")


# -- collector ------------------------------------------------------------------------------------
def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    if not shard:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError as exc:
        raise _fail(f"--shard {shard!r} is not I/N (e.g. 1/2)") from exc
    if not 1 <= i <= n:
        raise _fail(f"--shard {shard}: I must be between 1 and N")
    return i, n


#: Set by the console for the collector it starts as a child process: the child stops when
#: that process is gone (even after ``kill -9``, when it could not be told to stop).
PARENT_PID_ENV = "SPEAKEROPS_PARENT_PID"


async def _stop_when_parent_exits(stop: asyncio.Event, every_s: float = 2.0) -> None:
    parent = int(os.environ[PARENT_PID_ENV])
    while not stop.is_set():
        if os.getppid() != parent:  # re-parented: the console is gone
            logging.getLogger(__name__).warning("the console (pid %d) is gone; collector stops", parent)
            stop.set()
            return
        await asyncio.sleep(every_s)


@app.command()
def collect(ctx: typer.Context,
            once: Annotated[bool, typer.Option("--once", help="Poll every unit once and exit.")] = False,
            interval: Annotated[float | None, typer.Option("--interval", help="Poll interval, seconds (default 10).")] = None,
            shard: Annotated[str | None, typer.Option("--shard", help="Poll only slice I of N (e.g. 1/2).")] = None,
            as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Poll the units' health endpoints and store heartbeats (headless collector)."""
    from fleet.collector import Collector, CycleResult
    from fleet.settings import CollectorSettings

    settings = CollectorSettings() if interval is None else CollectorSettings(interval_s=interval)

    def report(r: CycleResult) -> None:
        data = {"started_at": r.started_at.isoformat(), "duration_s": round(r.duration_s, 3), "polled": r.polled,
                "ok": r.ok, "failed": r.failed, "written": r.written, "pending": r.pending, "db_error": r.db_error,
                "failures": {s: o.error for s, o in r.failed_units().items()}}
        _emit(data, as_json, f"{r.started_at:%H:%M:%S} polled {r.polled}: {r.ok} ok, {r.failed} failed, "
                             f"{r.written} written, {r.pending} pending in {r.duration_s:.2f} s"
                             + (f" — {r.db_error}" if r.db_error else ""))

    with _runtime(_db_url(ctx, db_url)) as rt:
        collector = Collector(rt.session_factory, rt.clock, settings, shard=_parse_shard(shard))

        async def main() -> None:
            if once:
                try:
                    report(await collector.run_cycle())
                finally:
                    await collector.aclose()
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            watch = asyncio.create_task(_stop_when_parent_exits(stop)) if os.environ.get(PARENT_PID_ENV) else None
            await collector.run(stop, report)
            if watch is not None:
                watch.cancel()

        asyncio.run(main())


# -- simulator and demo ---------------------------------------------------------------------------
@app.command()
def sim(units: Annotated[int, typer.Option("--units", min=1, help="Simulated units served over HTTP.")] = 200,
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port on 127.0.0.1 (0 = any free).")] = 0,
        ssh_units: Annotated[int, typer.Option("--ssh-units", min=0, help="Units that also get a real sshd.")] = 0,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the fleet's behaviour.")] = 0,
        inventory: Annotated[Path | None, typer.Option("--inventory", help="Write the fleet's inventory CSV here.")] = None,
        data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Simulator state (keys, unit roots).")] = None) -> None:
    """Serve a simulated fleet over HTTP (and real sshd units) until interrupted."""
    from fleet.simulator import run_simulator
    from speakerops.settings import CoreSettings

    if ssh_units > units:
        raise _fail(f"--ssh-units {ssh_units} is more than --units {units}")
    run_simulator(units=units, port=port, ssh_units=ssh_units, seed=seed, inventory=inventory,
                  data_dir=data_dir or CoreSettings().data_dir / "sim")


def _start_simulator(units: int, ssh_units: int, seed: int, inventory: Path, data_dir: Path,
                     timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start ``speakerops sim`` as a child process; return it and its base URL once ready."""
    cmd = [sys.executable, "-m", "speakerops.cli", "sim", "--units", str(units), "--ssh-units", str(ssh_units),
           "--seed", str(seed), "--inventory", str(inventory), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("SIMULATOR READY "):
            return proc, line.split()[2]
    proc.kill()
    raise _fail(f"the simulator did not start within {timeout_s:.0f} s (exit status {proc.poll()}); "
                "run `speakerops sim -v` to see why")


@app.command()
def demo(ctx: typer.Context,
         units: Annotated[int, typer.Option("--units", min=1)] = 200,
         ssh_units: Annotated[int, typer.Option("--ssh-units", min=0)] = 3,
         seed: Annotated[int, typer.Option("--seed")] = 0,
         screenshot: Annotated[Path | None, typer.Option("--screenshot", help="Save a PNG of the window and exit.")] = None,
         screenshot_after: Annotated[float, typer.Option("--screenshot-after", help="Seconds to wait before it.")] = 25.0,
         db_url: DbUrl = None) -> None:
    """Start the simulator (200 units, 3 with SSH), import its inventory, open the console on it."""
    from console.app import main as console_main
    from fleet.inventory import import_units
    from speakerops.demo_data import seed_demo
    from speakerops.settings import CoreSettings

    data_dir = CoreSettings().data_dir / "sim"
    os.environ.setdefault("SPEAKEROPS_KEYS_UNENCRYPTED_LAB", "1")  # a lab: keys may be plain files (unless a passphrase/keyring)
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.csv"
        proc, base_url = _start_simulator(units, ssh_units, seed, inventory, data_dir)
        try:
            typer.echo(f"simulator: {units} units at {base_url} ({ssh_units} with sshd)")
            with _runtime(_db_url(ctx, db_url)) as rt:
                with rt.session_factory.begin() as session:
                    report = import_units(session, inventory, rt.clock)
                typer.echo(f"inventory: {report.created} created, {report.updated} updated")
                with rt.session_factory.begin() as session:
                    added = seed_demo(session, rt.clock, seed)
                typer.echo(f"feedback: {added['feedback_imported']:,} items imported; "
                           f"tickets: {added['tickets_opened']} opened")
                url = rt.db_url
            # the console's SSH (rollouts) reaches the simulator's sshd units: their key, their
            # install roots, and host keys trusted on first use (a lab, not a fleet)
            # (the store's SSH key once one was imported/rotated there: docs/security.md "Secrets")
            from fleet.keys import SecretStore

            if SecretStore(CoreSettings().data_dir).ssh_current() is None:
                os.environ.setdefault("SPEAKEROPS_SSH_CLIENT_KEY_PATH", str(data_dir / "client_key"))
            os.environ.setdefault("SPEAKEROPS_SSH_INSTALL_ROOT", str(data_dir / "units" / "{serial}" / "root"))
            os.environ.setdefault("SPEAKEROPS_SSH_TRUST_ON_FIRST_USE", "true")
            code = console_main([], db_url=url, collect=True, screenshot=screenshot,
                                screenshot_after_s=screenshot_after)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    raise typer.Exit(code)


# -- SLO and capacity -----------------------------------------------------------------------------
@app.command()
def slo(ctx: typer.Context, as_json: JsonOut = False,
        site: Annotated[str | None, typer.Option("--site", help="Only units at this site.")] = None,
        hardware_rev: Annotated[str | None, typer.Option("--hardware-rev", help="Only this hardware revision.")] = None,
        db_url: DbUrl = None) -> None:
    """SLO compliance (95 % within 3 s end to end, 2 s server) and burn rate over 1 h, 24 h, 30 d."""
    from fleet.slo import SLO_TARGET, Cohort, slo_report

    cohort = Cohort(site=site, hardware_rev=hardware_rev) if site or hardware_rev else None
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        report = slo_report(session, rt.clock(), cohort)
    names = {3600.0: "1h", 86400.0: "24h", 2592000.0: "30d"}
    data = [{"window": names.get(s.window.total_seconds(), str(s.window)), **s.as_dict()} for s in report]
    lines = [f"SLO: {SLO_TARGET:.0%} of requests within 3,000 ms end to end and 2,000 ms server"
             + (f" (site={site or 'any'}, hardware_rev={hardware_rev or 'any'})" if cohort else "")]
    for row, s in zip(data, report):
        if s.compliance is None:
            lines.append(f"  {row['window']:>4}: no requests")
            continue
        word = "met" if s.met else "MISSED"
        lines.append(f"  {row['window']:>4}: {s.compliance:7.2%} {word:<6} burn rate {s.burn_rate:5.2f}  "
                     f"({s.good:,} of {s.requests:,} good; e2e {s.e2e_compliance:.2%}, "
                     f"server {s.server_compliance:.2%})")
    _emit(data, as_json, "\n".join(lines))


@app.command()
def capacity(ctx: typer.Context,
             per_worker_rps: Annotated[float, typer.Option("--per-worker-rps", min=0.001,
                                                           help="Requests/s per worker (benchmarks/loop_speed.py).")] = 1.64,
             card_gb: Annotated[float | None, typer.Option("--card-gb", help="GPU memory per card, GB.")] = None,
             model_gb: Annotated[float | None, typer.Option("--model-gb", help="Memory per model copy, GB.")] = None,
             workers_per_machine: Annotated[int, typer.Option("--workers-per-machine", min=1)] = 2,
             headroom: Annotated[float, typer.Option("--headroom", min=0.0, help="Spare share above peak.")] = 0.3,
             as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Workers, machines (and GPU cards) needed at the fleet's busiest minute of the last 7 days."""
    from fleet.slo import capacity_plan, gpu_cards, gpu_copies_per_card, peak_request_rate

    if (card_gb is None) != (model_gb is None):
        raise _fail("give both --card-gb and --model-gb (or neither)")
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        peak = peak_request_rate(session, rt.clock())
    plan = capacity_plan(peak, per_worker_rps, workers_per_machine=workers_per_machine, headroom=headroom)
    data = plan.as_dict()
    lines = [f"peak {peak:.2f} requests/s (busiest minute, last 7 days) + {headroom:.0%} headroom at "
             f"{per_worker_rps:g} requests/s per worker: {plan.workers} workers on {plan.machines} machines "
             f"({workers_per_machine} workers each)"]
    if card_gb is not None and model_gb is not None:
        try:
            copies, cards = gpu_copies_per_card(card_gb, model_gb), gpu_cards(plan.workers, card_gb, model_gb)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        data.update(card_gb=card_gb, model_gb=model_gb, copies_per_card=copies, gpu_cards=cards)
        lines.append(f"GPU: {copies} copies of a {model_gb:g} GB model per {card_gb:g} GB card → {cards} cards")
    _emit(data, as_json, "\n".join(lines))


# -- alerts ---------------------------------------------------------------------------------------
alerts_app = typer.Typer(help="Alerts: list, acknowledge, resolve; alert rules.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


def _actor(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


@alerts_app.command("list")
def alerts_list(ctx: typer.Context,
                state: Annotated[str | None, typer.Option(help="open, acknowledged or resolved (default all).")] = None,
                as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """List alerts, newest first."""
    from fleet.alerts import list_alerts
    from fleet.errors import FleetError

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        try:
            rows = list_alerts(session, state=state)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    text = [f"{'id':>6}  {'severity':<9}{'state':<13}{'rule':<20}{'scope':<22}{'value':>10}  opened (UTC)"] + [
        f"{r['id']:>6}  {r['severity']:<9}{r['state']:<13}{r['rule'][:19]:<20}{r['scope_key'][:21]:<22}"
        f"{'-' if r['value'] is None else format(r['value'], '.4g'):>10}  {r['opened_at']}" for r in rows]
    _emit(rows, as_json, "\n".join(text) + f"\n{len(rows)} alerts")


def _alert_action(ctx: typer.Context, action: str, alert_id: int, by: str | None, db_url: str | None) -> None:
    from fleet import alerts
    from fleet.errors import FleetError

    fn = alerts.acknowledge if action == "ack" else alerts.resolve
    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                alert = fn(session, alert_id, _actor(by), rt.clock())
                state = alert.state
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    typer.echo(f"alert #{alert_id} {state}")


@alerts_app.command("ack")
def alerts_ack(ctx: typer.Context, alert_id: Annotated[int, typer.Argument(metavar="ID")],
               by: Annotated[str | None, typer.Option("--by", help="Who (default the OS user).")] = None,
               db_url: DbUrl = None) -> None:
    """Acknowledge an open alert."""
    _alert_action(ctx, "ack", alert_id, by, db_url)


@alerts_app.command("resolve")
def alerts_resolve(ctx: typer.Context, alert_id: Annotated[int, typer.Argument(metavar="ID")],
                   by: Annotated[str | None, typer.Option("--by", help="Who (default the OS user).")] = None,
                   db_url: DbUrl = None) -> None:
    """Resolve an open or acknowledged alert by hand."""
    _alert_action(ctx, "resolve", alert_id, by, db_url)


@alerts_app.command("rules")
def alerts_rules(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """List alert rules (the built-in ones are added on first use)."""
    from fleet.alerts import ensure_builtin_rules, list_rules

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory.begin() as session:
        ensure_builtin_rules(session, rt.clock())
        rows = list_rules(session)
    text = [f"{r['id']:>4}  {r['name'][:23]:<24}{r['metric']} {r['comparison']} {r['threshold']:g} for "
            f"{r['duration_s']:g} s on {r['scope_kind']}{'=' + r['scope_value'] if r['scope_value'] else ''} "
            f"[{r['severity']}]{'' if r['enabled'] else ' (disabled)'}" for r in rows]
    _emit(rows, as_json, "\n".join(text))


@alerts_app.command("add-rule")
def alerts_add_rule(
        ctx: typer.Context,
        name: Annotated[str, typer.Option("--name", help="Unique rule name.")],
        metric: Annotated[str, typer.Option("--metric", help="temp_c, error_rate, offline, slo_burn_1h, ...")],
        threshold: Annotated[float, typer.Option("--threshold", help="In the metric's unit.")],
        op: Annotated[str, typer.Option("--op", help="> >= < <=")] = ">",
        scope: Annotated[str, typer.Option("--scope", help="fleet, site=X, hardware_rev=X, tag=X or unit=SERIAL.")] = "fleet",
        duration_s: Annotated[float, typer.Option("--for", help="Seconds the condition must hold.")] = 0.0,
        severity: Annotated[str, typer.Option("--severity", help="info, warning or critical.")] = "warning",
        db_url: DbUrl = None) -> None:
    """Add an alert rule."""
    from fleet.alerts import add_rule
    from fleet.errors import FleetError

    kind, _, value = scope.partition("=")
    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                rule = add_rule(session, name=name, metric=metric, comparison=op, threshold=threshold,
                                scope_kind=kind.strip(), scope_value=value.strip() or None,
                                duration_s=duration_s, severity=severity, now=rt.clock())
                rule_id = rule.id
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    typer.echo(f"rule #{rule_id} {name!r} added")


# -- database -------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, db_url: DbUrl = None) -> None:
    """Create or migrate the schema to the newest revision (Alembic)."""
    with _runtime(_db_url(ctx, db_url)) as rt:
        from speakerops.db import current_revision, describe_url

        typer.echo(f"{describe_url(rt.db_url)} at revision {current_revision(rt.engine)}")


@db_app.command("info")
def db_info(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Show the database in use, its schema revision and row counts."""
    from sqlalchemy import func, select

    from fleet.models import CollectorStatus, Heartbeat, Unit
    from speakerops.db import current_revision, describe_url, head_revision

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        data = {"url": describe_url(rt.db_url), "dialect": rt.engine.dialect.name,
                "revision": current_revision(rt.engine), "head": head_revision(rt.engine),
                "units": session.scalar(select(func.count()).select_from(Unit)),
                "heartbeats": session.scalar(select(func.count()).select_from(Heartbeat)),
                "collectors": session.scalar(select(func.count()).select_from(CollectorStatus))}
    _emit(data, as_json, "\n".join(f"{k}: {v}" for k, v in data.items()))


@db_app.command("prune")
def db_prune(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None,
             raw_keep_hours: Annotated[float, typer.Option(
                 "--raw-keep-hours", help="Keep raw heartbeats this long (issue #4: 24).")] = 24.0,
             unit_minute_keep_hours: Annotated[float, typer.Option(
                 "--unit-minute-keep-hours", help="Keep per-unit 1-minute rollups this long (48).")] = 48.0,
             cohort_minute_keep_days: Annotated[float, typer.Option(
                 "--cohort-minute-keep-days", help="Keep cohort 1-minute rollups this long (issue #4: 30).")] = 30.0,
             hour_keep_days: Annotated[float, typer.Option(
                 "--hour-keep-days", help="Keep per-unit 1-hour rollups this long (issue #4: 365).")] = 365.0,
             ) -> None:
    """Roll up complete heartbeat minutes and hours, then delete data past its retention
    (raw heartbeats 24 h, per-unit minutes 48 h, cohort minutes 30 days, per-unit hours one
    year; docs/monitoring.md "Retention")."""
    from datetime import timedelta

    from fleet.rollups import compute_rollups, prune

    keeps = {"--raw-keep-hours": raw_keep_hours, "--unit-minute-keep-hours": unit_minute_keep_hours,
             "--cohort-minute-keep-days": cohort_minute_keep_days, "--hour-keep-days": hour_keep_days}
    spans = {name: timedelta(hours=value) if name.endswith("-hours") else timedelta(days=value)
             for name, value in keeps.items() if 0 <= value <= 36_500 * (24 if name.endswith("-hours") else 1)}
    bad = [f"{name} {value:g}" for name, value in keeps.items() if name not in spans]
    if bad:
        raise _fail(f"{', '.join(bad)}: a retention must be 0 or more and at most 100 years; "
                    "the defaults are --raw-keep-hours 24 --unit-minute-keep-hours 48 "
                    "--cohort-minute-keep-days 30 --hour-keep-days 365")
    with _runtime(_db_url(ctx, db_url)) as rt:
        now = rt.clock()
        with rt.session_factory.begin() as session:
            rolled = compute_rollups(session, now)
            deleted = prune(session, now, raw_keep=spans["--raw-keep-hours"],
                            unit_minute_keep=spans["--unit-minute-keep-hours"],
                            cohort_minute_keep=spans["--cohort-minute-keep-days"],
                            hour_keep=spans["--hour-keep-days"])
    data = {"at": now.isoformat(),
            "keep": {"raw_hours": raw_keep_hours, "unit_minute_hours": unit_minute_keep_hours,
                     "cohort_minute_days": cohort_minute_keep_days, "hour_days": hour_keep_days},
            "rolled_up": {"unit_rollups_1m": rolled.minutes_written,
                          "cohort_rollups_1m": rolled.cohort_minutes_written,
                          "unit_rollups_1h": rolled.hours_written},
            "deleted": deleted}
    _emit(data, as_json, f"rolled up: {rolled.minutes_written} unit minute rows, {rolled.cohort_minutes_written} "
                         f"cohort minute rows, {rolled.hours_written} unit hour rows\n"
                         + "deleted: " + ", ".join(f"{n} {t}" for t, n in deleted.items()))


from speakerops import cli_admin, cli_audit, cli_feedback, cli_rollout, cli_voice, cli_workbench  # noqa: E402

cli_voice.register(app)  # diagnose, evaluate, models build
cli_rollout.register(app)  # models import|list|show|alias|evaluate, rollout … (issue #5)
cli_feedback.register(app)  # feedback …, tickets …, trends, serve-feedback (issue #6)
cli_audit.register(app)  # audit list|verify
cli_admin.register(app)  # admin users add|remove|list, whoami (issue #8)
cli_workbench.register(app)  # unit diagnose|selftest|restart|logs|pin|add-case (issue #7)
__import__("speakerops.cli_keys", fromlist=["register"]).register(app)  # keys status|import-ssh|rotate-signing|push-trust|rotate-ssh (issue #8)
__import__("speakerops.cli_units", fromlist=["register"]).register(units_app)  # units offline-policy set|list|clear (issue #4)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SQLAlchemyError as exc:
        from speakerops.roles import is_refusal, refusal_message

        if is_refusal(exc):
            typer.echo(f"error: {refusal_message(exc)}", err=True)
        else:
            typer.echo(f"error: database error: {str(getattr(exc, 'orig', exc)).strip()}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
