"""The Diagnostics page's summary of a test-set evaluation (``inference_core.evaluate.evaluate``):
the service requirements with pass/fail, WER and accuracies beside the baseline, latency
p50/p95 per stage, and the button that writes and opens the HTML report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.formatting import MISSING, format_number
from console.pages.diagnostics_views import Cell, RowsModel, fit_height
from console.pages.diagnostics_work import (
    CHECK_MARKS,
    VERDICTS,
    evaluation_verdict,
    format_pct,
    requirement_target_text,
    requirement_value_text,
)
from console.theme import ON_STATUS_TEXT
from console.widgets import section_title

logger = logging.getLogger(__name__)

#: (key, label) of the figures compared with the baseline (the general LM + keyword rules).
FIGURES: tuple[tuple[str, str], ...] = (
    ("wer", "WER"), ("cer", "CER"), ("intent_accuracy", "Intent accuracy"),
    ("feature_accuracy", "Feature accuracy"), ("answer_accuracy", "Answer accuracy (intent + slots)"),
    ("slot_accuracy", "Slot accuracy"), ("ood_rejection", "Out-of-domain rejected"),
    ("nonspeech_rejection", "Non-speech rejected"), ("speaker_count_accuracy", "Speaker count right"),
)

#: Names of the latency rows that are not plain stages.
STAGE_NAMES: dict[str, str] = {"server": "server (stt + qa + tts)", "end_to_end": "loop total",
                               "end_to_end_estimate": "end to end (est.)"}


def _table(model: RowsModel) -> QTableView:
    table = QTableView()
    table.setModel(model)
    table.verticalHeader().setVisible(False)
    table.setShowGrid(False)
    table.setAlternatingRowColors(True)
    table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    table.verticalHeader().setDefaultSectionSize(26)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return table


class EvaluationPanel(QWidget):
    """Summary of one evaluation report.

    Signals
    -------
    sig_open_report_requested()
        "Open HTML report" was clicked (the page writes the file off the GUI thread).
    """

    sig_open_report_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report: dict[str, Any] | None = None
        self.title = QLabel()
        self.title.setObjectName("detailSerial")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.verdict_label = QLabel()
        self.open_button = QPushButton("Open HTML report")
        self.open_button.clicked.connect(self._on_open_button_clicked)
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addWidget(self.verdict_label)
        head.addStretch(1)
        head.addWidget(self.open_button)
        self.summary_label = QLabel()
        self.summary_label.setObjectName("muted")
        self.summary_label.setWordWrap(True)
        self.report_note = QLabel()
        self.report_note.setObjectName("muted")
        self.report_note.setTextFormat(Qt.TextFormat.PlainText)
        self.report_note.setWordWrap(True)
        self.report_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.requirements_model = RowsModel(("", "Requirement", "Measured", "Target"),
                                            right_aligned=(2, 3), parent=self)
        self.figures_model = RowsModel(("Figure", "Loop", "Baseline"), right_aligned=(1, 2), parent=self)
        self.latency_model = RowsModel(("Stage", "p50 ms", "p95 ms"), right_aligned=(1, 2), parent=self)
        self.requirements_table = _table(self.requirements_model)
        self.figures_table = _table(self.figures_model)
        self.latency_table = _table(self.latency_model)

        left = QVBoxLayout()
        left.addWidget(section_title("Service requirements"))
        left.addWidget(self.requirements_table)
        left.addWidget(section_title("Figures beside the baseline (general LM + keyword rules)"))
        left.addWidget(self.figures_table)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(section_title("Latency per stage"))
        right.addWidget(self.latency_table)
        right.addStretch(1)
        columns = QHBoxLayout()
        columns.setSpacing(20)
        columns.addLayout(left, 3)
        columns.addLayout(right, 2)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.setSpacing(6)
        layout.addLayout(head)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.report_note)
        layout.addLayout(columns, 1)
        self.report_note.hide()

    def set_report_note(self, text: str) -> None:
        """Say where the HTML report was written (or why it was not)."""
        self.report_note.setText(text)
        self.report_note.setVisible(bool(text))

    def show_report(self, report: dict[str, Any]) -> None:
        """Show an ``evaluate`` report (a cancelled one says so)."""
        self.report = report
        self.set_report_note("")
        summary, baseline = report.get("summary", {}), report.get("baseline", {})
        name, glyph, color = VERDICTS[evaluation_verdict(report)]
        self.title.setText(f"Evaluation · {Path(report.get('manifest', '')).name}")
        self.title.setToolTip(str(report.get("manifest", "")))
        self.verdict_label.setText(f"{glyph} {name}")
        self.verdict_label.setStyleSheet(
            f"background: {color}; color: {ON_STATUS_TEXT}; border-radius: 10px; padding: 2px 10px;"
            " font-weight: bold;")
        models = " · ".join(report.get("models", {}).values())
        text = (f"{summary.get('utterances', 0):,} utterances, {summary.get('errors', 0):,} unreadable · "
                f"models {models} · loaded in {format_number(report.get('load_ms'), 0, 'ms')}")
        if report.get("cancelled"):
            text = "▲ Cancelled before the end: figures cover the utterances run. " + text
        self.summary_label.setText(text)

        rows, payloads = [], []
        for req in summary.get("requirements", []):
            mark, mark_color = CHECK_MARKS[req.get("passed")]
            word = {True: "pass", False: "fail", None: "n/a"}[req.get("passed")]
            rows.append((Cell(f"{mark} {word}", mark_color), Cell(req["label"], tooltip=req.get("measure")),
                         Cell(requirement_value_text(req)), Cell(requirement_target_text(req))))
            payloads.append(req)
        self.requirements_model.set_rows(rows, payloads)

        figure_rows = []
        for key, label in FIGURES:
            if summary.get(key) is None and baseline.get(key) is None:
                continue
            figure_rows.append((label, format_pct(summary.get(key), 1), format_pct(baseline.get(key), 1)))
        mos = summary.get("mos_answer_mean")
        figure_rows.append(("Mean MOS of the answers", format_number(mos, 2, "MOS"), MISSING))
        self.figures_model.set_rows(figure_rows)

        latency_rows = [(STAGE_NAMES.get(stage, stage), format_number(v.get("p50"), 0),
                         format_number(v.get("p95"), 0))
                        for stage, v in summary.get("latency_ms", {}).items()]
        self.latency_model.set_rows(latency_rows, list(summary.get("latency_ms", {})))
        for table in (self.requirements_table, self.figures_table, self.latency_table):
            table.resizeColumnsToContents()
            fit_height(table)

    def figure_text(self, label: str, column: int = 1) -> str:
        """The text of figure ``label`` (e.g. ``"WER"``), loop (1) or baseline (2) column.

        Raises
        ------
        KeyError
            If the figure is not shown.
        """
        for row in range(self.figures_model.rowCount()):
            if self.figures_model.text(row, 0) == label:
                return self.figures_model.text(row, column)
        raise KeyError(label)

    def _on_open_button_clicked(self) -> None:
        self.sig_open_report_requested.emit()
