"""The Diagnostics page's controls: the bar that starts work (open recordings, evaluate a test
set, reference transcript, denoise method), the progress row with Cancel, and the rows of the
results table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableView,
    QWidget,
)

from console.formatting import MISSING, format_number
from console.pages.diagnostics_views import Cell, RowsModel
from console.pages.diagnostics_work import DENOISE_METHODS, VERDICTS, evaluation_verdict, verdict
from inference_core.pipeline import LoopResult

logger = logging.getLogger(__name__)


class ControlBar(QWidget):
    """"Open recordings…", "Evaluate test set…", the optional reference transcript and the
    denoise selector.

    Signals
    -------
    sig_open_requested(), sig_evaluate_requested()
        The buttons were clicked (the page shows the file dialogs).
    """

    sig_open_requested = Signal()
    sig_evaluate_requested = Signal()

    def __init__(self, denoise: str = "auto", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.open_button = QPushButton("Open recordings…")
        self.open_button.setToolTip("Run WAV, FLAC or OGG recordings through the voice loop")
        self.open_button.clicked.connect(self._on_open_button_clicked)
        self.evaluate_button = QPushButton("Evaluate test set…")
        self.evaluate_button.setToolTip("Evaluate the loop on a JSONL test-set manifest")
        self.evaluate_button.clicked.connect(self._on_evaluate_button_clicked)
        self.reference_edit = QLineEdit()
        self.reference_edit.setPlaceholderText("Reference transcript (optional): what was said, "
                                               "for WER and the alignment")
        self.reference_edit.setClearButtonEnabled(True)
        self.denoise_combo = QComboBox()
        for method in DENOISE_METHODS:
            self.denoise_combo.addItem(method, method)
        self.denoise_combo.setCurrentIndex(max(0, self.denoise_combo.findData(denoise)))
        self.denoise_combo.setToolTip("Noise suppression before recognition")
        denoise_label = QLabel("Denoise")
        denoise_label.setObjectName("fieldLabel")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.open_button)
        row.addWidget(self.evaluate_button)
        row.addSpacing(12)
        row.addWidget(self.reference_edit, 1)
        row.addSpacing(12)
        row.addWidget(denoise_label)
        row.addWidget(self.denoise_combo)

    @property
    def reference(self) -> str | None:
        """The reference transcript typed, or None."""
        return self.reference_edit.text().strip() or None

    @property
    def denoise(self) -> str:
        """The denoise method chosen (``"auto"``, ``"rnnoise"``, ``"noisereduce"`` or ``"none"``)."""
        return str(self.denoise_combo.currentData() or "auto")

    def set_busy(self, busy: bool) -> None:
        """Disable what would start work (the reference stays editable)."""
        for widget in (self.open_button, self.evaluate_button, self.denoise_combo):
            widget.setEnabled(not busy)

    def _on_open_button_clicked(self) -> None:
        self.sig_open_requested.emit()

    def _on_evaluate_button_clicked(self) -> None:
        self.sig_evaluate_requested.emit()


class ProgressRow(QWidget):
    """What the page is doing, a progress bar (busy when no fraction is known) and Cancel.

    Signals
    -------
    sig_cancel_requested()
        Cancel was clicked.
    """

    sig_cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.bar = QProgressBar()
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(10)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._on_cancel_button_clicked)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 2)
        row.addWidget(self.bar, 3)
        row.addWidget(self.cancel_button)
        self.hide()

    def show_progress(self, fraction: float, message: str) -> None:
        """Show ``message`` and ``fraction`` (0–1; negative: busy, no fraction known)."""
        self.show()
        self.label.setText(message)
        if fraction < 0:
            self.bar.setRange(0, 0)
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(round(min(1.0, fraction) * 1000)))

    def show_cancelling(self) -> None:
        """Say that the work stops after the current file; Cancel is disabled."""
        self.label.setText("Cancelling after the current file…")
        self.cancel_button.setEnabled(False)

    def finish(self) -> None:
        """Hide the row and re-enable Cancel for the next run."""
        self.hide()
        self.cancel_button.setEnabled(True)

    def _on_cancel_button_clicked(self) -> None:
        self.sig_cancel_requested.emit()


def make_results_table(model: RowsModel) -> QTableView:
    """The table of recordings and evaluations run: one selected row at a time."""
    table = QTableView()
    table.setModel(model)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setAlternatingRowColors(True)
    table.setShowGrid(False)
    table.setWordWrap(False)
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setDefaultSectionSize(26)
    header = table.horizontalHeader()
    header.setHighlightSections(False)
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
    return table


#: Columns of the results table.
RESULT_COLUMNS: tuple[str, ...] = ("Status", "Recording", "Intent", "Loop ms")


def result_rows(entries: Sequence[LoopResult | dict[str, Any]]) -> tuple[list[tuple[Cell, ...]], dict[str, int]]:
    """Rows of the results table (status glyph + word, file, intent, loop time) and the count
    of recordings per verdict."""
    rows = []
    counts = dict.fromkeys(VERDICTS, 0)
    for entry in entries:
        if isinstance(entry, LoopResult):
            word = verdict(entry)
            counts[word] += 1
            name, tip = Path(entry.audio).name, entry.audio
            intent = MISSING if entry.error else entry.intent
            loop_ms = format_number(entry.timings_ms.get("end_to_end"), 0)
        else:
            word = evaluation_verdict(entry)
            name = f"Evaluation · {Path(entry.get('manifest', '')).name}"
            tip = str(entry.get("manifest", ""))
            intent = f"{entry.get('summary', {}).get('utterances', 0):,} utterances"
            loop_ms = MISSING
        _, glyph, color = VERDICTS[word]
        rows.append((Cell(f"{glyph} {word}", color), Cell(name, tooltip=tip), Cell(intent), Cell(loop_ms)))
    return rows, counts
