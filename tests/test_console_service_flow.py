"""The Service flow page offscreen over a real SQLite database with seeded heartbeats.

Waits use ``qtbot.waitUntil``, never sleeps; each test checks that no worker thread or timer is
left running.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from datetime import timedelta
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from console.bootstrap import build
from console.jobs import Executors
from console.pages.service_flow import ServiceFlowPage
from console.theme import DARK
from fleet.models import STAGES, Heartbeat, Unit
from fleet.slo import Cohort

pytestmark = pytest.mark.gui

OK = {s: 300.0 for s in STAGES}  # e2e 1,800 ms
SLOW_E2E = {**OK, "playback": 2000.0}  # e2e 3,500 ms
SLOW_STT = {**OK, "stt": 2500.0}  # e2e 4,000 ms, server 3,100 ms


def seed(session_factory, now) -> None:
    """seoul (hw-b, stt-1.4.0): 100 requests in the last hour, 10 too slow end to end;
    busan (hw-c, stt-1.3.2): 20 requests, all with a slow stt. Baseline 5 h ago: all fast."""
    specs = (("SPK-1", "seoul", "hw-b", "stt-1.4.0", [OK] * 45 + [SLOW_E2E] * 5),
             ("SPK-2", "seoul", "hw-b", "stt-1.4.0", [OK] * 45 + [SLOW_E2E] * 5),
             ("SPK-3", "busan", "hw-c", "stt-1.3.2", [SLOW_STT] * 20))
    with session_factory.begin() as s:
        for serial, site, hw, stt, reqs in specs:
            u = Unit(serial=serial, hardware_rev=hw, site=site, region="kr", agent_url=f"http://x/{serial}",
                     firmware_version="2.4.1", stt_version=stt, qa_version="qa-2.1.0",
                     tts_version="tts-1.0.3", tags=[], status="online", created_at=now, updated_at=now)
            s.add(u)
            s.flush()
            for ago, batch in ((timedelta(hours=5), [OK] * 10), *(
                    (timedelta(minutes=30, seconds=-i), reqs[i:i + 10]) for i in range(0, len(reqs), 10))):
                s.add(Heartbeat(unit_id=u.id, received_at=now - ago, unit_time=now - ago, state="ok",
                                uptime_s=100.0, cpu_pct=20.0, temp_c=50.0, mem_pct=40.0, disk_free_mb=1800.0,
                                mic_noise_dbfs=-60.0, wifi_rssi_dbm=-60.0, wake_false_accepts_per_h=0.5,
                                requests=len(batch), errors=0,
                                latency_ms={st: [r[st] for r in batch] for st in STAGES}))


@pytest.fixture
def ctx(tmp_path: Path, clock):
    context = build(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=clock, collect=False)
    seed(context.session_factory, clock())
    yield context
    context.close()


@pytest.fixture(params=["threads", "read process"])
def page_executors(request, ctx, executors, reporter):
    """The console's executors with the page's reads on ``db`` threads, or in a read process
    (the console's default, console.read_process): every test runs on both."""
    if request.param == "threads":
        yield executors
        return
    ex = Executors(reporter, read_db_url=ctx.db_url)
    yield ex
    assert ex.shutdown(timeout_s=30)
    assert ex.flow_reads.process.pid is None


@pytest.fixture
def page(qtbot, ctx, page_executors, reporter):
    DARK.apply(QApplication.instance())
    p = ServiceFlowPage(ctx.session_factory, ctx.clock, page_executors, reporter, DARK, refresh_interval_s=0.3)
    p.resize(1400, 900)
    p.show()
    qtbot.waitUntil(lambda: p.last_load is not None, timeout=10_000)
    yield p
    p.shutdown()
    qtbot.waitUntil(lambda: not p.refresh_in_flight, timeout=10_000)
    assert not [t for t in p.findChildren(QTimer) if t.isActive()], "timers left running"
    p.close()
    p.deleteLater()


def test_tiles_show_compliance_and_burn_rate(page: ServiceFlowPage) -> None:
    tile = page.tiles["slo_1h"]
    assert tile.value_text() == "75.00 %"  # 90 good of 120
    assert "✖ missed" in tile.detail_text()
    assert "burn rate 5.00×" in tile.detail_text()
    assert page.tiles["slo_24h"].value_text() == "80.00 %"  # + 30 fast baseline requests: 120/150
    assert page.tiles["rps"].value_text() == f"{120 / 3600:.2f}"
    assert page.tiles["error_rate"].value_text() == "0.00 %"
    assert page.timer.isActive() and page.timer.interval() == 300


def test_chart_has_a_bar_per_stage_and_names_the_stage_that_grew(page: ServiceFlowPage) -> None:
    chart = page.breakdown_chart
    assert set(chart.stage_bars) == set(STAGES)
    assert set(chart.p95_markers) == set(STAGES)
    assert chart.grew_most == "stt"
    assert "stt grew most" in page.grew_label.text()
    assert {"stt", "e2e"} <= set(page.series_chart.curves)
    assert page.health_model.rowCount() == 2  # busan, seoul


def test_cohort_filter_changes_the_figures(qtbot, page: ServiceFlowPage) -> None:
    qtbot.waitUntil(lambda: page.site_combo.findData("seoul") > 0, timeout=5000)
    page.set_cohort(site="seoul")
    qtbot.waitUntil(lambda: page.last_load.cohort == Cohort(site="seoul"), timeout=10_000)
    assert page.tiles["slo_1h"].value_text() == "90.00 %"
    assert page.breakdown_chart.grew_most == "playback"

    page.set_cohort(version=("stt_version", "stt-1.3.2"))
    qtbot.waitUntil(lambda: page.last_load.cohort == Cohort(stt_version="stt-1.3.2"), timeout=10_000)
    assert page.tiles["slo_1h"].value_text() == "0.00 %"
    assert "burn rate 20.00×" in page.tiles["slo_1h"].detail_text()

    page.set_cohort()
    qtbot.waitUntil(lambda: page.last_load.cohort is None, timeout=10_000)
    assert page.tiles["slo_1h"].value_text() == "75.00 %"


def test_health_grouping_and_span_selectors_reload(qtbot, page: ServiceFlowPage) -> None:
    page.group_combo.setCurrentIndex(page.group_combo.findData("hardware_rev"))
    qtbot.waitUntil(lambda: page.last_load.group_by == "hardware_rev", timeout=10_000)
    assert page.health_model.headerData(0, __import__("PySide6.QtCore").QtCore.Qt.Orientation.Horizontal) \
        == "Hardware revision"
    page.span_combo.setCurrentIndex(2)
    qtbot.waitUntil(lambda: not page.refresh_in_flight, timeout=10_000)
    assert page.series_chart.curves


def test_a_newer_load_drops_the_drawing_steps_of_an_older_one(qtbot, page: ServiceFlowPage) -> None:
    """A load is drawn in steps, each its own turn of the event loop; a load that lands meanwhile
    wins, and only it is announced."""
    import dataclasses

    page.timer.stop()
    qtbot.waitUntil(lambda: not page.refresh_in_flight, timeout=10_000)
    older = page.last_load
    newer = dataclasses.replace(older, group_by="hardware_rev")
    announced: list = []
    page.sig_loaded.connect(announced.append)
    page._on_load_succeeded(older)
    assert page.last_load is older and announced == []  # the first step only so far
    page._on_load_succeeded(newer)
    qtbot.waitUntil(lambda: len(announced) > 0, timeout=5000)
    qtbot.wait(50)
    assert announced == [newer] and page.last_load is newer
    assert page.health_model.headerData(0, Qt.Orientation.Horizontal) == "Hardware revision"
