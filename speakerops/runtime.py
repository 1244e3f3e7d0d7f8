"""Composition root of the CLI and headless processes: settings → engine → session factory.

The console has its own (``console/bootstrap.py``) built on the same pieces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from speakerops.db import describe_url, make_engine, make_session_factory, upgrade
from speakerops.settings import CoreSettings
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What services need: settings, the engine, a session factory and the clock."""

    settings: CoreSettings
    db_url: str
    engine: Engine
    session_factory: sessionmaker[Session]
    clock: Clock = field(default=utc_now)

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(db_url: str | None = None, clock: Clock = utc_now, migrate: bool = True) -> Runtime:
    """Build the runtime from settings (``SPEAKEROPS_DB_URL``, ``SPEAKEROPS_DATA_DIR``).

    Parameters
    ----------
    db_url
        Overrides the configured database URL.
    migrate
        Bring the schema to the newest revision first (Alembic; idempotent).
    """
    settings = CoreSettings()
    url = db_url or settings.resolved_db_url()
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    logger.debug("runtime on %s", describe_url(url))
    return Runtime(settings, url, engine, make_session_factory(engine), clock)
