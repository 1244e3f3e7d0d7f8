"""Start the console: ``speakerops`` (no arguments) and ``speakerops demo`` call :func:`main`."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QThreadPool, QTimer
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


#: Seconds between the GUI thread's garbage-collection checks. At 1 s (pyqtgraph's
#: ``GarbageCollector``), with the collector thread polling 10,000 units, a young-generation
#: collection took 0.2–0.6 s and a middle one up to 1.3 s (benchmarks/gui_stall.py): the
#: containers allocated in a second by every thread were all traversed at once.
GC_CHECK_INTERVAL_S = 0.1
#: Young collections between two middle-generation ones (CPython: 10). A middle collection
#: traverses what survived the young ones since the last — mostly the rows a job thread is
#: building; every 10 (1 s) that took up to 0.24 s of GUI-thread CPU (benchmarks/gui_stall.py).
GC_MIDDLE_EVERY = 3
#: Least seconds between two full (generation 2) collections; they wait for a moment without
#: running jobs (whose rows they would traverse too) for up to ``GC_FULL_MAX_DEFER_S`` more.
GC_FULL_MIN_INTERVAL_S = 60.0
GC_FULL_MAX_DEFER_S = 240.0


class GuiThreadGarbageCollector(QObject):
    """Python's cyclic garbage collector, run only from a GUI-thread timer, in small steps.

    Automatic collection is disabled (as pyqtgraph's ``GarbageCollector`` does); every
    ``interval_s`` the timer collects generation 0 when its count passed CPython's threshold
    (``gc.get_threshold()[0]``), the middle generation every ``middle_every`` young collections,
    and the whole heap once ``threshold[2]`` middle collections passed and at least
    ``full_min_interval_s`` since the last — at a moment when :meth:`set_busy`'s predicate says
    no job thread runs, or after ``full_max_defer_s`` more anyway. Collecting often keeps each
    step short: its cost grows with the objects allocated since the previous step and still
    alive. ``durations_s`` keeps the last steps' ``(generation, seconds)`` for benchmarks.
    """

    def __init__(self, interval_s: float = GC_CHECK_INTERVAL_S, *, middle_every: int = GC_MIDDLE_EVERY,
                 full_min_interval_s: float = GC_FULL_MIN_INTERVAL_S,
                 full_max_defer_s: float = GC_FULL_MAX_DEFER_S, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.threshold = gc.get_threshold()
        self.middle_every = middle_every
        self.full_min_interval_s = full_min_interval_s
        self.full_max_defer_s = full_max_defer_s
        self._busy: Callable[[], bool] | None = None
        self._last_full = time.monotonic()
        self.durations_s: list[tuple[int, float]] = []
        gc.disable()
        self.timer = QTimer(self)
        self.timer.setInterval(max(1, int(interval_s * 1000)))
        self.timer.timeout.connect(self._on_timer_timeout)
        self.timer.start()

    def set_busy(self, busy: Callable[[], bool] | None) -> None:
        """Hold full collections back while ``busy()`` is true (job threads running), up to
        ``full_max_defer_s``; None: never."""
        self._busy = busy

    def _on_timer_timeout(self) -> None:
        young, middle, old = gc.get_count()
        if young <= self.threshold[0]:
            return
        generation = 0
        if middle >= self.middle_every:
            generation = 1
            since_full = time.monotonic() - self._last_full
            if old >= self.threshold[2] and since_full >= self.full_min_interval_s and (
                    self._busy is None or since_full >= self.full_min_interval_s + self.full_max_defer_s
                    or not self._busy()):
                generation = 2
                self._last_full = time.monotonic()
        t0 = time.perf_counter()
        gc.collect(generation)
        self.durations_s.append((generation, time.perf_counter() - t0))
        del self.durations_s[:-1000]


def collect_garbage_on_gui_thread(app: QApplication, interval_s: float = GC_CHECK_INTERVAL_S) -> None:
    """Run Python's cyclic garbage collector only on the GUI thread (idempotent).

    Pages hold Qt objects in reference cycles (signal connections to lambdas that capture the
    page). Left to itself, the collector runs in whichever thread happens to allocate — often a
    worker thread building a pandas snapshot — and destroys those Qt objects there: ``~QObject``
    then waits for a Qt mutex while holding what the GUI thread needs, a deadlock, or crashes.
    (Seen: the GUI thread in ``QObject::~QObject`` of a ``QMenu`` deleted by shiboken's
    ``runDeletionInMainThread``, a job thread in ``gc_collect_main`` → ``~QObject`` waiting for
    the GIL.) Automatic collection is disabled and a GUI-thread timer collects instead
    (:class:`GuiThreadGarbageCollector`, after pyqtgraph's ``GarbageCollector`` and Erik
    Janssens, "Should Python garbage collector be called manually?").
    """
    if getattr(app, "_speakerops_gc", None) is not None:
        return
    app._speakerops_gc = GuiThreadGarbageCollector(interval_s, parent=app)  # type: ignore[attr-defined]


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now (modules, widgets, the composition root)
    into the collector's permanent generation (``gc.freeze``), so that full collections only
    traverse what was allocated since; call once the window is built (``Console.close``
    unfreezes)."""
    gc.collect()
    gc.freeze()


#: The interpreter's thread switch interval in the console (CPython's default: 5 ms). A thread
#: running Python (a job building a snapshot, an in-process collector) keeps the GIL up to this
#: long before the GUI thread gets it back for its next slot or paint call; at 1 ms the fleet
#: table's repaint beside a busy Python thread took ~0.5× as long (benchmarks/fleet_table_100k.py).
GIL_SWITCH_INTERVAL_S = 0.001


#: Niceness added to the console's collector process: on 2 cores the collector, the job threads
#: and the GUI thread compete for CPU, and a GUI thread descheduled for a time slice shows as a
#: stall (benchmarks/gui_stall.py: a 20 ms garbage collection took 96 ms of wall time). +5 gives
#: the collector about a third of the weight of the console's threads when both want a core
#: (Linux CFS); when the console is idle the collector still gets all the CPU it needs.
COLLECTOR_NICE = 5


class CollectorProcess:
    """``speakerops collect`` run as a child process of the console, on the console's database.

    In a thread of the console, polling 10,000 units every 10 s kept the console's interpreter
    busy: the GUI thread waited for the GIL and its garbage collector traversed the collector's
    objects (a full collection took 0.5 s of GUI-thread CPU; with the collector in its own
    process 0.09 s — benchmarks/gui_stall.py). The window reads this collector's cycles from the
    ``collector_status`` table, as it does for any other collector. It runs
    :data:`COLLECTOR_NICE` steps nicer than the console.

    Parameters
    ----------
    db_url
        The database, passed in the child's environment (``SPEAKEROPS_DB_URL``), not on its
        command line, so that a password does not show in the process list.
    nice
        Niceness added to the child's (0: as the console).
    """

    def __init__(self, db_url: str, nice: int = COLLECTOR_NICE) -> None:
        self.db_url = db_url
        self.nice = nice
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child (its log goes to this process's standard error)."""
        if self.is_running:
            return
        env = dict(os.environ, SPEAKEROPS_DB_URL=self.db_url, SPEAKEROPS_PARENT_PID=str(os.getpid()))
        self.process = subprocess.Popen([sys.executable, "-m", "speakerops.cli", "collect"], env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if self.nice:
            try:
                pid = self.process.pid
                os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid) + self.nice)
            except OSError as exc:  # e.g. the child already exited; it then reports itself
                logger.warning("could not lower the collector's priority: %s", exc)
        logger.info("collector started in its own process (pid %d)", self.process.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_status(self) -> int | None:
        """The child's exit status once it ended, else None."""
        return self.process.poll() if self.process is not None else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to finish its cycle and stop (SIGTERM); kill it after ``timeout_s``."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("collector process %d did not stop within %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait(timeout_s)


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
    collector_process: CollectorProcess | None = None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the window's timers, the job threads, the collector; dispose the engine."""
        self.window.shutdown()
        gc_timer = getattr(self.app, "_speakerops_gc", None)
        if gc_timer is not None:
            gc_timer.set_busy(None)
        self.executors.shutdown(timeout_s)
        if self.collector_process is not None:
            self.collector_process.stop(2 * timeout_s)
        self.ctx.close(timeout_s)
        self.reporter.close_dialogs()
        self.uninstall_hooks()
        QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000))
        gc.unfreeze()  # what create_console froze is collectable again (tests run many consoles)


