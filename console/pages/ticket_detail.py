"""Widgets of the Tickets page: the SLA badge styles, the detail panel of the selected ticket
(fields, SLA clocks, unit and its model versions, the rollout that last touched it, attachments,
history, workflow actions) and the "New ticket" dialog. They only draw what
:mod:`console.pages.tickets` loaded and emit what the operator asked for; the page runs the work.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from console.formatting import format_age, format_full_time, format_number
from console.theme import StatusStyle
from console.widgets import field_grid, section_title
from feedback.models import CATEGORIES, PRIORITIES

logger = logging.getLogger(__name__)

#: SLA badge of a ticket: Okabe–Ito colour, a glyph of its own shape and a word (never colour alone).
SLA_STYLES: dict[str, StatusStyle] = {
    "running": StatusStyle("running", "◷", "#56B4E9"),     # sky blue
    "at_risk": StatusStyle("at risk", "▲", "#E69F00"),     # orange: < 25 % of a target left
    "paused": StatusStyle("paused", "‖", "#999999"),       # grey: waiting for parts
    "breached": StatusStyle("breached", "✖", "#D55E00"),   # vermillion
    "met": StatusStyle("met", "✔", "#009E73"),             # bluish green: done within target
    "missed": StatusStyle("met late", "◆", "#CC79A7"),     # reddish purple: done, target missed
}
#: Ticket state words (``feedback.models.TICKET_STATES``) as the operator reads them.
STATE_WORDS: dict[str, str] = {
    "new": "new", "triaged": "triaged", "diagnosing": "diagnosing", "waiting_for_parts": "waiting for parts",
    "in_repair": "in repair", "resolved": "resolved", "closed": "closed",
}
#: Button label of a move to a state (reopen is a move from resolved/closed to triaged).
MOVE_LABELS: dict[str, str] = {
    "triaged": "Triage", "diagnosing": "Start diagnosis", "waiting_for_parts": "Wait for parts",
    "in_repair": "Start repair", "resolved": "Resolve", "closed": "Close",
}
PRIORITY_STYLES: dict[str, StatusStyle] = {
    "urgent": StatusStyle("urgent", "▲▲", "#D55E00"), "high": StatusStyle("high", "▲", "#E69F00"),
    "normal": StatusStyle("normal", "●", "#56B4E9"), "low": StatusStyle("low", "▽", "#999999"),
}


def state_word(state: str | None) -> str:
    return STATE_WORDS.get(state or "", state or "—")


def category_word(category: str | None) -> str:
    return (category or "—").replace("_", " ")


def sla_badge(row: dict[str, Any]) -> str:
    """The page's SLA badge of a :func:`feedback.tickets.ticket_queue` row: ``running``,
    ``at_risk``, ``paused``, ``breached``, ``met`` or ``missed`` (done after a target passed)."""
    badge = row.get("sla_badge")
    if badge == "done":
        late = row["first_response"]["breached"] or row["resolution"]["breached"]
        return "missed" if late else "met"
    return {"ok": "running"}.get(badge, badge or "running")


def sla_time_left_s(row: dict[str, Any]) -> float | None:
    """Seconds left on the clock that matters now (first response until answered, then
    resolution); negative when late, None when done."""
    if row.get("sla_badge") == "done":
        return None
    first = row["first_response"]
    clock = first if first["status"] in ("running", "breached") else row["resolution"]
    return float(clock["remaining_s"])


def format_time_left(seconds: float | None) -> str:
    """``"3 h 10 min left"``, ``"2 h 5 min late"``; "—" when done."""
    if seconds is None:
        return "—"
    return f"{format_age(abs(seconds))} {'left' if seconds >= 0 else 'late'}"


def _iso_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _size(n_bytes: int) -> str:
    return format_number(n_bytes, 0, "B") if n_bytes < 1024 else format_number(n_bytes / 1024, 1, "KiB")


def describe_event(event: dict[str, Any]) -> str:
    """One history line: when, who, what (``ticket_detail()['history']`` item)."""
    when = format_full_time(_iso_dt(event["at"]))
    kind = event["kind"]
    if kind in ("moved", "reopened", "created"):
        what = f"{kind}: {state_word(event.get('from'))} → {state_word(event.get('to'))}" if event.get("from") \
            else f"{kind} ({state_word(event.get('to'))})"
    else:
        what = kind
    detail = event.get("detail") or {}
    if kind in ("assigned", "edited"):
        what += "; " + ", ".join(f"{k}: {v[0] or '—'} → {v[1] or '—'}" for k, v in detail.items()
                                 if isinstance(v, list) and len(v) == 2)
    elif kind == "attached":
        what += f" {detail.get('kind', '')} {detail.get('path', '')}"
    elif kind == "created":
        what += f"; priority {detail.get('priority')}, {category_word(detail.get('category'))}, " \
                f"from {detail.get('origin')}"
    note = event.get("note")
    return f"{when}  {event['actor']}  {what}" + (f"\n      “{note}”" if note else "")


class TicketDetailPanel(QWidget):
    """The selected ticket: fields, SLA clocks, unit, rollout, attachments, history and actions.

    Signals
    -------
    sig_move_requested(str)
        The operator pressed the button of a move to this state.
    sig_assign_requested(str)
        Assign to this person ('' unassigns).
    sig_note_requested(str)
        Add this note to the history.
    sig_attachment_open_requested(str)
        Open the attachment at this path.
    """

    sig_move_requested = Signal(str)
    sig_assign_requested = Signal(str)
    sig_note_requested = Signal(str)
    sig_attachment_open_requested = Signal(str)

    FIELDS: tuple[tuple[str, str], ...] = (
        ("state", "State"), ("priority", "Priority"), ("category", "Category"), ("assignee", "Assignee"),
        ("origin", "Created from"), ("created", "Created"), ("first_response", "First response SLA"),
        ("resolution", "Resolution SLA"), ("household", "Household"), ("feedback", "Feedback item"),
        ("reopened", "Reopened"), ("updated", "Updated"),
    )
    UNIT_FIELDS: tuple[tuple[str, str], ...] = (
        ("unit", "Unit"), ("unit_site", "Site / hardware"), ("unit_status", "Status now"),
        ("versions_then", "Models at creation"), ("versions_now", "Models now"), ("rollout", "Last rollout"),
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ticket_id: int | None = None
        self.title = QLabel("Select a ticket to see its details.")
        self.title.setObjectName("sectionTitle")
        self.title.setWordWrap(True)
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.values: dict[str, QLabel] = {}
        fields = field_grid(self.FIELDS, 2, self.values)
        unit_fields = field_grid(self.UNIT_FIELDS, 1, self.values)
        self.description = QLabel("")
        self.description.setWordWrap(True)
        self.description.setTextFormat(Qt.TextFormat.PlainText)
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.actions_row = QHBoxLayout()
        self.move_buttons: dict[str, QPushButton] = {}
        #: No workflow actions (the login's role may not change tickets).
        self.read_only = False
        self.assign_edit = QLineEdit()
        self.assign_edit.setPlaceholderText("assignee (empty: unassign)")
        self.assign_button = QPushButton("Assign")
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("note for the history")
        self.note_button = QPushButton("Add note")
        edit_row = QHBoxLayout()
        edit_row.addWidget(self.assign_edit, 1)
        edit_row.addWidget(self.assign_button)
        edit_row.addWidget(self.note_edit, 2)
        edit_row.addWidget(self.note_button)

        self.attachments = QListWidget()
        self.attachments.setMaximumHeight(80)
        self.open_attachment_button = QPushButton("Open attachment")
        self.history = QPlainTextEdit()
        self.history.setReadOnly(True)
        self.history.setMinimumHeight(120)

        body = QWidget()
        col = QVBoxLayout(body)
        col.setContentsMargins(0, 0, 6, 0)
        col.addWidget(self.title)
        col.addLayout(self.actions_row)
        col.addLayout(edit_row)
        col.addLayout(fields)
        col.addWidget(self.description)
        col.addWidget(section_title("Unit, models and rollout"))
        col.addLayout(unit_fields)
        att_head = QHBoxLayout()
        att_head.addWidget(section_title("Attachments"))
        att_head.addStretch(1)
        att_head.addWidget(self.open_attachment_button)
        col.addLayout(att_head)
        col.addWidget(self.attachments)
        col.addWidget(section_title("History"))
        col.addWidget(self.history, 1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.assign_button.clicked.connect(self._on_assign_button_clicked)
        self.assign_edit.returnPressed.connect(self._on_assign_button_clicked)
        self.note_button.clicked.connect(self._on_note_button_clicked)
        self.note_edit.returnPressed.connect(self._on_note_button_clicked)
        self.open_attachment_button.clicked.connect(self._on_open_attachment_button_clicked)
        self.attachments.itemDoubleClicked.connect(self._on_attachments_item_double_clicked)
        self.set_detail(None)

    # -- public -------------------------------------------------------------------------
    def set_detail(self, detail: dict[str, Any] | None) -> None:
        """Show a ticket (``load_ticket_detail`` dict) or nothing (None)."""
        self.ticket_id = detail["id"] if detail else None
        for w in (self.assign_edit, self.assign_button, self.note_edit, self.note_button,
                  self.open_attachment_button):
            w.setEnabled(detail is not None)
        self._set_moves(detail["allowed_moves"] if detail else [], detail["state"] if detail else None)
        self.attachments.clear()
        if detail is None:
            self.title.setText("Select a ticket to see its details.")
            for label in self.values.values():
                label.setText("—")
            self.description.setText("")
            self.history.setPlainText("")
            return
        self.title.setText(f"#{detail['id']}  {detail['title']}")
        first, res = detail["sla"]["first_response"], detail["sla"]["resolution"]
        v = self.values
        v["state"].setText(state_word(detail["state"]))
        prio = PRIORITY_STYLES.get(detail["priority"])
        v["priority"].setText(prio.label if prio else detail["priority"])
        v["category"].setText(category_word(detail["category"]))
        v["assignee"].setText(detail["assignee"] or "unassigned")
        v["origin"].setText(f"{detail['origin']} by {detail['created_by'] or '—'}")
        v["created"].setText(format_full_time(_iso_dt(detail["created_at"])))
        v["updated"].setText(format_full_time(_iso_dt(detail["updated_at"])))
        v["first_response"].setText(self._clock_text(first))
        v["resolution"].setText(self._clock_text(res))
        v["household"].setText(detail.get("household_id") or "—")
        v["feedback"].setText(f"#{detail['feedback_id']}" if detail.get("feedback_id") else "—")
        v["reopened"].setText(f"{detail['reopened_count']} ×")
        self.description.setText(detail.get("description") or "(no description)")
        unit = detail.get("unit_now") or {}
        v["unit"].setText(detail.get("unit") or "none linked")
        v["unit_site"].setText(f"{unit.get('site') or '—'} / {unit.get('hardware_rev') or '—'}" if unit else "—")
        v["unit_status"].setText(unit.get("status", "—") if unit else "—")
        v["versions_then"].setText(self._versions(detail.get("versions") or {}))
        v["versions_now"].setText(self._versions(unit.get("versions") or {}) if unit else "—")
        ro = detail.get("rollout")
        if ro:
            v["rollout"].setText(f"#{ro['id']} {ro['kind']} {ro['version']} — {ro['state']}"
                                 f"{', finished ' + format_full_time(ro['finished_at']) if ro.get('finished_at') else ''}")
        else:
            v["rollout"].setText(f"#{detail['rollout_id']}" if detail.get("rollout_id") else "none touched the unit")
        for att in detail.get("attachments", []):
            item = QListWidgetItem(f"{att['kind']}  {att['path']}  "
                                   f"({_size(att['size_bytes'])}, sha256 {att['sha256'][:12]}…)")
            item.setData(Qt.ItemDataRole.UserRole, att["path"])
            self.attachments.addItem(item)
        self.open_attachment_button.setEnabled(self.attachments.count() > 0)
        self.history.setPlainText("\n".join(describe_event(e) for e in detail.get("history", [])))

    def move_labels(self) -> list[str]:
        """The states the shown move buttons lead to (tests)."""
        return list(self.move_buttons)

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _versions(versions: dict[str, Any]) -> str:
        parts = [f"{k} {v}" for k, v in versions.items() if v]
        return ", ".join(parts) or "—"

    @staticmethod
    def _clock_text(clock: dict[str, Any]) -> str:
        status = clock["status"]
        if status == "completed":
            style = SLA_STYLES["missed" if clock["breached"] else "met"]
            return f"{style.label} in {format_age(clock['elapsed_s'])} (target {format_age(clock['target_s'])})"
        style = SLA_STYLES.get(status, SLA_STYLES["running"])
        return f"{style.label}, {format_time_left(clock['remaining_s'])} (target {format_age(clock['target_s'])})"

    def _set_moves(self, states: list[str], current: str | None) -> None:
        for button in self.move_buttons.values():
            self.actions_row.removeWidget(button)
            button.deleteLater()
        self.move_buttons.clear()
        while self.actions_row.count():
            self.actions_row.takeAt(0)
        for state in [] if self.read_only else states:
            label = "Reopen" if state == "triaged" and current in ("resolved", "closed") else MOVE_LABELS.get(state, state)
            button = QPushButton(f"{label} → {state_word(state)}")
            button.clicked.connect(lambda _=False, s=state: self.sig_move_requested.emit(s))
            self.move_buttons[state] = button
            self.actions_row.addWidget(button)
        self.actions_row.addStretch(1)

    def set_read_only(self, read_only: bool) -> None:
        """Hide (or show again) assign, note and the workflow moves."""
        self.read_only = read_only
        for w in (self.assign_edit, self.assign_button, self.note_edit, self.note_button):
            w.setVisible(not read_only)
        if read_only:
            self._set_moves([], None)

    def _on_assign_button_clicked(self) -> None:
        if self.ticket_id is not None:
            self.sig_assign_requested.emit(self.assign_edit.text().strip())

    def _on_note_button_clicked(self) -> None:
        text = self.note_edit.text().strip()
        if self.ticket_id is not None and text:
            self.sig_note_requested.emit(text)
            self.note_edit.clear()

    def _on_open_attachment_button_clicked(self) -> None:
        item = self.attachments.currentItem() or (self.attachments.item(0) if self.attachments.count() else None)
        if item is not None:
            self.sig_attachment_open_requested.emit(item.data(Qt.ItemDataRole.UserRole))

    def _on_attachments_item_double_clicked(self, item: QListWidgetItem) -> None:
        self.sig_attachment_open_requested.emit(item.data(Qt.ItemDataRole.UserRole))


class TicketCreateDialog(QDialog):
    """A new ticket by hand, from a unit (serial) or from a feedback item (id); ``values()`` gives
    the keyword arguments of :func:`feedback.tickets.create_ticket`."""

    def __init__(self, parent: QWidget | None = None, *, unit_serial: str = "", feedback_id: int | None = None,
                 title: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("New ticket")
        self.title_edit = QLineEdit(title)
        self.title_edit.setPlaceholderText("what is wrong, in a few words")
        self.description_edit = QPlainTextEdit()
        self.description_edit.setPlaceholderText("details (empty: taken from the feedback item)")
        self.priority_combo = QComboBox()
        for p in PRIORITIES:
            self.priority_combo.addItem(PRIORITY_STYLES[p].label, p)
        self.priority_combo.setCurrentIndex(PRIORITIES.index("normal"))
        self.category_combo = QComboBox()
        for c in CATEGORIES:
            self.category_combo.addItem(category_word(c), c)
        self.category_combo.setCurrentIndex(CATEGORIES.index("other"))
        self.assignee_edit = QLineEdit()
        self.unit_edit = QLineEdit(unit_serial)
        self.unit_edit.setPlaceholderText("unit serial (optional)")
        self.feedback_spin = QSpinBox()
        self.feedback_spin.setRange(0, 2_000_000_000)
        self.feedback_spin.setSpecialValueText("none")
        self.feedback_spin.setValue(feedback_id or 0)
        form = QFormLayout()
        form.addRow("Title", self.title_edit)
        form.addRow("Priority", self.priority_combo)
        form.addRow("Category", self.category_combo)
        form.addRow("Assignee", self.assignee_edit)
        form.addRow("Unit", self.unit_edit)
        form.addRow("Feedback item", self.feedback_spin)
        form.addRow("Description", self.description_edit)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def values(self) -> dict[str, Any]:
        """Keyword arguments for :func:`feedback.tickets.create_ticket` (validation is the core's)."""
        return {"title": self.title_edit.text(), "description": self.description_edit.toPlainText().strip(),
                "priority": self.priority_combo.currentData(), "category": self.category_combo.currentData(),
                "assignee": self.assignee_edit.text().strip() or None,
                "unit_serial": self.unit_edit.text().strip() or None,
                "feedback_id": self.feedback_spin.value() or None}

