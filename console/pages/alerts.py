"""The Alerts page: tiles (open, acknowledged, critical), the alerts table with a state filter,
Acknowledge / Resolve for the selected alert, and its history.

The collector evaluates the rules (``fleet.alerts.evaluate``); this page only reads, every
``refresh_interval_s`` (default 5 s) while visible, on the ``db`` executor. Acknowledge and
Resolve run there too, as the OS user.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.errors import ErrorReporter
from console.formatting import format_local_time
from console.jobs import Executors, Job
from console.theme import StatusStyle, Theme
from console.widgets import MessageBar, RefreshWhileVisible, Tile, style_table
from fleet import alerts

logger = logging.getLogger(__name__)

#: Severity styles: Okabe–Ito colour, a glyph of its own shape and the word (never colour alone).
SEVERITY_STYLES: dict[str, StatusStyle] = {
    "info": StatusStyle("info", "●", "#56B4E9"),         # sky blue
    "warning": StatusStyle("warning", "▲", "#E69F00"),   # orange
    "critical": StatusStyle("critical", "✖", "#D55E00"),  # vermillion
}
#: State filter entries: (label, state or None for all).
STATE_FILTERS: tuple[tuple[str, str | None], ...] = (
    ("Open", "open"), ("Acknowledged", "acknowledged"), ("Resolved", "resolved"), ("All", None))
#: Table columns: (key, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("severity", "Severity"), ("rule", "Rule"), ("scope_key", "Scope"), ("opened_at", "Since"),
    ("value", "Value"), ("state", "State"))


def _dt(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


@dataclass(frozen=True)
class AlertsLoad:
    """One refresh: the rows shown, the counts for the tiles and the selected alert's history."""

    rows: tuple[dict[str, Any], ...]
    counts: dict[str, int]
    history_id: int | None
    history: tuple[dict[str, Any], ...]
    now: datetime


def load_alerts(session_factory: Callable[[], Any], clock: Callable[[], datetime],
                state: str | None, history_id: int | None) -> AlertsLoad:
    """Read alerts in ``state`` (None: all), the counts and alert ``history_id``'s events (worker)."""
    now = clock()
    with session_factory() as session:
        rows = alerts.list_alerts(session, state=state)
        counts = alerts.state_counts(session)
        history = alerts.alert_events(session, history_id) if history_id is not None else []
    return AlertsLoad(tuple(rows), counts, history_id, tuple(history), now)


def read_open_count(session_factory: Callable[[], Any]) -> int:
    """Open alerts (worker thread), for the navigation badge."""
    with session_factory() as session:
        return alerts.open_count(session)


def change_alert(session_factory: Any, clock: Callable[[], datetime], action: str, alert_id: int,
                 actor: str) -> str:
    """Acknowledge (``action="ack"``) or resolve alert ``alert_id`` in one unit of work (worker)."""
    fn = alerts.acknowledge if action == "ack" else alerts.resolve
    with session_factory.begin() as session:
        return fn(session, alert_id, actor, clock()).state


