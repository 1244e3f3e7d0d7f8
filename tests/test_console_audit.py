"""The Audit page over a real SQLite database: filters, the detail of an entry, chain verification
that names an edited entry, and CSV export."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from sqlalchemy import text

from console.pages.audit import AuditPage
from console.theme import DARK
from speakerops import audit
from speakerops.runtime import build_runtime

pytestmark = pytest.mark.gui


@pytest.fixture
def rt(tmp_path: Path):
    runtime = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=lambda: datetime(2026, 11, 21, 9, tzinfo=UTC))
    with runtime.session_factory.begin() as s:
        audit.record(s, "rollout.start", "rollout", 1, after={"state": "running"}, actor="op-lee", clock=runtime.clock)
        audit.record(s, "rollout.pause", "rollout", 1, before={"state": "running"}, after={"state": "paused"},
                     reason="p95 e2e +40 % in group 2", actor="op-lee", clock=runtime.clock)
        audit.record(s, "ticket.move", "ticket", 7, before={"state": "new"}, after={"state": "triaged"},
                     actor="tech-kim", clock=runtime.clock)
    yield runtime
    runtime.close()


@pytest.fixture
def page(qtbot, rt, executors, reporter):
    p = AuditPage(rt.session_factory, rt.clock, executors, reporter, DARK)
    qtbot.addWidget(p)
    p.show()
    yield p
    p.shutdown()


def _shown(page: AuditPage) -> list[str]:
    return [page.proxy.index(r, 3).data() for r in range(page.proxy.rowCount())]


def test_filters_detail_verify_and_export(qtbot, page: AuditPage, rt, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 3, timeout=5000)
    assert _shown(page) == ["ticket.move", "rollout.pause", "rollout.start"]
    assert page.tiles["entries"].value_text() == "3"

    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.set_filters(target_kind="rollout")
    assert _shown(page) == ["rollout.pause", "rollout.start"]
    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.set_filters(action_prefix="ticket.")
    assert _shown(page) == ["ticket.move"]
    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.set_filters(actor="op-lee")
    assert _shown(page) == ["rollout.pause", "rollout.start"]

    page.table.selectRow(0)
    detail = page.detail.toPlainText()
    assert "rollout.pause on rollout:1 by op-lee" in detail
    assert 'state: "running" → "paused"' in detail and "p95 e2e +40 % in group 2" in detail

    page.search_edit.setText("start")
    assert _shown(page) == ["rollout.start"]
    out = tmp_path / "audit.csv"
    assert page.export(out) == 1
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0][:4] == ["#", "When", "Who", "Action"] and rows[1][3] == "rollout.start"

    with qtbot.waitSignal(page.sig_verified, timeout=5000) as ok:
        page.verify()
    assert ok.args == [True] and "intact (3)" in page.tiles["chain"].value_text()

    with rt.session_factory.begin() as s:
        s.execute(text("UPDATE audit_log SET reason = NULL WHERE action = 'rollout.pause'"))
    with qtbot.waitSignal(page.sig_verified, timeout=5000) as bad:
        page.verify()
    assert bad.args == [False]
    assert "broken at #2" in page.tiles["chain"].value_text()
    assert "altered" in page.message_bar.text()
    assert page.table.horizontalHeader().sectionSize(0) > 0 and page.proxy.sortOrder() == Qt.SortOrder.DescendingOrder
