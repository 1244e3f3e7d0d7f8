"""Console tests: the real window offscreen over a real SQLite database in ``tmp_path``.

Waits use ``qtbot.waitUntil`` / ``qtbot.waitSignal``, never sleeps. Every test ends by shutting
the window and the executors down and checking that no worker thread or timer is left running.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt, QThreadPool, QTimer
from PySide6.QtWidgets import QApplication, QLabel
from sqlalchemy import select

from console.bootstrap import AppContext, build
from console.errors import ErrorDialog, ErrorReporter, install_excepthooks, is_expected
from console.jobs import Executors, Job
from console.main_window import NAV_ENTRIES, MainWindow
from console.theme import DARK, LIGHT, STATUS_STYLES
from fleet.models import STAGES, CollectorStatus, Heartbeat, Unit
from speakerops.db import current_revision, head_revision, make_engine, make_session_factory

pytestmark = pytest.mark.gui

# --------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Seed:
    serial: str
    site: str
    status: str
    cpu: float | None  # None: the unit never sent a heartbeat
    stage_ms: float = 300.0  # every stage's latency; end to end = 6 × this
    stt: str = "stt-1.4.0"
    qa: str = "qa-2.1.0"
    error: str | None = None


SEEDS = (
    Seed("SPK-000001", "seoul-gangnam", "online", 23.5),
    Seed("SPK-000002", "busan-office", "degraded", 40.2, stt="stt-1.3.2"),
    Seed("SPK-000003", "tokyo-shibuya", "updating", 75.0, qa="qa-2.0.4"),
    Seed("SPK-000004", "london-soho", "offline", 5.0,
         error="connection refused by 127.0.0.1:9 (is the unit powered?)"),
    Seed("SPK-000005", "seoul-gangnam", "online", 12.0, stage_ms=600.0),  # e2e 3.6 s > SLO
    Seed("SPK-000006", "newyork-midtown", "unknown", None),
)


def add_heartbeat(session, unit: Unit, at: datetime, cpu: float, stage_ms: float = 300.0) -> None:
    """One heartbeat of ``unit`` received at ``at``, and the unit's state moved on."""
    session.add(Heartbeat(
        unit_id=unit.id, received_at=at, unit_time=at, state="ok", uptime_s=3600.0,
        cpu_pct=cpu, temp_c=40.0 + cpu / 10, mem_pct=41.0, disk_free_mb=1830.0,
        mic_noise_dbfs=-58.3, wifi_rssi_dbm=-61.0, wake_false_accepts_per_h=0.4,
        requests=4, errors=0, stt_version=unit.stt_version, qa_version=unit.qa_version,
        tts_version=unit.tts_version,
        latency_ms={stage: [stage_ms] * 4 for stage in STAGES},
    ))
    unit.last_heartbeat_at = at
    unit.last_poll_at = at
    unit.updated_at = at


def seed_fleet(session_factory, now: datetime) -> None:
    with session_factory.begin() as s:
        for i, seed in enumerate(SEEDS):
            unit = Unit(
                serial=seed.serial, hardware_rev="hw-b", site=seed.site, region="test",
                timezone="Asia/Seoul", agent_url=f"http://127.0.0.1:9/units/{seed.serial}",
                ssh_host="127.0.0.1" if i == 0 else None, ssh_port=2222 if i == 0 else None,
                ssh_user="speaker" if i == 0 else None, firmware_version="2.4.1",
                stt_version=seed.stt, qa_version=seed.qa, tts_version="tts-1.0.3",
                tags=["beta"] if i == 0 else [], consent_recordings=i % 2 == 0,
                consent_feedback_text=True, status=seed.status, status_changed_at=now,
                last_poll_error=seed.error, created_at=now - timedelta(days=1), updated_at=now,
            )
            s.add(unit)
            s.flush()
            if seed.cpu is not None:
                add_heartbeat(s, unit, now - timedelta(seconds=30), seed.cpu - 1.0, seed.stage_ms)
                add_heartbeat(s, unit, now - timedelta(seconds=10), seed.cpu, seed.stage_ms)


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'speakerops.db'}"


@pytest.fixture
def ctx(db_url: str):
    context = build(db_url, collect=False)
    seed_fleet(context.session_factory, datetime.now(UTC))
    yield context
    context.close()


