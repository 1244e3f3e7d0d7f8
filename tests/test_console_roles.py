"""The console hides what the login's role may not do (the database refuses it anyway, see
tests/test_roles.py): a product owner sees tickets and rollouts but no actions on them."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest

from console.pages.alerts import AlertsPage
from console.pages.models import ModelsPage
from console.pages.rollouts import RolloutsPage
from console.pages.tickets import TicketsPage
from console.theme import DARK
from feedback import tickets
from speakerops.roles import CAPABILITIES, may
from speakerops.runtime import build_runtime

pytestmark = pytest.mark.gui


@pytest.fixture
def rt(tmp_path: Path, clock):
    runtime = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=clock)
    with runtime.session_factory.begin() as s:
        tickets.create_ticket(s, clock, title="No answer after wake word", priority="urgent", category="no_response")
    yield runtime
    runtime.close()


def test_capabilities_follow_the_roles() -> None:
    assert may("operator", "rollouts.write") and not may("technician", "rollouts.write")
    assert may("technician", "tickets.write") and not may("product_owner", "tickets.write")
    assert may("product_owner", "feedback.write") and not may(None, "feedback.write")
    assert all(may("admin", c) for c in CAPABILITIES)


@pytest.mark.parametrize("role", ["product_owner", "technician", "operator"])
def test_pages_hide_actions_of_other_roles(qtbot, rt, executors, reporter, tmp_path, role) -> None:
    pages = [TicketsPage(rt.session_factory, rt.clock, executors, reporter, DARK),
             RolloutsPage(rt.session_factory, rt.clock, executors, reporter, DARK),
             ModelsPage(rt.session_factory, rt.clock, executors, reporter, DARK, data_dir=tmp_path),
             AlertsPage(rt.session_factory, rt.clock, executors, reporter, DARK)]
    for page in pages:
        qtbot.addWidget(page)
        page.apply_role(role)
        page.show()
    ticket_page, rollouts_page, models_page, alerts_page = pages
    try:
        ticket_page.refresh()
        qtbot.waitUntil(lambda: ticket_page.model.rowCount() == 1, timeout=5000)
        ticket_page.select_ticket(ticket_page.model.rows[0]["id"])
        qtbot.waitUntil(lambda: ticket_page.detail.ticket_id is not None, timeout=5000)
        writes_tickets = role != "product_owner"
        assert ticket_page.new_button.isVisible() is writes_tickets
        assert ticket_page.detail.note_button.isVisible() is writes_tickets
        assert bool(ticket_page.detail.move_buttons) is writes_tickets
        assert rollouts_page.new_button.isVisible() is (role == "operator")
        assert all(b.isVisible() is (role == "operator") for b in rollouts_page.buttons.values())
        assert models_page.override_button.isVisible() is (role == "operator")
        assert alerts_page.ack_button.isVisible() is (role == "operator")
    finally:
        for page in pages:
            page.shutdown()
        qtbot.waitUntil(lambda: not any(p.busy for p in pages), timeout=5000)
