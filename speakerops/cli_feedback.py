"""Feedback, ticket and trend verbs of the ``speakerops`` CLI (issue #6): ``feedback …``,
``tickets …``, ``trends``, ``serve-feedback``.

Formats, privacy rules and the endpoint: ``docs/feedback.md``; the ticket workflow and SLA
defaults: ``docs/tickets.md``.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

logger = logging.getLogger(__name__)

feedback_app = typer.Typer(help="User feedback: import, list, simulate, purge, export and erase.",
                           no_args_is_help=True)
tickets_app = typer.Typer(help="A/S tickets: list, show, create, move, assign, attach.", no_args_is_help=True)

By = Annotated[str | None, typer.Option("--by", help="Who acts (default: the database login / OS user).")]


def parse_since(value: str | None, now: datetime) -> datetime | None:
    """``2026-11-01`` (UTC midnight), an ISO time with offset, or ``7d``/``12h`` before now."""
    if not value:
        return None
    m = re.fullmatch(r"(\d+)([dh])", value.strip())
    if m:
        n = int(m.group(1))
        return now - (timedelta(days=n) if m.group(2) == "d" else timedelta(hours=n))
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise _fail(f"--since {value!r} is not a date: use 2026-11-01, 2026-11-01T09:00:00+09:00 or 7d") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# -- feedback -----------------------------------------------------------------------------------------
@feedback_app.command("import")
def feedback_import(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="CSV (with header) or JSONL.")],
                    encoding: Annotated[str | None, typer.Option(help="Override detection (utf-8, cp949, latin-1).")] = None,
                    rate_limit: Annotated[int, typer.Option("--rate-limit", min=1,
                                                            help="Rows per household per hour kept.")] = 30,
                    as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Import feedback (docs/feedback.md); bad rows are reported by line. Exit 2 if any was rejected."""
    from sqlalchemy.exc import OperationalError

    from feedback.errors import FeedbackFormatError
    from feedback.ingest import import_file

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                report = import_file(session, file, rt.clock, encoding=encoding, rate_limit_per_hour=rate_limit)
        except FeedbackFormatError as exc:
            raise _fail(str(exc)) from exc
        except UnicodeDecodeError as exc:
            raise _fail(f"{file} is not {encoding}: {exc}; leave out --encoding to detect it") from exc
        except OperationalError as exc:
            raise _fail(f"the database refused the import ({str(exc.orig).strip()}); nothing was imported. "
                        "Try again when the database is free.") from exc
    lines = [f"{file}: {report.format}, {report.encoding}; {report.rows_total:,} rows: {report.imported:,} imported, "
             f"{report.duplicates:,} duplicates, {report.rejected:,} rejected"
             + (f"; text withheld (no consent) {report.text_withheld:,}" if report.text_withheld else "")
             + (f"; {report.redactions:,} identifiers redacted" if report.redactions else "")]
    lines += [f"  line {e.line} [{e.field}]: {e.message}" for e in report.errors[:200]]
    if len(report.errors) > 200:
        lines.append(f"  … {len(report.errors) - 200:,} more (use --json for all)")
    lines += [f"  warning line {w.line} [{w.field}]: {w.message}" for w in report.warnings[:50]]
    _emit(report.as_dict(), as_json, "\n".join(lines))
    if report.rejected:
        raise typer.Exit(2)


@feedback_app.command("list")
def feedback_list(ctx: typer.Context, since: Annotated[str | None, typer.Option(help="Date, ISO time or 7d.")] = None,
                  feature: Annotated[str | None, typer.Option()] = None,
                  unit: Annotated[str | None, typer.Option(help="Unit serial.")] = None,
                  max_rating: Annotated[int | None, typer.Option("--max-rating", min=1, max=5)] = None,
                  limit: Annotated[int, typer.Option(min=1)] = 50, as_json: JsonOut = False,
                  db_url: DbUrl = None) -> None:
    """List feedback, newest first."""
    from feedback.trends import feedback_table

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        frame = feedback_table(session, since=parse_since(since, rt.clock()), feature=feature, unit_serial=unit,
                               max_rating=max_rating, limit=limit)
    rows = json.loads(frame.to_json(orient="records", date_format="iso"))
    text = [f"{r['id']:>8} {r['submitted_at'][:16]} {r['serial']:<12} {r['feature']:<9} {r['rating']}★"
            f"{' corrected' if r['corrected'] else '':<10} {(r['text'] or '')[:60]}" for r in rows]
    _emit(rows, as_json, "\n".join(text) + f"\n{len(rows)} rows")


