"""The Tickets page: A/S tickets at a glance (open, breaching SLA, unassigned, median time to
resolution), the queue with SLA badges, filters, the selected ticket's detail with the workflow
moves the core allows from its state, assign / note, creation by hand, from a unit or from a
feedback item, and CSV export of the shown queue.

Data flow: every ``refresh_interval_s`` while visible, or when a filter or the selection changes,
one job on the ``db`` executor runs :func:`load_tickets` (queue, tile figures and the selected
ticket's detail in one unit of work); moves, assignments, notes and creation run there too, each
in its own ``session_factory.begin()`` (the core writes the history and the audit entry in the
same transaction). The workflow and the SLA clocks are :mod:`feedback.tickets`'; a refused move
(e.g. another console moved the ticket meanwhile) shows in the page's message bar.
"""

from __future__ import annotations

import getpass
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from sqlalchemy import func, select

from console.errors import ErrorReporter
from console.formatting import format_age, format_local_time
from console.jobs import Executors, Job
from console.models.records import RecordColumn, RecordSortProxy, RecordTableModel, export_csv
from console.pages.ticket_detail import (
    PRIORITY_STYLES,
    SLA_STYLES,
    TicketCreateDialog,
    TicketDetailPanel,
    category_word,
    format_time_left,
    sla_badge,
    sla_time_left_s,
    state_word,
)
from console.theme import Theme
from console.widgets import MessageBar, RefreshWhileVisible, Tile, style_table
from feedback import tickets
from feedback.models import CATEGORIES, PRIORITIES, TICKET_STATES, Ticket

logger = logging.getLogger(__name__)

#: Tickets the queue loads at most (most urgent first, as :func:`feedback.tickets.ticket_queue` orders).
PAGE_SIZE = 2000
#: Window of the median time to resolution tile.
TTR_WINDOW = timedelta(days=30)
#: State filter entries: (label, value); ``"open"`` means every open state.
STATE_FILTERS: tuple[tuple[str, str | None], ...] = (
    ("Open", "open"), ("All states", None), *((state_word(s), s) for s in TICKET_STATES))

COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("id", "#", numeric=True),
    RecordColumn("sla", "SLA", style=lambda v: SLA_STYLES.get(v)),
    RecordColumn("sla_left_s", "SLA time left", fmt=format_time_left, numeric=True),
    RecordColumn("priority", "Priority", style=lambda v: PRIORITY_STYLES.get(v)),
    RecordColumn("state", "State", fmt=state_word),
    RecordColumn("category", "Category", fmt=category_word),
    RecordColumn("title", "Title"),
    RecordColumn("unit", "Unit"),
    RecordColumn("assignee", "Assignee"),
    RecordColumn("age_s", "Age", fmt=format_age, numeric=True),
)


@dataclass(frozen=True)
class TicketFilters:
    """What the queue shows: ``state`` (a state, ``"open"`` or None for all), ``priority``,
    ``category``, ``assignee`` (``"-"``: unassigned) and a case-insensitive ``text`` search over
    title, unit, assignee and id."""

    state: str | None = "open"
    priority: str | None = None
    category: str | None = None
    assignee: str | None = None
    text: str = ""


@dataclass(frozen=True)
class TicketsLoad:
    """One snapshot of the page (built on the db executor)."""

    rows: tuple[dict[str, Any], ...]
    figures: dict[str, Any]
    assignees: tuple[str, ...]
    detail_id: int | None
    detail: dict[str, Any] | None
    now: datetime
    notes: tuple[str, ...] = field(default_factory=tuple)


