"""The ``speakerops`` command line: every console action as a verb, ``--json`` for scripts.

``speakerops`` alone opens the console on the configured database. Exit status: 0 success,
1 failure (the message says what was wrong and what to do), 2 partial success (e.g. an import
that rejected some rows; the report lists them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from speakerops.runtime import Runtime, build_runtime

logger = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=False, help=__doc__,
                  context_settings={"help_option_names": ["-h", "--help"]})
units_app = typer.Typer(help="Fleet inventory: import and list units.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and status.", no_args_is_help=True)
app.add_typer(units_app, name="units")
app.add_typer(db_app, name="db")

DbUrl = Annotated[str | None, typer.Option("--db-url", envvar="SPEAKEROPS_DB_URL",
                                           help="SQLAlchemy URL; default SQLite in SPEAKEROPS_DATA_DIR.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@contextmanager
def _runtime(db_url: str | None) -> Iterator[Runtime]:
    try:
        rt = build_runtime(db_url)
    except OperationalError as exc:
        raise _fail(f"cannot open the database: {str(exc.orig).strip()}. Check SPEAKEROPS_DB_URL "
                    "(or --db-url) and that the server is running.") from exc
    try:
        yield rt
    finally:
        rt.close()


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


def _db_url(ctx: typer.Context, db_url: str | None) -> str | None:
    return db_url or (ctx.obj or {}).get("db_url")


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
            await collector.run(stop, report)

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
    from speakerops.settings import CoreSettings

    data_dir = CoreSettings().data_dir / "sim"
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.csv"
        proc, base_url = _start_simulator(units, ssh_units, seed, inventory, data_dir)
        try:
            typer.echo(f"simulator: {units} units at {base_url} ({ssh_units} with sshd)")
            with _runtime(_db_url(ctx, db_url)) as rt:
                with rt.session_factory.begin() as session:
                    report = import_units(session, inventory, rt.clock)
                typer.echo(f"inventory: {report.created} created, {report.updated} updated")
                url = rt.db_url
            code = console_main([], db_url=url, collect=True, screenshot=screenshot,
                                screenshot_after_s=screenshot_after)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    raise typer.Exit(code)


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


from speakerops import cli_voice  # noqa: E402  (adds diagnose, evaluate, models build)

cli_voice.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SQLAlchemyError as exc:
        typer.echo(f"error: database error: {str(getattr(exc, 'orig', exc)).strip()}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
