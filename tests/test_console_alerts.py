"""The Alerts page and the navigation badge, offscreen over a real SQLite database."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtWidgets import QApplication
from sqlalchemy import select

from console.bootstrap import build
from console.errors import ErrorReporter
from console.jobs import Executors
from console.main_window import ALERTS_ENTRY, MainWindow
from console.pages.alerts import SEVERITY_STYLES, AlertsPage
from console.theme import DARK
from fleet.alerts import ensure_builtin_rules, evaluate
from fleet.models import Alert, AlertEvent, Unit

pytestmark = pytest.mark.gui


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "fleet.slo", None)  # SLO rules skipped
    context = build(f"sqlite:///{tmp_path / 'speakerops.db'}", collect=False)
    now = datetime.now(UTC)
    with context.session_factory.begin() as s:
        ensure_builtin_rules(s, now)
        for i, status in enumerate(("offline", "offline", "online")):
            s.add(Unit(serial=f"SPK-{i:06d}", hardware_rev="hw-b", site="seoul", region="kr",
                       timezone="UTC", agent_url="http://127.0.0.1:9/", tags=[], status=status,
                       created_at=now, updated_at=now))
        s.flush()
        evaluate(s, now)
    yield context
    context.close()


@pytest.fixture
def window(qtbot, ctx, tmp_path: Path):
    before = {t.ident for t in threading.enumerate()}
    reporter = ErrorReporter(show_dialogs=False)
    executors = Executors(reporter)
    DARK.apply(QApplication.instance())
    win = MainWindow(ctx, executors, reporter, DARK,
                     qsettings=QSettings(str(tmp_path / "c.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.shutdown()
    assert not [t for t in win.findChildren(QTimer) if t.isActive()], "timers left running"
    assert executors.shutdown(timeout_s=10)
    leftover = [t for t in threading.enumerate() if t.ident not in before
                and not isinstance(t, threading._DummyThread) and t.is_alive()]
    assert leftover == [], f"threads left running: {leftover}"


def test_badge_page_and_acknowledge(window: MainWindow, ctx, qtbot) -> None:
    item = window.alerts_nav_item
    qtbot.waitUntil(lambda: item.text() == "Alerts (2)", timeout=10_000)
    page = window.show_page(ALERTS_ENTRY)
    assert isinstance(page, AlertsPage)
    qtbot.waitUntil(lambda: page.model.rowCount() == 2, timeout=10_000)
    assert page.tiles["open"].value_text() == "2"
    assert page.tiles["critical"].value_text() == "0"
    model = page.model
    severity = model.index(0, 0).data()
    assert severity == SEVERITY_STYLES["warning"].label  # glyph and word, not colour alone
    assert model.index(0, 0).data(Qt.ItemDataRole.ForegroundRole).name().upper() == "#E69F00"
    assert {model.index(r, 2).data() for r in range(2)} == {"unit=SPK-000000", "unit=SPK-000001"}
    assert model.index(0, 1).data() == "unit offline"
    assert model.index(0, 5).data() == "open"

    alert_id = model.index(0, 0).data(Qt.ItemDataRole.UserRole)["id"]
    assert page.select_alert(alert_id)
    qtbot.waitUntil(lambda: "opened by rule" in page.history.text(), timeout=10_000)
    assert page.ack_button.isEnabled()
    page.ack_button.click()
    with ctx.session_factory() as s:
        qtbot.waitUntil(lambda: s.get(Alert, alert_id, populate_existing=True).state == "acknowledged",
                        timeout=10_000)
        event = s.scalar(select(AlertEvent).where(AlertEvent.kind == "acknowledged"))
        assert event.actor == page.actor
    qtbot.waitUntil(lambda: model.rowCount() == 1, timeout=10_000)  # the open filter hides it
    qtbot.waitUntil(lambda: item.text() == "Alerts (1)", timeout=10_000)
    page.set_state_filter("acknowledged")
    qtbot.waitUntil(lambda: model.rowCount() == 1
                    and model.index(0, 5).data() == "acknowledged", timeout=10_000)
    page.set_state_filter(None)
    qtbot.waitUntil(lambda: model.rowCount() == 2, timeout=10_000)
    qtbot.waitUntil(lambda: not page.busy, timeout=10_000)