def queue_rows(session: Any, now: datetime, filters: TicketFilters, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """Queue rows (flat dicts for the table) from :func:`feedback.tickets.ticket_queue`, filtered.

    Raises
    ------
    feedback.errors.TicketInputError
        Unknown state or priority.
    """
    state = filters.state if filters.state not in ("open", None) else None
    unassigned = filters.assignee == "-"
    queue = tickets.ticket_queue(session, now, state=state, open_only=filters.state == "open",
                                 assignee=None if unassigned else filters.assignee, priority=filters.priority,
                                 limit=limit)
    needle = filters.text.strip().lower()
    out = []
    for r in queue:
        if filters.category and r["category"] != filters.category:
            continue
        if unassigned and r["assignee"]:
            continue
        if needle and needle not in " ".join(
                str(x) for x in (f"#{r['id']}", r["title"], r["unit"] or "", r["assignee"] or "")).lower():
            continue
        out.append({"id": r["id"], "title": r["title"], "state": r["state"], "priority": r["priority"],
                    "category": r["category"], "assignee": r["assignee"], "unit": r["unit"],
                    "age_s": r["age_s"], "sla": sla_badge(r), "sla_left_s": sla_time_left_s(r),
                    "created_at": r["created_at"], "feedback_id": r["feedback_id"]})
    return out


def tile_figures(session: Any, now: datetime) -> dict[str, Any]:
    """Open, breaching SLA (either clock), unassigned open tickets, and the median time to
    resolution (created → resolved, seconds) of tickets resolved in the last :data:`TTR_WINDOW`."""
    open_tickets = session.execute(select(Ticket).where(Ticket.state.in_(tickets.OPEN_STATES))).scalars().all()
    breaching = sum(1 for t in open_tickets if any(c.status == "breached" for c in tickets.sla_clocks(t, now)))
    unassigned = sum(1 for t in open_tickets if not t.assignee)
    spans = session.execute(select(Ticket.created_at, Ticket.resolved_at)
                            .where(Ticket.resolved_at.is_not(None), Ticket.resolved_at >= now - TTR_WINDOW)).all()
    durations = [(r - c).total_seconds() for c, r in spans]
    return {"open": len(open_tickets), "breaching": breaching, "unassigned": unassigned,
            "median_ttr_s": statistics.median(durations) if durations else None, "resolved_in_window": len(durations)}


def load_ticket_detail(session: Any, ticket_id: int, now: datetime) -> dict[str, Any]:
    """:func:`feedback.tickets.ticket_detail` plus the linked unit as it is now (``unit_now``) and
    the rollout that last touched it (``rollout``: id, kind, version, state, finished_at).

    Raises
    ------
    feedback.errors.TicketNotFound
    """
    from fleet.models import Unit

    detail = tickets.ticket_detail(session, ticket_id, now)
    ticket = session.get(Ticket, ticket_id)
    unit = session.get(Unit, ticket.unit_id) if ticket.unit_id is not None else None
    detail["unit_now"] = None if unit is None else {
        "serial": unit.serial, "site": unit.site, "hardware_rev": unit.hardware_rev, "status": unit.status,
        "versions": {"stt": unit.stt_version, "qa": unit.qa_version, "tts": unit.tts_version}}
    rollout_id = ticket.rollout_id
    if rollout_id is None and unit is not None:
        rollout_id = tickets.last_rollout_for_unit(session, unit.id)
    detail["rollout"] = None
    if rollout_id is not None:
        try:
            from fleet.rollout_models import Rollout
        except ImportError:  # rollouts not installed
            Rollout = None  # noqa: N806
        ro = session.get(Rollout, rollout_id) if Rollout is not None else None
        if ro is not None:
            detail["rollout"] = {"id": ro.id, "kind": ro.kind, "version": ro.version, "state": ro.state,
                                 "finished_at": ro.finished_at}
    return detail


def load_tickets(session_factory: Callable[[], Any], clock: Callable[[], datetime], filters: TicketFilters,
                 detail_id: int | None) -> TicketsLoad:
    """The queue, the tiles, the assignees known and ticket ``detail_id``'s detail (worker thread).
    A selected ticket that no longer exists is dropped (``detail`` None) instead of failing."""
    from feedback.errors import TicketNotFound

    now = clock()
    with session_factory() as session:
        rows = queue_rows(session, now, filters)
        figures = tile_figures(session, now)
        assignees = tuple(a for (a,) in session.execute(
            select(Ticket.assignee).where(Ticket.assignee.is_not(None)).group_by(Ticket.assignee)
            .order_by(func.lower(Ticket.assignee))))
        detail = None
        if detail_id is not None:
            try:
                detail = load_ticket_detail(session, detail_id, now)
            except TicketNotFound:
                detail = None
    return TicketsLoad(tuple(rows), figures, assignees, detail_id, detail, now)


def apply_action(session_factory: Any, clock: Callable[[], datetime], action: str, ticket_id: int | None,
                 actor: str, kwargs: dict[str, Any]) -> int:
    """Run one ticket action in its own unit of work (worker thread); returns the ticket id.

    ``action`` is ``move`` (``to_state``, ``note``), ``update`` (``assignee``/``unassign``/``note``…,
    as :func:`feedback.tickets.update`) or ``create`` (:func:`feedback.tickets.create_ticket`'s
    keywords). Raises the core's errors (``InvalidTransition``, ``TicketInputError``, ``TicketNotFound``).
    """
    with session_factory.begin() as session:
        if action == "move":
            return tickets.move(session, ticket_id, kwargs["to_state"], clock, actor=actor, note=kwargs.get("note")).id
        if action == "update":
            return tickets.update(session, ticket_id, clock, actor=actor, **kwargs).id
        if action == "create":
            return tickets.create_ticket(session, clock, actor=actor, **kwargs).id
    raise ValueError(f"unknown ticket action {action!r}")


class TicketsPage(RefreshWhileVisible, QWidget):
    """The A/S ticket queue and the selected ticket.

    Parameters
    ----------
    session_factory, clock, executors, reporter, theme
        As every page (reads and actions run on ``executors.db``).
    refresh_interval_s
        Seconds between refreshes while visible (default 10; SLA clocks move in minutes).
    actor
        Who the actions are recorded as (default: the OS user).
    open_file
        Opens an attachment (default ``QDesktopServices.openUrl``); returns whether it could.
    """

    sig_loaded = Signal(int)          # rows shown
    sig_changed = Signal(int, str)    # ticket id, action done ("move:<state>", "assign", "note", "create")
    sig_created = Signal(int)         # new ticket id
    sig_breaching_count = Signal(int)  # for a navigation badge

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, *, refresh_interval_s: float = 10.0,
                 actor: str | None = None, open_file: Callable[[Path], bool] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._open_file = open_file or (lambda p: QDesktopServices.openUrl(QUrl.fromLocalFile(str(p))))
        self.actor = actor or _os_user()
        self._refresh_job: Job | None = None
        self._action_job: Job | None = None
        self._selected_id: int | None = None
        self._pending_refresh = False
        self._closed = False

        title = QLabel("Tickets")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)
        self.tiles = {key: Tile(key, word, theme) for key, word in (
            ("open", "Open"), ("breaching", "Breaching SLA"), ("unassigned", "Unassigned"),
            ("median_ttr", "Median time to resolution (30 d)"))}
        tiles_row = QHBoxLayout()
        for tile in self.tiles.values():
            tile.sig_clicked.connect(self._on_tile_clicked)
            tiles_row.addWidget(tile, 1)
        self.message_bar = MessageBar()

        self.state_combo = QComboBox()
        for label, value in STATE_FILTERS:
            self.state_combo.addItem(label, value)
        self.priority_combo = QComboBox()
        self.priority_combo.addItem("Any priority", None)
        for p in PRIORITIES:
            self.priority_combo.addItem(PRIORITY_STYLES[p].label, p)
        self.category_combo = QComboBox()
        self.category_combo.addItem("Any category", None)
        for c in CATEGORIES:
            self.category_combo.addItem(category_word(c), c)
        self.assignee_combo = QComboBox()
        self.assignee_combo.addItem("Anyone", None)
        self.assignee_combo.addItem("Unassigned", "-")
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search title, unit, assignee, #id")
        self.search_edit.setClearButtonEnabled(True)
        self.new_button = QPushButton("New ticket…")
        self.export_button = QPushButton("Export CSV…")
        bar = QHBoxLayout()
        for w in (self.state_combo, self.priority_combo, self.category_combo, self.assignee_combo):
            bar.addWidget(w)
        bar.addWidget(self.search_edit, 1)
        bar.addWidget(self.new_button)
        bar.addWidget(self.export_button)

        self.model = RecordTableModel(COLUMNS, self)
        self.proxy = RecordSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMNS.index(next(c for c in COLUMNS if c.key == "sla_left_s")),
                                Qt.SortOrder.AscendingOrder)
        style_table(self.table)
        for key, width in (("id", 50), ("sla", 100), ("sla_left_s", 130), ("priority", 90), ("state", 120),
                           ("category", 120), ("title", 260), ("unit", 110), ("assignee", 90)):
            self.table.setColumnWidth(next(i for i, c in enumerate(COLUMNS) if c.key == key), width)
        self.detail = TicketDetailPanel()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)

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
        for combo in (self.state_combo, self.priority_combo, self.category_combo, self.assignee_combo):
            combo.currentIndexChanged.connect(self._on_filter_changed)
        self.search_edit.textChanged.connect(self._on_filter_changed)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection_changed)
        self.model.modelReset.connect(self._on_model_reset)
        self.new_button.clicked.connect(self._on_new_button_clicked)
        self.export_button.clicked.connect(self._on_export_button_clicked)
        self.detail.sig_move_requested.connect(self.move_selected)
        self.detail.sig_assign_requested.connect(self.assign_selected)
        self.detail.sig_note_requested.connect(self.add_note)
        self.detail.sig_attachment_open_requested.connect(self.open_attachment)

    # -- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a refresh or an action is in flight."""
        return any(j is not None and not j.is_done for j in self._jobs_in_flight())

    @property
    def selected_id(self) -> int | None:
        """Id of the selected ticket (kept across refreshes)."""
        return self._selected_id

    def filters(self) -> TicketFilters:
        """The filters as set in the bar."""
        return TicketFilters(self.state_combo.currentData(), self.priority_combo.currentData(),
                             self.category_combo.currentData(), self.assignee_combo.currentData(),
                             self.search_edit.text())

    def set_filters(self, *, state: str | None = "open", priority: str | None = None, category: str | None = None,
                    assignee: str | None = None, text: str = "") -> None:
        """Set every filter (as the user would) and refresh once."""
        widgets = (self.state_combo, self.priority_combo, self.category_combo, self.assignee_combo, self.search_edit)
        for w in widgets:
            w.blockSignals(True)
        self.state_combo.setCurrentIndex(max(0, self.state_combo.findData(state)))
        self.priority_combo.setCurrentIndex(max(0, self.priority_combo.findData(priority)))
        self.category_combo.setCurrentIndex(max(0, self.category_combo.findData(category)))
        if assignee is not None and self.assignee_combo.findData(assignee) < 0:
            self.assignee_combo.addItem(assignee, assignee)
        self.assignee_combo.setCurrentIndex(max(0, self.assignee_combo.findData(assignee)))
        self.search_edit.setText(text)
        for w in widgets:
            w.blockSignals(False)
        self.refresh()

    def select_ticket(self, ticket_id: int) -> bool:
        """Select ticket ``ticket_id`` and load its detail; False if it is not in the shown queue."""
        row = self.model.row_of("id", ticket_id)
        if row is None:
            return False
        self.table.selectRow(self.proxy.mapFromSource(self.model.index(row, 0)).row())
        return True

    def refresh(self) -> bool:
        """Start a refresh unless one is in flight (then one more runs after it)."""
        if self._closed:
            return False
        if self._refresh_job is not None and not self._refresh_job.is_done:
            self._pending_refresh = True
            return False
        self._pending_refresh = False
        self._refresh_job = (Job(load_tickets, self.session_factory, self._clock, self.filters(), self._selected_id)
                             .on_success(self._on_refresh_succeeded)
                             .on_failure(lambda exc: self._on_job_failed(exc, "load the tickets", False))
                             .start(self._executors.db, owner=self))
        return True

    def move_selected(self, to_state: str, note: str | None = None) -> bool:
        """Move the selected ticket to ``to_state``; a refused move shows in the message bar."""
        return self._run("move", self._selected_id, {"to_state": to_state, "note": note}, f"move:{to_state}",
                         f"move ticket #{self._selected_id} to {state_word(to_state)}")

    def assign_selected(self, assignee: str) -> bool:
        """Assign the selected ticket to ``assignee`` ('' unassigns)."""
        kwargs = {"assignee": assignee} if assignee else {"unassign": True}
        return self._run("update", self._selected_id, kwargs, "assign", f"assign ticket #{self._selected_id}")

    def add_note(self, text: str) -> bool:
        """Add a note to the selected ticket's history."""
        return self._run("update", self._selected_id, {"note": text}, "note",
                         f"add a note to ticket #{self._selected_id}")

    def create_ticket(self, **fields: Any) -> bool:
        """Create a ticket (keywords of :func:`feedback.tickets.create_ticket`: ``title``,
        ``description``, ``priority``, ``category``, ``assignee``, ``unit_serial``, ``feedback_id``);
        the new ticket is selected when it is in the shown queue."""
        return self._run("create", None, fields, "create", "create the ticket")

    def create_from_feedback(self, feedback_id: int, title: str | None = None, category: str = "other",
                             priority: str = "normal") -> bool:
        """Create a ticket from feedback item ``feedback_id`` (its unit, household and text are
        taken over by the core) without a dialog."""
        return self.create_ticket(title=title or f"Feedback #{feedback_id}", feedback_id=feedback_id,
                                  category=category, priority=priority)

    def ask_create_from_feedback(self, feedback_id: int) -> TicketCreateDialog:
        """Open the "New ticket" dialog prefilled with feedback item ``feedback_id`` (the
        Feedback page's ``sig_create_ticket`` connects here)."""
        return self.open_create_dialog(feedback_id=feedback_id)

    def create_from_unit(self, serial: str, title: str, category: str = "other", priority: str = "normal") -> bool:
        """Create a ticket about unit ``serial`` (records its model versions and last rollout)."""
        return self.create_ticket(title=title, unit_serial=serial, category=category, priority=priority)

    def open_create_dialog(self, *, unit_serial: str = "", feedback_id: int | None = None) -> TicketCreateDialog:
        """Show the "New ticket" dialog (prefilled); on OK the ticket is created."""
        dialog = TicketCreateDialog(self, unit_serial=unit_serial, feedback_id=feedback_id)
        dialog.accepted.connect(lambda: self.create_ticket(**dialog.values()))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def open_attachment(self, path: str) -> bool:
        """Open an attachment with the desktop's viewer; a missing file shows in the message bar."""
        p = Path(path)
        if not p.is_file():
            self.message_bar.show_message(f"The attachment {p} is not there any more; it was moved or deleted. "
                                          "Attach the report again from the workbench.")
            return False
        if not self._open_file(p):
            self.message_bar.show_message(f"No program could open {p}; open it from a file manager.")
            return False
        return True

    def export(self, path: Path) -> int:
        """Write the shown (filtered, sorted) queue to ``path`` as CSV; returns the rows written."""
        rows = [self.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.proxy.rowCount())]
        return export_csv(path, COLUMNS, rows)

    def apply_role(self, role: str | None) -> None:
        """Hide the actions ``role`` may not do (speakerops.roles.may); the database refuses them anyway."""
        from speakerops.roles import may

        allowed = may(role, "tickets.write")
        self.new_button.setVisible(allowed)
        self.detail.set_read_only(not allowed)

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
    def _run(self, action: str, ticket_id: int | None, kwargs: dict[str, Any], done: str, context: str) -> bool:
        if self._closed or (action != "create" and ticket_id is None):
            return False
        if self._action_job is not None and not self._action_job.is_done:
            self.message_bar.show_message("Another change of a ticket is still being saved; try again in a moment.")
            return False
        self._action_job = (Job(apply_action, self.session_factory, self._clock, action, ticket_id, self.actor, kwargs)
                            .on_success(lambda tid: self._on_action_succeeded(tid, done))
                            .on_failure(lambda exc: self._on_job_failed(exc, context, True))
                            .start(self._executors.db, owner=self))
        return True

    def _on_action_succeeded(self, ticket_id: int, done: str) -> None:
        self.message_bar.clear()
        if done == "create":
            self._selected_id = ticket_id
            self.sig_created.emit(ticket_id)
        self.sig_changed.emit(ticket_id, done)
        self.refresh()

    def _on_job_failed(self, exc: BaseException, context: str, reload: bool) -> None:
        self._reporter.report(exc, context=context, panel=self.message_bar)
        if reload:
            self.refresh()  # show the ticket as it really is now

    def _on_refresh_succeeded(self, load: TicketsLoad) -> None:
        self.model.set_rows(load.rows)
        f = load.figures
        self.tiles["open"].set_value(f["open"])
        self.tiles["breaching"].set_value(f["breaching"])
        self.tiles["unassigned"].set_value(f["unassigned"])
        self.tiles["median_ttr"].set_text(format_age(f["median_ttr_s"]) if f["median_ttr_s"] is not None else "—")
        self._merge_assignees(load.assignees)
        if load.detail_id == self._selected_id:
            self.detail.set_detail(load.detail)
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)} · "
                                   f"{len(load.rows):,} shown")
        self.sig_breaching_count.emit(f["breaching"])
        self.sig_loaded.emit(len(load.rows))
        if self._pending_refresh or load.detail_id != self._selected_id:
            self.refresh()

    def _merge_assignees(self, assignees: tuple[str, ...]) -> None:
        known = {self.assignee_combo.itemData(i) for i in range(self.assignee_combo.count())}
        self.assignee_combo.blockSignals(True)
        for a in assignees:
            if a not in known:
                self.assignee_combo.addItem(a, a)
        self.assignee_combo.blockSignals(False)

    def _on_model_reset(self) -> None:
        row = self.model.row_of("id", self._selected_id) if self._selected_id is not None else None
        if row is not None:
            self.table.selectionModel().blockSignals(True)
            self.table.selectRow(self.proxy.mapFromSource(self.model.index(row, 0)).row())
            self.table.selectionModel().blockSignals(False)

    def _on_table_selection_changed(self, *_: Any) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        row = rows[0].data(Qt.ItemDataRole.UserRole)
        if row is None or row["id"] == self._selected_id:
            return
        self._selected_id = row["id"]
        self.refresh()

    def _on_timer_timeout(self) -> None:
        self.refresh()

    def _on_filter_changed(self, *_: Any) -> None:
        self.refresh()

    def _on_tile_clicked(self, key: str) -> None:
        if key == "unassigned":
            self.set_filters(state="open", assignee="-")
        elif key in ("open", "breaching"):
            self.set_filters(state="open")

    def _on_new_button_clicked(self) -> None:
        self.open_create_dialog()

    def _on_export_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export tickets", "tickets.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            n = self.export(Path(path))
        except OSError as exc:
            self.message_bar.show_message(f"Could not write {path}: {exc.strerror or exc}. Pick another folder.")
            return
        self.updated_label.setText(f"Exported {n:,} tickets to {path}")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"

