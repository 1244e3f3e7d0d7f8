"""Shared fixtures: an isolated environment, a real database (SQLite and PostgreSQL), a clock.

PostgreSQL tests use the server named by ``SPEAKEROPS_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), each in a fresh database created for the
test and dropped after it. Where no server answers they are skipped with the reason, except under
CI (``CI=true``), where a missing server is a failure: CI must exercise PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from speakerops.db import make_engine, make_session_factory, upgrade
from speakerops.runtime import Runtime
from speakerops.settings import CoreSettings

PG_URL = os.environ.get("SPEAKEROPS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point data and config at tmp_path; never touch the developer's own database."""
    monkeypatch.setenv("SPEAKEROPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SPEAKEROPS_DB_URL", raising=False)
    monkeypatch.setenv("SPEAKEROPS_KEYS_UNENCRYPTED_LAB", "1")  # lab opt-in: plain key files (docs/security.md)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")  # never the developer's keyring


class FrozenClock:
    """A clock that stands still until advanced: ``clock()`` → aware UTC."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 21, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


def _pg_admin_engine():
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL admin URL, after checking that the server answers."""
    try:
        engine = _pg_admin_engine()
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        reason = f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string(hide_password=True)}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must run the PostgreSQL tests)")
        pytest.skip(reason)
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = f"speakerops_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'speakerops.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def runtime(db_url: str, clock: FrozenClock) -> Iterator[Runtime]:
    """A migrated database with its session factory and the frozen clock."""
    engine = make_engine(db_url)
    upgrade(engine)
    rt = Runtime(CoreSettings(), db_url, engine, make_session_factory(engine), clock)
    yield rt
    engine.dispose()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model bundles (stt, qa int8 and fp32, tts), built once per test session (~40 s)."""
    from inference_core.bundles import build_default_bundles

    root = tmp_path_factory.mktemp("models")
    build_default_bundles(root)
    return root


def espeak(text: str, out: Path, voice: str = "en-us", speed_wpm: int = 165) -> Path:
    """Real speech: ``text`` spoken by Debian's espeak-ng into the WAV file ``out``."""
    import subprocess

    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-w", str(out), text],
                   check=True, capture_output=True)
    return out


# -- console (pytest-qt) fixtures; Qt is imported inside them so the core tests stay Qt-free ----
@pytest.fixture(scope="session")
def qapp(qapp_args, qapp_cls, pytestconfig):
    """pytest-qt's application, with garbage collection on the GUI thread only, as the console
    runs (``console.app.collect_garbage_on_gui_thread``: a collection on a job thread destroyed
    Qt objects there and deadlocked or crashed a test run)."""
    from PySide6.QtWidgets import QApplication

    from console.app import collect_garbage_on_gui_thread

    app = QApplication.instance() or qapp_cls(qapp_args)
    app.setApplicationName(pytestconfig.getini("qt_qapp_name"))
    collect_garbage_on_gui_thread(app, interval_s=0.5)
    yield app


@pytest.fixture(autouse=True)
def _collect_garbage_on_gui_thread_after(request):
    """After a GUI test, collect its cyclic garbage here, on the main thread (not in a later
    test's job thread)."""
    yield
    if "qapp" in request.fixturenames:
        import gc

        gc.collect()


@pytest.fixture
def reporter(qapp):
    """The console's error reporter; its dialogs are closed after the test."""
    from console.errors import ErrorReporter

    rep = ErrorReporter(show_dialogs=True)
    yield rep
    rep.close_dialogs()


@pytest.fixture
def executors(reporter):
    """The console's executors; the test fails if any job thread is left running."""
    import threading

    from PySide6.QtCore import QThreadPool

    from console.jobs import Executors

    before = {t.ident for t in threading.enumerate()}
    ex = Executors(reporter)
    yield ex
    assert ex.shutdown(timeout_s=30)
    assert ex.active_thread_count() == 0
    for pool_ex in ex.all():
        assert pool_ex._pool.activeThreadCount() == 0
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    leftover = [t for t in threading.enumerate() if t.ident not in before
                and not isinstance(t, threading._DummyThread) and t.is_alive()]
    assert leftover == [], f"threads left running: {leftover}"
