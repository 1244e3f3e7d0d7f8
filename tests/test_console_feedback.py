"""The Feedback page over a real SQLite database seeded through the core (inventory import and a
JSONL feedback import through ``feedback.ingest``): rows, tiles, filters, drill-down from a chart
point, the version comparison with bootstrap intervals beside the offline evaluation, topics,
CSV export and an HTML report that escapes ``<script>`` in free text."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import csv
import json
import zlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from console.pages import feedback_data as fd
from console.pages.feedback import FeedbackPage
from console.theme import DARK
from feedback import tickets
from feedback.ingest import import_file
from fleet.inventory import import_units
from fleet.models import ModelVersion
from speakerops.runtime import build_runtime

pytestmark = pytest.mark.gui

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
TEXTS = ("it said rain but it was sunny", "wrong weather for my city", "the forecast was wrong again",
         "music stopped after a minute", "music volume too loud", "<script>alert('x')</script> broke it")


def feedback_records() -> list[dict]:
    """48 items over 6 days on 4 units: stt-1.1 units correct more often and rate lower."""
    out = []
    for i in range(48):
        day = i % 6
        serial = f"SPK-00000{i % 4 + 1}"
        worse = i % 4 >= 2  # units 3 and 4 run stt-1.1
        out.append({"unit_serial": serial, "household_id": f"hh-{i % 4}",
                    "submitted_at": (NOW - timedelta(days=day, hours=1, minutes=i)).isoformat(),
                    "feature": "weather" if i % 3 else "music", "intent": None,
                    "rating": (1 + i % 3) if worse else (3 + i % 3), "corrected": worse and i % 2 == 0,
                    "text": TEXTS[i % len(TEXTS)], "submission_id": f"s-{i}"})
    return out


@pytest.fixture
def rt(tmp_path: Path, clock):
    runtime = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=clock)
    inv = tmp_path / "fleet.csv"
    inv.write_text("serial,agent_url,site,hardware_rev,stt_version,qa_version,tts_version,consent_feedback_text\n"
                   + "".join(f"SPK-00000{n},http://127.0.0.1:9/,{'seoul' if n < 3 else 'busan'},hw-b,"
                             f"{'stt-1.0' if n < 3 else 'stt-1.1'},qa-1.0,tts-1.0,true\n" for n in range(1, 5)),
                   encoding="utf-8")
    fb = tmp_path / "feedback.jsonl"
    fb.write_text("".join(json.dumps(r) + "\n" for r in feedback_records()), encoding="utf-8")
    with runtime.session_factory.begin() as s:
        assert not import_units(s, inv, clock).errors
        report = import_file(s, fb, clock)
        assert report.imported == 48, report.as_dict()
        # the registry's offline evaluation of the two STT versions (issue #5 writes these)
        for version, wer in (("stt-1.0", 0.05), ("stt-1.1", 0.02)):
            s.add(ModelVersion(kind="stt", version=version, files={}, artifact_bytes=1, manifest_sha256="0" * 64,
                               signature="-", key_id="0" * 16, source_path="/dev/null", created_at=NOW,
                               evaluation={"summary": {"wer": wer, "intent_accuracy": 0.9}}, evaluation_passed=True))
        tickets.create_ticket(s, clock, title="Complaint", feedback_id=1, actor="op")
    yield runtime
    runtime.close()


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for MiniLM in tests: hashed word counts, L2-normalised."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.encode()) % 64] += 1
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def page(qtbot, rt, executors, reporter):
    p = FeedbackPage(rt.session_factory, rt.clock, executors, reporter, DARK, embedder=bag_of_words)
    qtbot.addWidget(p)
    p.resize(1400, 900)
    p.show()
    yield p
    p.shutdown()
    qtbot.waitUntil(lambda: not p.busy, timeout=10000)


def _col(cols, key: str) -> int:
    return next(i for i, c in enumerate(cols) if c.key == key)


def test_rows_tiles_filters_and_versions(qtbot, page: FeedbackPage) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 48, timeout=10000)
    assert page.tiles["feedback"].value_text() == "48"
    # ratings: stt-1.0 units 3,4,5 (2 of 3 satisfied), stt-1.1 units 1,2,3 (none): CSAT 1/3
    assert page.tiles["csat"].value_text() == "33.3 %"
    assert page.tiles["correction_rate"].value_text() == "25.0 %"  # 12 of 48 corrected
    assert page.tiles["open_complaints"].value_text() == "1"

    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        page.set_filters(feature="music", site="busan")
    rows = page.shown_rows()
    assert rows and {r["feature"] for r in rows} == {"music"} and {r["site"] for r in rows} == {"busan"}
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        page.set_filters(feature=None, site=None, text="FORECAST")
    assert {r["text"] for r in page.shown_rows()} == {"the forecast was wrong again"}
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        page.set_filters(text="", corrected=True)
    assert len(page.shown_rows()) == 12 and {r["version"] for r in page.shown_rows()} == {"stt-1.1"}
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        page.set_filters(corrected=None)

    versions = {r["version"]: r for r in page.version_model.rows}
    assert set(versions) == {"stt-1.0", "stt-1.1"}
    v11 = versions["stt-1.1"]
    assert v11["n"] == 24 and v11["correction_rate"] == pytest.approx(0.5)
    assert v11["ci_low"] < 0.5 < v11["ci_high"] and v11["wer"] == 0.02
    assert versions["stt-1.0"]["correction_rate"] == 0.0
    # 4 units × 7 days (no heartbeats: units on the version now × days of the period)
    assert page.last_load.figures["unit_days_basis"] == "current units"
    row = page.version_model.row_of("version", "stt-1.1")
    shown = [page.version_model.index(row, _col(page.version_model.columns, k)).data()
             for k in ("correction_rate", "wer", "gate")]
    assert shown[0] == "50.0 %" and shown[1] == "2.0 %" and shown[2] == "✔ passed"
    assert page.version_chart.errors is not None and page.version_chart.offline is not None


def test_drill_down_from_chart_point(qtbot, page: FeedbackPage) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 48, timeout=10000)
    day = date(2026, 11, 20)
    assert set(page.volume_chart.curves) == {"weather", "music"}
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        assert page.volume_chart.click_point("weather", day)  # the point's own click signal
    rows = page.shown_rows()
    assert rows and {r["submitted_at"].date() for r in rows} == {day} and {r["feature"] for r in rows} == {"weather"}
    assert "2026-11-20" in page.drill_label.text() and "weather" in page.drill_label.text()
    assert page.tiles["feedback"].value_text() == "48"  # tiles and charts keep the whole period
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        assert page.rates_chart.click_point("csat", day)
    assert len(page.shown_rows()) == 8
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        page.clear_drill_down()
    assert len(page.shown_rows()) == 48


def test_export_csv_report_topics_and_ticket_request(qtbot, page: FeedbackPage, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 48, timeout=10000)
    with qtbot.waitSignal(page.sig_loaded, timeout=10000):
        page.set_filters(text="script")
    out = tmp_path / "feedback.csv"
    assert page.export(out) == 8
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0][:3] == ["#", "Submitted", "Unit"]
    assert {r[-1] for r in rows[1:]} == {"<script>alert('x')</script> broke it"}

    with qtbot.waitSignal(page.sig_topics_ready, timeout=20000):
        page.set_filters(text="")
        page.find_topics()
    assert sum(t.size for t in page.topics) == 48
    assert any("music" in " ".join(t.phrases) for t in page.topics)
    assert page.topic_model.rowCount() == len(page.topics) >= 2

    report = page.export_report(tmp_path / "report.html")
    text = report.read_text(encoding="utf-8")
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; broke it" in text
    assert text.count("data:image/png;base64,") == 3 and "stt-1.1" in text

    assert not page.request_ticket()
    assert "Select a feedback item" in page.message_bar.text()
    page.table.selectRow(0)
    with qtbot.waitSignal(page.sig_create_ticket, timeout=1000) as asked:
        page.ticket_button.click()
    assert asked.args == [page.shown_rows()[0]["id"]]


def test_bootstrap_interval_is_stable() -> None:
    lo, hi = fd.bootstrap_rate_ci(12, 24)
    assert 0.28 < lo < 0.5 < hi < 0.72
    assert fd.bootstrap_rate_ci(0, 0)[0] != fd.bootstrap_rate_ci(0, 0)[0]  # nan without data


def test_version_comparison_is_the_one_of_feedback_trends(rt) -> None:
    """The page's comparison and ``speakerops trends`` give the same correction rate, interval and
    unit-days for the same rows (one definition), with heartbeats showing a version change."""
    from feedback.trends import TrendCache, offline_vs_online
    from fleet.models import Unit
    from tests.feedback_helpers import add_heartbeat

    with rt.session_factory.begin() as s:
        u3 = s.query(Unit).filter_by(serial="SPK-000003").one()
        add_heartbeat(s, u3, NOW - timedelta(days=3), stt="stt-1.0", qa="qa-1.0", tts="tts-1.0")
    since = fd.period_start(NOW, 30)
    load = fd.load_feedback(rt.session_factory, lambda: NOW, fd.FeedbackQuery(since=since))
    assert load.figures["unit_days_basis"] == "heartbeats"
    with rt.session_factory() as s:
        data = TrendCache().refresh(s, NOW)
    ref = offline_vs_online(data, since, NOW, "stt", n_boot=fd.N_BOOT)
    page = load.versions.set_index("version")
    assert set(page.index) == set(ref.index) == {"stt-1.0", "stt-1.1"}
    for v in ref.index:
        for ours, theirs in (("correction_rate", "correction_rate"), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
                             ("unit_days", "unit_days"), ("complaints_per_1000_unit_days", "per_1000_unit_days"),
                             ("wer", "offline_wer")):
            assert page.loc[v, ours] == pytest.approx(ref.loc[v, theirs]), (v, ours)
    assert page.loc["stt-1.0", "evaluation_passed"] is True
    # with a site filter only that site's units count: in busan, unit 4 on stt-1.1 and unit 3, whose
    # heartbeat reports stt-1.0 (so it counts there); the seoul units 1-2 (stt-1.0) drop out
    busan = fd.load_feedback(rt.session_factory, lambda: NOW, fd.FeedbackQuery(since=since, site="busan"))
    days = busan.versions.set_index("version")["unit_days"]
    assert days["stt-1.1"] == pytest.approx(page.loc["stt-1.1", "unit_days"])
    assert 0 < days["stt-1.0"] < page.loc["stt-1.0", "unit_days"] / 2