@feedback_app.command("purge")
def feedback_purge(ctx: typer.Context,
                   days: Annotated[int, typer.Option("--days", min=0, help="Keep free text this many days.")] = 180,
                   as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Remove free text older than the retention period (ratings stay); audited."""
    from feedback.privacy import purge_text

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory.begin() as session:
        n = purge_text(session, rt.clock, retention_days=days)
    _emit({"purged": n, "retention_days": days}, as_json, f"removed the text of {n:,} feedback items older than {days} days")


@feedback_app.command("export")
def feedback_export(ctx: typer.Context, household: Annotated[str, typer.Argument(help="Household id.")],
                    out: Annotated[Path | None, typer.Option("--out", help="Write JSON here (else stdout).")] = None,
                    db_url: DbUrl = None) -> None:
    """Export everything stored about a household as JSON (a data-subject access request); audited."""
    from feedback.privacy import export_household

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory.begin() as session:
        data = export_household(session, household, rt.clock)
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        typer.echo(f"{len(data['feedback'])} feedback items, {len(data['tickets'])} tickets → {out}")


@feedback_app.command("erase")
def feedback_erase(ctx: typer.Context, household: Annotated[str, typer.Argument(help="Household id.")],
                   yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
                   reason: Annotated[str | None, typer.Option(help="E.g. the request's reference.")] = None,
                   as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Erase a household's feedback and unlink it from tickets (irreversible); audited."""
    from feedback.privacy import erase_household

    if not yes and not typer.confirm(f"erase all feedback of household {household}?"):
        raise _fail("not erased (answer y, or pass --yes)")
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory.begin() as session:
        result = erase_household(session, household, rt.clock, reason=reason)
    _emit(result, as_json, f"erased {result['feedback_deleted']} feedback items; "
                           f"{result['tickets_scrubbed']} tickets unlinked")


@feedback_app.command("simulate")
def feedback_simulate(ctx: typer.Context, days: Annotated[int, typer.Option("--days", min=1)] = 7,
                      seed: Annotated[int, typer.Option("--seed")] = 0,
                      rate: Annotated[float, typer.Option("--rate", min=0.0, help="Items per unit per day.")] = 0.6,
                      as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Generate realistic feedback for the units in the database over the last N days and import it."""
    from sqlalchemy import select

    from feedback.ingest import ingest_records
    from feedback.simulate import generate_feedback
    from fleet.models import Unit

    with _runtime(_db_url(ctx, db_url)) as rt:
        now = rt.clock()
        with rt.session_factory.begin() as session:
            units = list(session.execute(select(Unit).order_by(Unit.id)).scalars())
            if not units:
                raise _fail("no units in the database; import some first (speakerops units import FILE)")
            rows = generate_feedback(units, now - timedelta(days=days), now, seed, rate_per_unit_day=rate)
            report = ingest_records(session, rows, rt.clock, source="simulator", origin=f"simulate {days}d seed {seed}",
                                    rate_limit_per_hour=None, actor="simulator")
    _emit(report.as_dict(), as_json, f"{len(units)} units, {days} days: {report.rows_total:,} generated, "
                                     f"{report.imported:,} imported, {report.duplicates:,} duplicates, "
                                     f"{report.rejected:,} rejected")
    if report.rejected:
        raise typer.Exit(2)


@feedback_app.command("topics")
def feedback_topics_cmd(ctx: typer.Context, since: Annotated[str | None, typer.Option(help="Date or 30d.")] = None,
                        n: Annotated[int | None, typer.Option("--topics", min=1, max=50, help="How many.")] = None,
                        models_dir: Annotated[Path | None, typer.Option("--models-dir", help="Model bundles root.")] = None,
                        as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Topics of free-text feedback (MiniLM embeddings, k-means), named by their typical phrases."""
    from feedback.topics import feedback_topics, load_encoder
    from inference_core.errors import ModelLoadError
    from speakerops.cli_voice import models_root

    try:
        embed = load_encoder(models_root(models_dir))
    except ModelLoadError as exc:
        raise _fail(f"{exc}; build the bundles with `speakerops models build`") from exc
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        topics = feedback_topics(session, embed, since=parse_since(since, rt.clock()), n_topics=n)
    data = [t.as_dict() | {"ids": list(t.ids[:100])} for t in topics]
    text = [f"{t.size:>6}  {t.label}  (mean rating {t.mean_rating:.1f})\n        " + " | ".join(t.phrases)
            for t in topics]
    _emit(data, as_json, "\n".join(text) or "no feedback text stored")


# -- tickets ------------------------------------------------------------------------------------------
def _ticket_errors():
    from feedback.errors import FeedbackError

    return FeedbackError


@tickets_app.command("list")
def tickets_list(ctx: typer.Context, state: Annotated[str | None, typer.Option()] = None,
                 open_only: Annotated[bool, typer.Option("--open", help="Only open tickets.")] = False,
                 assignee: Annotated[str | None, typer.Option()] = None,
                 priority: Annotated[str | None, typer.Option()] = None,
                 unit: Annotated[str | None, typer.Option(help="Unit serial.")] = None,
                 limit: Annotated[int, typer.Option(min=1)] = 200, as_json: JsonOut = False,
                 db_url: DbUrl = None) -> None:
    """The ticket queue, breaching and at-risk first, with SLA badges."""
    from feedback.tickets import ticket_queue

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        try:
            rows = ticket_queue(session, rt.clock(), state=state, open_only=open_only, assignee=assignee,
                                priority=priority, unit_serial=unit, limit=limit)
        except _ticket_errors() as exc:
            raise _fail(str(exc)) from exc
    text = [f"{'id':>6}  {'SLA':<9}{'state':<18}{'prio':<7}{'category':<15}{'unit':<12}{'assignee':<12}title"] + [
        f"{r['id']:>6}  {r['sla_badge']:<9}{r['state']:<18}{r['priority']:<7}{r['category']:<15}"
        f"{(r['unit'] or '-'):<12}{(r['assignee'] or '-')[:11]:<12}{r['title'][:50]}" for r in rows]
    _emit(rows, as_json, "\n".join(text) + f"\n{len(rows)} tickets")


@tickets_app.command("show")
def tickets_show(ctx: typer.Context, ticket_id: Annotated[int, typer.Argument(metavar="ID")],
                 as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """A ticket with its SLA clocks, allowed moves, history and attachments."""
    from feedback.tickets import ticket_detail

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        try:
            d = ticket_detail(session, ticket_id, rt.clock())
        except _ticket_errors() as exc:
            raise _fail(str(exc)) from exc
    sla = d["sla"]
    lines = [f"#{d['id']} {d['title']}", f"  state {d['state']} · {d['priority']} · {d['category']} · "
             f"assignee {d['assignee'] or '-'} · unit {d['unit'] or '-'} · rollout {d['rollout_id'] or '-'}",
             f"  versions {d['versions']}", f"  {d['description']}"]
    for c in sla.values():
        lines.append(f"  SLA {c['name']}: {c['status']}{' (BREACHED)' if c['breached'] else ''}, "
                     f"{c['remaining_s'] / 3600:+.1f} h left of {c['target_s'] / 3600:.0f} h")
    lines.append(f"  allowed moves: {', '.join(d['allowed_moves']) or 'none'}")
    lines += [f"  {e['at'][:19]} {e['actor']}: {e['kind']}" + (f" {e['from'] or ''} → {e['to']}" if e['to'] else "")
              + (f" {e['detail']}" if e['detail'] and e['kind'] != 'created' else "") + (f" — {e['note']}" if e['note'] else "")
              for e in d["history"]]
    lines += [f"  attachment {a['kind']}: {a['path']} ({a['size_bytes']:,} bytes, sha256 {a['sha256'][:12]}…)"
              for a in d["attachments"]]
    _emit(d, as_json, "\n".join(lines))


@tickets_app.command("create")
def tickets_create(ctx: typer.Context, title: Annotated[str, typer.Option("--title", help="What is wrong.")],
                   unit: Annotated[str | None, typer.Option("--unit", help="Unit serial.")] = None,
                   feedback_id: Annotated[int | None, typer.Option("--feedback", help="Feedback item id.")] = None,
                   priority: Annotated[str, typer.Option(help="urgent|high|normal|low or p1–p4.")] = "normal",
                   category: Annotated[str, typer.Option(help="no_response, misrecognition, wrong_answer, "
                                                              "audio_hardware, connectivity, other.")] = "other",
                   assignee: Annotated[str | None, typer.Option()] = None,
                   description: Annotated[str, typer.Option()] = "", by: By = None,
                   as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Create a ticket by hand, for a unit, or from a feedback item."""
    from feedback.tickets import create_ticket, snapshot

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                t = create_ticket(session, rt.clock, title=title, description=description, priority=priority,
                                  category=category, assignee=assignee, unit_serial=unit, feedback_id=feedback_id,
                                  actor=by)
                data = snapshot(t)
        except _ticket_errors() as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"ticket #{data['id']} created ({data['priority']}, {data['category']}"
                         + (f", unit {data['unit']}" if data["unit"] else "") + ")")


@tickets_app.command("move")
def tickets_move(ctx: typer.Context, ticket_id: Annotated[int, typer.Argument(metavar="ID")],
                 state: Annotated[str, typer.Argument(help="triaged, diagnosing, waiting_for_parts, in_repair, "
                                                           "resolved, closed.")],
                 note: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
                 by: By = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Move a ticket along the workflow (docs/tickets.md); refused moves list the allowed ones."""
    from feedback.tickets import move, snapshot

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                data = snapshot(move(session, ticket_id, state, rt.clock, actor=by, note=note))
        except _ticket_errors() as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"ticket #{ticket_id} → {data['state']}")


@tickets_app.command("assign")
def tickets_assign(ctx: typer.Context, ticket_id: Annotated[int, typer.Argument(metavar="ID")],
                   assignee: Annotated[str, typer.Argument(help="Who; '-' to unassign.")],
                   by: By = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Assign a ticket (or unassign with '-')."""
    from feedback.tickets import snapshot, update

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                data = snapshot(update(session, ticket_id, rt.clock, actor=by, assignee=None if assignee == "-" else assignee,
                                       unassign=assignee == "-"))
        except _ticket_errors() as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"ticket #{ticket_id} assigned to {data['assignee'] or 'nobody'}")


@tickets_app.command("attach")
def tickets_attach(ctx: typer.Context, ticket_id: Annotated[int, typer.Argument(metavar="ID")],
                   path: Annotated[Path, typer.Argument(help="File to attach (kept in place).")],
                   kind: Annotated[str, typer.Option(help="diagnostic_report, log, photo, audio, other.")] = "diagnostic_report",
                   by: By = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Attach a file (e.g. a diagnostic report) by path with its SHA-256."""
    from feedback.tickets import attach

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                a = attach(session, ticket_id, path, rt.clock, kind=kind, actor=by)
                data = {"id": a.id, "ticket_id": ticket_id, "path": a.path, "kind": a.kind, "sha256": a.sha256,
                        "size_bytes": a.size_bytes}
        except _ticket_errors() as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"attached {data['path']} to ticket #{ticket_id}")


# -- trends and the endpoint ------------------------------------------------------------------------
def trends(ctx: typer.Context, since: Annotated[str | None, typer.Option(help="Date, ISO time or 30d.")] = None,
           freq: Annotated[str, typer.Option("--freq", help="D (day) or W (week).")] = "D",
           boot: Annotated[int, typer.Option("--bootstrap", min=100, help="Bootstrap replicates.")] = 1000,
           as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Feedback and ticket trends: volume, CSAT, correction rate per model version (95 % CI),
    complaints per 1,000 unit-days, response/resolution times, backlog, SLA breaches."""
    from feedback.trends import compute_trends, load_trend_data

    if freq not in ("D", "W"):
        raise _fail(f"--freq {freq!r}: use D or W")
    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        now = rt.clock()
        start = parse_since(since, now)
        data = load_trend_data(session, now, since=start)
    t = compute_trends(data, now, since=start, freq=freq, n_boot=boot)
    d = t.as_dict()
    lines = [f"window {d['window'][0][:16]} – {d['window'][1][:16]} UTC: {t.feedback_rows:,} feedback items, "
             f"CSAT {'-' if t.csat is None else format(t.csat, '.1%')}"]
    for kind, frame in t.versions.items():
        for version, r in frame.iterrows():
            if r.get("n", 0) != r.get("n", 0) or not r.get("n"):
                continue
            lines.append(f"  {kind} {version:<14} n={int(r['n']):>8,}  corrections {r['correction_rate']:.1%} "
                         f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]  CSAT {r['csat']:.1%}  "
                         f"complaints/1000 unit-days {r.get('per_1000_unit_days', float('nan')):.1f}")
    tt = d["tickets"]["times"]
    fmt = lambda v: "-" if v is None else f"{v:.1f} h"  # noqa: E731
    lines.append(f"tickets: first response median {fmt(tt['first_response_h']['median'])}, p90 "
                 f"{fmt(tt['first_response_h']['p90'])}; resolution median {fmt(tt['resolution_h']['median'])}, "
                 f"p90 {fmt(tt['resolution_h']['p90'])}")
    lines.append("backlog by age: " + ", ".join(f"{k} {v}" for k, v in d["tickets"]["backlog_by_age"].items()))
    for r in d["tickets"]["sla_by_priority"]:
        lines.append(f"  SLA {r['priority']:<7} {r['tickets']:>6} tickets: {r['response_breached']} first-response "
                     f"breaches, {r['resolution_breached']} resolution breaches, {r['open_breaching']} open breaching")
    _emit(d, as_json, "\n".join(lines))


def serve_feedback(ctx: typer.Context,
                   port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8088,
                   host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
                   db_url: DbUrl = None) -> None:
    """Serve the companion app's feedback endpoint: POST /v1/feedback (docs/feedback.md)."""
    from feedback.server import FeedbackServer

    with _runtime(_db_url(ctx, db_url)) as rt:
        typer.echo(f"feedback endpoint on http://{host}:{port}/v1/feedback (Ctrl-C to stop)")
        FeedbackServer(rt.session_factory, rt.clock, host=host, port=port).serve_forever()


def register(app: typer.Typer) -> None:
    """Add the feedback, ticket and trend verbs to ``app``."""
    app.add_typer(feedback_app, name="feedback")
    app.add_typer(tickets_app, name="tickets")
    app.command("trends")(trends)
    app.command("serve-feedback")(serve_feedback)
