"""The console's composition root: builds the engine, the session factory, the clock and the
background collector once, and hands them to the window (after cosmicpython's
``bootstrap.py``). Qt-free, so that it can be tested and reused without a screen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from fleet.collector import BackgroundCollector, Collector, CycleResult
from fleet.settings import CollectorSettings
from speakerops.db import describe_url
from speakerops.runtime import build_runtime
from speakerops.settings import CoreSettings
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: ``on_cycle`` listeners receive the collector's ``CycleResult`` on the collector's thread.
CycleListener = Callable[[CycleResult], None]


def backend_name(db_url: str) -> str:
    """``"SQLite"``, ``"PostgreSQL"`` or the dialect's own name, for the status bar."""
    name = make_url(db_url).get_backend_name()
    return {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(name, name)


@dataclass
class AppContext:
    """Everything the console's pages use, built once by :func:`build`.

    Attributes
    ----------
    settings : CoreSettings
        Database and data-directory settings.
    db_url : str
        The database URL in use (may hold a password: show :attr:`db_description` instead).
    engine, session_factory
        SQLAlchemy engine and the factory of units of work (``with session_factory() as s``).
    clock : Clock
        Returns aware UTC now.
    collector : BackgroundCollector or None
        The collector polling units in the background, or None (``collect=False``).
    models_root : Path or None
        Where the voice loop's model bundles are (``<data_dir>/models``, as for the CLI).
    """

    settings: CoreSettings
    db_url: str
    engine: Engine
    session_factory: sessionmaker[Session]
    clock: Clock = utc_now
    collector: BackgroundCollector | None = None
    models_root: Path | None = None
    #: The database login the console acts as, and its role (speakerops.roles; SQLite: admin).
    login: str = ""
    role: str | None = "admin"
    _listeners: list[CycleListener] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def db_description(self) -> str:
        """The URL with any password hidden."""
        return describe_url(self.db_url)

    @property
    def db_backend(self) -> str:
        """``"SQLite"`` or ``"PostgreSQL"``."""
        return backend_name(self.db_url)

    def add_cycle_listener(self, listener: CycleListener) -> None:
        """Call ``listener(cycle_result)`` after each collector cycle (on the collector's thread)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_cycle_listener(self, listener: CycleListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _dispatch_cycle(self, result: CycleResult) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(result)
            except Exception:  # a listener must not stop the collector
                logger.exception("collector cycle listener %r failed", listener)

    def start_collector(self) -> None:
        """Start the background collector if there is one and it is not running."""
        if self.collector is not None and not self.collector.is_running:
            self.collector.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the collector (waiting up to ``timeout_s``) and dispose the engine; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.collector is not None:
            self.collector.stop(timeout=timeout_s)
        with self._lock:
            self._listeners.clear()
        self.engine.dispose()
        logger.info("closed %s", self.db_description)


def read_login_and_role(session_factory: sessionmaker[Session]) -> tuple[str, str | None]:
    """The login and its role; role None when a PostgreSQL login has no SpeakerOps role (the
    console then shows everything read-only and says why)."""
    from speakerops.audit import current_actor
    from speakerops.roles import RoleError, current_role

    with session_factory() as session:
        login = current_actor(session)
        try:
            return login, current_role(session)
        except RoleError as exc:
            logger.warning("%s", exc)
            return login, None


def build(db_url: str | None = None, clock: Clock = utc_now, collect: bool = True, *,
          collector_settings: CollectorSettings | None = None, start_collector: bool = True) -> AppContext:
    """Build the console's context on the shared runtime (:func:`speakerops.runtime.build_runtime`:
    settings, migrated database, session factory), then make the background collector.

    Parameters
    ----------
    db_url
        SQLAlchemy URL; default ``CoreSettings().resolved_db_url()`` (``SPEAKEROPS_DB_URL`` or
        SQLite in the data directory).
    clock
        Returns aware UTC now; tests pass a frozen one.
    collect
        Run a :class:`fleet.collector.BackgroundCollector` in this process.
    collector_settings
        Collector tuning; default read from the environment (``SPEAKEROPS_COLLECTOR_*``).
    start_collector
        Start the collector's thread now (else call :meth:`AppContext.start_collector`).

    Raises
    ------
    sqlalchemy.exc.OperationalError
        If the database cannot be reached or migrated (the message names the cause).
    """
    rt = build_runtime(db_url, clock)
    ctx = AppContext(settings=rt.settings, db_url=rt.db_url, engine=rt.engine,
                     session_factory=rt.session_factory, clock=clock)
    ctx.models_root = rt.settings.data_dir / "models"
    ctx.login, ctx.role = read_login_and_role(ctx.session_factory)
    logger.info("database %s (%s) at schema head", ctx.db_description, ctx.db_backend)
    if collect:
        collector = Collector(ctx.session_factory, clock=clock, settings=collector_settings or CollectorSettings())
        ctx.collector = BackgroundCollector(collector, on_cycle=ctx._dispatch_cycle)
        if start_collector:
            ctx.start_collector()
    return ctx
