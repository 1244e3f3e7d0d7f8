"""Alembic environment: runs on the engine passed in ``config.attributes["engine"]``."""

from __future__ import annotations

from alembic import context

import feedback.models  # noqa: F401  (feedback and ticket tables, issue #6)
import fleet.models  # noqa: F401  (registers the fleet tables on Base.metadata)
import fleet.rollout_models  # noqa: F401  (rollouts, rollout groups/units, unit pins)
import fleet.workbench_models  # noqa: F401  (unit self-tests, workbench runs, issue #7)
import speakerops.audit  # noqa: F401  (the audit_log table)
from speakerops.db import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
