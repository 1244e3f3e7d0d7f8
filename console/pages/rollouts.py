"""The Rollouts page: every rollout with its state and progress; for the selected one its groups
(chart and table), each unit's state, step, bytes and error, the pause reason (e.g. the
voice-quality gate's figures) and the controls Start / Pause / Resume / Cancel / Retry failed.
"New rollout…" opens the plan wizard (:mod:`console.pages.rollout_wizard`) with the live group
preview.

Data flow: every ``refresh_interval_s`` (2 s) while visible, one job on the ``db`` executor
reads :func:`fleet.rollout_control.list_rollouts` and :func:`fleet.rollout_control.status` of
the selected rollout; controls run there too, through the core's control functions, which write
the state and its audit entry in one transaction (actor: the database / OS user). When the
console is given a ``runner_factory``, a started, resumed or retried rollout is run by it on the
``io`` executor (SSH work); otherwise a runner process does it (``speakerops rollout run ID``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from sqlalchemy import select

from console.errors import ErrorReporter
from console.formatting import format_local_time, format_number
from console.jobs import Executors, Job
from console.models.records import RecordSortProxy, RecordTableModel, export_csv
from console.pages.rollout_wizard import RolloutWizard
from console.pages.rollouts_views import (
    GROUP_COLUMNS,
    ROLLOUT_COLUMNS,
    UNIT_COLUMNS,
    GroupProgressChart,
    group_rows,
    legend_html,
    parse_time,
    reason_lines,
    rollout_style,
)
from console.theme import Theme
from console.widgets import MessageBar, RefreshWhileVisible, Tile, section_title, style_table
from fleet import rollout_control
from fleet.rollout_models import Rollout

logger = logging.getLogger(__name__)

#: Rollouts listed (newest first).
LIST_LIMIT = 200
#: Controls and the rollout states that enable them (``fleet.rollout_control``).
CONTROL_STATES: dict[str, frozenset[str]] = {
    "start": frozenset({"planned"}),
    "pause": frozenset({"running"}),
    "resume": frozenset({"paused"}),
    "cancel": frozenset({"planned", "running", "paused", "failed"}),
    "retry": frozenset({"planned", "running", "paused", "completed", "failed"}),
}


@dataclass(frozen=True)
class RolloutsLoad:
    """One refresh: the list, the tiles and the selected rollout's detail (plain data)."""

    rows: tuple[dict[str, Any], ...]
    tiles: dict[str, int]
    selected_id: int | None  # the rollout whose detail was asked for
    detail: dict[str, Any] | None  # its status (None: nothing selected, or no longer listed)
    groups: tuple[dict[str, Any], ...]
    units: tuple[dict[str, Any], ...]
    now: datetime


def load_rollouts(session_factory: Callable[[], Any], clock: Callable[[], datetime],
                  selected_id: int | None) -> RolloutsLoad:
    """The rollout list, tile counts and the selected rollout's status (worker thread)."""
    with session_factory() as session:
        listed = rollout_control.list_rollouts(session, limit=LIST_LIMIT)
        ids = [r["id"] for r in listed]
        extra = {row.id: row for row in session.execute(
            select(Rollout.id, Rollout.created_by, Rollout.started_at).where(Rollout.id.in_(ids)))} if ids else {}
        detail = None
        if selected_id is not None and selected_id in ids:
            detail = rollout_control.status(session, selected_id, units=True)
    rows = []
    tiles = {"running": 0, "paused": 0, "completed": 0, "failed_units": 0}
    for r in listed:
        counts = r.get("counts") or {}
        total = counts.get("total", 0)
        failed = counts.get("failed", 0) + counts.get("rolled_back", 0)
        done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "rolled_back", "skipped", "cancelled"))
        more = extra.get(r["id"])
        rows.append({"id": r["id"], "state": r["state"], "kind": r["kind"], "version": r["version"],
                     "succeeded": counts.get("succeeded", 0), "failed": failed, "total": total,
                     "progress_pct": 100.0 * done / total if total else None,
                     "created_by": r.get("created_by") or (more.created_by if more else None),
                     "started_at": parse_time(r.get("started_at")) or (more.started_at if more else None),
                     "created_at": parse_time(r.get("created_at")), "pause_reason": r.get("pause_reason")})
        if r["state"] in tiles:
            tiles[r["state"]] += 1
        if r["state"] not in ("cancelled",):
            tiles["failed_units"] += failed
    groups, units = group_rows(detail) if detail else ((), ())
    return RolloutsLoad(tuple(rows), tiles, selected_id, detail, groups, units, clock())


