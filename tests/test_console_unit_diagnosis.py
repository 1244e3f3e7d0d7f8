"""The Diagnostics page's "Unit over SSH" tab: diagnose a real sshd unit of the simulator with the
real models, see the verdict and the requirements, the report attached to the ticket; an audited
unit action; a bad ticket number is a message, not a crash."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from sqlalchemy import select

from console.pages.unit_diagnosis import UnitDiagnosisPanel
from console.theme import DARK
from feedback import tickets
from feedback.models import Ticket, TicketAttachment
from fleet.inventory import import_units
from fleet.settings import SshSettings
from fleet.simulator import Simulator
from fleet.ssh import SshConnector
from fleet.workbench import WorkbenchContext
from speakerops import audit
from speakerops.runtime import build_runtime

pytestmark = [pytest.mark.gui, pytest.mark.ssh]

HEALTHY = "SPK-000003"  # seed 330, as tests/test_workbench.py


@pytest.fixture
def lab(tmp_path: Path, models_root: Path):
    rt = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}")
    sim = Simulator(6, seed=330, ssh_units=6, data_dir=tmp_path / "sim").start()
    sim.write_inventory(tmp_path / "inventory.csv")
    with rt.session_factory.begin() as s:
        import_units(s, tmp_path / "inventory.csv", rt.clock)
        ticket_id = tickets.create_ticket(s, rt.clock, title="doesn't understand me", unit_serial=HEALTHY,
                                          category="misrecognition").id
        tickets.move(s, ticket_id, "triaged", rt.clock)
    settings = SshSettings(client_key_path=str(tmp_path / "sim" / "client_key"), connect_timeout_s=5,
                           command_timeout_s=20, install_root=str(tmp_path / "sim" / "units" / "{serial}" / "root"))

    def factory() -> WorkbenchContext:
        connector = SshConnector(rt.session_factory, settings, trust_on_first_use=True)
        return WorkbenchContext(rt.session_factory, connector, tmp_path / "data", models_root, rt.clock,
                                ssh_settings=settings)

    yield rt, factory, ticket_id
    sim.stop()
    rt.close()


def test_diagnose_a_unit_from_the_page(qtbot, executors, reporter, lab) -> None:  # lab stops first
    rt, factory, ticket_id = lab
    panel = UnitDiagnosisPanel(rt.session_factory, rt.clock, executors, reporter, DARK, workbench_factory=factory,
                               actor="tech-kim")
    qtbot.addWidget(panel)
    panel.resize(1300, 800)
    panel.show()
    qtbot.waitUntil(lambda: panel.unit_combo.count() == 6, timeout=10_000)
    try:
        panel.unit_combo.setEditText(HEALTHY)
        panel.ticket_edit.setText("twelve")
        panel.run_button.click()
        assert "not a ticket number" in panel.message_bar.text() and not panel.busy

        panel.ticket_edit.setText(f"#{ticket_id}")
        with qtbot.waitSignal(panel.sig_diagnosed, timeout=240_000) as got:
            panel.run_button.click()
            assert panel.progress.isVisible()
        diagnosis = got.args[0]
        assert diagnosis.verdict == "ok", diagnosis.report["verdict"]
        assert "ok" in panel.verdict_tile.value_text()
        assert f"ticket #{ticket_id}" in panel.why.text()
        labels = [r["requirement"] for r in panel.requirements.rows]
        assert len(labels) >= 4 and any("STT" in label or "accuracy" in label for label in labels)
        assert "examined:" in panel.details.toPlainText()
        assert panel.open_report_button.isEnabled()
        opened = []
        panel.url_opener = opened.append
        panel.open_report_button.click()
        assert opened and opened[0].toLocalFile().endswith(".html")
        with rt.session_factory() as s:
            assert s.get(Ticket, ticket_id).state == "diagnosing"
            assert s.scalar(select(TicketAttachment).where(TicketAttachment.ticket_id == ticket_id)) is not None

        with qtbot.waitSignal(panel.sig_action_done, timeout=60_000) as done:
            panel.action_buttons["restart"].click()
        assert HEALTHY in done.args[0]
        with rt.session_factory() as s:
            assert [e.actor for e in audit.entries(s, action_prefix="unit.restart")] == ["tech-kim"]
    finally:
        panel.shutdown()
        qtbot.waitUntil(lambda: not panel.busy, timeout=60_000)
