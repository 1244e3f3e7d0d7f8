"""What ``speakerops demo`` puts in the database beside the simulator's inventory, so that every
page has something real to show: two weeks of simulated feedback (``feedback.simulate``, imported
through the normal validating importer) and A/S tickets opened from the worst-rated items.

Idempotent: the feedback's submission ids de-duplicate a second run, and tickets are only opened
when there are none.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from speakerops.timeutil import Clock

logger = logging.getLogger(__name__)

#: Days of feedback the demo generates (the Feedback page's default period is 30 days).
FEEDBACK_DAYS = 14
#: Tickets the demo opens from the lowest-rated feedback with free text.
DEMO_TICKETS = 8


def seed_demo(session: Session, clock: Clock, seed: int = 0) -> dict[str, Any]:
    """Import simulated feedback for every unit and open a few tickets; returns what was added."""
    from feedback.ingest import ingest_records
    from feedback.models import Feedback, Ticket
    from feedback.simulate import generate_feedback
    from feedback.tickets import create_ticket, move
    from fleet.models import Unit

    now = clock()
    units = list(session.execute(select(Unit).order_by(Unit.id)).scalars())
    if not units:
        return {"feedback_imported": 0, "tickets_opened": 0}
    rows = generate_feedback(units, now - timedelta(days=FEEDBACK_DAYS), now, seed)
    report = ingest_records(session, rows, clock, source="simulator", origin=f"demo seed {seed}",
                            rate_limit_per_hour=None, actor="demo")
    opened = 0
    if not session.execute(select(func.count()).select_from(Ticket)).scalar_one():
        worst = session.execute(
            select(Feedback.id, Feedback.feature).where(Feedback.rating <= 2, Feedback.text.is_not(None))
            .order_by(Feedback.submitted_at.desc()).limit(DEMO_TICKETS)).all()
        categories = {"music": "wrong_answer", "qa": "wrong_answer", "none": "misrecognition"}
        for i, (feedback_id, feature) in enumerate(worst):
            ticket = create_ticket(session, clock, title=f"Unhappy with {feature} answers",
                                   priority=("high", "normal", "low")[i % 3],
                                   category=categories.get(feature, "misrecognition"),
                                   feedback_id=feedback_id, actor="demo")
            if i % 2:
                move(session, ticket.id, "triaged", clock, actor="demo")
            opened += 1
    logger.info("demo data: %d feedback items imported, %d tickets opened", report.imported, opened)
    return {"feedback_imported": report.imported, "tickets_opened": opened}
