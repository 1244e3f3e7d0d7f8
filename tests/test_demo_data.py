"""``speakerops demo``'s seed data: simulated feedback and tickets, idempotent, on both backends."""

from __future__ import annotations

from sqlalchemy import func, select

from feedback.models import Feedback, Ticket
from fleet.inventory import import_units
from fleet.simulator import Simulator
from speakerops import audit
from speakerops.demo_data import DEMO_TICKETS, seed_demo


def test_seed_demo_fills_feedback_and_tickets_once(runtime, tmp_path) -> None:
    with Simulator(60, seed=3, data_dir=tmp_path / "sim") as sim, runtime.session_factory.begin() as s:
        import_units(s, sim.write_inventory(tmp_path / "inv.csv"), runtime.clock)
    with runtime.session_factory.begin() as s:
        first = seed_demo(s, runtime.clock, seed=3)
    with runtime.session_factory.begin() as s:
        second = seed_demo(s, runtime.clock, seed=3)
    with runtime.session_factory() as s:
        n_feedback = s.execute(select(func.count()).select_from(Feedback)).scalar_one()
        tickets = list(s.execute(select(Ticket)).scalars())
        assert first["feedback_imported"] == n_feedback > 100
        assert second == {"feedback_imported": 0, "tickets_opened": 0}
        assert len(tickets) == first["tickets_opened"] == DEMO_TICKETS
        assert {t.state for t in tickets} == {"new", "triaged"}
        assert all(t.feedback_id is not None and t.unit_id is not None for t in tickets)
        assert audit.verify(s).ok
