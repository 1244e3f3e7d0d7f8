"""The Diagnostics page's detail of one recording (an ``inference_core.pipeline.LoopResult``):
verdict, stage timings, transcripts side by side, the reference alignment, intent and slots, the
answer, the room, the requirement checklist, or the reason the file could not be read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.formatting import MISSING, format_number, format_text
from console.pages.diagnostics_views import Cell, RowsModel, StageChart, fit_height
from console.pages.diagnostics_work import (
    CHECK_MARKS,
    VERDICTS,
    check_mark,
    check_value_text,
    format_pct,
    mos_text,
    stage_timings,
    verdict,
)
from console.theme import ON_STATUS_TEXT, Theme
from console.widgets import field_grid, section_title
from inference_core.pipeline import LoopResult, normalize_text
from inference_core.turns import turns_summary

logger = logging.getLogger(__name__)

#: (key, label) of the intent fields.
INTENT_FIELDS = (("intent", "Intent"), ("slots", "Slots"), ("intent_confidence", "Confidence"),
                 ("reference_intent", "Expected"))
#: (key, label) of the room fields.
ROOM_FIELDS = (("noise_floor", "Noise floor"), ("snr", "SNR"), ("noise_spl", "Noise (est.)"),
               ("speakers", "Speakers"), ("mos_input", "MOS input"), ("mos_answer", "MOS answer"),
               ("denoise", "Denoise"), ("clipping", "Clipping"))


def _value_label(wrap: bool = True) -> QLabel:
    label = QLabel(MISSING)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setWordWrap(wrap)
    return label


def alignment_text(r: LoopResult) -> str:
    """The reference alignment to show ('' without a reference): jiwer's REF/HYP lines without
    the sentence header; jiwer prints nothing for an exact match, so that is spelled out."""
    if not normalize_text(r.reference):
        return ""
    lines = [line for line in (r.alignment or "").splitlines() if not line.startswith("=== SENTENCE")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines:
        return "\n".join(lines)
    if r.wer == 0:
        return (f"REF: {normalize_text(r.reference)}\nHYP: {normalize_text(r.transcript)}\n"
                "(exact match)")
    return ""


def turns_text(turns: list[dict]) -> str:
    """``" (#1 0.37–3.20 s, #2 3.20–5.12 s)"`` after the speaker count (``inference_core.turns.turns_summary``)."""
    summary = turns_summary(turns)
    return f" ({summary})" if summary else ""


class ResultPanel(QWidget):
    """Everything the loop found for one recording.

    Signals
    -------
    sig_play_input_requested(str), sig_play_answer_requested()
        The Play buttons; the page owns the player and the temporary files.
    """

    sig_play_input_requested = Signal(str)
    sig_play_answer_requested = Signal()

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: LoopResult | None = None
        self._values: dict[str, QLabel] = {}
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)

        self.name_label = QLabel()
        self.name_label.setObjectName("detailSerial")
        self.name_label.setTextFormat(Qt.TextFormat.PlainText)
        self.verdict_label = QLabel()
        self.summary_label = QLabel()
        self.summary_label.setObjectName("muted")
        self.play_input_button = QPushButton("▶ Play recording")
        self.play_answer_button = QPushButton("▶ Play answer")
        self.play_input_button.clicked.connect(self._on_play_input_button_clicked)
        self.play_answer_button.clicked.connect(self._on_play_answer_button_clicked)
        self.play_note = QLabel()
        self.play_note.setObjectName("muted")
        self.play_note.setWordWrap(True)
        self.play_note.setTextFormat(Qt.TextFormat.PlainText)
        head = QHBoxLayout()
        head.addWidget(self.name_label)
        head.addWidget(self.verdict_label)
        head.addStretch(1)
        head.addWidget(self.play_input_button)
        head.addWidget(self.play_answer_button)

        self.error_box = QFrame()
        self.error_box.setObjectName("messageBar")
        self.error_label = QLabel()
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        error_row = QHBoxLayout(self.error_box)
        error_row.setContentsMargins(10, 8, 10, 8)
        error_row.addWidget(QLabel("▲"))
        error_row.addWidget(self.error_label, 1)

        # left column: what was heard and understood
        self.transcript = _value_label()
        self.transcript.setObjectName("transcript")
        self.general_transcript = _value_label()
        self.transcript_note = QLabel()
        self.transcript_note.setObjectName("muted")
        self.transcript_note.setWordWrap(True)  # a long note must not push the timing chart aside
        heard = QGridLayout()
        heard.setHorizontalSpacing(16)
        for col, (title, value) in enumerate((("In-domain LM", self.transcript),
                                              ("General LM (baseline)", self.general_transcript))):
            caption = QLabel(title)
            caption.setObjectName("fieldLabel")
            heard.addWidget(caption, 0, col)
            heard.addWidget(value, 1, col, Qt.AlignmentFlag.AlignTop)
            heard.setColumnStretch(col, 1)
        heard.addWidget(self.transcript_note, 2, 0, 1, 2)
        self.alignment_title = section_title("Alignment with the reference")
        self.alignment = QPlainTextEdit()
        self.alignment.setReadOnly(True)
        self.alignment.setFont(mono)
        self.alignment.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.alignment.setFixedHeight(84)
        self.answer = _value_label()

        left = QVBoxLayout()
        left.setSpacing(6)
        left.addWidget(section_title("Transcript"))
        left.addLayout(heard)
        left.addWidget(self.alignment_title)
        left.addWidget(self.alignment)
        left.addWidget(section_title("Intent"))
        left.addLayout(self._grid(INTENT_FIELDS, 1))
        left.addWidget(section_title("Answer"))
        left.addWidget(self.answer)
        left.addStretch(1)

        # right column: time, room, requirements
        self.chart = StageChart(theme)
        self.checks_model = RowsModel(("", "Requirement", "Measured", "Note"), right_aligned=(2,), parent=self)
        self.checks_table = QTableView()
        self.checks_table.setModel(self.checks_model)
        self.checks_table.verticalHeader().setVisible(False)
        self.checks_table.setShowGrid(False)
        self.checks_table.setWordWrap(False)
        self.checks_table.verticalHeader().setDefaultSectionSize(24)
        self.checks_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.checks_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.checks_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.checks_table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.checks_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        right = QVBoxLayout()
        right.setSpacing(6)
        right.addWidget(section_title("Time per stage (ms)"))
        right.addWidget(self.chart)
        right.addWidget(section_title("Room"))
        right.addLayout(self._grid(ROOM_FIELDS, 1))
        right.addStretch(1)

        self.body = QWidget()
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.setSpacing(6)
        columns = QHBoxLayout()
        columns.setSpacing(20)
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)
        body.addLayout(columns)
        body.addWidget(section_title("Requirements"))
        body.addWidget(self.checks_table)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.setSpacing(6)
        layout.addLayout(head)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.play_note)
        layout.addWidget(self.error_box)
        layout.addWidget(self.body)
        layout.addStretch(1)
        self.play_note.hide()
        self.apply_theme(theme)

    def _grid(self, fields, pairs_per_row: int) -> QGridLayout:
        return field_grid(fields, pairs_per_row, self._values, _value_label)

    # -- public API ---------------------------------------------------------------------
    def field_text(self, key: str) -> str:
        """Text shown for an intent or room field (see :data:`INTENT_FIELDS`, :data:`ROOM_FIELDS`),
        or ``"transcript"``, ``"general_transcript"``, ``"alignment"``, ``"answer"``, ``"error"``.

        Raises
        ------
        KeyError
            For a field the panel does not show.
        """
        special = {"transcript": self.transcript.text, "general_transcript": self.general_transcript.text,
                   "alignment": self.alignment.toPlainText, "answer": self.answer.text,
                   "error": lambda: self.error_label.text() if not self.error_box.isHidden() else ""}
        if key in special:
            return special[key]()
        return self._values[key].text()

    def set_play_note(self, text: str) -> None:
        """Show why playback did not start (or that it did)."""
        self.play_note.setText(text)
        self.play_note.setVisible(bool(text))

    def show_result(self, result: LoopResult) -> None:
        """Show ``result`` (an unreadable file shows its error and nothing else)."""
        self.result = result
        self.set_play_note("")
        word = verdict(result)
        name, glyph, color = VERDICTS[word]
        self.name_label.setText(Path(result.audio).name)
        self.name_label.setToolTip(result.audio)
        self.verdict_label.setText(f"{glyph} {name}")
        self.verdict_label.setStyleSheet(
            f"background: {color}; color: {ON_STATUS_TEXT}; border-radius: 10px; padding: 2px 10px;"
            " font-weight: bold;")
        self.play_input_button.setVisible(result.error is None)
        self.play_answer_button.setVisible(result.answer_audio is not None and len(result.answer_audio) > 0)
        if result.error:
            self.summary_label.setText("The recording could not be read, so no stage ran.")
            self.error_label.setText(f"Could not read this recording: {result.error}")
            self.error_box.show()
            self.body.hide()
            return
        self.error_box.hide()
        self.body.show()
        segments = ", ".join(f"{a:.1f}–{b:.1f} s" for a, b in result.segments) or "no speech found"
        e2e = result.timings_ms.get("end_to_end")
        failed = [c.label for c in result.checks if c.passed is False]
        self.summary_label.setText(
            f"{format_number(result.duration_s, 1, 's')} · speech {segments} · loop "
            f"{format_number(e2e, 0, 'ms')} (real-time factor {format_number(result.rtf.get('end_to_end'), 2)})"
            + (f" · ✖ failed: {', '.join(failed)}" if failed else ""))
        self._show_heard(result)
        self._show_understood(result)
        self._show_room(result)
        self.chart.set_timings(stage_timings(result))
        rows = []
        for check in result.checks:
            color = CHECK_MARKS[check.passed][1]
            rows.append((Cell(check_mark(check), color, {True: "passed", False: "failed",
                                                        None: "does not apply"}[check.passed]),
                         Cell(check.label), Cell(check_value_text(check)), Cell(check.note)))
        self.checks_model.set_rows(rows, result.checks)
        fit_height(self.checks_table)

    def _show_heard(self, r: LoopResult) -> None:
        self.transcript.setText(r.transcript or "(nothing recognized)")
        self.general_transcript.setText(
            MISSING if r.general_transcript is None else (r.general_transcript or "(nothing recognized)"))
        note = f"confidence {format_number(r.transcript_confidence, 2)}"
        if r.rejected:
            note += {"template match": " · doubtful, but a template makes exactly these words",
                     "intent model": " · doubtful, but the intent model is sure of it",
                     "general LM": " · doubtful: QA used the general LM's words",
                     }.get(r.intent_source, " · rejected as out of domain (QA saw no text)")
        if r.transcribed_span_s is not None:
            note += (f" · first speaker only ({format_number(r.transcribed_span_s[0], 2)}–"
                     f"{format_number(r.transcribed_span_s[1], 2)} s); the other speaker is not answered")
        if r.wer is not None:
            note += f" · WER {format_pct(r.wer, 1)}, CER {format_pct(r.cer, 1)}"
        self.transcript_note.setText(note)
        text = alignment_text(r)
        self.alignment_title.setVisible(bool(text))
        self.alignment.setVisible(bool(text))
        self.alignment.setPlainText(text)

    def _show_understood(self, r: LoopResult) -> None:
        slots = ", ".join(f"{k} = {v}" for k, v in r.slots.items())
        values = {"intent": f"{r.intent} (feature {r.feature})", "slots": slots or "none",
                  "intent_confidence": format_number(r.intent_confidence, 2),
                  "reference_intent": format_text(r.reference_intent)}
        for key, text in values.items():
            self._values[key].setText(text)
        self.answer.setText(r.answer or "(no answer: nothing understood)")

    def _show_room(self, r: LoopResult) -> None:
        env: dict[str, Any] = r.environment or {}
        spl = env.get("noise_db_spl_est")
        verdict_word = {"ok": "✔ within the 60 dB SPL limit", "too_noisy": "▲ above the 60 dB SPL limit"}.get(
            env.get("verdict", ""), "unknown")
        denoise = format_text(r.denoise_method)
        if r.noise_in_dbfs is not None and r.noise_out_dbfs is not None:
            denoise += (f", noise {format_number(r.noise_in_dbfs, 1)} → "
                        f"{format_number(r.noise_out_dbfs, 1)} dBFS")
        values = {
            "noise_floor": format_number(env.get("noise_floor_dbfs"), 1, "dBFS"),
            "snr": format_number(env.get("snr_db"), 1, "dB"),
            "noise_spl": MISSING if spl is None else f"{format_number(spl, 0, 'dB SPL')} ({verdict_word})",
            "speakers": MISSING if r.speakers is None else str(r.speakers) + turns_text(r.turns),
            "mos_input": mos_text(r.mos_input), "mos_answer": mos_text(r.mos_answer),
            "denoise": denoise,
            "clipping": format_pct(env.get("clipping_ratio"), 2),
        }
        for key, text in values.items():
            self._values[key].setText(text)

    def apply_theme(self, theme: Theme) -> None:
        """Recolour the chart for ``theme``."""
        self.chart.apply_theme(theme)
        self.transcript.setStyleSheet("font-weight: bold;")

    # -- slots --------------------------------------------------------------------------
    def _on_play_input_button_clicked(self) -> None:
        if self.result is not None:
            self.sig_play_input_requested.emit(self.result.audio)

    def _on_play_answer_button_clicked(self) -> None:
        self.sig_play_answer_requested.emit()