def control_rollout(session_factory: Any, clock: Callable[[], datetime], action: str, rollout_id: int,
                    reason: str | None = None) -> str:
    """Run one control (``start``, ``pause``, ``resume``, ``cancel``, ``retry``) in its own unit
    of work (worker). The core writes the state and the audit entry; returns what happened.

    Raises
    ------
    fleet.rollout_control.RolloutError
        The rollout is not in a state that allows ``action`` (the message says which it needs).
    """
    with session_factory.begin() as session:
        if action == "start":
            r = rollout_control.start(session, rollout_id, clock=clock)
        elif action == "pause":
            r = rollout_control.pause(session, rollout_id, reason or None, clock=clock)
        elif action == "resume":
            r = rollout_control.resume(session, rollout_id, clock=clock)
        elif action == "cancel":
            r = rollout_control.cancel(session, rollout_id, reason or None, clock=clock)
        elif action == "retry":
            n = rollout_control.retry(session, rollout_id, clock=clock)
            return f"{n} failed unit{'s' if n != 1 else ''} of rollout #{rollout_id} back to pending"
        else:
            raise ValueError(f"unknown rollout control {action!r}")
        return f"rollout #{rollout_id} is {r.state}"


def run_rollout(runner_factory: Callable[[], Any], rollout_id: int, cancelled: Callable[[], bool],
                report: Callable[[float, str], None]) -> Any:
    """Run (or resume) rollout ``rollout_id`` with a runner from ``runner_factory`` until it ends,
    pauses or ``cancelled()`` (io executor; the runner persists every step, so stopping is safe).
    Returns the runner's summary (``fleet.rollout.RunSummary``)."""
    runner = runner_factory()
    return runner.run(rollout_id, cancelled=cancelled, progress=report)


