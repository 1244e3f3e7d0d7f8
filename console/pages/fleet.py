"""The Fleet page: key-figure tiles, a filter bar, the fleet table and the selected unit's detail.

Data flow (ARCHITECTURE "Heartbeat"): every ``refresh_interval_s`` while the page is visible a
job on ``executors.fleet_reads`` (the page's read process, ``console.read_process``; else a ``db``
thread) runs :func:`console.page_reads.load_fleet`: ``fleet_snapshot`` (and the selected unit's
``unit_detail``) in one unit of work, indexed for filtering and sorting (``prepare_snapshot``); the GUI
thread swaps the indexed snapshot into :class:`FleetTableModel` and reads the tiles' counts and
the filter options from the index (no per-row Python on the GUI thread: at 100,000 units the
slot went from ~0.7 s to ~20 ms, ``benchmarks/fleet_table_100k.py``). A tick is skipped while
the previous refresh is still in flight, and until the reader has rested as long as that
refresh took (:data:`REFRESH_IDLE_FACTOR`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal

from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.errors import ErrorReporter, is_expected
from console.formatting import format_local_time
from console.jobs import Executors, Job
from console.models.fleet_table import (
    FLAPPING,
    VERSION_COLUMNS,
    FleetFilter,
    FleetTableModel,
    SnapshotIndex,
)
from console.page_reads import FleetLoad, load_detail, load_fleet
from console.pages.fleet_detail import FleetDetailPanel
from console.theme import STATUS_STYLES, Theme
from console.widgets import MessageBar, RefreshWhileVisible, StatusDelegate, Tile

logger = logging.getLogger(__name__)

#: Rows sampled besides the visible ones when the columns are first sized to their contents
#: (0: the visible rows only). Qt's default, 1,000, made that one-off call take 1.3 s at
#: 100,000 units (50: ~60 ms, benchmarks/fleet_table_100k.py); widths are clamped anyway.
SIZE_COLUMNS_SAMPLE_ROWS = 0

#: A timer tick starts no refresh until the reader (read process or ``db`` thread) has been free of
#: it at least this many times as long as the last refresh took: at 10,000 units and more a refresh
#: takes seconds, and back-to-back refreshes kept a reader decoding heartbeats all the time — in a
#: thread taking the GIL from the GUI thread, in either taking a core the collector shares
#: (benchmarks/gui_stall.py). 1.0: refreshes use at most half of one core.
REFRESH_IDLE_FACTOR = 1.0

#: (key, caption) of the tiles, left to right.
TILES: tuple[tuple[str, str], ...] = (
    ("units", "Units"), ("online", "Online"), ("degraded", "Degraded"),
    ("updating", "Updating"), ("offline", "Offline"),
)


class FleetPage(RefreshWhileVisible, QWidget):
    """Fleet health at a glance, then per unit.

    Parameters
    ----------
    session_factory
        Makes a ``Session`` per refresh (``with session_factory() as s``).
    clock
        Returns aware UTC now.
    executors
        The console's executors; refreshes run on ``executors.fleet_reads`` (a read process, or
        the ``db`` threads), a selected unit's detail on ``executors.db``.
    reporter
        Gets the failures that are bugs; expected ones show in the page's message bar.
    theme
        Initial look.
    refresh_interval_s
        Seconds between refreshes while the page is visible (default 2).
    """

    sig_snapshot_applied = Signal(int)  # units in the snapshot
    sig_detail_shown = Signal(str)  # serial
    sig_refresh_failed = Signal(str)  # message

    def __init__(self, session_factory: Callable[[], Any], clock: Callable[[], datetime],
                 executors: Executors, reporter: ErrorReporter, theme: Theme,
                 refresh_interval_s: float = 2.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._theme = theme
        self._refresh_job: Job | None = None
        self._detail_job: Job | None = None
        self._selected_serial: str | None = None
        self._restoring = False
        self._sized_columns = False
        self._last_error_key: tuple[str, str] | None = None
        self._closed = False
        self.refreshes_skipped = 0
        self._refresh_started = 0.0
        self._refresh_ended = 0.0
        self._last_refresh_s = 0.0

        title = QLabel("Fleet")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)

        self.tiles: dict[str, Tile] = {}
        tiles_row = QHBoxLayout()
        tiles_row.setSpacing(10)
        for key, word in TILES:
            tile = Tile(key, word, theme)
            tile.setToolTip("Show all units" if key == "units" else f"Show {word.lower()} units")
            tile.sig_clicked.connect(self._on_tile_clicked)
            self.tiles[key] = tile
            tiles_row.addWidget(tile, 1)

        self.message_bar = MessageBar()

        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter by serial, site or version…")
        self.search.setClearButtonEnabled(True)
        self.status_combo = QComboBox()
        self.status_combo.addItem("All statuses", "")
        for state, style in STATUS_STYLES.items():
            self.status_combo.addItem(style.label, state)
        self.status_combo.addItem("⇅ Flapping", FLAPPING)
        self.status_combo.setItemData(self.status_combo.count() - 1,
                                      "Units whose polls keep flipping between answered and not "
                                      "(flap detection), whatever their state", Qt.ItemDataRole.ToolTipRole)
        self.site_combo = QComboBox()
        self.site_combo.addItem("All sites", "")
        self.version_combo = QComboBox()
        self.version_combo.addItem("All model versions", "")
        for combo in (self.site_combo, self.version_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.setMinimumWidth(150)
        clear = QPushButton("Clear filters")
        clear.clicked.connect(self._on_clear_clicked)
        self.count_label = QLabel()
        self.count_label.setObjectName("muted")
        filters = QHBoxLayout()
        filters.addWidget(self.search, 2)
        filters.addWidget(self.status_combo)
        filters.addWidget(self.site_combo)
        filters.addWidget(self.version_combo)
        filters.addWidget(clear)
        filters.addStretch(1)
        filters.addWidget(self.count_label)

        self.model = FleetTableModel(theme, self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setItemDelegateForColumn(self.model.column_index("status"), StatusDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(26)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        header.setSortIndicator(self.model.column_index("status"), Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.detail = FleetDetailPanel(theme)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([1060, 360])
        self.splitter = splitter

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 10)
        layout.setSpacing(10)
        layout.addLayout(head)
        layout.addLayout(tiles_row)
        layout.addWidget(self.message_bar)
        layout.addLayout(filters)
        layout.addWidget(splitter, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(int(refresh_interval_s * 1000))
        self.timer.timeout.connect(self._on_timer_timeout)

        self.search.textChanged.connect(self._on_filter_changed)
        for combo in (self.status_combo, self.site_combo, self.version_combo):
            combo.currentIndexChanged.connect(self._on_filter_changed)
        self.model.modelReset.connect(self._on_model_reset)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection_changed)
        self._update_count()

    # -- public API ---------------------------------------------------------------------
    @property
    def selected_serial(self) -> str | None:
        """Serial of the unit whose detail is shown (kept across refreshes)."""
        return self._selected_serial

    @property
    def refresh_in_flight(self) -> bool:
        """True while a refresh job has not delivered its result."""
        return self._refresh_job is not None and not self._refresh_job.is_done

    def refresh(self) -> bool:
        """Start a refresh job unless one is in flight (or the page is shut down); returns
        whether one was started."""
        if self._closed:
            return False
        if self.refresh_in_flight:
            self.refreshes_skipped += 1
            return False
        self._refresh_started = time.monotonic()
        reads = self._executors.fleet_reads
        self._refresh_job = (
            Job(load_fleet, *reads.portable(self.session_factory, self._clock), self._selected_serial,
                self.model.view_spec)
            .on_success(self._on_refresh_succeeded)
            .on_failure(self._on_refresh_failed)
            .start(reads, owner=self))
        return True

    def select_serial(self, serial: str) -> bool:
        """Select unit ``serial`` in the table (and load its detail); False if not shown."""
        row = self.model.row_of(serial)
        if row is None:
            return False
        index = self.model.index(row, 0)
        flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
                 | QItemSelectionModel.SelectionFlag.Rows)
        self.table.selectionModel().setCurrentIndex(index, flags)
        self.table.scrollTo(index)
        return True

    def set_filter(self, text: str = "", status: str = "", site: str = "", version: str = "") -> None:
        """Set the filter bar (empty means any); combos get an entry for unseen values."""
        self.search.setText(text)
        for combo, value in ((self.status_combo, status), (self.site_combo, site),
                             (self.version_combo, version)):
            i = combo.findData(value)
            if i < 0:
                combo.addItem(value, value)
                i = combo.count() - 1
            combo.setCurrentIndex(i)

    def apply_theme(self, theme: Theme) -> None:
        """Recolour tiles, table and chart with ``theme``."""
        self._theme = theme
        for tile in self.tiles.values():
            tile.apply_theme(theme)
        self.model.set_theme(theme)
        self.detail.apply_theme(theme)

    def shutdown(self) -> None:
        """Stop the timer and cancel jobs in flight (their results are dropped); no refresh
        starts afterwards."""
        self.stop_refreshing()

    def _jobs_in_flight(self) -> tuple:
        return (self._refresh_job, self._detail_job)


    # -- slots --------------------------------------------------------------------------
    def _on_timer_timeout(self) -> None:
        if time.monotonic() - self._refresh_ended < REFRESH_IDLE_FACTOR * self._last_refresh_s:
            self.refreshes_skipped += 1  # let the db thread rest as long as the last refresh took
            return
        self.refresh()

    def _note_refresh_ended(self) -> None:
        self._refresh_ended = time.monotonic()
        self._last_refresh_s = self._refresh_ended - self._refresh_started

    def _on_refresh_succeeded(self, load: FleetLoad) -> None:
        self._note_refresh_ended()
        if self._last_error_key is not None:
            self._last_error_key = None
            self.message_bar.clear()
        self.model.set_snapshot(load.snapshot, now=load.now)
        index = self.model.snapshot_index
        self._update_tiles(index)
        self._rebuild_options(index)
        self._update_count()
        if not self._sized_columns and index.n_rows:
            self._size_columns()
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)}")
        if load.detail_serial is not None and load.detail_serial == self._selected_serial:
            self._show_detail(load)
        self.sig_snapshot_applied.emit(index.n_rows)

    def _on_refresh_failed(self, exc: BaseException) -> None:
        self._note_refresh_ended()
        key = (type(exc).__qualname__, str(exc))
        message = str(exc)
        if key != self._last_error_key:  # report a repeating failure once, not every 2 s
            self._last_error_key = key
            record = self._reporter.report(exc, context="load the fleet table",
                                           panel=self.message_bar)
            if record is not None:
                message = record.message
            if is_expected(exc):
                self.message_bar.show_message(
                    f"Could not load the fleet table: {message}. The figures below are from "
                    f"the last successful refresh; retrying every "
                    f"{self.timer.interval() / 1000:g} s.")
        self.updated_label.setText("Refresh failed")
        self.sig_refresh_failed.emit(message)

    def _on_detail_loaded(self, load: FleetLoad) -> None:
        if load.detail_serial == self._selected_serial:
            self._show_detail(load)

    def _on_detail_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context=f"load the detail of {self._selected_serial}",
                              panel=self.message_bar)

    def _on_table_selection_changed(self, *_: Any) -> None:
        if self._restoring:
            return
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return  # a filter hid the unit: keep its detail
        serial = self.model.serial_at(rows[0].row())
        if serial is None or serial == self._selected_serial or self._closed:
            return
        self._selected_serial = serial
        if self._detail_job is not None and not self._detail_job.is_done:
            self._detail_job.cancel()
        self._detail_job = (
            Job(load_detail, self.session_factory, self._clock, serial)
            .on_success(self._on_detail_loaded)
            .on_failure(self._on_detail_failed)
            .start(self._executors.db, owner=self))

    def _on_model_reset(self) -> None:
        if self._selected_serial is None:
            return
        row = self.model.row_of(self._selected_serial)
        if row is None:
            return
        self._restoring = True
        try:
            flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
                     | QItemSelectionModel.SelectionFlag.Rows)
            self.table.selectionModel().setCurrentIndex(self.model.index(row, 0), flags)
        finally:
            self._restoring = False

    def _on_filter_changed(self, *_: Any) -> None:
        self.model.set_filter(FleetFilter(
            text=self.search.text(),
            status=self.status_combo.currentData() or "",
            site=self.site_combo.currentData() or "",
            version=self.version_combo.currentData() or "",
        ))
        self._update_count()

    def _on_clear_clicked(self) -> None:
        self.set_filter()

    def _on_tile_clicked(self, key: str) -> None:
        self.status_combo.setCurrentIndex(max(0, self.status_combo.findData(
            "" if key == "units" else key)))

    # -- helpers ------------------------------------------------------------------------
    def _show_detail(self, load: FleetLoad) -> None:
        self.detail.show_detail(load.detail, load.now)
        self.sig_detail_shown.emit(load.detail_serial or "")

    def _update_tiles(self, index: SnapshotIndex) -> None:
        counts = index.counts("status")
        self.tiles["units"].set_value(index.n_rows)
        for key in ("online", "degraded", "updating", "offline"):
            self.tiles[key].set_value(counts.get(key, 0))

    def _update_count(self) -> None:
        shown, total = self.model.rowCount(), len(self.model.snapshot)
        if total == 0:
            self.count_label.setText("No units in this database yet")
        elif shown == total:
            self.count_label.setText(f"{total:,} units")
        else:
            self.count_label.setText(f"Showing {shown:,} of {total:,} units")

    def _rebuild_options(self, index: SnapshotIndex) -> None:
        if not index.n_rows:
            return
        sites = index.distinct("site")
        versions: set[str] = set()
        for col in VERSION_COLUMNS:
            versions.update(index.distinct(col))
        self._set_options(self.site_combo, "All sites", sites)
        self._set_options(self.version_combo, "All model versions", sorted(versions))

    @staticmethod
    def _set_options(combo: QComboBox, any_label: str, values: list[str]) -> None:
        current = combo.currentData() or ""
        present = [combo.itemData(i) for i in range(1, combo.count())]
        wanted = list(values) + ([current] if current and current not in values else [])
        if present == wanted or combo.view().isVisible():
            return
        combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItem(any_label, "")
            for value in wanted:
                combo.addItem(value, value)
            combo.setCurrentIndex(max(0, combo.findData(current)))
        finally:
            combo.blockSignals(False)

    def _size_columns(self) -> None:
        self._sized_columns = True
        header = self.table.horizontalHeader()
        header.setResizeContentsPrecision(SIZE_COLUMNS_SAMPLE_ROWS)
        self.table.resizeColumnsToContents()
        for i in range(self.model.columnCount()):
            header.resizeSection(i, min(max(header.sectionSize(i) + 8, 60), 220))
