"""Diagnose a unit over SSH (the technician workbench, ``fleet.workbench``): collect its recordings
and logs, replay them with its own model versions, run the acoustic self-test, and say whether it
is the room, the hardware or the model — with progress and Cancel, the report attached to the
ticket. Beside it, the audited unit actions: restart the voice service, collect logs, self-test,
pin to the previous version.

The CLI does the same with ``speakerops unit diagnose UNIT [--ticket N]`` (and ``unit restart``,
``unit logs``, ``unit selftest``, ``unit pin``). The diagnosis runs on the ``inference``
executor (it loads models); the unit actions on ``io``; the unit list on ``db``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from sqlalchemy import select

from console.errors import ErrorReporter
from console.jobs import Executors, Job
from console.models.records import RecordColumn, RecordTableModel
from console.pages.diagnostics_controls import ProgressRow
from console.theme import StatusStyle, Theme
from console.widgets import MessageBar, Tile, section_title, style_table

logger = logging.getLogger(__name__)

#: Verdict styles (Okabe–Ito colour, a glyph of its own shape and the word).
VERDICT_STYLES: dict[str, StatusStyle] = {
    "ok": StatusStyle("ok", "✔", "#009E73"),
    "room": StatusStyle("room", "≋", "#E69F00"),
    "hardware": StatusStyle("hardware", "⚠", "#D55E00"),
    "model": StatusStyle("model", "◆", "#CC79A7"),
    "unreachable": StatusStyle("unreachable", "✖", "#D55E00"),
    "inconclusive": StatusStyle("inconclusive", "?", "#999999"),
}
_PASS = {True: StatusStyle("met", "✔", "#009E73"), False: StatusStyle("missed", "✖", "#D55E00")}

REQUIREMENT_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("requirement", "Requirement"),
    RecordColumn("passed", "Verdict", style=lambda v: _PASS.get(v) if isinstance(v, bool) else None,
                 fmt=lambda v: _PASS[v].label if isinstance(v, bool) else str(v)),
    RecordColumn("value", "Measured"),
    RecordColumn("target", "Target"),
    RecordColumn("note", "Why"),
)


def load_serials(session_factory: Callable[[], Any]) -> list[str]:
    """Serials of the units that can be reached over SSH, then the others (worker thread)."""
    from fleet.models import Unit

    with session_factory() as session:
        rows = session.execute(select(Unit.serial, Unit.ssh_host).order_by(Unit.serial)).all()
    return [s for s, host in rows if host] + [s for s, host in rows if not host]


def requirement_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's per-requirement verdicts (``fleet.workbench_report.requirement_verdicts``) as rows."""
    return [{"requirement": r.get("label", r.get("key", "?")), "passed": r.get("passed"),
             "value": _shown(r.get("value")), "target": _shown(r.get("target")), "note": r.get("note", "")}
            for r in report.get("requirements", []) or [] if isinstance(r, dict)]


