"""The Service flow page: SLO tiles, where the 3 s go stage by stage, p95 per stage over time,
and fleet health per group.

Data flow: every ``refresh_interval_s`` (10 s) while the page is visible, or when a selector
changes, one job on ``executors.flow_reads`` (a read process, else a ``db`` thread) runs :func:`load_service_flow` (SLO report, stage
breakdown, p95 series, health aggregates and the cohort options, in one unit of work); the GUI
thread only draws the result. A tick is skipped while a refresh is in flight; a selector changed
meanwhile triggers one more refresh when it lands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import shiboken6
from PySide6.QtCore import Qt, QTimer, Signal

from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.errors import ErrorReporter, is_expected
from console.formatting import format_local_time
from console.jobs import Executors, Job
from console.page_reads import ServiceFlowLoad, load_service_flow
from console.pages.service_flow_views import (
    FigureTile,
    HealthTableModel,
    StageBreakdownChart,
    StageSeriesChart,
    slo_tile_figure,
)
from console.theme import STATUS_STYLES, Theme
from console.widgets import MessageBar, RefreshWhileVisible, section_title
from fleet.slo import (
    SLO_TARGET,
    Cohort,
)
from fleet.stage_cache import CohortMinuteCache

logger = logging.getLogger(__name__)

#: (label, span) of the time-series selector.
SPANS: tuple[tuple[str, timedelta], ...] = (
    ("Last hour", timedelta(hours=1)), ("Last day", timedelta(days=1)), ("Last 30 days", timedelta(days=30)),
)
#: (key, label) of the health-table grouping selector.
GROUPINGS: tuple[tuple[str, str], ...] = (
    ("site", "Site"), ("hardware_rev", "Hardware revision"), ("firmware_version", "Firmware"),
    ("stt_version", "STT version"), ("qa_version", "QA version"), ("tts_version", "TTS version"),
)
SLO_TILES: tuple[tuple[str, str], ...] = (("slo_1h", "SLO 1 h"), ("slo_24h", "SLO 24 h"), ("slo_30d", "SLO 30 d"))


class ServiceFlowPage(RefreshWhileVisible, QWidget):
    """Per-stage latency and the 3 s SLO at a glance.

    Parameters
    ----------
    session_factory, clock, executors, reporter, theme
        As for :class:`console.pages.fleet.FleetPage`; refreshes run on ``executors.flow_reads``.
    refresh_interval_s
        Seconds between refreshes while visible (default 10: the figures move by the minute).
    """

    sig_loaded = Signal(object)  # ServiceFlowLoad
    sig_refresh_failed = Signal(str)

    def __init__(self, session_factory: Callable[[], Any], clock: Callable[[], datetime],
                 executors: Executors, reporter: ErrorReporter, theme: Theme,
                 refresh_interval_s: float = 10.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._theme = theme
        self._job: Job | None = None
        self._again = False
        self._closed = False
        self._last_error_key: tuple[str, str] | None = None
        self.last_load: ServiceFlowLoad | None = None  #: the last load drawn in full
        self._show_token = 0
        #: Cohort minutes read so far, kept between refreshes (one load runs at a time) when the
        #: refreshes run on ``db`` threads; a read process keeps its own (``page_reads.named_cache``).
        self.stage_cache = CohortMinuteCache()

        title = QLabel("Service flow")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        self.site_combo, self.hw_combo, self.version_combo = QComboBox(), QComboBox(), QComboBox()
        for combo, label in ((self.site_combo, "All sites"), (self.hw_combo, "All hardware revisions"),
                             (self.version_combo, "All model versions")):
            combo.addItem(label, None)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.setMinimumWidth(150)
            combo.currentIndexChanged.connect(self._on_selector_changed)
        head = QHBoxLayout()
        head.addWidget(title)
        head.addSpacing(16)
        cohort_label = QLabel("Cohort:")
        cohort_label.setObjectName("muted")
        head.addWidget(cohort_label)
        for combo in (self.site_combo, self.hw_combo, self.version_combo):
            head.addWidget(combo)
        head.addStretch(1)
        head.addWidget(self.updated_label)

        self.tiles: dict[str, FigureTile] = {}
        tiles_row = QHBoxLayout()
        tiles_row.setSpacing(10)
        for key, caption in (*SLO_TILES, ("rps", "Requests/s (1 h)"), ("error_rate", "Error rate (1 h)")):
            tile = FigureTile(key, caption, theme)
            self.tiles[key] = tile
            tiles_row.addWidget(tile, 1)
        self.message_bar = MessageBar()

        self.breakdown_chart = StageBreakdownChart(theme)
        self.grew_label = QLabel("")
        self.grew_label.setWordWrap(True)
        self.span_combo = QComboBox()
        for label, span in SPANS:
            self.span_combo.addItem(label, span)
        self.span_combo.currentIndexChanged.connect(self._on_selector_changed)
        self.series_chart = StageSeriesChart(theme)
        self.group_combo = QComboBox()
        for key, label in GROUPINGS:
            self.group_combo.addItem(label, key)
        self.group_combo.currentIndexChanged.connect(self._on_selector_changed)
        self.health_model = HealthTableModel(self)
        self.health_table = QTableView()
        self.health_table.setModel(self.health_model)
        self.health_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.health_table.setAlternatingRowColors(True)
        self.health_table.setShowGrid(False)
        self.health_table.verticalHeader().setVisible(False)
        self.health_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)

        breakdown_box = QWidget()
        bl = QVBoxLayout(breakdown_box)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(section_title("Where the 3 s go — last hour, p50 per stage"))
        bl.addWidget(self.grew_label)
        bl.addWidget(self.breakdown_chart, 1)
        series_box = QWidget()
        sl = QVBoxLayout(series_box)
        sl.setContentsMargins(0, 0, 0, 0)
        series_head = QHBoxLayout()
        series_head.addWidget(section_title("p95 latency per stage over time"), 1)
        series_head.addWidget(self.span_combo)
        sl.addLayout(series_head)
        sl.addWidget(self.series_chart, 1)
        health_box = QWidget()
        hl = QVBoxLayout(health_box)
        hl.setContentsMargins(0, 0, 0, 0)
        health_head = QHBoxLayout()
        health_head.addWidget(section_title("Fleet health by group (latest heartbeat of each unit)"), 1)
        health_head.addWidget(QLabel("Group by:"))
        health_head.addWidget(self.group_combo)
        hl.addLayout(health_head)
        hl.addWidget(self.health_table, 1)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        for w in (breakdown_box, series_box, health_box):
            self.splitter.addWidget(w)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([260, 320, 200])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 10)
        layout.setSpacing(10)
        layout.addLayout(head)
        layout.addLayout(tiles_row)
        layout.addWidget(self.message_bar)
        layout.addWidget(self.splitter, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(int(refresh_interval_s * 1000))
        self.timer.timeout.connect(self._on_timer_timeout)

    # -- public API ---------------------------------------------------------------------
    def cohort(self) -> Any:
        """The :class:`fleet.slo.Cohort` the selectors pick (None: the whole fleet)."""
        version = self.version_combo.currentData()
        fields = {"site": self.site_combo.currentData(), "hardware_rev": self.hw_combo.currentData()}
        if version:
            kind, value = str(version).split("=", 1)
            fields[kind] = value
        fields = {k: v for k, v in fields.items() if v}
        return Cohort(**fields) if fields else None

    def set_cohort(self, site: str | None = None, hardware_rev: str | None = None,
                   version: tuple[str, str] | None = None) -> None:
        """Select a cohort (values must be among the options; None: any); ``version`` is
        ``(kind column, version)``, e.g. ``("stt_version", "stt-1.4.0")``.

        Raises
        ------
        ValueError
            For a value the selectors do not offer.
        """
        encoded = f"{version[0]}={version[1]}" if version else None
        for combo, value in ((self.site_combo, site), (self.hw_combo, hardware_rev),
                             (self.version_combo, encoded)):
            i = combo.findData(value) if value is not None else 0
            if i < 0:
                raise ValueError(f"{value!r} is not an option of the cohort selector")
            combo.setCurrentIndex(i)

    @property
    def refresh_in_flight(self) -> bool:
        return self._job is not None and not self._job.is_done

    def refresh(self) -> bool:
        """Start a refresh unless one is in flight (then one more runs after it)."""
        if self._closed:
            return False
        if self.refresh_in_flight:
            self._again = True
            return False
        self._again = False
        reads = self._executors.flow_reads
        # in a read process the cache lives there, under this page's name (console.page_reads)
        cache = self.stage_cache if reads.in_process else f"service-flow-{id(self):x}"
        self._job = (Job(load_service_flow, *reads.portable(self.session_factory, self._clock), self.cohort(),
                         self.span_combo.currentData(), self.group_combo.currentData(), cache)
                     .on_success(self._on_load_succeeded)
                     .on_failure(self._on_load_failed)
                     .start(reads, owner=self))
        return True

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        for tile in self.tiles.values():
            tile.apply_theme(theme)
        self.breakdown_chart.apply_theme(theme)
        self.series_chart.apply_theme(theme)
        if self.last_load is not None:
            self._show(self.last_load)

    def shutdown(self) -> None:
        """Stop the timer and cancel the job in flight; no refresh starts afterwards."""
        self.stop_refreshing()

    def _jobs_in_flight(self) -> tuple:
        return (self._job,)

    def text(self) -> str:
        """The tiles' and the breakdown's words (tests, screen readers)."""
        return " ".join([t.text() for t in self.tiles.values()] + [self.grew_label.text()])


    # -- slots --------------------------------------------------------------------------
    def _on_timer_timeout(self) -> None:
        self.refresh()

    def _on_selector_changed(self, *_: Any) -> None:
        if self.isVisible():
            self.refresh()

    def _on_load_succeeded(self, load: ServiceFlowLoad) -> None:
        if self._last_error_key is not None:
            self._last_error_key = None
            self.message_bar.clear()
        self._show(load, then=self._on_shown)

    def _on_shown(self, load: ServiceFlowLoad) -> None:
        self.last_load = load
        self.sig_loaded.emit(load)
        if self._again:
            self.refresh()

    def _on_load_failed(self, exc: BaseException) -> None:
        key = (type(exc).__qualname__, str(exc))
        message = str(exc)
        if key != self._last_error_key:
            self._last_error_key = key
            record = self._reporter.report(exc, context="load the service flow", panel=self.message_bar)
            if record is not None:
                message = record.message
            if is_expected(exc):
                self.message_bar.show_message(
                    f"Could not load the service flow: {message}. The figures below are from the last "
                    f"successful refresh; retrying every {self.timer.interval() / 1000:g} s.")
        self.updated_label.setText("Refresh failed")
        self.sig_refresh_failed.emit(message)
        if self._again:
            self.refresh()

    # -- drawing ------------------------------------------------------------------------
    def _show(self, load: ServiceFlowLoad, then: Callable[[ServiceFlowLoad], None] | None = None) -> None:
        """Draw ``load`` in three steps, each its own turn of the event loop (tiles and breakdown;
        the p95 series; the health table and selectors), then call ``then(load)``: the page's
        first draw — every chart item made — took 120 ms of GUI-thread time in one piece
        (benchmarks/gui_stall.py). A newer load drops the steps of an older one."""
        self._show_token += 1
        token = self._show_token
        steps = [self._show_figures, self._show_series, self._show_table]

        def step() -> None:
            if token != self._show_token or self._closed or not shiboken6.isValid(self):
                return
            steps.pop(0)(load)
            if steps:  # 1 ms, not 0: Qt runs a 0 ms single shot as a posted event, in the same turn
                QTimer.singleShot(1, self, step)
            elif then is not None:
                then(load)

        step()

    def _show_series(self, load: ServiceFlowLoad) -> None:
        self.series_chart.set_series(load.series)

    def _show_table(self, load: ServiceFlowLoad) -> None:
        key_label = dict(GROUPINGS)[load.group_by]
        self.health_model.set_frame(load.health, load.group_by, key_label)
        self._set_options(load.options)
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)}")

    def _show_figures(self, load: ServiceFlowLoad) -> None:
        for (key, _), status in zip(SLO_TILES, load.slo):
            self.tiles[key].set_figure(*slo_tile_figure(status))
            self.tiles[key].setToolTip(
                f"{status.good:,} of {status.requests:,} requests within 3,000 ms end to end and 2,000 ms "
                f"server (target {SLO_TARGET:.0%}); burn rate 1× spends the error budget exactly over "
                "the window")
        bd = load.breakdown
        first = bd.iloc[0] if len(bd) else None
        if first is not None and first["requests"]:
            self.tiles["rps"].set_figure(f"{first['requests_per_s']:.2f}", f"{int(first['requests']):,} requests")
            rate = first["error_rate"]
            colour = STATUS_STYLES["degraded"].color if rate > 1 - SLO_TARGET else None
            self.tiles["error_rate"].set_figure(f"{rate * 100:.2f} %", f"{int(first['errors']):,} failed",
                                                colour)
        else:
            self.tiles["rps"].set_figure("—", "no requests in the last hour")
            self.tiles["error_rate"].set_figure("—", "no requests in the last hour")
        self.breakdown_chart.set_breakdown(bd)
        self.grew_label.setText(self._grew_words(bd))

    @staticmethod
    def _grew_words(bd: pd.DataFrame) -> str:
        if not len(bd):
            return ""
        grew = bd[bd["grew_most"]]
        e2e = bd.set_index("stage").loc["e2e"] if "e2e" in set(bd["stage"]) else None
        total = (f"End to end p95 {e2e['p95_ms']:,.0f} ms (budget 3,000 ms)."
                 if e2e is not None and pd.notna(e2e["p95_ms"]) else "No requests in the last hour.")
        if not len(grew):
            return f"{total} No stage's p95 grew against the previous 24 h."
        row = grew.iloc[0]
        pct = f" ({row['change_p95_pct']:+.0f} %)" if pd.notna(row["change_p95_pct"]) else ""
        return (f"{total} ▲ {row['stage']} grew most: p95 {row['p95_ms']:,.0f} ms, "
                f"{row['change_p95_ms']:+,.0f} ms{pct} against the previous 24 h (outlined).")

    def _set_options(self, options: dict[str, list[str]]) -> None:
        versions = [(f"{kind}={v}", f"{kind.split('_')[0].upper()} {v}") for kind in ("stt_version", "qa_version", "tts_version")
                    for v in options.get(kind, [])]
        for combo, values in ((self.site_combo, [(v, v) for v in options.get("site", [])]),
                              (self.hw_combo, [(v, v) for v in options.get("hardware_rev", [])]),
                              (self.version_combo, versions)):
            present = [combo.itemData(i) for i in range(1, combo.count())]
            if present == [d for d, _ in values] or combo.view().isVisible():
                continue
            current = combo.currentData()
            combo.blockSignals(True)
            try:
                any_label = combo.itemText(0)
                combo.clear()
                combo.addItem(any_label, None)
                for data, label in values:
                    combo.addItem(label, data)
                combo.setCurrentIndex(max(0, combo.findData(current)) if current is not None else 0)
            finally:
                combo.blockSignals(False)
