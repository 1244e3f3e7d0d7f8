"""Privacy: redaction of identifiers, consent, retention purge, export and erasure (audited)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from feedback.ingest import ingest_records
from feedback.models import Feedback, Ticket
from feedback.privacy import count_with_text, erase_household, export_household, household_ref, purge_text, redact
from feedback.tickets import create_ticket
from speakerops import audit
from tests.feedback_helpers import add_unit, row


@pytest.mark.parametrize("text,expected", [
    ("write to kim.j+spk@example.co.kr today", "write to [email] today"),
    ("call 010-1234-5678", "call [phone]"),
    ("call 01012345678 now", "call [phone] now"),
    ("office 02-123-4567", "office [phone]"),
    ("+82 10 1234 5678 is mine", "[phone] is mine"),
    ("US +1 (555) 123-4567", "US [phone]"),
    ("UK +44 20 7946 0958", "UK [phone]"),
    ("my RRN 900101-1234567", "my RRN [rrn]"),
    ("card 4111 1111 1111 1111 declined", "card [card] declined"),
    ("router 192.168.0.12 restarted", "router [ip] restarted"),
])
def test_redaction_of_identifiers(text, expected) -> None:
    assert redact(text)[0] == expected


@pytest.mark.parametrize("text", ["set an alarm for 7:30 tomorrow", "play top 40 hits from 2024",
                                  "it said 25 degrees at 10 am", "remind me on 2026-11-21"])
def test_ordinary_numbers_are_kept(text) -> None:
    assert redact(text) == (text, 0)


@pytest.fixture
def rt(runtime):
    now = runtime.clock()
    with runtime.session_factory.begin() as s:
        add_unit(s, "SPK-1", now, consent=True)
        add_unit(s, "SPK-2", now, consent=False)
    records = [row(household="hh-a", text="old text", at=(now - timedelta(days=200)).isoformat(), submission_id="o1"),
               row(household="hh-a", text="new text", at=(now - timedelta(days=3)).isoformat(), submission_id="n1"),
               row(household="hh-b", text="mine", at=(now - timedelta(days=1)).isoformat(), submission_id="b1"),
               row(serial="SPK-2", household="hh-c", text="no consent", submission_id="c1")]
    with runtime.session_factory.begin() as s:
        assert ingest_records(s, records, runtime.clock, source="import", origin="t").imported == 4
    return runtime


def _texts(rt) -> dict[str, str | None]:
    with rt.session_factory() as s:
        return {f.submission_id: f.text for f in s.execute(select(Feedback)).scalars()}


def test_consent_purge_and_cli(rt) -> None:
    assert _texts(rt) == {"o1": "old text", "n1": "new text", "b1": "mine", "c1": None}
    with rt.session_factory.begin() as s:
        assert purge_text(s, rt.clock, retention_days=180) == 1
    assert _texts(rt)["o1"] is None and _texts(rt)["n1"] == "new text"
    with rt.session_factory() as s:
        assert count_with_text(s) == 2
        assert audit.entries(s, action_prefix="feedback.purge")[0].after["rows"] == 1
    from speakerops.cli import app

    res = CliRunner().invoke(app, ["feedback", "purge", "--days", "0", "--json", "--db-url", rt.db_url])
    assert res.exit_code == 0 and json.loads(res.stdout)["purged"] == 2  # real clock: everything is older


def test_export_and_erase_household(rt, tmp_path) -> None:
    with rt.session_factory.begin() as s:
        fb = s.execute(select(Feedback).where(Feedback.submission_id == "n1")).scalar_one()
        tid = create_ticket(s, rt.clock, title="from feedback", feedback_id=fb.id).id
        other = create_ticket(s, rt.clock, title="hand made", unit_serial="SPK-1").id
    with rt.session_factory.begin() as s:
        data = export_household(s, "hh-a", rt.clock)
    assert sorted(f["submission_id"] for f in data["feedback"]) == ["n1", "o1"]
    assert data["tickets"][0]["id"] == tid and data["feedback"][0]["unit_serial"] == "SPK-1"
    with rt.session_factory.begin() as s:
        result = erase_household(s, "hh-a", rt.clock, reason="request #42")
    assert result == {"feedback_deleted": 2, "tickets_scrubbed": 1}
    assert set(_texts(rt)) == {"b1", "c1"}
    with rt.session_factory() as s:
        t = s.get(Ticket, tid)
        assert (t.household_id, t.feedback_id, t.description) == (None, None, "[erased at the household's request]")
        assert s.get(Ticket, other).description == ""
        entries = audit.entries(s, target_kind="household")
        assert [e.action for e in entries] == ["feedback.erase", "feedback.export"]
        assert entries[0].target_id == household_ref("hh-a") and "hh-a" not in json.dumps(entries[0].after)
        assert entries[0].reason == "request #42"
        assert audit.verify(s).ok
    from speakerops.cli import app

    out = tmp_path / "hh-b.json"
    res = CliRunner().invoke(app, ["feedback", "export", "hh-b", "--out", str(out), "--db-url", rt.db_url])
    assert res.exit_code == 0 and json.loads(out.read_text())["feedback"][0]["text"] == "mine"
    res = CliRunner().invoke(app, ["feedback", "erase", "hh-b", "--yes", "--json", "--db-url", rt.db_url])
    assert res.exit_code == 0 and json.loads(res.stdout)["feedback_deleted"] == 1
    res = CliRunner().invoke(app, ["feedback", "erase", "hh-c", "--db-url", rt.db_url], input="n\n")
    assert res.exit_code == 1 and "not erased" in res.output
    assert set(_texts(rt)) == {"c1"}
