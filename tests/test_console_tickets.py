"""The Tickets page over a real SQLite database seeded through the core (inventory import,
feedback import, ``feedback.tickets``): queue and tiles, SLA badges on a frozen clock, a workflow
move from the page (DB state, history, audit), a refused move in the message bar, assign / note,
create from a feedback item, attachments and CSV export."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import csv
from pathlib import Path

import pytest
from sqlalchemy import select

from console.pages.tickets import TicketsPage
from console.theme import DARK
from feedback import tickets
from feedback.ingest import import_file
from feedback.models import Feedback, Ticket, TicketEvent
from fleet.inventory import import_units
from speakerops import audit
from speakerops.runtime import build_runtime

pytestmark = pytest.mark.gui


def seed_units(session, tmp_path: Path, clock) -> None:
    inv = tmp_path / "fleet.csv"
    inv.write_text("serial,agent_url,site,hardware_rev,stt_version,qa_version,tts_version,consent_feedback_text\n"
                   "SPK-000001,http://127.0.0.1:9/,seoul,hw-b,stt-1.0,qa-1.0,tts-1.0,true\n"
                   "SPK-000002,http://127.0.0.1:9/,busan,hw-a,stt-1.1,qa-1.0,tts-1.0,true\n", encoding="utf-8")
    assert not import_units(session, inv, clock).errors


@pytest.fixture
def rt(tmp_path: Path, clock):
    runtime = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=clock)
    with runtime.session_factory.begin() as s:
        seed_units(s, tmp_path, clock)
        fb = tmp_path / "fb.jsonl"
        fb.write_text('{"unit_serial": "SPK-000002", "household_id": "hh-77", "submitted_at": '
                      '"2026-11-21T05:30:00+00:00", "feature": "weather", "rating": 1, '
                      '"text": "it said rain, it was sunny", "corrected": true, "submission_id": "s-1"}\n',
                      encoding="utf-8")
        assert import_file(s, fb, clock).imported == 1
        tickets.create_ticket(s, clock, title="No answer after wake word", priority="urgent",
                              category="no_response", unit_serial="SPK-000001", actor="op-lee")
        tickets.create_ticket(s, clock, title="Crackling speaker", priority="low", category="audio_hardware",
                              assignee="tech-kim", actor="op-lee")
    yield runtime
    runtime.close()


@pytest.fixture
def page(qtbot, rt, executors, reporter):
    opened: list[Path] = []
    p = TicketsPage(rt.session_factory, rt.clock, executors, reporter, DARK, actor="op-park",
                    open_file=lambda path: opened.append(path) or True)
    p.opened = opened
    qtbot.addWidget(p)
    p.resize(1400, 900)
    p.show()
    yield p
    p.shutdown()
    qtbot.waitUntil(lambda: not p.busy, timeout=5000)


def _col(page: TicketsPage, key: str) -> int:
    return next(i for i, c in enumerate(page.model.columns) if c.key == key)


def _shown(page: TicketsPage, key: str) -> list[str]:
    return [page.proxy.index(r, _col(page, key)).data() for r in range(page.proxy.rowCount())]


def _ticket_id(rt, title: str) -> int:
    with rt.session_factory() as s:
        return s.execute(select(Ticket.id).where(Ticket.title == title)).scalar_one()


def test_queue_tiles_and_breached_badge(qtbot, page: TicketsPage, rt, clock) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 2, timeout=5000)
    assert sorted(_shown(page, "title")) == ["Crackling speaker", "No answer after wake word"]
    assert page.tiles["open"].value_text() == "2"
    assert page.tiles["unassigned"].value_text() == "1"
    assert page.tiles["breaching"].value_text() == "0"
    assert set(_shown(page, "sla")) == {"◷ running"}

    # urgent: first response within 1 h; 90 min later with nobody answering it is breached
    clock.advance(90 * 60)
    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.refresh()
    urgent = _ticket_id(rt, "No answer after wake word")
    row = page.model.row_of("id", urgent)
    assert page.model.rows[row]["sla"] == "breached"
    sla_cell = page.model.index(row, _col(page, "sla"))
    assert sla_cell.data() == "✖ breached"
    assert page.model.data(sla_cell, 9).name().upper() == "#D55E00"  # ForegroundRole: vermillion, with the word
    assert page.model.index(row, _col(page, "sla_left_s")).data() == "30 min late"
    assert page.tiles["breaching"].value_text() == "1"
    assert _shown(page, "title")[0] == "No answer after wake word"  # most urgent first

    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.set_filters(state="open", category="audio_hardware")
    assert _shown(page, "title") == ["Crackling speaker"]
    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.set_filters(state="open", assignee="-")
    assert _shown(page, "title") == ["No answer after wake word"]
    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.set_filters(state=None, text="crackl")
    assert _shown(page, "title") == ["Crackling speaker"]


def test_move_assign_note_and_refused_move(qtbot, page: TicketsPage, rt, clock, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 2, timeout=5000)
    tid = _ticket_id(rt, "No answer after wake word")
    report = tmp_path / "diag.html"
    report.write_text("<html>diagnosis</html>", encoding="utf-8")
    with rt.session_factory.begin() as s:
        tickets.attach(s, tid, report, clock, actor="tech-kim")
    assert page.select_ticket(tid)
    qtbot.waitUntil(lambda: page.detail.ticket_id == tid and page.detail.attachments.count() == 1, timeout=5000)
    assert page.detail.move_labels() == ["triaged"]  # only what the core allows from "new"
    assert page.detail.values["unit"].text() == "SPK-000001"
    assert "stt stt-1.0" in page.detail.values["versions_then"].text()
    assert "seoul" in page.detail.values["unit_site"].text()

    clock.advance(600)
    with qtbot.waitSignal(page.sig_changed, timeout=5000) as moved:
        page.detail.move_buttons["triaged"].click()  # as the user: the button of the allowed move
    assert moved.args == [tid, "move:triaged"]
    with rt.session_factory() as s:
        t = s.get(Ticket, tid)
        assert t.state == "triaged" and t.first_response_at is not None
        events = s.execute(select(TicketEvent).where(TicketEvent.ticket_id == tid)
                           .order_by(TicketEvent.id)).scalars().all()
        assert [(e.kind, e.to_state, e.actor) for e in events][-1] == ("moved", "triaged", "op-park")
        entry = audit.entries(s, target_kind="ticket", action_prefix="ticket.move")[0]
        assert entry.actor == "op-park" and entry.after["state"] == "triaged" and entry.before["state"] == "new"
    qtbot.waitUntil(lambda: page.detail.move_labels() == ["diagnosing"], timeout=5000)
    assert "moved: new → triaged" in page.detail.history.toPlainText()

    # another console moves it meanwhile: the stale request is refused by the core, shown in the bar
    with rt.session_factory.begin() as s:
        tickets.move(s, tid, "diagnosing", clock, actor="op-other")
    page.move_selected("diagnosing")
    qtbot.waitUntil(lambda: "cannot move from diagnosing to diagnosing" in page.message_bar.text(), timeout=5000)
    assert "allowed: waiting_for_parts, in_repair, resolved" in page.message_bar.text()
    qtbot.waitUntil(lambda: set(page.detail.move_labels()) == {"waiting_for_parts", "in_repair", "resolved"},
                    timeout=5000)

    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        page.detail.assign_edit.setText("tech-choi")
        page.detail.assign_button.click()
    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        page.add_note("replaced the mic board")
    with rt.session_factory() as s:
        assert s.get(Ticket, tid).assignee == "tech-choi"
        kinds = [e.kind for e in s.execute(select(TicketEvent).where(TicketEvent.ticket_id == tid)).scalars()]
        assert kinds[-2:] == ["assigned", "comment"]
        assert {e.action for e in audit.entries(s, target_kind="ticket")} >= {"ticket.update", "ticket.comment"}
    qtbot.waitUntil(lambda: "replaced the mic board" in page.detail.history.toPlainText(), timeout=5000)

    page.detail.open_attachment_button.click()
    assert page.opened == [report.resolve()]
    report.unlink()
    assert not page.open_attachment(str(report.resolve()))
    assert "not there any more" in page.message_bar.text()


def test_create_from_feedback_and_export(qtbot, page: TicketsPage, rt, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 2, timeout=5000)
    with rt.session_factory() as s:
        fb_id = s.execute(select(Feedback.id)).scalar_one()
    with qtbot.waitSignal(page.sig_created, timeout=5000) as created:
        page.create_from_feedback(fb_id, title="Wrong forecast", category="wrong_answer")
    new_id = created.args[0]
    with rt.session_factory() as s:
        t = s.get(Ticket, new_id)
        assert (t.origin, t.unit_serial, t.household_id, t.feedback_id) == ("feedback", "SPK-000002", "hh-77", fb_id)
        assert t.description == "it said rain, it was sunny" and t.stt_version == "stt-1.1"
        assert audit.entries(s, target_kind="ticket", action_prefix="ticket.create")[0].actor == "op-park"
    qtbot.waitUntil(lambda: page.detail.ticket_id == new_id, timeout=5000)
    assert page.detail.values["feedback"].text() == f"#{fb_id}"

    page.create_ticket(title="  ", priority="normal")  # the core refuses an empty title
    qtbot.waitUntil(lambda: "needs a title" in page.message_bar.text(), timeout=5000)

    qtbot.waitUntil(lambda: page.model.rowCount() == 3, timeout=5000)
    out = tmp_path / "tickets.csv"
    assert page.export(out) == 3
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0][:4] == ["#", "SLA", "SLA time left", "Priority"]
    by_title = {r[6]: r for r in rows[1:]}
    assert by_title["Wrong forecast"][5] == "wrong answer" and by_title["Wrong forecast"][7] == "SPK-000002"
    assert by_title["Crackling speaker"][8] == "tech-kim" and by_title["Crackling speaker"][3] == "▽ low"
