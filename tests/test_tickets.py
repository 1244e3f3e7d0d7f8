"""A/S tickets: workflow with refused moves, SLA clocks on the frozen clock, history, attachments, audit."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from feedback.errors import InvalidTransition, TicketInputError, TicketNotFound
from feedback.ingest import ingest_records
from feedback.models import Feedback, Ticket
from feedback.tickets import (SLA_TARGETS_S, TRANSITIONS, attach, create_ticket, move, sla_clocks, ticket_detail,
                              ticket_queue, update)
from speakerops import audit
from tests.feedback_helpers import add_unit, row

H = 3600.0


@pytest.fixture
def rt(runtime):
    with runtime.session_factory.begin() as s:
        add_unit(s, "SPK-1", runtime.clock(), qa="qa-2.0.4")
    return runtime


def _new(rt, **kw):
    with rt.session_factory.begin() as s:
        return create_ticket(s, rt.clock, title=kw.pop("title", "no answer"), actor="kim", **kw).id


def test_full_workflow_history_and_audit(rt) -> None:
    tid = _new(rt, unit_serial="SPK-1", priority="p2", category="no_response")
    path = ["triaged", "diagnosing", "waiting_for_parts", "in_repair", "resolved", "closed", "triaged",
            "diagnosing", "resolved"]
    for state in path:
        rt.clock.advance(600)
        with rt.session_factory.begin() as s:
            move(s, tid, state, rt.clock, actor="lee", note=f"to {state}")
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
        assert d["state"] == "resolved" and d["priority"] == "high" and d["reopened_count"] == 1
        assert d["unit"] == "SPK-1" and d["versions"]["qa"] == "qa-2.0.4"
        assert d["rollout_id"] is None  # no rollout touched the unit
        kinds = [(e["kind"], e["from"], e["to"]) for e in d["history"]]
        assert kinds[0] == ("created", None, "new")
        assert kinds[7] == ("reopened", "closed", "triaged")
        assert [k[2] for k in kinds[1:]] == path
        assert d["history"][1]["actor"] == "lee" and d["history"][1]["note"] == "to triaged"
        entries = audit.entries(s, target_kind="ticket", target_id=tid)
        assert len(entries) == 1 + len(path)
        assert {e.action for e in entries} == {"ticket.create", "ticket.move"}
        assert audit.verify(s).ok


@pytest.mark.parametrize("frm,to", [("new", "resolved"), ("new", "in_repair"), ("triaged", "closed")])
def test_invalid_moves_are_refused_with_the_allowed_ones(rt, frm, to) -> None:
    tid = _new(rt)
    with rt.session_factory.begin() as s:
        if frm == "triaged":
            move(s, tid, "triaged", rt.clock)
    with pytest.raises(InvalidTransition) as exc, rt.session_factory.begin() as s:
        move(s, tid, to, rt.clock)
    assert exc.value.allowed == TRANSITIONS[frm]
    assert f"from {frm} to {to}" in str(exc.value) and ", ".join(TRANSITIONS[frm]) in str(exc.value)
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
        assert d["state"] == frm and len(d["history"]) == (2 if frm == "triaged" else 1)


def test_sla_first_response_breach_and_resolution_pause(rt) -> None:
    tid = _new(rt, priority="urgent")  # 1 h first response, 24 h resolution
    resp_target, res_target = SLA_TARGETS_S["urgent"]
    rt.clock.advance(0.5 * H)
    with rt.session_factory() as s:
        first, res = sla_clocks(s.get(Ticket, tid), rt.clock())
    assert first.status == "running" and first.remaining_s == pytest.approx(0.5 * H)
    rt.clock.advance(1.0 * H)  # 1.5 h without a response: breached
    with rt.session_factory() as s:
        queue = ticket_queue(s, rt.clock())
        assert queue[0]["sla_badge"] == "breached" and queue[0]["first_response"]["status"] == "breached"
    with rt.session_factory.begin() as s:
        move(s, tid, "triaged", rt.clock)
        move(s, tid, "diagnosing", rt.clock)
    rt.clock.advance(2 * H)
    with rt.session_factory.begin() as s:
        move(s, tid, "waiting_for_parts", rt.clock)
    rt.clock.advance(100 * H)  # parts take 100 h: the resolution clock is paused
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
    assert d["sla"]["first_response"] == {"name": "first_response", "target_s": resp_target, "elapsed_s": 1.5 * H,
                                          "remaining_s": -0.5 * H, "status": "completed", "breached": True}
    assert d["sla"]["resolution"]["status"] == "paused"
    assert d["sla"]["resolution"]["elapsed_s"] == pytest.approx(3.5 * H)
    with rt.session_factory.begin() as s:
        move(s, tid, "in_repair", rt.clock)
    rt.clock.advance(20 * H)  # 23.5 h used of 24
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
        assert d["sla"]["resolution"]["status"] == "running"
        assert d["sla"]["resolution"]["remaining_s"] == pytest.approx(0.5 * H)
        q = ticket_queue(s, rt.clock())[0]  # the badge follows the running clock; the late response stays flagged
        assert (q["sla_badge"], q["sla_breached"]) == ("at_risk", True)
    rt.clock.advance(1 * H)
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
        assert d["sla"]["resolution"]["status"] == "breached" and d["sla"]["resolution"]["breached"]
    with rt.session_factory.begin() as s:
        move(s, tid, "resolved", rt.clock)
    rt.clock.advance(50 * H)  # a stopped clock does not move
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
    assert d["sla"]["resolution"]["status"] == "completed" and d["sla"]["resolution"]["breached"]
    assert d["sla"]["resolution"]["elapsed_s"] == pytest.approx(24.5 * H)
    assert res_target == 24 * H


def test_create_from_feedback_assign_reprioritize_attach(rt, tmp_path) -> None:
    with rt.session_factory.begin() as s:
        rep = ingest_records(s, [row(text="it misheard me again", rating=1, corrected="true", submission_id="t1",
                                     household="hh-7")], rt.clock, source="app", origin="t")
        assert rep.imported == 1
        fb_id = s.execute(select(Feedback.id)).scalar_one()
    tid = _new(rt, feedback_id=fb_id, category="misrecognition", title="misrecognition at home")
    report = tmp_path / "diag.json"
    report.write_bytes(b'{"wer": 0.4}')
    with rt.session_factory.begin() as s:
        update(s, tid, rt.clock, assignee="park", actor="kim")
        update(s, tid, rt.clock, priority="p1", note="VIP household")
        att = attach(s, tid, report, rt.clock, kind="diagnostic_report")
        assert att.sha256 == hashlib.sha256(b'{"wer": 0.4}').hexdigest() and att.size_bytes == 12
    with rt.session_factory() as s:
        d = ticket_detail(s, tid, rt.clock())
    assert (d["origin"], d["unit"], d["household_id"], d["feedback_id"]) == ("feedback", "SPK-1", "hh-7", fb_id)
    assert d["description"] == "it misheard me again"
    assert d["assignee"] == "park" and d["priority"] == "urgent"
    assert d["sla"]["first_response"]["target_s"] == SLA_TARGETS_S["urgent"][0]
    assert [e["kind"] for e in d["history"]] == ["created", "assigned", "edited", "attached"]
    assert d["history"][2]["detail"] == {"priority": ["normal", "urgent"]} and d["history"][2]["note"] == "VIP household"
    assert d["attachments"][0]["path"] == str(report.resolve())


def test_bad_ticket_input(rt, tmp_path) -> None:
    with pytest.raises(TicketInputError, match="unknown priority 'p9'"), rt.session_factory.begin() as s:
        create_ticket(s, rt.clock, title="x", priority="p9")
    with pytest.raises(TicketInputError, match="unknown category"), rt.session_factory.begin() as s:
        create_ticket(s, rt.clock, title="x", category="weird")
    with pytest.raises(TicketInputError, match="unknown unit 'SPK-404'"), rt.session_factory.begin() as s:
        create_ticket(s, rt.clock, title="x", unit_serial="SPK-404")
    with pytest.raises(TicketInputError, match="needs a title"), rt.session_factory.begin() as s:
        create_ticket(s, rt.clock, title="  ")
    with pytest.raises(TicketNotFound, match="#999"), rt.session_factory.begin() as s:
        move(s, 999, "triaged", rt.clock)
    tid = _new(rt)
    with pytest.raises(TicketInputError, match="not a file"), rt.session_factory.begin() as s:
        attach(s, tid, tmp_path / "nope.txt", rt.clock)


def test_cli_tickets(rt, tmp_path) -> None:
    from speakerops.cli import app

    runner = CliRunner()
    db = ["--db-url", rt.db_url]
    res = runner.invoke(app, ["tickets", "create", "--title", "speaker silent", "--unit", "SPK-1", "--priority", "high",
                              "--category", "no_response", "--json", *db])
    assert res.exit_code == 0, res.output
    tid = json.loads(res.stdout)["id"]
    res = runner.invoke(app, ["tickets", "move", str(tid), "resolved", *db])
    assert res.exit_code == 1 and "allowed: triaged" in res.output
    assert runner.invoke(app, ["tickets", "move", str(tid), "triaged", "--note", "checked", *db]).exit_code == 0
    assert runner.invoke(app, ["tickets", "assign", str(tid), "park", *db]).exit_code == 0
    (tmp_path / "r.html").write_text("<p>report</p>")
    assert runner.invoke(app, ["tickets", "attach", str(tid), str(tmp_path / "r.html"), *db]).exit_code == 0
    res = runner.invoke(app, ["tickets", "show", str(tid), "--json", *db])
    d = json.loads(res.stdout)
    assert d["state"] == "triaged" and d["assignee"] == "park" and len(d["attachments"]) == 1
    res = runner.invoke(app, ["tickets", "list", "--open", "--json", *db])
    assert [r["id"] for r in json.loads(res.stdout)] == [tid]
    res = runner.invoke(app, ["tickets", "list", *db])
    assert "speaker silent" in res.stdout and "1 tickets" in res.stdout
    res = runner.invoke(app, ["tickets", "show", "999", *db])
    assert res.exit_code == 1 and "no ticket #999" in res.output