def read_processes(db_url: str, settings: ConsoleSettings) -> bool:
    """True if the pages' periodic reads run in read processes (``settings.reads``): not for an
    in-memory SQLite database, which another process cannot open."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    return settings.reads == "process" and not memory


def create_console(argv: list[str] | None = None, *, db_url: str | None = None,
                   collect: bool = True, clock: Clock = utc_now,
                   settings: ConsoleSettings | None = None,
                   qsettings: QSettings | None = None) -> Console:
    """Build everything :func:`main` runs, without entering the event loop.

    ``collect`` runs the console's own collector where ``settings.collector`` says: a child
    process (:class:`CollectorProcess`, the default) or a thread of the console.

    Raises
    ------
    Exception
        Whatever :func:`console.bootstrap.build` raises when the database cannot be opened or
        migrated (the hooks are uninstalled first).
    """
    settings = settings or ConsoleSettings()
    app = ensure_application(argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    theme = get_theme(settings.theme)
    theme.apply(app)
    reporter = ErrorReporter()
    uninstall = install_excepthooks(reporter)  # after pyqtgraph's import (theme.apply did it)
    in_process = collect and settings.collector == "thread"
    try:
        ctx = build(db_url, clock=clock, collect=in_process)
    except Exception:
        uninstall()
        raise
    collector_process = CollectorProcess(ctx.db_url) if collect and not in_process else None
    if collector_process is not None:
        collector_process.start()
    executors = Executors(reporter, read_db_url=ctx.db_url if read_processes(ctx.db_url, settings) else None)
    gc_timer = getattr(app, "_speakerops_gc", None)
    if gc_timer is not None:
        gc_timer.set_busy(lambda: any(ex.active_thread_count() for ex in executors.all() if ex.in_process))
    window = MainWindow(ctx, executors, reporter, theme, qsettings=qsettings,
                        refresh_interval_s=settings.refresh_interval_s, collector_process=collector_process)
    freeze_startup_heap()
    return Console(app, ctx, executors, reporter, window, uninstall, collector_process)


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
