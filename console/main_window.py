"""The main window "SpeakerOps": navigation on the left, one page per entry, and a status bar
telling which database is open and what the collector is doing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from importlib.resources import as_file, files
from typing import Any

from PySide6.QtCore import QByteArray, QObject, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from console.bootstrap import AppContext
from console.errors import ErrorReporter
from console.formatting import format_age, format_local_time, format_number
from console.jobs import Executors, Job
from console.pages.alerts import AlertsPage, read_open_count
from console.pages.audit import AuditPage
from console.pages.diagnostics import DiagnosticsPage
from console.pages.feedback import FeedbackPage
from console.pages.fleet import FleetPage
from console.pages.models import ModelsPage
from console.pages.rollouts import RolloutsPage
from console.pages.service_flow import ServiceFlowPage
from console.pages.stub import PLANNED_PAGES, StubPage
from console.pages.tickets import TicketsPage
from console.pages.unit_diagnosis import UnitDiagnosisPanel
from console.theme import THEMES, Theme
from fleet.queries import collector_statuses

logger = logging.getLogger(__name__)

#: The Alerts entry; the navigation shows it as "Alerts (N)", N open.
ALERTS_ENTRY = "Alerts"
#: Navigation entries, in order: the operator's pages, then the technician's, the product
#: owner's, and the audit trail everyone may read.
NAV_ENTRIES: tuple[str, ...] = ("Fleet", "Service flow", ALERTS_ENTRY, "Models", "Rollouts", "Diagnostics",
                                "Tickets", "Feedback", "Audit")
#: Seconds between refreshes of the Alerts badge, whether or not the page is shown.
ALERTS_BADGE_INTERVAL_S = 10.0


def make_rollout_runner(ctx: AppContext) -> Any:
    """The rollout engine over SSH for the Rollouts page (built when a rollout is started)."""
    from fleet.rollout import RolloutRunner
    from fleet.ssh import SshConnector

    connector = SshConnector(ctx.session_factory, data_dir=ctx.settings.data_dir, clock=ctx.clock)
    return RolloutRunner(ctx.session_factory, connector, ctx.clock)


def make_workbench(ctx: AppContext) -> Any:
    """The technician workbench (SSH connector, evidence directory, model cache) for the unit panel."""
    from fleet.ssh import SshConnector
    from fleet.workbench import WorkbenchContext

    connector = SshConnector(ctx.session_factory, data_dir=ctx.settings.data_dir, clock=ctx.clock)
    return WorkbenchContext(ctx.session_factory, connector, ctx.settings.data_dir,
                            ctx.models_root or ctx.settings.data_dir / "models", ctx.clock)


def read_collector_statuses(session_factory: Callable[[], Any]) -> list[dict[str, Any]]:
    """Every collector's latest cycle as plain dicts, newest first (worker thread)."""
    keys = ("name", "started_at", "last_cycle_at", "cycle_s", "interval_s", "units_polled",
            "units_ok", "units_failed", "pending_rows", "last_error")
    with session_factory() as session:
        return [{k: getattr(row, k) for k in keys} for row in collector_statuses(session)]


class CollectorBridge(QObject):
    """Adapts the collector's plain ``on_cycle`` callback (its own thread) to a queued signal."""

    sig_cycle = Signal(object)  # fleet.collector.CycleResult

    def deliver(self, result: Any) -> None:
        """Called on the collector's thread; the signal reaches the GUI thread queued."""
        self.sig_cycle.emit(result)