class RolloutsPage(RefreshWhileVisible, QWidget):
    """Rollouts at a glance, then per group and per unit, with the controls and the plan wizard.

    Parameters
    ----------
    session_factory, clock, executors, reporter, theme
        As every page; reads and controls run on ``executors.db``.
    runner_factory
        Zero-argument callable returning a rollout runner (an object with
        ``run(rollout_id, cancelled=callable)``, e.g. a configured
        ``fleet.rollout.RolloutRunner``). When given, Start / Resume / Retry run the rollout on
        ``executors.io``; when None the page only changes states and a runner process
        (``speakerops rollout run ID``) does the SSH work.
    refresh_interval_s
        Seconds between refreshes while visible (default 2).
    """

    sig_loaded = Signal(int)          # rollouts listed
    sig_changed = Signal(int, str)    # rollout id, what happened
    sig_runner_finished = Signal(int)  # rollout id whose runner job ended

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, *, runner_factory: Callable[[], Any] | None = None,
                 refresh_interval_s: float = 2.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._theme = theme
        self._runner_factory = runner_factory
        self._refresh_job: Job | None = None
        self._action_job: Job | None = None
        self._runner_job: Job | None = None
        self._runner_rollout: int | None = None
        self._selected_id: int | None = None
        self._again = False
        self._closed = False
        self.wizard: RolloutWizard | None = None
        self.last_load: RolloutsLoad | None = None

        title = QLabel("Rollouts")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        self.new_button = QPushButton("New rollout…")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)
        head.addWidget(self.new_button)
        self.tiles = {key: Tile(key, word, theme) for key, word in (
            ("running", "Running"), ("paused", "Paused"), ("completed", "Completed"),
            ("failed_units", "Failed units (listed rollouts)"))}
        tiles_row = QHBoxLayout()
        for tile in self.tiles.values():
            tiles_row.addWidget(tile, 1)
        self.message_bar = MessageBar()

        self.list_model = RecordTableModel(ROLLOUT_COLUMNS, self)
        self.list_proxy = RecordSortProxy(self)
        self.list_proxy.setSourceModel(self.list_model)
        self.list_table = self._table(self.list_proxy, sortable=True)
        self.list_table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.list_table.horizontalHeader().setMaximumSectionSize(480)

        self.headline = QLabel("Select a rollout to see its groups and units.")
        self.headline.setObjectName("sectionTitle")
        self.headline.setTextFormat(Qt.TextFormat.PlainText)
        self.buttons = {key: QPushButton(word) for key, word in (
            ("start", "Start"), ("pause", "Pause…"), ("resume", "Resume"), ("cancel", "Cancel…"),
            ("retry", "Retry failed"))}
        controls = QHBoxLayout()
        controls.addWidget(self.headline, 1)
        for b in self.buttons.values():
            b.setEnabled(False)
            controls.addWidget(b)
        self.reason_label = QLabel("")
        self.reason_label.setObjectName("warning")
        self.reason_label.setWordWrap(True)
        self.reason_label.setTextFormat(Qt.TextFormat.PlainText)
        self.reason_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason_label.hide()
        self.runner_bar = QProgressBar()
        self.runner_bar.setFormat("%v of %m units finished")
        self.runner_label = QLabel("")
        self.runner_stop = QPushButton("Stop runner")
        runner_row = QHBoxLayout()
        runner_row.addWidget(self.runner_label)
        runner_row.addWidget(self.runner_bar, 1)
        runner_row.addWidget(self.runner_stop)
        self.runner_box = QWidget()
        self.runner_box.setLayout(runner_row)
        self.runner_box.hide()

        self.chart = GroupProgressChart(theme)
        self.groups_model = RecordTableModel(GROUP_COLUMNS, self)
        self.groups_table = self._table(self.groups_model)
        self.chart_legend = QLabel(legend_html())
        self.chart_legend.setTextFormat(Qt.TextFormat.RichText)
        self.chart_legend.setWordWrap(True)
        self.chart_legend.setObjectName("muted")
        chart_box = QWidget()
        cl = QVBoxLayout(chart_box)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(2)
        cl.addWidget(self.chart, 1)
        cl.addWidget(self.chart_legend)
        groups_split = QSplitter(Qt.Orientation.Horizontal)
        groups_split.addWidget(chart_box)
        groups_split.addWidget(self.groups_table)
        groups_split.setStretchFactor(0, 1)
        groups_split.setStretchFactor(1, 1)
        self.groups_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        groups_split.setSizes([520, 820])

        self.units_model = RecordTableModel(UNIT_COLUMNS, self)
        self.units_proxy = RecordSortProxy(self)
        self.units_proxy.setSourceModel(self.units_model)
        self.units_table = self._table(self.units_proxy, sortable=True)
        self.units_table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self._sized = False
        self.unit_search = QLineEdit()
        self.unit_search.setPlaceholderText("Filter units (serial, state, error…)")
        self.export_button = QPushButton("Export units CSV…")
        units_bar = QHBoxLayout()
        units_bar.addWidget(section_title("Units"))
        units_bar.addStretch(1)
        units_bar.addWidget(self.unit_search)
        units_bar.addWidget(self.export_button)

        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addLayout(controls)
        dl.addWidget(self.reason_label)
        dl.addWidget(self.runner_box)
        dl.addWidget(groups_split, 2)
        dl.addLayout(units_bar)
        dl.addWidget(self.units_table, 3)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.list_table)
        splitter.addWidget(detail)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([170, 650])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 10)
        layout.setSpacing(10)
        layout.addLayout(head)
        layout.addLayout(tiles_row)
        layout.addWidget(self.message_bar)
        layout.addWidget(splitter, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(int(refresh_interval_s * 1000))
        self.timer.timeout.connect(self.refresh)
        self.list_table.selectionModel().selectionChanged.connect(self._on_list_selection_changed)
        self.list_model.modelReset.connect(self._on_list_model_reset)
        self.unit_search.textChanged.connect(self.units_proxy.setFilterFixedString)
        self.export_button.clicked.connect(self._on_export_button_clicked)
        self.new_button.clicked.connect(self.open_wizard)
        self.buttons["start"].clicked.connect(lambda: self.control_selected("start"))
        self.buttons["pause"].clicked.connect(self._on_pause_button_clicked)
        self.buttons["resume"].clicked.connect(lambda: self.control_selected("resume"))
        self.buttons["cancel"].clicked.connect(self._on_cancel_button_clicked)
        self.buttons["retry"].clicked.connect(lambda: self.control_selected("retry"))
        self.runner_stop.clicked.connect(self.stop_runner)

    @staticmethod
    def _table(model: Any, sortable: bool = False) -> QTableView:
        table = QTableView()
        table.setModel(model)
        table.setSortingEnabled(sortable)
        style_table(table)
        return table

    # -- public API ---------------------------------------------------------------------
    @property
    def selected_id(self) -> int | None:
        """Id of the selected rollout (kept across refreshes)."""
        return self._selected_id

    @property
    def busy(self) -> bool:
        """True while a refresh, a control or a runner job is in flight."""
        return any(j is not None and not j.is_done for j in self._jobs_in_flight()) or bool(
            self.wizard is not None and self.wizard.busy)

    @property
    def runner_active(self) -> bool:
        """True while this console runs a rollout."""
        return self._runner_job is not None and not self._runner_job.is_done

    def refresh(self) -> bool:
        """Start a refresh unless one is in flight (then one more follows); True if started."""
        if self._closed:
            return False
        if self._refresh_job is not None and not self._refresh_job.is_done:
            self._again = True
            return False
        self._refresh_job = (Job(load_rollouts, self.session_factory, self._clock, self._selected_id)
                             .on_success(self._on_refresh_succeeded)
                             .on_failure(self._on_job_failed)
                             .start(self._executors.db, owner=self))
        return True

    def select_rollout(self, rollout_id: int | None) -> bool:
        """Select rollout ``rollout_id`` (as a click would) and load its detail; False if not listed."""
        self._selected_id = rollout_id
        row = self.list_model.row_of("id", rollout_id) if rollout_id is not None else None
        if row is None:
            self.refresh()
            return False
        index = self.list_proxy.mapFromSource(self.list_model.index(row, 0))
        self.list_table.selectRow(index.row())
        self.refresh()
        return True

    def control_selected(self, action: str, reason: str | None = None) -> bool:
        """Run ``action`` (``start``, ``pause``, ``resume``, ``cancel``, ``retry``) on the selected
        rollout off the GUI thread; False if nothing is selected or an action is in flight."""
        rollout_id = self._selected_id
        if rollout_id is None or self._closed or (self._action_job is not None and not self._action_job.is_done):
            return False
        for b in self.buttons.values():
            b.setEnabled(False)
        self._action_job = (Job(control_rollout, self.session_factory, self._clock, action, rollout_id, reason)
                            .on_success(lambda text: self._on_action_succeeded(rollout_id, action, text))
                            .on_failure(self._on_action_failed)
                            .on_done(self.refresh)
                            .start(self._executors.db, owner=self))
        return True

    def pause_selected(self, reason: str | None = None) -> bool:
        return self.control_selected("pause", reason)

    def resume_selected(self) -> bool:
        return self.control_selected("resume")

    def cancel_selected(self, reason: str | None = None) -> bool:
        return self.control_selected("cancel", reason)

    def retry_selected(self) -> bool:
        return self.control_selected("retry")

    def open_wizard(self) -> RolloutWizard:
        """Show the plan wizard (one per page), loading its choices."""
        if self.wizard is None:
            self.wizard = RolloutWizard(self.session_factory, self._clock, self._executors, self._reporter,
                                        self._theme, parent=self)
            self.wizard.setWindowFlag(Qt.WindowType.Window, True)
            self.wizard.sig_created.connect(self._on_wizard_created)
        self.wizard.show()
        self.wizard.raise_()
        self.wizard.load_options()
        return self.wizard

    def run_rollout(self, rollout_id: int) -> bool:
        """Run rollout ``rollout_id`` with the console's runner on the io executor; False without a
        runner factory, or while one already runs."""
        if self._runner_factory is None or self._closed or self.runner_active:
            return False
        self._runner_rollout = rollout_id
        self.runner_label.setText(f"Running rollout #{rollout_id} from this console")
        self.runner_box.show()
        self._runner_job = (Job(run_rollout, self._runner_factory, rollout_id)
                            .with_progress(self._on_runner_progress)
                            .on_success(lambda summary: self._on_runner_succeeded(rollout_id, summary))
                            .on_failure(lambda exc: self._reporter.report(
                                exc, context=f"run rollout #{rollout_id}", panel=self.message_bar))
                            .on_done(lambda: self._on_runner_done(rollout_id))
                            .start(self._executors.io, owner=self))
        return True

    def stop_runner(self) -> None:
        """Ask this console's runner to stop between units (the rollout keeps its state; run it
        again here or with ``speakerops rollout run ID``)."""
        if self._runner_job is not None and not self._runner_job.is_done:
            self._runner_job.cancel()
            self.runner_label.setText(f"Stopping the runner of rollout #{self._runner_rollout}…")

    def export_units(self, path: Path) -> int:
        """Write the shown (filtered, sorted) units of the selected rollout to ``path`` as CSV."""
        rows = [self.units_proxy.index(r, 0).data(Qt.ItemDataRole.UserRole)
                for r in range(self.units_proxy.rowCount())]
        return export_csv(path, UNIT_COLUMNS, rows)

    def apply_role(self, role: str | None) -> None:
        """Hide the actions ``role`` may not do (speakerops.roles.may); the database refuses them anyway."""
        from speakerops.roles import may

        allowed = may(role, "rollouts.write")
        for button in (self.new_button, self.runner_stop, *self.buttons.values()):
            button.setVisible(allowed)

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        for tile in self.tiles.values():
            tile.apply_theme(theme)
        self.chart.apply_theme(theme)
        if self.last_load is not None:
            self.chart.set_groups(list(self.last_load.groups))

    def shutdown(self) -> None:
        """Stop the timer, cancel jobs (the runner stops between units) and close the wizard."""
        self.stop_refreshing()
        if self.wizard is not None:
            self.wizard.shutdown()
            self.wizard.close()

    def _jobs_in_flight(self) -> tuple:
        return (self._refresh_job, self._action_job, self._runner_job)

    # -- internals ----------------------------------------------------------------------
    def _on_refresh_succeeded(self, load: RolloutsLoad) -> None:
        if self._again:
            self._again = False
            self.refresh()
        if load.selected_id != self._selected_id:
            return  # the selection changed meanwhile; the refresh it started brings its detail
        self.last_load = load
        self.list_model.set_rows(load.rows)
        for key, tile in self.tiles.items():
            tile.set_value(load.tiles.get(key, 0))
        self._show_detail(load)
        if not self._sized and load.units:
            self._sized = True
            for table in (self.list_table, self.units_table):
                table.resizeColumnsToContents()
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)}")
        self.sig_loaded.emit(len(load.rows))

    def _show_detail(self, load: RolloutsLoad) -> None:
        d = load.detail
        self.groups_model.set_rows(load.groups)
        self.units_model.set_rows(load.units)
        self.chart.set_groups(list(load.groups))
        if d is None:
            self.headline.setText("Select a rollout to see its groups and units.")
            self.reason_label.hide()
            for b in self.buttons.values():
                b.setEnabled(False)
            return
        c = d["counts"]
        style = rollout_style(d["state"])
        self.headline.setText(
            f"#{d['id']}  {d['kind']} {d['version']}  ·  {style.label if style else d['state']}  ·  "
            f"{c.get('succeeded', 0):,} succeeded, {c.get('failed', 0) + c.get('rolled_back', 0):,} failed of "
            f"{c.get('total', 0):,}  ·  {format_number((d.get('bytes_sent') or 0) / 2**20, 1, 'MiB')} sent")
        reasons = reason_lines(d, load.groups)
        self.reason_label.setText("\n".join(reasons))
        self.reason_label.setVisible(bool(reasons))
        idle = self._action_job is None or self._action_job.is_done
        failed = c.get("failed", 0) + c.get("rolled_back", 0)
        for key, button in self.buttons.items():
            ok = d["state"] in CONTROL_STATES[key] and idle
            button.setEnabled(ok and (key != "retry" or failed > 0))
        if self.runner_active and self._runner_rollout == d["id"]:
            finished = sum(g.get("finished", 0) for g in d.get("groups", []))
            self.runner_bar.setRange(0, max(1, c.get("total", 0)))
            self.runner_bar.setValue(finished)

    def _on_list_model_reset(self) -> None:
        row = self.list_model.row_of("id", self._selected_id) if self._selected_id is not None else None
        if row is not None:
            index = self.list_proxy.mapFromSource(self.list_model.index(row, 0))
            sm = self.list_table.selectionModel()
            sm.blockSignals(True)
            self.list_table.selectRow(index.row())
            sm.blockSignals(False)

    def _on_list_selection_changed(self, *_: Any) -> None:
        rows = self.list_table.selectionModel().selectedRows()
        row = rows[0].data(Qt.ItemDataRole.UserRole) if rows else None
        new_id = row["id"] if row else None
        if new_id != self._selected_id:
            self._selected_id = new_id
            self.refresh()

    def _on_action_succeeded(self, rollout_id: int, action: str, text: str) -> None:
        self.message_bar.clear()
        self.updated_label.setText(text)
        self.sig_changed.emit(rollout_id, action)
        if action in ("start", "resume", "retry"):
            self.run_rollout(rollout_id)

    def _on_action_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="change the rollout", panel=self.message_bar)

    def _on_job_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="read the rollouts", panel=self.message_bar)

    def _on_runner_progress(self, fraction: float, message: str) -> None:
        if message:
            self.runner_label.setText(f"Rollout #{self._runner_rollout}: {message}")

    def _on_runner_succeeded(self, rollout_id: int, summary: Any) -> None:
        why = getattr(summary, "stopped_because", "")
        state = getattr(summary, "state", "")
        self.updated_label.setText(f"Runner of rollout #{rollout_id} stopped: {state}"
                                   + (f" ({why})" if why else ""))

    def _on_runner_done(self, rollout_id: int) -> None:
        self.runner_box.hide()
        self.sig_runner_finished.emit(rollout_id)
        self.refresh()

    def _on_wizard_created(self, rollout_id: int, started: bool) -> None:
        self.message_bar.clear()
        self._selected_id = rollout_id
        self.updated_label.setText(f"Rollout #{rollout_id} {'started' if started else 'created (planned)'}")
        self.sig_changed.emit(rollout_id, "start" if started else "create")
        if self.wizard is not None:
            self.wizard.close()
        if started and not self.run_rollout(rollout_id) and self._runner_factory is None:
            self.updated_label.setText(f"Rollout #{rollout_id} started: run it with `speakerops rollout run "
                                       f"{rollout_id}`")
        self.refresh()

    def _on_pause_button_clicked(self) -> None:
        reason, ok = QInputDialog.getText(self, "Pause rollout", "Why pause (recorded in the audit trail)?")
        if ok:
            self.pause_selected(reason.strip() or None)

    def _on_cancel_button_clicked(self) -> None:
        reason, ok = QInputDialog.getText(
            self, "Cancel rollout", "Units not started are cancelled; units in flight finish or roll back.\n"
            "Why cancel (recorded in the audit trail)?")
        if ok:
            self.cancel_selected(reason.strip() or None)

    def _on_export_button_clicked(self) -> None:
        name = f"rollout-{self._selected_id}-units.csv" if self._selected_id else "rollout-units.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Export units", name, "CSV (*.csv)")
        if not path:
            return
        try:
            n = self.export_units(Path(path))
        except OSError as exc:
            self.message_bar.show_message(f"Could not write {path}: {exc.strerror or exc}. Pick another folder.")
            return
        self.updated_label.setText(f"Exported {n:,} units to {path}")
