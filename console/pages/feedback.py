"""The Feedback page: what users say, per day and per model version.

Tiles (feedback in the period, CSAT, correction rate, open complaint tickets); a filter bar
(period, feature, model version, rating, corrected, site, text); the daily charts (volume by
feature / version / site / hardware / rating, CSAT and correction rate) where clicking a point
drills the table down to that day and series; the version comparison (online correction rate
with its bootstrap 95 % interval beside the registry's offline evaluation, CSAT, complaints per
1,000 unit-days); the topics of free text (:mod:`feedback.topics`, MiniLM embeddings, computed only on request); CSV
export of the shown rows and an HTML report with the charts as PNG.

Data flow: :func:`console.pages.feedback_data.load_feedback` runs on the ``db`` executor (every
``refresh_interval_s`` while visible and on every filter change); topics read the texts on
``db`` and embed them on ``inference``. Definitions of the figures: ``feedback_data``'s docstring
(those of :mod:`feedback.trends`, which computes the version comparison).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from console.errors import ErrorReporter
from console.formatting import format_local_time, format_number
from console.jobs import Executors, Job
from console.models.records import RecordColumn, RecordSortProxy, RecordTableModel, export_csv
from console.pages import feedback_data as fd
from console.pages.feedback_charts import RatesChart, VersionChart, VolumeChart
from console.theme import Theme
from console.widgets import MessageBar, RefreshWhileVisible, Tile, style_table
from feedback.models import FEATURES
from feedback.topics import Topic, cluster_topics, load_encoder

logger = logging.getLogger(__name__)

PERIODS: tuple[tuple[str, int], ...] = (("Last 7 days", 7), ("Last 30 days", 30), ("Last 90 days", 90),
                                        ("Last 365 days", 365))


def _pct(v: Any) -> str:
    return format_number(None if v is None else float(v) * 100, 1, "%")


def _yes(v: Any) -> str:
    return "yes" if v else "no"


COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("id", "#", numeric=True),
    RecordColumn("submitted_at", "Submitted", fmt=lambda v: format_local_time(v, zone=True)),
    RecordColumn("unit", "Unit"),
    RecordColumn("site", "Site"),
    RecordColumn("feature", "Feature"),
    RecordColumn("intent", "Intent"),
    RecordColumn("rating", "Rating (1–5)", fmt=lambda v: f"{'★' * int(v)}{'☆' * (5 - int(v))} {v}", numeric=True),
    RecordColumn("corrected", "Corrected", fmt=_yes),
    RecordColumn("repeated", "Repeated", fmt=_yes),
    RecordColumn("version", "Model version"),
    RecordColumn("text", "Text", tooltip=lambda r: r.get("text") or ""),
)
VERSION_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("version", "Version"),
    RecordColumn("n", "Feedback", fmt=lambda v: f"{v:,}", numeric=True),
    RecordColumn("correction_rate", "Correction rate", fmt=_pct, numeric=True),
    RecordColumn("ci", "95 % CI (bootstrap)"),
    RecordColumn("csat", "CSAT", fmt=_pct, numeric=True),
    RecordColumn("complaints_per_1000_unit_days", "Complaints / 1,000 unit-days",
                 fmt=lambda v: format_number(v, 2), numeric=True),
    RecordColumn("unit_days", "Unit-days", fmt=lambda v: format_number(v, 0), numeric=True),
    RecordColumn("wer", "Offline WER", fmt=_pct, numeric=True),
    RecordColumn("intent_accuracy", "Offline intent acc.", fmt=_pct, numeric=True),
    RecordColumn("answer_accuracy", "Offline answer acc.", fmt=_pct, numeric=True),
    RecordColumn("gate", "Offline gate"),
)
TOPIC_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("name", "Topic"), RecordColumn("size", "Comments", numeric=True),
    RecordColumn("phrases", "Typical phrases"),
)


class FeedbackPage(RefreshWhileVisible, QWidget):
    """Feedback and its trends per model version.

    Parameters
    ----------
    session_factory, clock, executors, reporter, theme
        As every page (reads on ``executors.db``, topic embeddings on ``executors.inference``).
    models_root
        Where the model bundles are (``ctx.models_root``); topics use the QA bundle's MiniLM model.
    embedder
        Texts → L2-normalised embeddings, instead of MiniLM (tests, other models).
    period_days
        Initial period (default 30 days).
    refresh_interval_s
        Seconds between refreshes while visible (default 60).

    Signals
    -------
    sig_create_ticket(int)
        The operator asked for a ticket from the selected feedback item (its id): connect it to
        ``TicketsPage.ask_create_from_feedback`` (opens the prefilled dialog) after showing that page.
    """

    sig_loaded = Signal(int)
    sig_topics_ready = Signal(int)
    sig_create_ticket = Signal(int)

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, *, models_root: Path | None = None,
                 embedder: Callable[[list[str]], np.ndarray] | None = None, period_days: int = 30,
                 refresh_interval_s: float = 60.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._models_root = models_root
        self._embed = embedder
        self._refresh_job: Job | None = None
        self._topics_job: Job | None = None
        self._pending_refresh = False
        self._closed = False
        self._drill: tuple[date | None, str | None] = (None, None)
        self.last_load: fd.FeedbackLoad | None = None
        self._sized = False
        self.topics: list[Topic] = []

        title = QLabel("Feedback")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)
        self.tiles = {key: Tile(key, word, theme) for key, word in (
            ("feedback", "Feedback in the period"), ("csat", "CSAT (ratings 4–5)"),
            ("correction_rate", "Correction rate"), ("open_complaints", "Open complaint tickets"))}
        self.tiles["correction_rate"].setToolTip("Answers the user corrected right after (repeats and cancels "
                                                 "are counted apart), as in `speakerops trends`")
        tiles_row = QHBoxLayout()
        for tile in self.tiles.values():
            tiles_row.addWidget(tile, 1)
        self.message_bar = MessageBar()

        self.period_combo = QComboBox()
        for label, days in PERIODS:
            self.period_combo.addItem(label, days)
        self.period_combo.setCurrentIndex(max(0, self.period_combo.findData(period_days)))
        self.feature_combo = self._combo("Any feature", [(f, f) for f in FEATURES])
        self.kind_combo = self._combo(None, [(f"{k.upper()} versions", k) for k in fd.VERSION_KINDS])
        self.version_combo = self._combo("Any version", [])
        self.rating_combo = self._combo("Any rating", [(f"{'★' * r} {r}", r) for r in range(1, 6)])
        self.corrected_combo = self._combo("Corrected or not", [("Corrected", True), ("Not corrected", False)])
        self.site_combo = self._combo("Any site", [])
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search text, intent, unit")
        self.search_edit.setClearButtonEnabled(True)
        self.series_combo = self._combo(None, [(f"by {label}", key) for key, (_, label) in fd.SERIES_BY.items()])
        bar = QHBoxLayout()
        for w in (self.period_combo, self.feature_combo, self.kind_combo, self.version_combo, self.rating_combo,
                  self.corrected_combo, self.site_combo):
            bar.addWidget(w)
        bar.addWidget(self.search_edit, 1)

        self.drill_label = QLabel("")
        self.drill_label.setObjectName("muted")
        self.clear_drill_button = QPushButton("Show all days")
        self.ticket_button = QPushButton("Create ticket…")
        self.topics_button = QPushButton("Find topics")
        self.topics_button.setToolTip("Groups the free text by MiniLM sentence embeddings (slow the first time)")
        self.export_button = QPushButton("Export CSV…")
        self.report_button = QPushButton("HTML report…")
        actions = QHBoxLayout()
        actions.addWidget(QLabel("Volume"))
        actions.addWidget(self.series_combo)
        actions.addWidget(self.drill_label, 1)
        for b in (self.clear_drill_button, self.ticket_button, self.topics_button, self.export_button,
                  self.report_button):
            actions.addWidget(b)

        self.volume_chart = VolumeChart(theme)
        self.rates_chart = RatesChart(theme)
        charts = QSplitter(Qt.Orientation.Horizontal)
        charts.addWidget(self.volume_chart)
        charts.addWidget(self.rates_chart)

        self.model, self.proxy, self.table = self._table(COLUMNS)
        self.version_model, _, self.version_table = self._table(VERSION_COLUMNS)
        self.version_chart = VersionChart(theme)
        versions_tab = QSplitter(Qt.Orientation.Horizontal)
        versions_tab.addWidget(self.version_chart)
        versions_tab.addWidget(self.version_table)
        versions_tab.setStretchFactor(0, 2)
        versions_tab.setStretchFactor(1, 3)
        self.topic_model, _, self.topic_table = self._table(TOPIC_COLUMNS)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.table, "Feedback")
        self.tabs.addTab(versions_tab, "Model versions: online vs offline")
        self.tabs.addTab(self.topic_table, "Topics")
        body = QSplitter(Qt.Orientation.Vertical)
        body.addWidget(charts)
        body.addWidget(self.tabs)
        body.setStretchFactor(0, 2)
        body.setStretchFactor(1, 3)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 10)
        layout.setSpacing(8)
        layout.addLayout(head)
        layout.addLayout(tiles_row)
        layout.addWidget(self.message_bar)
        layout.addLayout(bar)
        layout.addLayout(actions)
        layout.addWidget(body, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(int(refresh_interval_s * 1000))
        self.timer.timeout.connect(self._on_timer_timeout)
        for combo in (self.period_combo, self.feature_combo, self.version_combo, self.rating_combo,
                      self.corrected_combo, self.site_combo, self.series_combo):
            combo.currentIndexChanged.connect(self._on_filter_changed)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_combo_changed)
        self.search_edit.editingFinished.connect(self._on_filter_changed)
        self.volume_chart.sig_point_clicked.connect(self._on_chart_point_clicked)
        self.rates_chart.sig_point_clicked.connect(self._on_chart_point_clicked)
        self.clear_drill_button.clicked.connect(self.clear_drill_down)
        self.ticket_button.clicked.connect(self._on_ticket_button_clicked)
        self.topics_button.clicked.connect(self.find_topics)
        self.export_button.clicked.connect(self._on_export_button_clicked)
        self.report_button.clicked.connect(self._on_report_button_clicked)
        self._show_drill()

    def _combo(self, any_label: str | None, items: list[tuple[str, Any]]) -> QComboBox:
        combo = QComboBox()
        if any_label is not None:
            combo.addItem(any_label, None)
        for label, value in items:
            combo.addItem(label, value)
        return combo

    def _table(self, columns: tuple[RecordColumn, ...]) -> tuple[RecordTableModel, RecordSortProxy, QTableView]:
        model = RecordTableModel(columns, self)
        proxy = RecordSortProxy(self)
        proxy.setSourceModel(model)
        table = QTableView()
        table.setModel(proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
        style_table(table)
        return model, proxy, table

    # -- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a refresh or the topics are in flight."""
        return any(j is not None and not j.is_done for j in self._jobs_in_flight())

    def query(self) -> fd.FeedbackQuery:
        """The filters and the drill-down as set now."""
        return fd.FeedbackQuery(
            since=fd.period_start(self._clock(), int(self.period_combo.currentData())),
            version_kind=self.kind_combo.currentData(), feature=self.feature_combo.currentData(),
            version=self.version_combo.currentData(), rating=self.rating_combo.currentData(),
            corrected=self.corrected_combo.currentData(), site=self.site_combo.currentData(),
            text=self.search_edit.text(), series_by=self.series_combo.currentData(),
            day=self._drill[0], series=self._drill[1])

    def set_filters(self, **values: Any) -> None:
        """Set filters as the user would (``period_days``, ``feature``, ``version_kind``, ``version``,
        ``rating``, ``corrected``, ``site``, ``text``, ``series_by``) and refresh once."""
        combos = {"period_days": self.period_combo, "feature": self.feature_combo, "version_kind": self.kind_combo,
                  "version": self.version_combo, "rating": self.rating_combo, "corrected": self.corrected_combo,
                  "site": self.site_combo, "series_by": self.series_combo}
        for w in (*combos.values(), self.search_edit):
            w.blockSignals(True)
        for key, value in values.items():
            if key == "text":
                self.search_edit.setText(value)
                continue
            combo = combos[key]
            if value is not None and combo.findData(value) < 0:
                combo.addItem(str(value), value)
            combo.setCurrentIndex(max(0, combo.findData(value)))
        for w in (*combos.values(), self.search_edit):
            w.blockSignals(False)
        self._drill = (None, None)
        self._show_drill()
        self.refresh()

    def drill_down(self, day: date, series: str | None = None) -> None:
        """List only the feedback of ``day`` (and of the volume chart's ``series`` value)."""
        self._drill = (day, series)
        self._show_drill()
        self.refresh()

    def clear_drill_down(self) -> None:
        """Back to every day of the period."""
        self._drill = (None, None)
        self._show_drill()
        self.refresh()

    def refresh(self) -> bool:
        """Start a refresh unless one is in flight (then one more runs after it)."""
        if self._closed:
            return False
        if self._refresh_job is not None and not self._refresh_job.is_done:
            self._pending_refresh = True
            return False
        self._pending_refresh = False
        self._refresh_job = (Job(fd.load_feedback, self.session_factory, self._clock, self.query())
                             .on_success(self._on_refresh_succeeded)
                             .on_failure(lambda exc: self._reporter.report(exc, context="load the feedback",
                                                                           panel=self.message_bar))
                             .start(self._executors.db, owner=self))
        return True

    def find_topics(self) -> bool:
        """Group the shown free text into topics: texts read on ``db``, embedded on ``inference``."""
        if self._closed or (self._topics_job is not None and not self._topics_job.is_done):
            return False
        self.topics_button.setEnabled(False)
        self.topics_button.setText("Finding topics…")
        self._topics_job = (Job(fd.feedback_texts, self.session_factory, self.query())
                            .on_success(self._on_texts_read)
                            .on_failure(self._on_topics_failed)
                            .start(self._executors.db, owner=self))
        return True

    def selected_feedback_id(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data(Qt.ItemDataRole.UserRole)["id"] if rows else None

    def request_ticket(self, feedback_id: int | None = None) -> bool:
        """Ask for a ticket from feedback item ``feedback_id`` (default: the selected one)."""
        fid = feedback_id if feedback_id is not None else self.selected_feedback_id()
        if fid is None:
            self.message_bar.show_message("Select a feedback item first, then create a ticket from it.")
            return False
        self.sig_create_ticket.emit(int(fid))
        return True

    def shown_rows(self) -> list[dict[str, Any]]:
        """The table's rows as shown (filtered, sorted)."""
        return [self.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.proxy.rowCount())]

    def export(self, path: Path) -> int:
        """Write the shown feedback rows to ``path`` as CSV; returns the rows written."""
        return export_csv(path, COLUMNS, self.shown_rows())

    def export_report(self, path: Path) -> Path:
        """Write an HTML report of the current view: filters, tiles, the three charts as PNG
        (embedded), the version comparison, the topics and up to 500 shown rows. Every text from
        the database is HTML-escaped. Raises ``OSError`` if it cannot be written."""
        from console.pages.feedback_report import render_report

        path = Path(path)
        charts = {name: _png_base64(w) for name, w in (("Volume per day", self.volume_chart),
                                                      ("CSAT and correction rate per day", self.rates_chart),
                                                      ("Correction rate per model version", self.version_chart))}
        text = render_report(self.last_load, self.describe_filters(), {k: (t.word, t.value_text())
                             for k, t in self.tiles.items()}, charts, self.version_model.rows, self.topics,
                             self.shown_rows()[:500], COLUMNS, VERSION_COLUMNS)
        path.write_text(text, encoding="utf-8")
        return path

    def describe_filters(self) -> str:
        """The filters in words, e.g. ``"Last 30 days · feature weather · STT versions"``."""
        parts = [c.currentText() for c in (self.period_combo, self.feature_combo, self.kind_combo, self.version_combo,
                                           self.rating_combo, self.corrected_combo, self.site_combo)
                 if c.currentData() is not None or c in (self.period_combo, self.kind_combo)]
        if self.search_edit.text().strip():
            parts.append(f"text “{self.search_edit.text().strip()}”")
        if self._drill[0] is not None:
            parts.append(self.drill_label.text())
        return " · ".join(parts)

    def apply_theme(self, theme: Theme) -> None:
        for tile in self.tiles.values():
            tile.apply_theme(theme)
        for chart in (self.volume_chart, self.rates_chart, self.version_chart):
            chart.apply_theme(theme)

    def shutdown(self) -> None:
        self.stop_refreshing()

    def _jobs_in_flight(self) -> tuple:
        return (self._refresh_job, self._topics_job)

    # -- internals ----------------------------------------------------------------------
    def _show_drill(self) -> None:
        day, series = self._drill
        if day is None:
            self.drill_label.setText("Click a point of a chart to list that day's feedback.")
        else:
            label = fd.SERIES_BY[self.series_combo.currentData()][1]
            self.drill_label.setText(f"Showing {day.isoformat()} (UTC)" + (f", {label} {series}" if series else ""))
        self.clear_drill_button.setEnabled(day is not None)

    def _on_refresh_succeeded(self, load: fd.FeedbackLoad) -> None:
        self.last_load = load
        self.model.set_rows(load.rows)
        f = load.figures
        self.tiles["feedback"].set_value(f["feedback"])
        self.tiles["csat"].set_text(_pct(f["csat"]))
        self.tiles["correction_rate"].set_text(_pct(f["correction_rate"]))
        self.tiles["open_complaints"].set_value(f["open_complaints"])
        self._merge_options(self.site_combo, load.options.get("site", ()))
        self._merge_options(self.version_combo, load.options.get(load.query.version_kind, ()))
        series_label = fd.SERIES_BY[load.query.series_by][1]
        self.volume_chart.set_volume(load.volume, series_label)
        self.rates_chart.set_rates(load.rates)
        self.version_chart.set_versions(load.versions, load.query.version_kind)
        self.version_model.set_rows(_version_rows(load.versions))
        self.version_table.resizeColumnsToContents()
        if not self._sized:
            self._sized = bool(load.rows)
            for c in range(len(COLUMNS) - 1):  # not the free text: it stretches
                self.table.resizeColumnToContents(c)
        more = f" (newest {len(load.rows):,} of {load.matching:,})" if load.matching > len(load.rows) else ""
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)} · {len(load.rows):,} shown{more}"
                                   f" · unit-days from {f['unit_days_basis']}")
        self.sig_loaded.emit(len(load.rows))
        if self._pending_refresh:
            self.refresh()

    @staticmethod
    def _merge_options(combo: QComboBox, values: tuple[str, ...]) -> None:
        known = {combo.itemData(i) for i in range(combo.count())}
        combo.blockSignals(True)
        for v in values:
            if v not in known:
                combo.addItem(v, v)
        combo.blockSignals(False)

    def _on_texts_read(self, texts: list[str]) -> None:
        if not texts:
            self._topics_done([])
            self.message_bar.show_message("No stored free text matches the filters (text is kept only for "
                                          "households that consented). Widen the period or the filters.")
            return
        embed, root = self._embed, self._models_root
        self._topics_job = (Job(_compute_topics, texts, embed, root)
                            .on_success(self._on_topics_computed)
                            .on_failure(self._on_topics_failed)
                            .start(self._executors.inference, owner=self))

    def _on_topics_computed(self, result: tuple[list[Topic], Callable[[list[str]], np.ndarray]]) -> None:
        topics, embed = result
        self._embed = embed  # keep the loaded model for the next time
        self._topics_done(topics)

    def _topics_done(self, topics: list[Topic]) -> None:
        self.topics = topics
        self.topic_model.set_rows([{"name": t.label, "size": t.size, "phrases": " · ".join(t.phrases)}
                                   for t in topics])
        self.topic_table.resizeColumnsToContents()
        self.topics_button.setEnabled(True)
        self.topics_button.setText("Find topics")
        self.tabs.setCurrentIndex(2)
        self.sig_topics_ready.emit(len(topics))

    def _on_topics_failed(self, exc: BaseException) -> None:
        self.topics_button.setEnabled(True)
        self.topics_button.setText("Find topics")
        self._reporter.report(exc, context="group the feedback into topics", panel=self.message_bar)

    def _on_chart_point_clicked(self, day: date, series: str | None) -> None:
        self.tabs.setCurrentIndex(0)
        self.drill_down(day, series)

    def _on_filter_changed(self, *_: Any) -> None:
        self._drill = (None, None)
        self._show_drill()
        self.refresh()

    def _on_kind_combo_changed(self, *_: Any) -> None:
        self.version_combo.blockSignals(True)
        while self.version_combo.count() > 1:
            self.version_combo.removeItem(1)
        self.version_combo.blockSignals(False)
        self._on_filter_changed()

    def _on_timer_timeout(self) -> None:
        self.refresh()

    def _on_ticket_button_clicked(self) -> None:
        self.request_ticket()

    def _on_export_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export feedback", "feedback.csv", "CSV (*.csv)")
        if path:
            self._write(lambda: f"Exported {self.export(Path(path)):,} rows to {path}", path)

    def _on_report_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Feedback report", "feedback-report.html", "HTML (*.html)")
        if path:
            self._write(lambda: f"Report written to {self.export_report(Path(path))}", path)

    def _write(self, fn: Callable[[], str], path: str) -> None:
        try:
            self.updated_label.setText(fn())
        except OSError as exc:
            self.message_bar.show_message(f"Could not write {path}: {exc.strerror or exc}. Pick another folder.")


