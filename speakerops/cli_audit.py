"""``speakerops audit list|verify``: read and check the hash-chained audit trail (speakerops.audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

audit_app = typer.Typer(help="The audit trail: who did what, when; hash-chained.", no_args_is_help=True)


@audit_app.command("list")
def audit_list(ctx: typer.Context,
               target: Annotated[str | None, typer.Option(help="KIND or KIND:ID, e.g. rollout:3.")] = None,
               action: Annotated[str | None, typer.Option(help="Action prefix, e.g. rollout.")] = None,
               actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
               since: Annotated[datetime | None, typer.Option(help="ISO 8601 time (UTC if no offset).")] = None,
               limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
               as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Audit entries, newest first."""
    from speakerops.audit import entries
    from speakerops.timeutil import ensure_utc

    kind, _, ident = (target or "").partition(":")
    if since is not None and since.tzinfo is None:
        from datetime import UTC
        since = since.replace(tzinfo=UTC)
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        rows = entries(session, target_kind=kind or None, target_id=ident or None, action_prefix=action,
                       actor=actor, since=ensure_utc(since) if since else None, limit=limit)
        data = [{"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                 "target": f"{e.target_kind}:{e.target_id}", "before": e.before, "after": e.after,
                 "reason": e.reason} for e in rows]
    text = "\n".join(f"{d['id']:>6}  {d['at']}  {d['actor']:<12} {d['action']:<24} {d['target']}"
                     + (f"  reason: {d['reason']}" if d["reason"] else "") for d in data) or "no entries"
    _emit(data, as_json, text)


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Recompute the hash chain; exit 1 and name the first bad entry if one was edited or deleted."""
    from speakerops.audit import verify

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        result = verify(session)
    data = {"ok": result.ok, "entries": result.entries, "first_bad_id": result.first_bad_id,
            "problem": result.problem}
    if result.ok:
        _emit(data, as_json, f"audit trail intact: {result.entries} entries")
        return
    if as_json:
        _emit(data, True, "")
    raise _fail(f"audit trail broken: {result.problem}. Restore the audit_log table from a backup "
                "and find out who changed it.")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