def examined_lines(report: dict[str, Any]) -> list[str]:
    """What could and could not be examined, and the problems met, as lines."""
    examined = report.get("examined", {}) or {}
    lines = [f"collection: {report.get('collection', {}).get('status', '?')}"]
    lines += [f"  examined: {x}" for x in examined.get("could", [])]
    lines += [f"  not examined: {x}" for x in examined.get("could_not", [])]
    lines += [f"  problem: {x}" for x in report.get("problems", []) or []]
    return lines


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run_diagnosis(ctx: Any, serial: str, ticket_id: int | None, full: bool, actor: str | None, *,
                  report: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
    """``fleet.workbench.diagnose_unit`` with the page's options (inference executor)."""
    from fleet.workbench import DiagnoseOptions, diagnose_unit
    from inference_core.pipeline import LoopOptions

    options = DiagnoseOptions(actor=actor, loop_options=None if full else LoopOptions(mos=False, general_transcript=False),
                              tts_round_trip=full)
    return diagnose_unit(ctx, serial, ticket_id=ticket_id, options=options, progress=report, cancelled=cancelled)


def run_action(ctx: Any, action: str, serial: str, actor: str | None) -> str:
    """One audited unit action; returns what happened in a line (io executor)."""
    from fleet import workbench_actions as actions

    if action == "restart":
        return f"{serial}: {actions.restart_voice_service(ctx, serial, actor=actor).message}"
    if action == "logs":
        collection = actions.collect_logs(ctx, serial, actor=actor)
        return f"{serial}: logs collected ({collection.status}) into {collection.run_dir}"
    if action == "selftest":
        found = actions.run_unit_selftest(ctx, serial, actor=actor)
        return (f"{serial}: self-test {found.get('verdict')}: noise floor {_shown(found.get('noise_floor_dbfs'))} "
                f"dBFS, SNR {_shown(found.get('snr_db'))} dB, phrase recognized: {found.get('recognized')}"
                + ("; the microphone is degrading over time" if (found.get("trend") or {}).get("degrading") else ""))
    if action == "pin_previous":
        return serial + ": " + actions.pin_unit(ctx, serial, "stt", None, reason="pinned from the Diagnostics page",
                                actor=actor).message
    raise ValueError(f"unknown unit action {action!r}")


class UnitDiagnosisPanel(QWidget):
    """Parameters: ``workbench_factory`` builds the ``fleet.workbench.WorkbenchContext`` on first
    use (it holds the SSH connector and caches loaded models); the rest as every page."""

    sig_diagnosed = Signal(object)  # fleet.workbench.Diagnosis
    sig_action_done = Signal(str)

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, *, workbench_factory: Callable[[], Any],
                 actor: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._factory = workbench_factory
        self._ctx: Any = None
        self.actor = actor
        self._jobs: dict[str, Job | None] = {"serials": None, "diagnose": None, "action": None}
        self.last: Any = None  #: the latest Diagnosis
        self.url_opener: Callable[[QUrl], Any] = QDesktopServices.openUrl

        self.unit_combo = QComboBox()
        self.unit_combo.setEditable(True)
        self.unit_combo.setMinimumWidth(180)
        self.unit_combo.lineEdit().setPlaceholderText("unit serial")
        self.ticket_edit = QLineEdit()
        self.ticket_edit.setPlaceholderText("ticket # (optional)")
        self.ticket_edit.setMaximumWidth(140)
        self.full_check = QCheckBox("Full (MOS, general-LM transcript, TTS round trip)")
        self.run_button = QPushButton("Diagnose unit")
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Unit"))
        bar.addWidget(self.unit_combo)
        bar.addWidget(self.ticket_edit)
        bar.addWidget(self.full_check)
        bar.addStretch(1)
        bar.addWidget(self.run_button)
        self.progress = ProgressRow()
        self.message_bar = MessageBar()

        self.verdict_tile = Tile("verdict", "Verdict", theme)
        self.verdict_tile.set_text("—")
        self.why = QLabel("Pick a unit and run a diagnosis: it collects the unit's recordings (with "
                          "consent) and logs over SSH, replays them with the unit's own model versions, "
                          "runs the acoustic self-test and says whether it is the room, the hardware or "
                          "the model.")
        self.why.setWordWrap(True)
        self.why.setTextFormat(Qt.TextFormat.PlainText)
        self.why.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_report_button = QPushButton("Open HTML report")
        self.open_report_button.setEnabled(False)
        verdict_row = QHBoxLayout()
        verdict_row.addWidget(self.verdict_tile)
        verdict_row.addWidget(self.why, 1)
        verdict_row.addWidget(self.open_report_button)

        self.requirements = RecordTableModel(REQUIREMENT_COLUMNS, self)
        self.requirements_table = style_table(QTableView())
        self.requirements_table.setModel(self.requirements)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setPlaceholderText("What was collected and examined, and what could not be.")

        self.action_buttons = {key: QPushButton(word) for key, word in (
            ("restart", "Restart voice service"), ("logs", "Collect logs"), ("selftest", "Acoustic self-test"),
            ("pin_previous", "Pin STT to previous version"))}
        actions_row = QHBoxLayout()
        actions_row.addWidget(section_title("Unit actions (audited)"))
        for button in self.action_buttons.values():
            actions_row.addWidget(button)
        actions_row.addStretch(1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.setSpacing(8)
        layout.addLayout(bar)
        layout.addWidget(self.progress)
        layout.addWidget(self.message_bar)
        layout.addLayout(verdict_row)
        layout.addWidget(self.requirements_table, 2)
        layout.addWidget(self.details, 1)
        layout.addLayout(actions_row)

        self.run_button.clicked.connect(self._on_run_button_clicked)
        self.progress.sig_cancel_requested.connect(self._on_progress_cancel_requested)
        self.open_report_button.clicked.connect(self._on_open_report_button_clicked)
        for key, button in self.action_buttons.items():
            button.clicked.connect(lambda _=False, k=key: self.run_unit_action(k))

    # -- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(j is not None and not j.is_done for j in self._jobs.values())

    def refresh(self) -> None:
        """Reload the unit list (db executor)."""
        if self._jobs["serials"] is not None and not self._jobs["serials"].is_done:
            return
        self._jobs["serials"] = (Job(load_serials, self.session_factory)
                                 .on_success(self._on_serials_loaded)
                                 .on_failure(self._on_job_failed)
                                 .start(self._executors.db, owner=self))

    def diagnose(self, serial: str, ticket_id: int | None = None, full: bool = False) -> bool:
        """Start a diagnosis of ``serial`` (as the Diagnose button does); False if one is running."""
        if not serial:
            self.message_bar.show_message("Give a unit serial (the Fleet page lists them).")
            return False
        job = self._jobs["diagnose"]
        if job is not None and not job.is_done:
            return False
        ctx = self._workbench()
        if ctx is None:
            return False
        self.message_bar.clear()
        self.progress.show()
        self.progress.label.setText(f"Diagnosing {serial}…")
        self.run_button.setEnabled(False)
        self._jobs["diagnose"] = (Job(run_diagnosis, ctx, serial, ticket_id, full, self.actor)
                                  .with_progress(self._on_diagnosis_progress)
                                  .on_success(self._on_diagnosis_succeeded)
                                  .on_failure(self._on_job_failed)
                                  .on_cancelled(lambda: self.message_bar.show_message(
                                      "Diagnosis cancelled; what was gathered is kept in the run directory."))
                                  .on_done(self._on_diagnosis_done)
                                  .start(self._executors.inference, owner=self))
        return True

    def run_unit_action(self, action: str) -> bool:
        """Run a unit action (restart, logs, selftest, pin_previous) on the unit shown."""
        serial = self.unit_combo.currentText().strip()
        if not serial:
            self.message_bar.show_message("Give a unit serial first.")
            return False
        job = self._jobs["action"]
        if job is not None and not job.is_done:
            return False
        ctx = self._workbench()
        if ctx is None:
            return False
        for button in self.action_buttons.values():
            button.setEnabled(False)
        self._jobs["action"] = (Job(run_action, ctx, action, serial, self.actor)
                                .on_success(self._on_action_succeeded)
                                .on_failure(self._on_job_failed)
                                .on_done(self._on_action_done)
                                .start(self._executors.io, owner=self))
        return True

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.refresh()

    def apply_role(self, role: str | None) -> None:
        """Diagnosis and unit actions need a role that may pin units and work tickets."""
        from speakerops.roles import may

        allowed = may(role, "units.pin") and may(role, "tickets.write")
        self.run_button.setVisible(allowed)
        for button in self.action_buttons.values():
            button.setVisible(allowed)

    def apply_theme(self, theme: Theme) -> None:
        self.verdict_tile.apply_theme(theme)

    def shutdown(self) -> None:
        for job in self._jobs.values():
            if job is not None and not job.is_done:
                job.cancel()

    # -- internals ----------------------------------------------------------------------
    def _workbench(self) -> Any:
        if self._ctx is None:
            try:
                self._ctx = self._factory()
            except Exception as exc:  # noqa: BLE001 - shown in the panel (e.g. no SSH key yet)
                self._reporter.report(exc, context="preparing the workbench", panel=self.message_bar)
                return None
        return self._ctx

    def _ticket_id(self) -> int | None:
        text = self.ticket_edit.text().strip().lstrip("#")
        return int(text) if text.isdigit() else None

    def _on_run_button_clicked(self) -> None:
        if self.ticket_edit.text().strip() and self._ticket_id() is None:
            self.message_bar.show_message(f"{self.ticket_edit.text()!r} is not a ticket number; give digits "
                                          "or leave it empty.")
            return
        self.diagnose(self.unit_combo.currentText().strip(), self._ticket_id(), self.full_check.isChecked())

    def _on_progress_cancel_requested(self) -> None:
        job = self._jobs["diagnose"]
        if job is not None and not job.is_done:
            job.cancel()
            self.progress.label.setText("Cancelling: finishing the current step…")

    def _on_diagnosis_progress(self, fraction: float, message: str) -> None:
        self.progress.label.setText(message)
        self.progress.bar.setRange(0, 1000)
        self.progress.bar.setValue(int(fraction * 1000))

    def _on_diagnosis_succeeded(self, diagnosis: Any) -> None:
        self.last = diagnosis
        style = VERDICT_STYLES.get(diagnosis.verdict)
        self.verdict_tile.set_text(style.label if style else diagnosis.verdict)
        report = diagnosis.report
        verdict = report.get("verdict", {}) or {}
        why = verdict.get("why") or []
        why_text = " ".join(str(w) for w in why) if isinstance(why, list) else str(why)
        action = verdict.get("action") or ""
        ticket = f" Attached to ticket #{diagnosis.ticket_id}." if diagnosis.attached and diagnosis.ticket_id else ""
        self.why.setText(f"{why_text} {('Suggested: ' + action) if action else ''}{ticket}".strip())
        self.requirements.set_rows(requirement_rows(report))
        self.details.setPlainText("\n".join([*examined_lines(report), f"run directory: {diagnosis.run_dir}"]))
        self.open_report_button.setEnabled(diagnosis.html_path is not None)
        self.sig_diagnosed.emit(diagnosis)

    def _on_diagnosis_done(self) -> None:
        self.progress.hide()
        self.run_button.setEnabled(True)

    def _on_action_succeeded(self, line: str) -> None:
        self.details.appendPlainText(line)
        self.sig_action_done.emit(line)

    def _on_action_done(self) -> None:
        for button in self.action_buttons.values():
            button.setEnabled(True)

    def _on_serials_loaded(self, serials: list[str]) -> None:
        current = self.unit_combo.currentText()
        self.unit_combo.blockSignals(True)
        self.unit_combo.clear()
        self.unit_combo.addItems(serials)
        self.unit_combo.setEditText(current)
        self.unit_combo.blockSignals(False)

    def _on_open_report_button_clicked(self) -> None:
        if self.last is not None and self.last.html_path is not None:
            self.url_opener(QUrl.fromLocalFile(str(Path(self.last.html_path))))

    def _on_job_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="diagnosing a unit", panel=self.message_bar)