def _compute_topics(texts: list[str], embed: Callable[[list[str]], np.ndarray] | None,
                    models_root: Path | None) -> tuple[list[Topic], Callable[[list[str]], np.ndarray]]:
    """Worker (inference executor): load MiniLM if needed (:func:`feedback.topics.load_encoder`,
    ``ModelLoadError`` without a QA bundle), embed and cluster (:func:`feedback.topics.cluster_topics`)."""
    if embed is None:
        from inference_core.errors import ModelLoadError

        if models_root is None:
            raise ModelLoadError("no model folder configured; build the models with `speakerops models build`")
        embed = load_encoder(models_root)
    return cluster_topics(texts, embed), embed


def _version_rows(versions: Any) -> list[dict[str, Any]]:
    rows = []
    for r in ([] if versions is None or versions.empty else versions.to_dict("records")):
        lo, hi = r.get("ci_low"), r.get("ci_high")
        r["ci"] = "—" if lo is None or lo != lo else f"{lo * 100:.1f} – {hi * 100:.1f} %"
        passed = r.get("evaluation_passed")
        r["gate"] = "—" if passed is None or passed != passed else ("✔ passed" if passed else "✖ failed")
        rows.append({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()})
    return rows


def _png_base64(widget: QWidget) -> str:
    """The widget as it looks now, PNG, base64 (``widget.grab()``)."""
    buf = QByteArray()
    device = QBuffer(buf)
    device.open(QIODevice.OpenModeFlag.WriteOnly)
    widget.grab().save(device, "PNG")
    device.close()
    return base64.b64encode(bytes(buf.data())).decode("ascii")

