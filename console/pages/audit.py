"""The Audit page: who did what, when — the hash-chained audit trail (``speakerops.audit``),
filterable by target kind, action, actor and free text, with the before/after of the selected
entry and a "Verify chain" check that names the first edited or deleted entry.

The CLI does the same with ``speakerops audit list|verify``. Reads run on the ``db`` executor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.errors import ErrorReporter
from console.formatting import format_local_time
from console.jobs import Executors, Job
from console.models.records import RecordColumn, RecordSortProxy, RecordTableModel, export_csv
from console.theme import Theme
from console.widgets import MessageBar, RefreshWhileVisible, Tile, style_table
from speakerops import audit

logger = logging.getLogger(__name__)

#: Target-kind filter entries: (label, kind or None for all).
TARGET_KINDS: tuple[tuple[str, str | None], ...] = (
    ("All targets", None), ("Rollouts", "rollout"), ("Model versions", "model_version"), ("Units", "unit"),
    ("Tickets", "ticket"), ("Alerts", "alert"), ("Feedback", "household"), ("Users", "user"))
#: How many entries the page loads (newest first); the CLI pages further with --limit.
PAGE_SIZE = 2000

COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("id", "#", numeric=True),
    RecordColumn("at", "When", fmt=lambda v: format_local_time(v, zone=True)),
    RecordColumn("actor", "Who"),
    RecordColumn("action", "Action"),
    RecordColumn("target", "Target"),
    RecordColumn("reason", "Reason"),
)


@dataclass(frozen=True)
class AuditLoad:
    """One snapshot of the page (built on the db executor)."""

    rows: tuple[dict[str, Any], ...]
    total: int
    actors: tuple[str, ...]
    now: datetime


def load_audit(session_factory: Callable[[], Any], clock: Callable[[], datetime], target_kind: str | None,
               action_prefix: str | None, actor: str | None) -> AuditLoad:
    """Entries newest first, filtered in SQL with bound parameters (worker thread)."""
    with session_factory() as session:
        found = audit.entries(session, target_kind=target_kind, action_prefix=action_prefix or None,
                              actor=actor or None, limit=PAGE_SIZE)
        rows = tuple({"id": e.id, "at": e.at, "actor": e.actor, "action": e.action,
                      "target": f"{e.target_kind}:{e.target_id}", "reason": e.reason,
                      "before": e.before, "after": e.after, "entry_hash": e.entry_hash} for e in found)
        total = audit.count(session)
        actors = tuple(sorted({r["actor"] for r in rows}))
    return AuditLoad(rows, total, actors, clock())


def verify_chain(session_factory: Callable[[], Any]) -> audit.VerifyResult:
    """Recompute the hash chain (worker thread)."""
    with session_factory() as session:
        return audit.verify(session)


def describe_entry(row: dict[str, Any]) -> str:
    """The selected entry as text: what changed, before → after, and its hash."""
    lines = [f"#{row['id']}  {row['action']} on {row['target']} by {row['actor']}",
             f"at {format_local_time(row['at'], zone=True)}"]
    if row.get("reason"):
        lines.append(f"reason: {row['reason']}")
    before, after = row.get("before"), row.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                lines.append(f"  {key}: {json.dumps(before.get(key))} → {json.dumps(after.get(key))}")
    else:
        lines.append(f"before: {json.dumps(before, indent=2)}")
        lines.append(f"after:  {json.dumps(after, indent=2)}")
    lines.append(f"entry hash: {row['entry_hash']}")
    return "\n".join(lines)


class AuditPage(RefreshWhileVisible, QWidget):
    """Parameters: the session factory, clock, executors, error reporter, theme (as every page)."""

    sig_loaded = Signal(int)
    sig_verified = Signal(bool)

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, refresh_interval_s: float = 15.0,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._refresh_job: Job | None = None
        self._verify_job: Job | None = None
        self._closed = False

        title = QLabel("Audit")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)
        self.tiles = {"entries": Tile("entries", "Entries", theme), "chain": Tile("chain", "Hash chain", theme)}
        tiles_row = QHBoxLayout()
        for tile in self.tiles.values():
            tiles_row.addWidget(tile, 1)
        self.tiles["chain"].set_text("not checked")
        self.message_bar = MessageBar()

        self.kind_combo = QComboBox()
        for label, kind in TARGET_KINDS:
            self.kind_combo.addItem(label, kind)
        self.action_edit = QLineEdit()
        self.action_edit.setPlaceholderText("action prefix, e.g. rollout.")
        self.actor_combo = QComboBox()
        self.actor_combo.addItem("Anyone", None)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search shown entries")
        self.verify_button = QPushButton("Verify chain")
        self.export_button = QPushButton("Export CSV…")
        bar = QHBoxLayout()
        for w in (self.kind_combo, self.action_edit, self.actor_combo, self.search_edit):
            bar.addWidget(w)
        bar.addStretch(1)
        bar.addWidget(self.verify_button)
        bar.addWidget(self.export_button)

        self.model = RecordTableModel(COLUMNS, self)
        self.proxy = RecordSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        style_table(self.table)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("Select an entry to see what changed.")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
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
        self.timer.timeout.connect(self.refresh)
        self.kind_combo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.actor_combo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.action_edit.editingFinished.connect(self.refresh)
        self.search_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection_changed)
        self.verify_button.clicked.connect(self.verify)
        self.export_button.clicked.connect(self._on_export_button_clicked)

    # -- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(j is not None and not j.is_done for j in self._jobs_in_flight())

    def set_filters(self, target_kind: str | None = None, action_prefix: str = "", actor: str | None = None) -> None:
        """Set the filters (as the user would) and refresh."""
        self.kind_combo.blockSignals(True)
        self.kind_combo.setCurrentIndex(max(0, self.kind_combo.findData(target_kind)))
        self.kind_combo.blockSignals(False)
        self.action_edit.setText(action_prefix)
        if actor is not None and self.actor_combo.findData(actor) < 0:
            self.actor_combo.addItem(actor, actor)
        self.actor_combo.blockSignals(True)
        self.actor_combo.setCurrentIndex(max(0, self.actor_combo.findData(actor)))
        self.actor_combo.blockSignals(False)
        self.refresh()

    def refresh(self) -> bool:
        if self._closed or (self._refresh_job is not None and not self._refresh_job.is_done):
            return False
        self._refresh_job = (Job(load_audit, self.session_factory, self._clock, self.kind_combo.currentData(),
                                 self.action_edit.text().strip(), self.actor_combo.currentData())
                             .on_success(self._on_refresh_succeeded)
                             .on_failure(self._on_job_failed)
                             .start(self._executors.db, owner=self))
        return True

    def verify(self) -> None:
        if self._closed or (self._verify_job is not None and not self._verify_job.is_done):
            return
        self.tiles["chain"].set_text("checking…")
        self._verify_job = (Job(verify_chain, self.session_factory)
                            .on_success(self._on_verify_succeeded)
                            .on_failure(self._on_job_failed)
                            .start(self._executors.db, owner=self))

    def export(self, path: Path) -> int:
        """Write the shown (filtered, sorted) entries to ``path`` as CSV."""
        rows = [self.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.proxy.rowCount())]
        return export_csv(path, COLUMNS, rows)

    def apply_theme(self, theme: Theme) -> None:
        for tile in self.tiles.values():
            tile.apply_theme(theme)

    def shutdown(self) -> None:
        self.stop_refreshing()

    def _jobs_in_flight(self) -> tuple:
        return (self._refresh_job, self._verify_job)

    # -- internals ----------------------------------------------------------------------
    def _on_refresh_succeeded(self, load: AuditLoad) -> None:
        self.model.set_rows(load.rows)
        self.tiles["entries"].set_value(load.total)
        current = self.actor_combo.currentData()
        known = {self.actor_combo.itemData(i) for i in range(self.actor_combo.count())}
        for actor in load.actors:
            if actor not in known:
                self.actor_combo.addItem(actor, actor)
        if current is not None:
            self.actor_combo.setCurrentIndex(self.actor_combo.findData(current))
        shown = len(load.rows)
        more = f" (newest {shown:,} of {load.total:,})" if shown >= PAGE_SIZE else ""
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)}{more}")
        self.sig_loaded.emit(shown)

    def _on_verify_succeeded(self, result: audit.VerifyResult) -> None:
        if result.ok:
            self.tiles["chain"].set_text(f"✔ intact ({result.entries:,})")
            self.message_bar.clear()
        else:
            self.tiles["chain"].set_text(f"✖ broken at #{result.first_bad_id}")
            self.message_bar.show_message(
                f"The audit trail was changed: {result.problem}. Restore the audit_log table from a "
                "backup and find out who changed it.")
        self.sig_verified.emit(result.ok)

    def _on_job_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="reading the audit trail", panel=self.message_bar)

    def _on_table_selection_changed(self, *_: Any) -> None:
        rows = self.table.selectionModel().selectedRows()
        row = rows[0].data(Qt.ItemDataRole.UserRole) if rows else None
        self.detail.setPlainText(describe_entry(row) if row else "")

    def _on_export_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export audit entries", "audit.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            n = self.export(Path(path))
        except OSError as exc:
            self.message_bar.show_message(f"Could not write {path}: {exc.strerror or exc}. Pick another folder.")
            return
        self.updated_label.setText(f"Exported {n:,} entries to {path}")