class AlertTableModel(QAbstractTableModel):
    """Alerts over an immutable snapshot (tuple of :func:`fleet.alerts.list_alerts` dicts).
    ``Qt.UserRole`` gives the row's dict."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: tuple[dict[str, Any], ...] = ()

    def set_rows(self, rows: tuple[dict[str, Any], ...]) -> None:
        self.beginResetModel()
        self._rows = rows
        self.endResetModel()

    def row_dict(self, row: int | None) -> dict[str, Any] | None:
        return self._rows[row] if row is not None and 0 <= row < len(self._rows) else None

    def row_of(self, alert_id: int) -> int | None:
        return next((i for i, r in enumerate(self._rows) if r["id"] == alert_id), None)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][1]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        key = COLUMNS[index.column()][0]
        if role == Qt.ItemDataRole.UserRole:
            return row
        if key == "severity" and role == Qt.ItemDataRole.ForegroundRole:
            return QColor(SEVERITY_STYLES.get(row["severity"], SEVERITY_STYLES["info"]).color)
        if key == "value" and role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            return row["message"]
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if key == "severity":
            style = SEVERITY_STYLES.get(row["severity"])
            return style.label if style else row["severity"]
        if key == "opened_at":
            return format_local_time(_dt(row["opened_at"]), zone=True)
        if key == "value":
            return "—" if row["value"] is None else f"{row['value']:.4g}"
        return row[key]


class AlertsPage(RefreshWhileVisible, QWidget):
    """Open alerts at a glance, then per alert with its history.

    Parameters
    ----------
    session_factory
        Units of work (``with session_factory() as s`` / ``session_factory.begin()``).
    clock
        Aware UTC now.
    executors
        Reads and acknowledge/resolve run on ``executors.db``.
    reporter
        Error reporter; expected failures show in the page's message bar.
    theme
        Initial look.
    refresh_interval_s
        Seconds between refreshes while visible (default 5).
    """

    sig_loaded = Signal(int)  # rows shown
    sig_open_count = Signal(int)
    sig_changed = Signal(int, str)  # alert id, new state

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, refresh_interval_s: float = 5.0,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._refresh_job: Job | None = None
        self._action_job: Job | None = None
        self._selected_id: int | None = None
        self._closed = False
        self.actor = getpass.getuser()

        title = QLabel("Alerts")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)
        self.tiles: dict[str, Tile] = {}
        tiles_row = QHBoxLayout()
        for key, word in (("open", "Open"), ("acknowledged", "Acknowledged"), ("critical", "Critical")):
            tile = Tile(key, word, theme)
            tile.sig_clicked.connect(self._on_tile_clicked)
            self.tiles[key] = tile
            tiles_row.addWidget(tile, 1)
        self.message_bar = MessageBar()

        self.state_combo = QComboBox()
        for label, state in STATE_FILTERS:
            self.state_combo.addItem(label, state)
        self.ack_button = QPushButton("Acknowledge")
        self.resolve_button = QPushButton("Resolve")
        for b in (self.ack_button, self.resolve_button):
            b.setEnabled(False)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("State"))
        bar.addWidget(self.state_combo)
        bar.addStretch(1)
        bar.addWidget(self.ack_button)
        bar.addWidget(self.resolve_button)

        self.model = AlertTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        style_table(self.table)
        self.history = QLabel("Select an alert to see its history.")
        self.history.setObjectName("muted")
        self.history.setWordWrap(True)
        self.history.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.history.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.history)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 10)
        layout.setSpacing(10)
        layout.addLayout(head)
        layout.addLayout(tiles_row)
        layout.addWidget(self.message_bar)
        layout.addLayout(bar)
        layout.addWidget(splitter, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(int(refresh_interval_s * 1000))
        self.timer.timeout.connect(self._on_timer_timeout)
        self.state_combo.currentIndexChanged.connect(self._on_state_combo_changed)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection_changed)
        self.model.modelReset.connect(self._on_model_reset)
        self.ack_button.clicked.connect(self._on_ack_button_clicked)
        self.resolve_button.clicked.connect(self._on_resolve_button_clicked)

    # -- public API ---------------------------------------------------------------------
    @property
    def selected_id(self) -> int | None:
        """Id of the selected alert (kept across refreshes)."""
        return self._selected_id

    @property
    def busy(self) -> bool:
        """True while a refresh or an action is in flight."""
        return any(j is not None and not j.is_done for j in (self._refresh_job, self._action_job))

    def set_state_filter(self, state: str | None) -> None:
        """Show alerts in ``state`` (``open``, ``acknowledged``, ``resolved``; None: all)."""
        self.state_combo.setCurrentIndex(self.state_combo.findData(state))

    def select_alert(self, alert_id: int) -> bool:
        """Select alert ``alert_id`` in the table; False if not shown."""
        row = self.model.row_of(alert_id)
        if row is None:
            return False
        self.table.selectRow(row)
        return True

    def refresh(self) -> bool:
        """Start a refresh unless one is in flight; returns whether one started."""
        if self._closed or (self._refresh_job is not None and not self._refresh_job.is_done):
            return False
        self._refresh_job = (Job(load_alerts, self.session_factory, self._clock,
                                 self.state_combo.currentData(), self._selected_id)
                             .on_success(self._on_refresh_succeeded)
                             .on_failure(self._on_job_failed)
                             .start(self._executors.db, owner=self))
        return True

    def acknowledge_selected(self) -> None:
        """Acknowledge the selected alert (as the OS user), off the GUI thread."""
        self._run_action("ack")

    def resolve_selected(self) -> None:
        """Resolve the selected alert (as the OS user), off the GUI thread."""
        self._run_action("resolve")

    def apply_role(self, role: str | None) -> None:
        """Hide the actions ``role`` may not do (speakerops.roles.may); the database refuses them anyway."""
        from speakerops.roles import may

        for button in (self.ack_button, self.resolve_button):
            button.setVisible(may(role, "alerts.write"))

    def apply_theme(self, theme: Theme) -> None:
        """Recolour the tiles."""
        for tile in self.tiles.values():
            tile.apply_theme(theme)

    def shutdown(self) -> None:
        """Stop the timer and cancel jobs in flight; idempotent."""
        self.stop_refreshing()

    def _jobs_in_flight(self) -> tuple:
        return (self._refresh_job, self._action_job)


    # -- internals ----------------------------------------------------------------------
    def _run_action(self, action: str) -> None:
        if self._selected_id is None or self._closed or (
                self._action_job is not None and not self._action_job.is_done):
            return
        alert_id = self._selected_id
        self._action_job = (Job(change_alert, self.session_factory, self._clock, action, alert_id,
                                self.actor)
                            .on_success(lambda state: self._on_action_succeeded(alert_id, state))
                            .on_failure(self._on_job_failed)
                            .start(self._executors.db, owner=self))

    def _on_action_succeeded(self, alert_id: int, state: str) -> None:
        self.sig_changed.emit(alert_id, state)
        self.refresh()

    def _on_timer_timeout(self) -> None:
        self.refresh()

    def _on_state_combo_changed(self, _index: int) -> None:
        self.refresh()

    def _on_tile_clicked(self, key: str) -> None:
        self.set_state_filter("open" if key == "critical" else key)

    def _on_refresh_succeeded(self, load: AlertsLoad) -> None:
        self.message_bar.clear()
        self.model.set_rows(load.rows)
        for key, tile in self.tiles.items():
            tile.set_value(load.counts.get(key, 0))
        if load.history_id == self._selected_id:
            self._show_history(load.history)
        else:  # the selection changed while this refresh was in flight
            self.refresh()
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)}")
        self.sig_open_count.emit(load.counts.get("open", 0))
        self.sig_loaded.emit(len(load.rows))

    def _on_job_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="work on alerts", panel=self.message_bar)

    def _on_model_reset(self) -> None:
        row = self.model.row_of(self._selected_id) if self._selected_id is not None else None
        if row is not None:
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)
        self._update_buttons()

    def _on_table_selection_changed(self, *_: Any) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        row = self.model.row_dict(rows[0].row())
        if row is None or row["id"] == self._selected_id:
            self._update_buttons()
            return
        self._selected_id = row["id"]
        self._update_buttons()
        self.history.setText("Loading history…")
        self.refresh()

    def _update_buttons(self) -> None:
        row = self.model.row_dict(self.model.row_of(self._selected_id)) if self._selected_id is not None else None
        state = row["state"] if row else None
        self.ack_button.setEnabled(state == "open")
        self.resolve_button.setEnabled(state in ("open", "acknowledged"))

    def _show_history(self, events: tuple[dict[str, Any], ...]) -> None:
        if not events:
            self.history.setText("No history.")
            return
        self.history.setText("\n".join(
            f"{format_local_time(_dt(e['at']), zone=True)}  {e['kind']}"
            f"{' by ' + e['actor'] if e['actor'] else ''}{' — ' + e['detail'] if e['detail'] else ''}"
            for e in events))

    def _on_ack_button_clicked(self) -> None:
        self.acknowledge_selected()

    def _on_resolve_button_clicked(self) -> None:
        self.resolve_selected()
