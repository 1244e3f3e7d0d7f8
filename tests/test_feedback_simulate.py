"""Simulated feedback: more complaints where units are worse; the CLI imports it once."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from feedback.ingest import ingest_records
from feedback.models import Feedback
from feedback.simulate import generate_feedback
from fleet.models import Unit
from fleet.simulator.behaviour import generate_fleet


def test_worse_units_complain_more(clock) -> None:
    fleet = generate_fleet(600, seed=3)
    end = clock()
    rows = pd.DataFrame(generate_feedback(fleet, end - timedelta(days=30), end, seed=1))
    assert len(rows) > 5000
    specs = {u.serial: u for u in fleet}
    rows["noisy"] = rows["unit_serial"].map(lambda s: specs[s].site == "busan-office")
    rows["low"] = rows["rating"] <= 2
    current = rows[(rows["qa_version"] == "qa-2.1.0") & (rows["stt_version"] == "stt-1.4.0") & ~rows["noisy"]]
    old_stt = rows[(rows["stt_version"] == "stt-1.2.5") & ~rows["noisy"]]
    noisy = rows[rows["noisy"] & (rows["stt_version"] == "stt-1.4.0")]
    assert old_stt["low"].mean() > current["low"].mean() + 0.05
    assert old_stt["corrected"].mean() > current["corrected"].mean()
    assert noisy["corrected"].mean() > current["corrected"].mean() + 0.05
    assert rows["text"].str.contains("@|010-", regex=True).any()  # some identifiers to redact
    again = generate_feedback(fleet[:10], end - timedelta(days=30), end, seed=1)
    assert again == [r for r in generate_feedback(fleet, end - timedelta(days=30), end, seed=1)
                     if r["unit_serial"] in {u.serial for u in fleet[:10]}]


def test_simulated_rows_import_cleanly(runtime) -> None:
    fleet = generate_fleet(50, seed=0)
    now = runtime.clock()
    with runtime.session_factory.begin() as s:
        s.execute(insert(Unit), [dict(serial=u.serial, agent_url="http://127.0.0.1:9", site=u.site,
                                      hardware_rev=u.hardware_rev, stt_version=u.stt_version, qa_version=u.qa_version,
                                      tts_version=u.tts_version, consent_feedback_text=u.consent_feedback_text,
                                      created_at=now, updated_at=now) for u in fleet])
        units = list(s.execute(select(Unit)).scalars())
    rows = generate_feedback(units, now - timedelta(days=7), now, seed=2, with_versions=False)
    with runtime.session_factory.begin() as s:
        report = ingest_records(s, rows, runtime.clock, source="simulator", origin="t")
    assert report.rejected == 0 and report.imported == len(rows) > 50
    from speakerops.cli import app

    res = CliRunner().invoke(app, ["feedback", "simulate", "--days", "3", "--json", "--db-url", runtime.db_url])
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)
    assert first["imported"] > 0 and first["rejected"] == 0
    with runtime.session_factory() as s:
        n = s.scalar(select(func.count()).select_from(Feedback))
    assert n == len(rows) + first["imported"]
