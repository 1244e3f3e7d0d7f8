"""Workbench data on both databases: self-test history and trend, a diagnosis of a unit that cannot
be reached (report still attached, ticket moved), and field recordings as regression cases that
``speakerops evaluate`` runs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from feedback import tickets
from feedback.models import Ticket, TicketAttachment
from fleet.models import Unit
from fleet.selftest import analyse_capture, record_selftest, selftest_history, trend
from fleet.settings import SshSettings
from fleet.simulator.behaviour import generate_fleet
from fleet.simulator.recordings import SELFTEST_CAPTURE_DBFS, selftest_capture
from fleet.ssh import SshConnector
from fleet.workbench import DiagnoseOptions, WorkbenchContext, WorkbenchError, diagnose_unit
from fleet.workbench_actions import add_regression_case
from fleet.workbench_models import WorkbenchRun
from inference_core.pipeline import LoopOptions
from speakerops.audit import AuditEntry
from tests.conftest import espeak


def _unit(session, clock, serial: str, **kw) -> Unit:
    u = Unit(serial=serial, agent_url=kw.pop("agent_url", f"http://127.0.0.1:9/units/{serial}"),
             created_at=clock(), updated_at=clock(), **kw)
    session.add(u)
    session.flush()
    return u


def test_selftests_are_kept_per_unit_and_a_failing_microphone_shows_as_a_trend(runtime, clock):
    fleet = generate_fleet(6, 330)
    healthy, degraded = fleet[2], fleet[3]  # SPK-000003 quiet home, SPK-000004 failing microphone
    assert degraded.degraded_mic and not healthy.degraded_mic
    with runtime.session_factory.begin() as s:
        unit_id = _unit(s, clock, "SPK-T1").id
        _unit(s, clock, "SPK-T2")
    verdicts = []
    for day, spec in enumerate((healthy, healthy, degraded)):
        capture = selftest_capture(spec, run=day)
        res = analyse_capture("SPK-T1", clock(), capture.phrase, capture.samples, capture.sample_rate,
                              pre_roll_s=capture.pre_roll_s, expected_level_dbfs=SELFTEST_CAPTURE_DBFS)
        verdicts.append(res.verdict)
        with runtime.session_factory.begin() as s:
            record_selftest(s, unit_id, res, actor="tech", clock=clock)
        clock.advance(86400)
    assert verdicts == ["ok", "ok", "hardware"]
    with runtime.session_factory() as s:
        history = selftest_history(s, "SPK-T1")
        assert selftest_history(s, "SPK-T2") == []
        assert len(s.scalars(select(AuditEntry).where(AuditEntry.action == "unit.selftest")).all()) == 3
    assert [h["verdict"] for h in history] == verdicts
    assert history[0]["capture_level_dbfs"] == pytest.approx(SELFTEST_CAPTURE_DBFS, abs=1.5)
    t = trend(history)
    assert t["n"] == 3 and t["degrading"] and t["capture_level_change_db"] < -15
    assert t["capture_level_slope_db_per_day"] < 0
    assert not trend(history[:2])["degrading"]


def _context(runtime, tmp_path, models_root) -> WorkbenchContext:
    settings = SshSettings(client_key_path=str(tmp_path / "no_key"), connect_timeout_s=2)
    connector = SshConnector(runtime.session_factory, settings, clock=runtime.clock)
    return WorkbenchContext(runtime.session_factory, connector, tmp_path / "data", models_root, runtime.clock, settings)


def test_unreachable_unit_report_is_attached_and_ticket_moved(runtime, clock, tmp_path, models_root):
    with runtime.session_factory.begin() as s:
        _unit(s, clock, "SPK-T3", consent_recordings=True)  # no SSH address in the inventory, agent down
        moving = tickets.create_ticket(s, clock, title="no answer", unit_serial="SPK-T3")
        tickets.move(s, moving.id, "triaged", clock)
        fresh = tickets.create_ticket(s, clock, title="still new", unit_serial="SPK-T3")
        ids = moving.id, fresh.id
    ctx = _context(runtime, tmp_path, models_root)
    opts = DiagnoseOptions(loop_options=LoopOptions(mos=False, general_transcript=False), tts_round_trip=False)
    d = diagnose_unit(ctx, None, ticket_id=ids[0], options=opts)
    assert d.serial == "SPK-T3" and d.verdict == "unreachable" and d.exit_code == 1
    assert "no ssh address" in " ".join(d.report["verdict"]["why"]).lower()
    assert json.loads(d.json_path.read_text())["verdict"]["verdict"] == "unreachable"
    d2 = diagnose_unit(ctx, "SPK-T3", ticket_id=ids[1], options=opts)
    assert any("workflow allows triaged" in p for p in d2.report["problems"])
    with runtime.session_factory() as s:
        assert s.get(Ticket, ids[0]).state == "diagnosing"
        assert s.get(Ticket, ids[1]).state == "new"
        for tid in ids:
            assert len(s.scalars(select(TicketAttachment).where(TicketAttachment.ticket_id == tid)).all()) == 3
        runs = s.scalars(select(WorkbenchRun).order_by(WorkbenchRun.id)).all()
        assert [(r.serial, r.verdict, r.ticket_id) for r in runs] == [("SPK-T3", "unreachable", i) for i in ids]
        assert runs[0].why and runs[0].report_html.endswith("report.html")
    with pytest.raises(WorkbenchError, match="no unit 'SPK-NOPE'"):
        diagnose_unit(ctx, "SPK-NOPE")
    with pytest.raises(WorkbenchError, match="no ticket #999"):
        diagnose_unit(ctx, None, ticket_id=999)


def test_field_recording_becomes_a_regression_case_that_evaluate_runs(runtime, clock, tmp_path, models_root):
    from typer.testing import CliRunner

    import speakerops.cli

    wav = espeak("pause the music", tmp_path / "field.wav")
    data_dir = tmp_path / "data"
    with runtime.session_factory.begin() as s:
        with pytest.raises(WorkbenchError, match="did not consent"):
            add_regression_case(s, data_dir, "field", serial="SPK-T4", audio=wav, text="pause the music",
                                intent="music.pause", consent=False, clock=clock)
        with pytest.raises(WorkbenchError, match="lower-case"):
            add_regression_case(s, data_dir, "Bad Name", serial="SPK-T4", audio=wav, text="x", intent="qa.time",
                                consent=True, clock=clock)
        junk = tmp_path / "junk.wav"
        junk.write_bytes(b"not audio")
        with pytest.raises(WorkbenchError, match="cannot be used"):
            add_regression_case(s, data_dir, "field", serial="SPK-T4", audio=junk, text="x", intent="qa.time",
                                consent=True, clock=clock)
        for _ in range(2):  # the same recording twice is one case
            manifest = add_regression_case(s, data_dir, "field", serial="SPK-T4", audio=wav, text="pause the music",
                                           intent="music.pause", consent=True, note="ticket #1", actor="tech",
                                           clock=clock)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert manifest == data_dir / "testsets" / "field" / "manifest.jsonl" and len(lines) == 1
    assert lines[0]["intent"] == "music.pause" and (manifest.parent / lines[0]["audio"]).is_file()
    with runtime.session_factory() as s:
        assert s.scalar(select(AuditEntry.target_id).where(AuditEntry.action == "testset.add_case")) == "field"
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(speakerops.cli.app, ["evaluate", str(manifest), "--no-mos", "--json", str(out),
                                                  "--models-dir", str(models_root)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    u = report["utterances"][0]
    assert report["summary"]["utterances"] == 1 and u["error"] is None
    assert u["intent"] == "music.pause" and u["reference"] == "pause the music"
