"""Start the console: ``speakerops`` (no arguments) and ``speakerops demo`` call :func:`main`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, QThreadPool, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from console.bootstrap import AppContext, build
from console.errors import ErrorReporter, describe, install_excepthooks
from console.jobs import Executors
from console.main_window import MainWindow
from console.settings import ConsoleSettings
from console.theme import get_theme
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)


def _has_display() -> bool:
    """False on Linux when Qt would abort for want of a screen (no X11/Wayland, no QPA override)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def collect_garbage_on_gui_thread(app: QApplication, interval_s: float = 1.0) -> None:
    """Run Python's cyclic garbage collector only on the GUI thread (idempotent).

    Pages hold Qt objects in reference cycles (signal connections to lambdas that capture the
    page). Left to itself, the collector runs in whichever thread happens to allocate — often a
    worker thread building a pandas snapshot — and destroys those Qt objects there: ``~QObject``
    then waits for a Qt mutex while holding what the GUI thread needs, a deadlock, or crashes.
    (Seen: the GUI thread in ``QObject::~QObject`` of a ``QMenu`` deleted by shiboken's
    ``runDeletionInMainThread``, a job thread in ``gc_collect_main`` → ``~QObject`` waiting for
    the GIL.) pyqtgraph's ``GarbageCollector`` disables automatic collection and collects from a
    GUI-thread timer instead (after Erik Janssens, "Should Python garbage collector be called
    manually?").
    """
    if getattr(app, "_speakerops_gc", None) is not None:
        return
    from pyqtgraph.util.garbage_collector import GarbageCollector

    app._speakerops_gc = GarbageCollector(interval=interval_s)  # type: ignore[attr-defined]


def ensure_application(argv: list[str] | None = None) -> QApplication:
    """The running ``QApplication``, created (named "SpeakerOps") if there is none, with garbage
    collection confined to the GUI thread (:func:`collect_garbage_on_gui_thread`)."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv else sys.argv[:1])
    assert isinstance(app, QApplication)
    collect_garbage_on_gui_thread(app)
    app.setApplicationName("SpeakerOps")
    app.setOrganizationName("speakerops")
    app.setApplicationDisplayName("SpeakerOps")
    return app


@dataclass
class Console:
    """A running console's parts, for :func:`main`, scripts and tests.

    Call :meth:`close` once: it shuts down in dependency order (window, jobs, collector and
    database, error hooks).
    """

    app: QApplication
    ctx: AppContext
    executors: Executors
    reporter: ErrorReporter
    window: MainWindow
    uninstall_hooks: Callable[[], None]

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the window's timers, the job threads, the collector; dispose the engine."""
        self.window.shutdown()
        self.executors.shutdown(timeout_s)
        self.ctx.close(timeout_s)
        self.reporter.close_dialogs()
        self.uninstall_hooks()
        QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000))


def create_console(argv: list[str] | None = None, *, db_url: str | None = None,
                   collect: bool = True, clock: Clock = utc_now,
                   settings: ConsoleSettings | None = None,
                   qsettings: QSettings | None = None) -> Console:
    """Build everything :func:`main` runs, without entering the event loop.

    Raises
    ------
    Exception
        Whatever :func:`console.bootstrap.build` raises when the database cannot be opened or
        migrated (the hooks are uninstalled first).
    """
    settings = settings or ConsoleSettings()
    app = ensure_application(argv)
    theme = get_theme(settings.theme)
    theme.apply(app)
    reporter = ErrorReporter()
    uninstall = install_excepthooks(reporter)  # after pyqtgraph's import (theme.apply did it)
    try:
        ctx = build(db_url, clock=clock, collect=collect)
    except Exception:
        uninstall()
        raise
    executors = Executors(reporter)
    window = MainWindow(ctx, executors, reporter, theme, qsettings=qsettings,
                        refresh_interval_s=settings.refresh_interval_s)
    return Console(app, ctx, executors, reporter, window, uninstall)


def schedule_screenshot(console: Console, path: Path | str, after_s: float) -> None:
    """Save a PNG of the window ``after_s`` seconds from now, then close the console.

    Two seconds before, a unit is selected (the first degraded one, else the first online one)
    so that the detail panel shows figures. Used by ``speakerops demo --screenshot``.
    """
    window, page = console.window, console.window.fleet_page

    def select_unit() -> None:
        snapshot = page.model.snapshot
        for state in ("degraded", "online"):
            rows = snapshot[snapshot["status"] == state] if len(snapshot) else snapshot
            if len(rows):
                page.select_serial(str(rows["serial"].iloc[0]))
                return

    def grab() -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if window.grab().save(str(target)):
            logger.info("screenshot saved to %s", target)
        else:
            logger.error("could not save the screenshot to %s", target)
            console.app.exit(1)
            return
        window.close()

    QTimer.singleShot(int(max(0.0, after_s - 2.0) * 1000), select_unit)
    QTimer.singleShot(int(after_s * 1000), grab)


def main(argv: list[str] | None = None, *, db_url: str | None = None, collect: bool = True,
         screenshot: Path | str | None = None, screenshot_after_s: float = 25.0) -> int:
    """Run the console until its window closes.

    Parameters
    ----------
    argv
        Qt command-line arguments (default ``sys.argv[:1]``).
    db_url
        Database URL (default from ``SPEAKEROPS_DB_URL`` or SQLite in the data directory).
    collect
        Poll units in a background collector inside the console.
    screenshot
        Save a PNG of the window to this path after ``screenshot_after_s`` seconds, then exit.
    screenshot_after_s
        Seconds to let the collector and the table fill before the screenshot.

    Returns
    -------
    int
        Exit status: 0 after a normal close, 1 if the database could not be opened or the
        screenshot could not be saved.
    """
    if not _has_display():
        print("error: no screen to show the console on (DISPLAY and WAYLAND_DISPLAY are unset).\n"
              "Start a virtual one first:  Xvfb :99 -screen 0 1600x1000x24 & export DISPLAY=:99\n"
              "or run without a window:    QT_QPA_PLATFORM=offscreen", file=sys.stderr)
        return 1
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        console = create_console(argv, db_url=db_url, collect=collect)
    except Exception as exc:
        logger.exception("could not start the console")
        ensure_application(argv)
        QMessageBox.critical(
            None, "SpeakerOps cannot open its database",
            f"{describe(exc)}\n\nCheck SPEAKEROPS_DB_URL (or the data directory's permissions) "
            "and start SpeakerOps again.")
        return 1
    console.window.show()
    if screenshot is not None:
        schedule_screenshot(console, screenshot, screenshot_after_s)
    try:
        return int(console.app.exec())
    finally:
        console.close()
