"""``speakerops units offline-policy set|list|clear``: per-group offline thresholds (fleet.unit_states).

A lab whose units are switched off at night gets its own threshold (Mender MEN-4798), e.g.
``speakerops units offline-policy set --tag lab 12h``; every change is in the audit trail.
"""

from __future__ import annotations

from typing import Annotated

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

policy_app = typer.Typer(help="Per-group offline thresholds: a unit in the group is offline only after "
                              "this long without a heartbeat (most specific wins: unit > tag > site = "
                              "hardware revision).", no_args_is_help=True)

_By = Annotated[str | None, typer.Option("--by", help="Who (default the database login or OS user).")]


def _scope(site: str | None, hardware_rev: str | None, tag: str | None, unit: str | None) -> tuple[str, str]:
    given = [(k, v) for k, v in (("site", site), ("hardware_rev", hardware_rev), ("tag", tag), ("unit", unit))
             if v is not None]
    if len(given) != 1:
        raise _fail("name exactly one scope: --site S, --hardware-rev R, --tag T or --unit SERIAL "
                    f"({'none' if not given else ', '.join('--' + k.replace('_', '-') for k, _ in given)} given)")
    return given[0]


@policy_app.command("set")
def policy_set(ctx: typer.Context,
               duration: Annotated[str, typer.Argument(help="Offline after this long: 90s, 15m, 12h, 1d.")],
               site: Annotated[str | None, typer.Option("--site", help="Units at this site.")] = None,
               hardware_rev: Annotated[str | None, typer.Option("--hardware-rev",
                                                                help="Units of this hardware revision.")] = None,
               tag: Annotated[str | None, typer.Option("--tag", help="Units with this tag.")] = None,
               unit: Annotated[str | None, typer.Option("--unit", help="One unit, by serial.")] = None,
               note: Annotated[str | None, typer.Option("--note", help="Why, e.g. 'switched off at night'.")] = None,
               by: _By = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Set (or replace) the offline threshold of a site, hardware revision, tag or unit."""
    from fleet.unit_states import OfflinePolicyError, set_offline_policy

    kind, value = _scope(site, hardware_rev, tag, unit)
    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                row = set_offline_policy(session, kind, value, duration, rt.clock(), note=note, actor=by)
        except OfflinePolicyError as exc:
            raise _fail(str(exc)) from exc
    verb = "added" if row["created"] else "updated"
    _emit(row, as_json, f"offline policy #{row['id']} {verb}: units with {kind}={value} are offline after "
                        f"{row['offline_after']} without a heartbeat")


@policy_app.command("list")
def policy_list(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """List the offline policies and how many units each one decides."""
    from fleet.settings import CollectorSettings
    from fleet.unit_states import format_duration, list_offline_policies

    settings = CollectorSettings()
    default_s = settings.offline_after_s
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        rows = list_offline_policies(session, default_s)
    text = [f"{'id':>4}  {'scope':<32}{'offline after':>14}{'units':>7}  note"] + [
        f"{r['id']:>4}  {(r['scope_kind'] + '=' + r['scope_value'])[:31]:<32}{r['offline_after']:>14}"
        f"{r['units']:>7}  {r['note'] or ''}" for r in rows]
    text.append(f"{len(rows)} policies; other units are offline after {format_duration(default_s)} "
                f"(the default: {settings.offline_after_factor:g} x the {settings.interval_s:g} s poll interval)")
    _emit(rows, as_json, "\n".join(text))


@policy_app.command("clear")
def policy_clear(ctx: typer.Context, policy_id: Annotated[int, typer.Argument(metavar="ID")],
                 by: _By = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Remove an offline policy; its units fall back to the next policy or the fleet default."""
    from fleet.unit_states import OfflinePolicyError, clear_offline_policy

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                row = clear_offline_policy(session, policy_id, rt.clock(), actor=by)
        except OfflinePolicyError as exc:
            raise _fail(str(exc)) from exc
    _emit({**row, "cleared": True}, as_json,
          f"offline policy #{policy_id} ({row['scope_kind']}={row['scope_value']}, {row['offline_after']}) cleared")


def register(units_app: typer.Typer) -> None:
    """Add ``offline-policy`` under ``speakerops units``."""
    units_app.add_typer(policy_app, name="offline-policy")