@pytest.fixture
def window(qtbot, ctx: AppContext, executors: Executors, reporter: ErrorReporter, tmp_path: Path):
    qsettings = QSettings(str(tmp_path / "console.ini"), QSettings.Format.IniFormat)
    DARK.apply(QApplication.instance())
    win = MainWindow(ctx, executors, reporter, DARK, qsettings=qsettings, refresh_interval_s=0.2)
    qtbot.addWidget(win)
    win.show()
    page = win.fleet_page
    qtbot.waitUntil(lambda: page.model.rowCount() == len(SEEDS), timeout=10_000)
    yield win
    win.shutdown()
    assert not [t for t in win.findChildren(QTimer) if t.isActive()], "timers left running"


def serials_shown(window: MainWindow) -> list[str]:
    model = window.fleet_page.model
    return [model.index(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(model.rowCount())]


def cell(window: MainWindow, serial: str, key: str, role=Qt.ItemDataRole.DisplayRole):
    model = window.fleet_page.model
    row = model.row_of(serial)
    assert row is not None, f"{serial} not shown"
    return model.index(row, model.column_index(key)).data(role)


# --------------------------------------------------------------------------------- tests


def test_build_migrates_and_describes_the_database(db_url: str) -> None:
    ctx = build(db_url, collect=False)
    try:
        assert current_revision(ctx.engine) == head_revision(ctx.engine)
        assert ctx.db_backend == "SQLite"
        assert ctx.collector is None
        with ctx.session_factory() as s:
            assert s.scalars(select(Unit)).all() == []
    finally:
        ctx.close()
        ctx.close()  # idempotent


def test_table_shows_every_unit_with_its_status_word(window: MainWindow) -> None:
    page = window.fleet_page
    assert sorted(serials_shown(window)) == [s.serial for s in SEEDS]
    for seed in SEEDS:
        shown = cell(window, seed.serial, "status")
        style = STATUS_STYLES[seed.status]
        assert shown == f"{style.glyph} {seed.status}"  # glyph and word, never colour alone
        assert cell(window, seed.serial, "status", Qt.ItemDataRole.ForegroundRole).color().name() \
            == style.color.lower()
    assert {k: t.value_text() for k, t in page.tiles.items()} == {
        "units": "6", "online": "2", "degraded": "1", "updating": "1", "offline": "1"}
    assert page.tiles["online"].caption_text() == "● Online"
    headers = [page.model.headerData(i, Qt.Orientation.Horizontal) for i in
               range(page.model.columnCount())]
    zone = datetime.now().astimezone().tzname()
    for expected in ("CPU %", "Temp °C", "Noise dBFS", "RSSI dBm", "p95 e2e ms (15 min)",
                     f"Last heartbeat ({zone})"):
        assert expected in headers
    # figures: right-aligned, missing ones shown as a dash, serial under UserRole
    align = cell(window, "SPK-000001", "cpu_pct", Qt.ItemDataRole.TextAlignmentRole)
    assert align & Qt.AlignmentFlag.AlignRight
    assert cell(window, "SPK-000001", "cpu_pct") == "23.5"
    assert cell(window, "SPK-000006", "cpu_pct") == "—"
    assert cell(window, "SPK-000004", "serial", Qt.ItemDataRole.UserRole) == "SPK-000004"
    # p95 end to end over the 3 s SLO is highlighted, and says so in words
    assert cell(window, "SPK-000005", "e2e_p95_ms") == "▲ 3,600"
    assert "SLO" in cell(window, "SPK-000005", "e2e_p95_ms", Qt.ItemDataRole.ToolTipRole)
    assert cell(window, "SPK-000001", "e2e_p95_ms", Qt.ItemDataRole.BackgroundRole) is None
    assert cell(window, "SPK-000005", "e2e_p95_ms", Qt.ItemDataRole.BackgroundRole) is not None
    # the last poll error is the row's tooltip
    assert "connection refused" in cell(window, "SPK-000004", "serial", Qt.ItemDataRole.ToolTipRole)
    assert "6 units" == page.count_label.text()


def test_filters_narrow_the_rows(window: MainWindow, qtbot) -> None:
    page = window.fleet_page
    page.search.setText("busan")
    assert serials_shown(window) == ["SPK-000002"]
    page.search.setText("QA-2.0.4")  # versions too, case-insensitive
    assert serials_shown(window) == ["SPK-000003"]
    page.search.clear()
    page.status_combo.setCurrentIndex(page.status_combo.findData("online"))
    assert serials_shown(window) == ["SPK-000001", "SPK-000005"]
    assert page.count_label.text() == "Showing 2 of 6 units"
    page.status_combo.setCurrentIndex(0)
    sites = [page.site_combo.itemData(i) for i in range(1, page.site_combo.count())]
    assert sites == sorted({s.site for s in SEEDS})  # options rebuilt from the snapshot
    page.site_combo.setCurrentIndex(page.site_combo.findData("seoul-gangnam"))
    assert serials_shown(window) == ["SPK-000001", "SPK-000005"]
    page.status_combo.setCurrentIndex(page.status_combo.findData("offline"))
    assert serials_shown(window) == []
    page.set_filter(version="stt-1.3.2")
    assert serials_shown(window) == ["SPK-000002"]
    # a refresh keeps the filter
    with qtbot.waitSignal(page.sig_snapshot_applied, timeout=5000):
        page.refresh()
    assert serials_shown(window) == ["SPK-000002"]
    page.tiles["units"].sig_clicked.emit("units")
    page.set_filter()
    assert len(serials_shown(window)) == len(SEEDS)


def test_sorting_by_a_number_orders_by_value_with_missing_last(window: MainWindow) -> None:
    page = window.fleet_page
    col = page.model.column_index("cpu_pct")
    page.table.sortByColumn(col, Qt.SortOrder.AscendingOrder)
    assert serials_shown(window) == ["SPK-000004", "SPK-000005", "SPK-000001", "SPK-000002",
                                     "SPK-000003", "SPK-000006"]
    page.table.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    assert serials_shown(window) == ["SPK-000003", "SPK-000002", "SPK-000001", "SPK-000005",
                                     "SPK-000004", "SPK-000006"]
    page.table.sortByColumn(page.model.column_index("status"), Qt.SortOrder.AscendingOrder)
    assert serials_shown(window)[0] == "SPK-000004"  # offline first: most urgent


def test_selecting_a_row_fills_the_detail_panel_and_survives_refresh(window: MainWindow,
                                                                     qtbot) -> None:
    page = window.fleet_page
    assert page.detail.is_empty
    row = page.model.row_of("SPK-000002")
    rect = page.table.visualRect(page.model.index(row, 0))
    with qtbot.waitSignal(page.sig_detail_shown, timeout=5000,
                          check_params_cb=lambda s: s == "SPK-000002"):
        qtbot.mouseClick(page.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    d = page.detail
    assert d.field_text("serial") == "SPK-000002"
    assert d.field_text("status") == "▲ degraded"
    assert d.field_text("site") == "busan-office (test)"
    assert d.field_text("models") == "stt-1.3.2 · qa-2.1.0 · tts-1.0.3"
    assert d.field_text("hardware") == "hw-b · firmware 2.4.1"
    assert d.field_text("cpu_pct") == "40.2 %"
    assert d.field_text("mic_noise_dbfs") == "−58.3 dBFS"
    assert d.field_text("wifi_rssi_dbm") == "−61 dBm"
    assert d.field_text("p95_stt") == "300 ms"
    assert d.field_text("consent") == "feedback text"
    assert d.field_text("ssh") == "no SSH access"
    # the selection (by serial) survives refreshes, sorting and filtering
    for _ in range(2):
        with qtbot.waitSignal(page.sig_snapshot_applied, timeout=5000):
            page.refresh()
        assert page.table.selectionModel().selectedRows()[0].data(Qt.ItemDataRole.UserRole) \
            == "SPK-000002"
    page.table.sortByColumn(page.model.column_index("cpu_pct"), Qt.SortOrder.DescendingOrder)
    assert page.table.selectionModel().selectedRows()[0].data(Qt.ItemDataRole.UserRole) \
        == "SPK-000002"
    assert page.select_serial("SPK-000004")
    qtbot.waitUntil(lambda: d.field_text("serial") == "SPK-000004", timeout=5000)
    assert "connection refused" in d.field_text("last_poll")


def test_a_new_heartbeat_appears_after_a_refresh(window: MainWindow, ctx: AppContext,
                                                 qtbot) -> None:
    page = window.fleet_page
    assert page.timer.isActive()  # refreshing on its own while visible
    with ctx.session_factory.begin() as s:
        unit = s.scalars(select(Unit).where(Unit.serial == "SPK-000006")).one()
        unit.status = "online"
        add_heartbeat(s, unit, datetime.now(UTC), 88.8)
    qtbot.waitUntil(lambda: cell(window, "SPK-000006", "cpu_pct") == "88.8", timeout=10_000)
    assert cell(window, "SPK-000006", "status") == "● online"
    assert page.tiles["online"].value_text() == "3"


def test_refreshes_never_overlap_and_stop_when_hidden(window: MainWindow, qtbot) -> None:
    page = window.fleet_page
    qtbot.waitUntil(lambda: not page.refresh_in_flight, timeout=5000)
    page.timer.stop()
    skipped = page.refreshes_skipped
    assert page.refresh() is True
    assert page.refresh() is False  # one in flight: this tick is skipped
    assert page.refreshes_skipped == skipped + 1
    qtbot.waitUntil(lambda: not page.refresh_in_flight, timeout=5000)
    window.show_page("Rollouts")
    assert not page.timer.isActive()
    window.show_page("Fleet")
    assert page.timer.isActive()


def test_every_navigation_entry_shows_its_page(window: MainWindow) -> None:
    assert list(NAV_ENTRIES) == ["Fleet", "Service flow", "Alerts", "Models", "Rollouts", "Diagnostics",
                                 "Tickets", "Feedback", "Audit"]
    assert window.stub_pages == []
    for name in NAV_ENTRIES:
        page = window.show_page(name)
        assert window.stack.currentWidget() is page is window.pages[name]
        titles = [w.text() for w in page.findChildren(QLabel) if w.objectName() == "pageTitle"]
        assert titles and titles[0] == name.split(" (")[0]


def test_a_failing_job_reaches_the_reporter_without_crashing(window: MainWindow,
                                                             executors: Executors,
                                                             reporter: ErrorReporter,
                                                             qtbot) -> None:
    def broken() -> None:
        raise ZeroDivisionError("division by zero in a test job")

    job = Job(broken).start(executors.db)  # no on_failure: the reporter gets it
    qtbot.waitUntil(lambda: job.is_done, timeout=5000)
    assert job.outcome == "failure"
    record = reporter.history[-1]
    assert not record.expected
    assert "ZeroDivisionError" in record.details
    dialog = reporter.dialogs[-1]
    assert isinstance(dialog, ErrorDialog)
    assert "division by zero in a test job" in dialog.details.toPlainText()
    dialog.copy_button.click()
    assert "ZeroDivisionError" in QApplication.clipboard().text()
    reporter.close_dialogs()
    assert window.isVisible()


def test_an_expected_failure_shows_in_the_panel_that_caused_it(window: MainWindow,
                                                               reporter: ErrorReporter,
                                                               tmp_path: Path, qtbot) -> None:
    page = window.fleet_page
    good = page.session_factory
    not_a_db = tmp_path / "not-a-database"
    not_a_db.mkdir()  # SQLite cannot open a directory: a real OperationalError
    broken_engine = make_engine(f"sqlite:///{not_a_db}")
    page.session_factory = make_session_factory(broken_engine)
    try:
        with qtbot.waitSignal(page.sig_refresh_failed, timeout=5000):
            pass
        assert "unable to open database file" in page.message_bar.text()
        assert reporter.history[-1].expected
        assert reporter.dialogs == []  # no dialog for an expected failure
        assert page.model.rowCount() == len(SEEDS)  # the last good figures stay
    finally:
        page.session_factory = good
        broken_engine.dispose()
    qtbot.waitUntil(lambda: page.message_bar.text() == "", timeout=5000)


def test_job_progress_success_and_cancel(executors: Executors, qtbot) -> None:
    seen: list[tuple[float, str]] = []
    results: list[int] = []

    def count(n: int, report) -> int:
        for i in range(n):
            report((i + 1) / n, f"step {i + 1} of {n}")
        return n

    job = Job(count, 3).with_progress(lambda f, m: seen.append((f, m))) \
        .on_success(results.append).start(executors.io)
    qtbot.waitUntil(lambda: job.is_done, timeout=5000)
    assert results == [3]
    assert seen[-1] == (1.0, "step 3 of 3")

    gate = threading.Event()
    cancelled: list[bool] = []

    def wait_for_gate(cancelled) -> str:  # noqa: ANN001 (the job passes its cancel probe)
        gate.wait(5)
        return "finished" if not cancelled() else "stopped"

    job2 = Job(wait_for_gate).on_success(results.append) \
        .on_cancelled(lambda: cancelled.append(True)).start(executors.io)
    job2.cancel()
    gate.set()
    qtbot.waitUntil(lambda: job2.is_done, timeout=5000)
    assert job2.outcome == "cancelled" and cancelled == [True] and results == [3]
    with pytest.raises(RuntimeError):
        job2.start(executors.io)


def test_uncaught_exceptions_reach_the_reporter(reporter: ErrorReporter, qtbot) -> None:
    reporter.show_dialogs = False
    uninstall = install_excepthooks(reporter)
    try:
        try:
            raise KeyError("a bug on the GUI thread")
        except KeyError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        assert reporter.history[-1].exc_type == "KeyError"

        def worker() -> None:
            raise ValueError("a bug on another thread")

        thread = threading.Thread(target=worker, name="test-worker")
        thread.start()
        thread.join()
        qtbot.waitUntil(lambda: reporter.history[-1].exc_type == "ValueError", timeout=5000)
        assert "test-worker" in reporter.history[-1].title
    finally:
        uninstall()
    assert is_expected(OSError("disk full")) and not is_expected(KeyError("x"))


def test_status_bar_theme_toggle_and_geometry(window: MainWindow, ctx: AppContext,
                                             tmp_path: Path, qtbot) -> None:
    assert "SQLite" in window.db_label.text()
    assert "speakerops.db" in window.db_label.text()
    assert "not running in this console" in window.collector_label.text()
    # a headless collector's row in collector_status shows when this console runs none
    now = datetime.now(UTC)
    with ctx.session_factory.begin() as s:
        s.add(CollectorStatus(name="ops-host:4242", started_at=now, last_cycle_at=now,
                              cycle_s=0.8, interval_s=10.0, units_polled=6, units_ok=5,
                              units_failed=1, pending_rows=0, last_error=None))
    window.status_timer.timeout.emit()
    qtbot.waitUntil(lambda: "ops-host:4242" in window.collector_label.text(), timeout=5000)
    assert "6 polled, 5 ok, 1 failed" in window.collector_label.text()
    window.set_theme("light")
    assert LIGHT.surface in QApplication.instance().styleSheet()
    assert window.theme_actions["light"].isChecked()
    window.toggle_theme_action.trigger()
    assert window.theme is DARK and window.theme_actions["dark"].isChecked()
    assert "$" not in DARK.stylesheet() and "$" not in LIGHT.stylesheet()
    window.save_geometry()
    stored = QSettings(str(tmp_path / "console.ini"), QSettings.Format.IniFormat)
    assert stored.value("window/geometry") is not None


def test_collector_cycles_reach_the_status_bar_through_a_queued_signal(
        db_url: str, executors: Executors, reporter: ErrorReporter, tmp_path: Path,
        qtbot) -> None:
    collector_mod = pytest.importorskip("fleet.collector")
    ctx = build(db_url, collect=True, start_collector=False)
    win = MainWindow(ctx, executors, reporter, DARK, qsettings=QSettings(
        str(tmp_path / "c.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    try:
        assert "waiting for the first cycle" in win.collector_label.text()
        result = collector_mod.CycleResult(
            started_at=datetime.now(UTC), duration_s=0.4, polled=3, ok=2, failed=1, written=2,
            pending=7, db_error="database is locked")
        thread = threading.Thread(target=ctx._dispatch_cycle, args=(result,))
        thread.start()  # on_cycle arrives from a foreign thread, as from the collector's
        thread.join()
        qtbot.waitUntil(lambda: "3 polled, 2 ok, 1 failed" in win.collector_label.text(),
                        timeout=5000)
        assert "stopped" in win.collector_label.text()
        zone = datetime.now().astimezone().tzname()
        assert zone in win.collector_label.text()
        assert "7 heartbeats pending" in win.collector_warning.text()
        assert "database is locked" in win.collector_warning.text()
    finally:
        win.shutdown()
        ctx.close()


def test_main_runs_and_shuts_down_cleanly(db_url: str, tmp_path: Path, qapp) -> None:
    from console.app import main

    ctx = build(db_url, collect=False)
    seed_fleet(ctx.session_factory, datetime.now(UTC))
    ctx.close()
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(tmp_path))
    before = {t.ident for t in threading.enumerate()}
    shot = tmp_path / "shot.png"
    hooks = (sys.excepthook, threading.excepthook)
    assert main([], db_url=db_url, collect=False, screenshot=shot, screenshot_after_s=2.5) == 0
    assert shot.stat().st_size > 10_000  # a real picture of the window
    assert (sys.excepthook, threading.excepthook) == hooks  # hooks restored on exit
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert [t for t in threading.enumerate() if t.ident not in before and t.is_alive()
            and not isinstance(t, threading._DummyThread)] == []


@pytest.mark.integration
def test_real_background_collector_fills_the_table(tmp_path: Path, db_url: str,
                                                   executors: Executors,
                                                   reporter: ErrorReporter, qtbot) -> None:
    collector_mod = pytest.importorskip("fleet.collector")
    simulator = pytest.importorskip("fleet.simulator")
    inventory = pytest.importorskip("fleet.inventory")
    from speakerops.timeutil import utc_now

    with simulator.Simulator(12, seed=3) as sim:
        sim.start()
        inv_path = sim.write_inventory(tmp_path / "inventory.csv")
        ctx = build(db_url, collect=True, start_collector=False,
                    collector_settings=collector_mod.CollectorSettings(interval_s=0.5))
        try:
            with ctx.session_factory.begin() as s:
                inventory.import_units(s, inv_path, utc_now)
            win = MainWindow(ctx, executors, reporter, DARK, refresh_interval_s=0.2,
                             qsettings=QSettings(str(tmp_path / "c.ini"),
                                                 QSettings.Format.IniFormat))
            qtbot.addWidget(win)
            win.show()
            ctx.start_collector()
            assert ctx.collector.is_running
            qtbot.waitUntil(lambda: "12 polled" in win.collector_label.text(), timeout=20_000)
            model = win.fleet_page.model
            qtbot.waitUntil(lambda: model.rowCount() == 12 and sum(
                cell(win, s, "status") != "○ unknown" for s in serials_shown(win)) >= 10,
                timeout=20_000)
            assert "running" in win.collector_label.text()
            assert int(win.fleet_page.tiles["units"].value_text()) == 12
            win.shutdown()
        finally:
            ctx.close()
        assert not ctx.collector.is_running


def test_fleet_page_refreshes_from_its_read_process_and_shutdown_stops_it(qtbot, ctx: AppContext,
                                                                          reporter: ErrorReporter,
                                                                          tmp_path: Path) -> None:
    """The console's default: the Fleet page's refreshes run in their own process
    (console.read_process) on the same database; a new heartbeat shows, and shutting the
    executors down ends the process."""
    import os
    import signal

    ex = Executors(reporter, read_db_url=ctx.db_url)
    qsettings = QSettings(str(tmp_path / "console.ini"), QSettings.Format.IniFormat)
    win = MainWindow(ctx, ex, reporter, DARK, qsettings=qsettings, refresh_interval_s=0.2)
    qtbot.addWidget(win)
    win.show()
    page = win.fleet_page
    reads = ex.fleet_reads.process
    try:
        qtbot.waitUntil(lambda: page.model.rowCount() == len(SEEDS), timeout=30_000)
        pid = reads.pid
        assert pid is not None and pid != os.getpid() and reads.calls >= 1
        with ctx.session_factory.begin() as s:
            unit = s.scalars(select(Unit).where(Unit.serial == "SPK-000006")).one()
            unit.status = "online"
            add_heartbeat(s, unit, datetime.now(UTC), 77.7)
        qtbot.waitUntil(lambda: cell(win, "SPK-000006", "cpu_pct") == "77.7", timeout=10_000)

        # the read process killed: the page says so in its message bar (no dialog), keeps its
        # figures, and the next refresh runs in a new process
        page.timer.stop()
        qtbot.waitUntil(lambda: not page.refresh_in_flight, timeout=10_000)
        os.kill(pid, signal.SIGKILL)
        with qtbot.waitSignal(page.sig_refresh_failed, timeout=10_000):
            page.refresh()
        assert "read process ended" in page.message_bar.text()
        assert reporter.history[-1].expected and reporter.dialogs == []
        assert page.model.rowCount() == len(SEEDS)
        page.timer.start()
        qtbot.waitUntil(lambda: page.message_bar.text() == "", timeout=10_000)
        assert reads.pid not in (None, pid) and reads.starts == 2
    finally:
        win.shutdown()
        assert ex.shutdown(timeout_s=30)
    assert reads.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