class MainWindow(QMainWindow):
    """The console's window.

    Parameters
    ----------
    ctx
        The composition root's context (database, clock, collector).
    executors
        Job executors shared by the pages.
    reporter
        The error reporter (dialogs are parented to this window).
    theme
        Initial theme.
    qsettings
        Where window geometry is kept; default ``QSettings("speakerops", "console")``.
    refresh_interval_s
        Fleet page refresh period while visible, seconds.
    collector_process
        The console's collector when it runs as a child process (``console.app.CollectorProcess``:
        ``pid``, ``is_running``, ``exit_status``); its cycles are read from the database.
    """

    sig_theme_changed = Signal(str)

    def __init__(self, ctx: AppContext, executors: Executors, reporter: ErrorReporter,
                 theme: Theme, *, qsettings: QSettings | None = None,
                 refresh_interval_s: float = 2.0, collector_process: Any = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.collector_process = collector_process
        self.executors = executors
        self.reporter = reporter
        self.theme = theme
        self._qsettings = qsettings or QSettings("speakerops", "console")
        self._last_cycle: Any = None
        self._status_job: Job | None = None
        self._shut_down = False
        reporter.set_parent_widget(self)
        self.setWindowTitle("SpeakerOps")
        with as_file(files("resources") / "speakerops.svg") as icon_path:
            self.setWindowIcon(QIcon(str(icon_path)))

        self.nav = QListWidget()
        self.nav.setObjectName("navList")
        self.nav.addItems(list(NAV_ENTRIES))
        self.stack = QStackedWidget()
        self.fleet_page = FleetPage(ctx.session_factory, ctx.clock, executors, reporter, theme,
                                    refresh_interval_s=refresh_interval_s)
        self.service_flow_page = ServiceFlowPage(ctx.session_factory, ctx.clock, executors, reporter, theme)
        self.alerts_page = AlertsPage(ctx.session_factory, ctx.clock, executors, reporter, theme)
        self.unit_panel = UnitDiagnosisPanel(ctx.session_factory, ctx.clock, executors, reporter, theme,
                                             workbench_factory=lambda: make_workbench(ctx))
        self.diagnostics_page = DiagnosticsPage(
            ctx.models_root or ctx.settings.data_dir / "models", executors, reporter, theme,
            reports_dir=ctx.settings.data_dir / "reports", clock=ctx.clock, unit_panel=self.unit_panel)
        self.audit_page = AuditPage(ctx.session_factory, ctx.clock, executors, reporter, theme)
        self.models_page = ModelsPage(ctx.session_factory, ctx.clock, executors, reporter, theme,
                                      data_dir=ctx.settings.data_dir)
        self.rollouts_page = RolloutsPage(ctx.session_factory, ctx.clock, executors, reporter, theme,
                                          runner_factory=lambda: make_rollout_runner(ctx))
        self.tickets_page = TicketsPage(ctx.session_factory, ctx.clock, executors, reporter, theme)
        self.feedback_page = FeedbackPage(ctx.session_factory, ctx.clock, executors, reporter, theme,
                                          models_root=ctx.models_root)
        self.feedback_page.sig_create_ticket.connect(self._on_feedback_page_create_ticket)
        #: Every page by navigation entry (stub pages for those not built yet).
        self.pages: dict[str, QWidget] = {
            "Fleet": self.fleet_page, "Service flow": self.service_flow_page, ALERTS_ENTRY: self.alerts_page,
            "Diagnostics": self.diagnostics_page, "Audit": self.audit_page, "Models": self.models_page,
            "Rollouts": self.rollouts_page, "Tickets": self.tickets_page, "Feedback": self.feedback_page}
        self.stub_pages = [StubPage(p) for p in PLANNED_PAGES if p.name not in self.pages]
        self.pages.update({s.page.name: s for s in self.stub_pages})
        for name in NAV_ENTRIES:
            self.stack.addWidget(self.pages[name])
        for page in self.pages.values():  # hide what the login's role may not do
            if hasattr(page, "apply_role"):
                page.apply_role(ctx.role)
        self.alerts_nav_item = self.nav.item(NAV_ENTRIES.index(ALERTS_ENTRY))
        self._alerts_count_job: Job | None = None
        self.alerts_page.sig_open_count.connect(self._on_alerts_page_open_count)
        self.alerts_page.sig_changed.connect(lambda *_: self._refresh_alerts_badge())
        app_title = QLabel("SpeakerOps")
        app_title.setObjectName("appTitle")
        left = QWidget()
        left.setFixedWidth(168)
        left_col = QVBoxLayout(left)
        left_col.setContentsMargins(0, 0, 0, 0)
        left_col.setSpacing(0)
        left_col.addWidget(app_title)
        left_col.addWidget(self.nav, 1)
        central = QWidget()
        row = QHBoxLayout(central)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(left)
        row.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self.nav.currentRowChanged.connect(self._on_nav_current_row_changed)
        self.nav.setCurrentRow(0)

        role = ctx.role or "no role: read-only"
        self.db_label = QLabel(f"Database: {ctx.db_description} ({ctx.db_backend}) · {ctx.login} ({role})")
        self.db_label.setToolTip("SPEAKEROPS_DB_URL selects the database; SQLite is the default.")
        self.collector_label = QLabel()
        self.collector_warning = QLabel()
        self.collector_warning.setObjectName("warning")
        self.collector_warning.hide()
        bar = self.statusBar()
        bar.setSizeGripEnabled(False)
        bar.addWidget(self.db_label)
        bar.addPermanentWidget(self.collector_warning)
        bar.addPermanentWidget(self.collector_label)

        self._build_menus()
        self.bridge = CollectorBridge()
        self.bridge.sig_cycle.connect(self._on_bridge_cycle, Qt.ConnectionType.QueuedConnection)
        ctx.add_cycle_listener(self.bridge.deliver)
        self.status_timer = QTimer(self)
        self.status_timer.setInterval(5000)
        self.status_timer.timeout.connect(self._on_status_timer_timeout)
        self.status_timer.start()
        self._update_collector_status()
        self.alerts_badge_timer = QTimer(self)
        self.alerts_badge_timer.setInterval(int(ALERTS_BADGE_INTERVAL_S * 1000))
        self.alerts_badge_timer.timeout.connect(self._refresh_alerts_badge)
        self.alerts_badge_timer.start()
        self._refresh_alerts_badge()
        self._restore_geometry()

    # -- menus and theme ----------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        view = self.menuBar().addMenu("&View")
        group = QActionGroup(self)
        group.setExclusive(True)
        self.theme_actions: dict[str, QAction] = {}
        for name in THEMES:
            action = QAction(f"{name.capitalize()} theme", self, checkable=True)
            action.setChecked(name == self.theme.name)
            action.triggered.connect(lambda _=False, n=name: self.set_theme(n))
            group.addAction(action)
            view.addAction(action)
            self.theme_actions[name] = action
        self.toggle_theme_action = QAction("&Toggle dark/light", self)
        self.toggle_theme_action.setShortcut(QKeySequence("Ctrl+T"))
        self.toggle_theme_action.triggered.connect(self._on_toggle_theme_triggered)
        view.addAction(self.toggle_theme_action)
        view.addSeparator()
        for i, name in enumerate(NAV_ENTRIES):
            action = QAction(name, self)
            action.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            action.triggered.connect(lambda _=False, r=i: self.nav.setCurrentRow(r))
            view.addAction(action)

    def set_theme(self, name: str) -> None:
        """Switch to theme ``name`` (``"dark"``/``"light"``): stylesheet, palette, plots."""
        theme = THEMES[name]
        self.theme = theme
        app = QApplication.instance()
        if isinstance(app, QApplication):
            theme.apply(app)
        for page in self.pages.values():
            if hasattr(page, "apply_theme"):
                page.apply_theme(theme)
        self.theme_actions[name].setChecked(True)
        self.sig_theme_changed.emit(name)

    def _on_toggle_theme_triggered(self) -> None:
        self.set_theme("light" if self.theme.is_dark else "dark")

    # -- navigation ---------------------------------------------------------------------
    def show_page(self, name: str) -> QWidget:
        """Show the page of navigation entry ``name`` and return it.

        Raises
        ------
        ValueError
            For a name not in :data:`NAV_ENTRIES`.
        """
        self.nav.setCurrentRow(NAV_ENTRIES.index(name))
        return self.stack.currentWidget()

    def _on_feedback_page_create_ticket(self, feedback_id: int) -> None:
        self.show_page("Tickets")
        self.tickets_page.ask_create_from_feedback(feedback_id)

    def _on_nav_current_row_changed(self, row: int) -> None:
        if row >= 0:
            self.stack.setCurrentIndex(row)

    # -- alerts badge -------------------------------------------------------------------
    def _refresh_alerts_badge(self) -> None:
        """Count open alerts off the GUI thread and show "Alerts (N)" in the navigation."""
        if self._shut_down or (self._alerts_count_job is not None and not self._alerts_count_job.is_done):
            return
        self._alerts_count_job = (Job(read_open_count, self.ctx.session_factory)
                                  .on_success(self._on_alerts_page_open_count)
                                  .on_failure(lambda exc: None)  # the pages report DB trouble
                                  .start(self.executors.db, owner=self))

    def _on_alerts_page_open_count(self, count: int) -> None:
        self.alerts_nav_item.setText(f"{ALERTS_ENTRY} ({count:,})" if count else ALERTS_ENTRY)

    # -- collector status ---------------------------------------------------------------
    def _on_bridge_cycle(self, result: Any) -> None:
        self._last_cycle = result
        self._update_collector_status()

    def _on_status_timer_timeout(self) -> None:
        if self._shut_down:
            return
        self._update_collector_status()
        if self.ctx.collector is None and (self._status_job is None or self._status_job.is_done):
            self._status_job = (Job(read_collector_statuses, self.ctx.session_factory)
                                .on_success(self._on_statuses_loaded)
                                .on_failure(lambda exc: None)  # the fleet page reports DB trouble
                                .start(self.executors.db, owner=self))

    def _on_statuses_loaded(self, rows: list[dict[str, Any]]) -> None:
        if self.ctx.collector is not None or not rows:
            return
        child = self.collector_process
        if child is not None:  # this console's own collector, not an older run's row
            rows = [r for r in rows if str(r["name"]).endswith(f":{child.pid}")]
            if not rows:
                return
        row = rows[0]
        cycle = format_local_time(row["last_cycle_at"], zone=True)
        where = "its own process" if child is not None else "another process"
        self.collector_label.setText(
            f"Collector {row['name']} ({where}): last cycle {cycle} · "
            f"{row['units_polled']:,} polled, {row['units_ok']:,} ok, {row['units_failed']:,} failed")
        warnings = []
        if row["pending_rows"]:
            warnings.append(f"▲ {row['pending_rows']:,} heartbeats pending")
        if row["last_error"]:
            warnings.append(f"▲ {row['last_error']}")
        if child is not None and not child.is_running:
            warnings.append(f"▲ The collector process exited (status {child.exit_status}); "
                            "restart the console to collect again")
        self._set_warning(" · ".join(warnings))

    def _set_warning(self, text: str) -> None:
        self.collector_warning.setText(text)
        self.collector_warning.setVisible(bool(text))

    def _update_collector_status(self) -> None:
        collector = self.ctx.collector
        if collector is None:
            child = self.collector_process
            if child is not None and not child.is_running:
                self._set_warning(f"▲ The collector process exited (status {child.exit_status}); "
                                  "restart the console to collect again")
            if "process):" in self.collector_label.text():
                return  # the latest row of collector_status is shown
            if child is not None:
                self.collector_label.setText(f"Collector: started in its own process (pid {child.pid}) · "
                                             "waiting for its first cycle")
                return
            self.collector_label.setText("Collector: not running in this console")
            return
        state = "running" if collector.is_running else "stopped"
        cycle = self._last_cycle
        if cycle is None:
            self.collector_label.setText(f"Collector: {state} · waiting for the first cycle")
            self._set_warning("")
            return
        ended = cycle.started_at + timedelta(seconds=cycle.duration_s)
        self.collector_label.setText(
            f"Collector: {state} · last cycle {format_local_time(ended, zone=True)} "
            f"({format_number(cycle.duration_s, 1)} s) · {cycle.polled:,} polled, "
            f"{cycle.ok:,} ok, {cycle.failed:,} failed")
        warnings = []
        if cycle.pending:
            warnings.append(f"▲ {cycle.pending:,} heartbeats pending (not yet written)")
        if cycle.db_error:
            warnings.append(f"▲ Database write failed: {cycle.db_error}")
        interval = getattr(getattr(collector, "collector", None), "settings", None)
        interval_s = getattr(interval, "interval_s", None)
        if collector.is_running and interval_s:
            age = (self.ctx.clock() - ended).total_seconds()
            if age > 3 * interval_s:
                warnings.append(f"▲ no cycle for {format_age(age)}")
        self._set_warning(" · ".join(warnings))

    # -- geometry and shutdown ----------------------------------------------------------
    def _restore_geometry(self) -> None:
        geometry = self._qsettings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1500, 920)
        splitter = self._qsettings.value("fleet/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.fleet_page.splitter.restoreState(splitter)

    def save_geometry(self) -> None:
        """Keep the window geometry (and the fleet splitter) in QSettings."""
        self._qsettings.setValue("window/geometry", self.saveGeometry())
        self._qsettings.setValue("fleet/splitter", self.fleet_page.splitter.saveState())
        self._qsettings.sync()

    def shutdown(self) -> None:
        """Stop timers and listeners and cancel page jobs; idempotent. The executors and the
        context are shut by their owner (``console.app.main``)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.status_timer.stop()
        self.alerts_badge_timer.stop()
        self.ctx.remove_cycle_listener(self.bridge.deliver)
        for page in self.pages.values():
            if hasattr(page, "shutdown"):
                page.shutdown()
        if self._alerts_count_job is not None and not self._alerts_count_job.is_done:
            self._alerts_count_job.cancel()
        if self._status_job is not None and not self._status_job.is_done:
            self._status_job.cancel()
        self.reporter.close_dialogs()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        self.save_geometry()
        self.shutdown()
        super().closeEvent(event)
