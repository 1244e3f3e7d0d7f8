"""The Models page: the model registry per kind — each version with its created time, size,
signature (key id), aliases (``production``, ``canary`` …), the offline evaluation's verdict per
service requirement with the figure, whether the rollout gate allows it and any override (who,
why). Actions: set an alias, override the gate (a written reason is required), import a bundle
directory.

Reads run on the ``db`` executor: :func:`fleet.registry.list_versions`, the aliases straight from
``fleet.models.ModelAlias`` (one query for all versions) and :func:`fleet.registry.rollout_gate`. Actions call the
registry's service functions, which write the change and its audit entry in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from sqlalchemy import select

from console.errors import ErrorReporter
from console.formatting import format_full_time, format_local_time, format_number
from console.jobs import Executors, Job
from console.models.records import RecordColumn, RecordSortProxy, RecordTableModel, export_csv
from console.theme import StatusStyle, Theme
from console.widgets import MessageBar, RefreshWhileVisible, Tile, style_table
from fleet import registry
from fleet.errors import RegistryError
from fleet.models import MODEL_KINDS, ModelAlias, ModelVersion

logger = logging.getLogger(__name__)

GREEN, ORANGE, VERMILLION, GREY = "#009E73", "#E69F00", "#D55E00", "#999999"
#: Aliases offered in the alias dialog (any other name may be typed).
COMMON_ALIASES: tuple[str, ...] = ("production", "canary", "staging", "previous")
#: The service requirements shown as columns: (requirement key, header). Targets and labels come
#: from the evaluation's own verdicts (``inference_core.pipeline.REQUIREMENTS``).
REQUIREMENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stt_accuracy", "STT ≥ 90 %"), ("answer_accuracy", "Answer ≥ 80 %"),
    ("mos", "MOS ≥ 4.0"), ("end_to_end_latency", "E2E p95 ≤ 3 s"))
GATE_STYLES: dict[str, StatusStyle] = {
    "allowed": StatusStyle("allowed", "✔", GREEN),
    "overridden": StatusStyle("overridden", "⚑", ORANGE),
    "refused": StatusStyle("refused", "✖", VERMILLION),
}
EVAL_STYLES: dict[str, StatusStyle] = {
    "passed": StatusStyle("passed", "✔", GREEN),
    "failed": StatusStyle("failed", "✖", VERMILLION),
    "not evaluated": StatusStyle("not evaluated", "○", GREY),
}


@dataclass(frozen=True)
class Verdict:
    """One requirement's verdict on one version: the figure and pass/fail (None: not measured)."""

    key: str
    value: float | None
    passed: bool | None

    def text(self) -> str:
        if self.value is None:
            return "—"
        if self.key.endswith("latency"):
            figure = format_number(self.value, 0, "ms")
        elif self.key == "mos":
            figure = f"{self.value:.2f}"
        else:
            figure = f"{self.value * 100:.1f} %"
        return f"{'✔' if self.passed else '✖'} {figure}"

    def style(self) -> StatusStyle | None:
        if self.passed is None:
            return None
        return StatusStyle("pass" if self.passed else "fail", "✔" if self.passed else "✖",
                           GREEN if self.passed else VERMILLION)

    def __lt__(self, other: Verdict) -> bool:
        a = -1e18 if self.value is None else self.value
        b = -1e18 if other.value is None else other.value
        return a < b


def _verdict_column(key: str, header: str) -> RecordColumn:
    return RecordColumn(key, header, fmt=lambda v: v.text(), numeric=True,
                        style=lambda v: v.style() if isinstance(v, Verdict) else None)


COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("kind", "Kind"),
    RecordColumn("version", "Version"),
    RecordColumn("aliases", "Aliases"),
    RecordColumn("created_at", "Created", fmt=lambda v: format_local_time(v, zone=True)),
    RecordColumn("artifact_bytes", "Size (MiB)", fmt=lambda v: format_number(v / 2**20, 1), numeric=True),
    RecordColumn("signature", "Signature", tooltip=lambda r: f"Ed25519 key id {r.get('key_id')}"),
    RecordColumn("evaluation", "Evaluation", style=lambda v: EVAL_STYLES.get(v)),
    *(_verdict_column(k, h) for k, h in REQUIREMENT_COLUMNS),
    RecordColumn("gate", "Rollout gate", style=lambda v: GATE_STYLES.get(v),
                 tooltip=lambda r: r.get("gate_why") or ""),
    RecordColumn("override", "Override (who: why)", tooltip=lambda r: r.get("override") or ""),
)


@dataclass(frozen=True)
class ModelsLoad:
    """One refresh: the versions shown, the production version per kind and the tile counts."""

    rows: tuple[dict[str, Any], ...]
    production: dict[str, str | None]
    total: int
    failing_gate: int
    now: datetime


def gate_of(session: Any, mv: ModelVersion) -> tuple[str, str]:
    """``("allowed" | "overridden" | "refused", why)`` of ``mv``: :func:`fleet.registry.rollout_gate`."""
    decision = registry.rollout_gate(session, mv)
    if decision.overridden:
        return "overridden", decision.reason
    return ("allowed" if decision.allowed else "refused"), decision.reason


def load_models(session_factory: Callable[[], Any], clock: Callable[[], datetime], kind: str | None) -> ModelsLoad:
    """Every version (of ``kind``; None: all) with aliases, verdicts and the gate (worker)."""
    with session_factory() as session:
        versions = registry.list_versions(session, kind or None)
        aliases: dict[int, list[str]] = {}
        production: dict[str, str | None] = {k: None for k in MODEL_KINDS}
        for a_kind, alias, version_id, version in session.execute(
                select(ModelAlias.kind, ModelAlias.alias, ModelAlias.version_id, ModelVersion.version)
                .join(ModelVersion, ModelVersion.id == ModelAlias.version_id).order_by(ModelAlias.alias)):
            aliases.setdefault(version_id, []).append(alias)
            if alias == "production":
                production[a_kind] = version
        rows = []
        for mv in versions:
            gate, why = gate_of(session, mv)
            reqs = {r.get("key"): r for r in (mv.requirements or [])}
            verdicts = {k: Verdict(k, reqs[k].get("value"), reqs[k].get("passed")) if k in reqs
                        else Verdict(k, None, None) for k, _ in REQUIREMENT_COLUMNS}
            rows.append({
                "id": mv.id, "kind": mv.kind, "version": mv.version,
                "aliases": ", ".join(aliases.get(mv.id, [])), "created_at": mv.created_at,
                "created_by": mv.created_by, "artifact_bytes": mv.artifact_bytes,
                "signature": f"✔ signed {mv.key_id[:8]}…" if mv.signature else "✖ unsigned",
                "key_id": mv.key_id,
                "evaluation": {True: "passed", False: "failed", None: "not evaluated"}[mv.evaluation_passed],
                **verdicts, "gate": gate, "gate_why": why,
                "override_by": mv.gate_override_by, "override_reason": mv.gate_override_reason,
                "override": (f"{mv.gate_override_by}: {mv.gate_override_reason}" if mv.gate_override_reason
                             else None),
                "override_at": mv.gate_override_at, "requirements": list(mv.requirements or []),
                "notes": mv.notes, "files": dict(mv.files or {}), "metadata": dict(mv.bundle_metadata or {}),
                "evaluated_at": mv.evaluated_at, "manifest_sha256": mv.manifest_sha256})
        total = len(rows) if not kind else len(list(session.execute(select(ModelVersion.id)).scalars()))
    failing = sum(1 for r in rows if r["gate"] == "refused")
    return ModelsLoad(tuple(rows), production, total, failing, clock())


def set_alias(session_factory: Any, clock: Callable[[], datetime], kind: str, alias: str, version: str) -> str:
    """Point ``kind``/``alias`` at ``version`` through the registry (worker); audited by the core."""
    with session_factory.begin() as session:
        registry.set_alias(session, kind, alias, version, clock=clock)
    return f"{kind} {alias} → {version}"


def override_gate(session_factory: Any, clock: Callable[[], datetime], kind: str, version: str, reason: str) -> str:
    """Override the rollout gate of ``kind``/``version`` with a written ``reason`` (worker).

    Raises
    ------
    RegistryError
        Empty reason (checked here as well as by the registry) or unknown version.
    """
    if not reason or not reason.strip():
        raise RegistryError("a gate override needs a written reason: say why this version may ship "
                            "although its evaluation failed")
    with session_factory.begin() as session:
        registry.override_gate(session, version, reason.strip(), kind=kind, clock=clock)
    return f"gate of {kind} {version} overridden"


def import_bundle_dir(session_factory: Any, clock: Callable[[], datetime], path: Path, data_dir: Path,
                      signer_factory: Callable[[], Any] | None, notes: str = "") -> str:
    """Import the bundle directory ``path`` into the registry: verify, copy to
    ``<data_dir>/registry``, sign, record (worker). Returns ``"<kind> <version>"``."""
    if signer_factory is not None:
        signer = signer_factory()
    else:
        from fleet.signing import KeyStore

        signer = KeyStore(data_dir).signer()
    with session_factory.begin() as session:
        mv = registry.import_bundle(session, Path(path), registry.registry_root(data_dir), signer, clock,
                                    notes=notes)
        return f"{mv.kind} {mv.version}"


def describe_version(row: dict[str, Any]) -> str:
    """The selected version as text: verdicts with targets and figures, gate, override, files."""
    lines = [f"{row['kind']} {row['version']}" + (f"  [{row['aliases']}]" if row["aliases"] else ""),
             f"created {format_full_time(row['created_at'])} by {row.get('created_by') or '—'}; "
             f"{format_number(row['artifact_bytes'] / 2**20, 1, 'MiB')} in {len(row['files'])} files; "
             + (f"signed with Ed25519 key {row['key_id']}" if row["key_id"] else "unsigned"), ""]
    if row["requirements"]:
        lines.append(f"Offline evaluation ({format_full_time(row.get('evaluated_at'))}):")
        for r in row["requirements"]:
            v = Verdict(str(r.get("key")), r.get("value"), r.get("passed"))
            word = "not measured" if r.get("passed") is None else ("pass" if r.get("passed") else "FAIL")
            lines.append(f"  {word:>12}  {r.get('label') or r.get('key')}: {v.text()}")
    else:
        lines.append("Offline evaluation: not run (speakerops models evaluate VERSION)")
    lines.append("")
    lines.append(f"Rollout gate: {GATE_STYLES[row['gate']].label}" + (f" — {row['gate_why']}" if row["gate_why"] else ""))
    if row.get("override_reason"):
        lines.append(f"Override by {row.get('override_by') or '—'} at {format_full_time(row.get('override_at'))}: "
                     f"{row['override_reason']}")
    if row.get("notes"):
        lines += ["", f"Notes: {row['notes']}"]
    return "\n".join(lines)


class GateOverrideDialog(QDialog):
    """Asks for the written reason of a gate override; OK stays disabled until there is one."""

    def __init__(self, row: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Override the rollout gate of {row['kind']} {row['version']}")
        failed = [r for r in row.get("requirements", []) if r.get("passed") is False]
        lines = [f"  ✖ {r.get('label') or r.get('key')}: {Verdict(str(r.get('key')), r.get('value'), False).text()}"
                 for r in failed] or [f"  {row.get('gate_why') or 'not evaluated'}"]
        intro = QLabel("The rollout gate refuses this version:\n" + "\n".join(lines)
                       + "\n\nWhy may it be rolled out anyway? The reason is recorded with your name in the "
                       "audit trail.")
        intro.setWordWrap(True)
        self.reason_edit = QPlainTextEdit()
        self.reason_edit.setPlaceholderText("e.g. MOS measured on espeak-ng voices; listening test passed (ticket 42)")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Override gate")
        self.ok_button.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.reason_edit)
        layout.addWidget(self.buttons)
        self.reason_edit.textChanged.connect(self._on_reason_edit_changed)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    def reason(self) -> str:
        return self.reason_edit.toPlainText().strip()

    def _on_reason_edit_changed(self) -> None:
        self.ok_button.setEnabled(bool(self.reason()))


class ModelsPage(RefreshWhileVisible, QWidget):
    """The model registry with evaluation verdicts, gate and aliases, and its actions.

    Parameters
    ----------
    session_factory, clock, executors, reporter, theme
        As every page; reads and actions run on ``executors.db``.
    data_dir
        SpeakerOps data directory: imported bundles are stored under ``<data_dir>/registry`` and
        the signing key comes from ``fleet.signing.KeyStore(data_dir)``.
    signer_factory
        Zero-argument callable giving the ``fleet.signing.Signer`` for imports (default: the
        key store's ``registry`` key).
    refresh_interval_s
        Seconds between refreshes while visible (default 10).
    """

    sig_loaded = Signal(int)
    sig_changed = Signal(str)  # what happened

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, *, data_dir: Path,
                 signer_factory: Callable[[], Any] | None = None, refresh_interval_s: float = 10.0,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._data_dir = Path(data_dir)
        self._signer_factory = signer_factory
        self._refresh_job: Job | None = None
        self._action_job: Job | None = None
        self._selected: tuple[str, str] | None = None
        self._again = False
        self._closed = False
        self.last_load: ModelsLoad | None = None

        title = QLabel("Models")
        title.setObjectName("pageTitle")
        self.updated_label = QLabel("Loading…")
        self.updated_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.updated_label)
        self.tiles = {"versions": Tile("versions", "Versions", theme)}
        for kind in MODEL_KINDS:
            self.tiles[f"production_{kind}"] = Tile(f"production_{kind}", f"{kind.upper()} in production", theme)
        self.tiles["failing"] = Tile("failing", "Refused by the gate", theme)
        tiles_row = QHBoxLayout()
        for tile in self.tiles.values():
            tiles_row.addWidget(tile, 1)
        self.message_bar = MessageBar()

        self.kind_combo = QComboBox()
        self.kind_combo.addItem("All kinds", None)
        for kind in MODEL_KINDS:
            self.kind_combo.addItem(kind, kind)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search versions, aliases, notes")
        self.import_button = QPushButton("Import bundle…")
        self.alias_button = QPushButton("Set alias…")
        self.override_button = QPushButton("Override gate…")
        self.export_button = QPushButton("Export CSV…")
        for b in (self.alias_button, self.override_button):
            b.setEnabled(False)
        bar = QHBoxLayout()
        bar.addWidget(self.kind_combo)
        bar.addWidget(self.search_edit)
        bar.addStretch(1)
        for b in (self.import_button, self.alias_button, self.override_button, self.export_button):
            bar.addWidget(b)

        self.model = RecordTableModel(COLUMNS, self)
        self.proxy = RecordSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self._sized = False
        style_table(self.table)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("Select a version to see its evaluation, gate and override.")
        splitter = QSplitter(Qt.Orientation.Vertical)
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
        self.timer.timeout.connect(self.refresh)
        self.kind_combo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.search_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection_changed)
        self.model.modelReset.connect(self._on_model_reset)
        self.import_button.clicked.connect(self._on_import_button_clicked)
        self.alias_button.clicked.connect(self._on_alias_button_clicked)
        self.override_button.clicked.connect(self._on_override_button_clicked)
        self.export_button.clicked.connect(self._on_export_button_clicked)

    # -- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(j is not None and not j.is_done for j in self._jobs_in_flight())

    @property
    def selected_row(self) -> dict[str, Any] | None:
        """The selected version's row (as loaded), or None."""
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data(Qt.ItemDataRole.UserRole) if rows else None

    def refresh(self) -> bool:
        if self._closed:
            return False
        if self._refresh_job is not None and not self._refresh_job.is_done:
            self._again = True
            return False
        self._refresh_job = (Job(load_models, self.session_factory, self._clock, self.kind_combo.currentData())
                             .on_success(self._on_refresh_succeeded)
                             .on_failure(self._on_job_failed)
                             .start(self._executors.db, owner=self))
        return True

    def select_version(self, kind: str, version: str) -> bool:
        """Select ``kind``/``version`` in the table; False if not shown."""
        for r in range(self.proxy.rowCount()):
            row = self.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole)
            if row["kind"] == kind and row["version"] == version:
                self.table.selectRow(r)
                return True
        return False

    def set_alias_selected(self, alias: str) -> bool:
        """Point ``alias`` of the selected version's kind at it; False if nothing selected or no name."""
        row = self.selected_row
        alias = alias.strip()
        if row is None or not alias:
            if row is not None:
                self.message_bar.show_message("An alias needs a name, e.g. production or canary.")
            return False
        return self._run(set_alias, row["kind"], alias, row["version"])

    def override_gate_selected(self, reason: str) -> bool:
        """Override the gate of the selected version with ``reason``; an empty reason is refused in
        the message bar (nothing is written)."""
        row = self.selected_row
        if row is None:
            return False
        if not reason.strip():
            self.message_bar.show_message(
                f"Not overridden: a gate override of {row['kind']} {row['version']} needs a written reason "
                "(why it may ship although its evaluation failed).")
            return False
        return self._run(override_gate, row["kind"], row["version"], reason.strip())

    def import_bundle(self, path: Path, notes: str = "") -> bool:
        """Import the bundle directory ``path`` (verify, store, sign, record) off the GUI thread."""
        if self._closed:
            return False
        return self._run(import_bundle_dir, Path(path), self._data_dir, self._signer_factory, notes)

    def export(self, path: Path) -> int:
        """Write the shown versions to ``path`` as CSV."""
        rows = [self.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.proxy.rowCount())]
        return export_csv(path, COLUMNS, rows)

    def apply_role(self, role: str | None) -> None:
        """Hide the actions ``role`` may not do (speakerops.roles.may); the database refuses them anyway."""
        from speakerops.roles import may

        for button in (self.import_button, self.alias_button, self.override_button):
            button.setVisible(may(role, "models.write"))

    def apply_theme(self, theme: Theme) -> None:
        for tile in self.tiles.values():
            tile.apply_theme(theme)

    def shutdown(self) -> None:
        self.stop_refreshing()

    def _jobs_in_flight(self) -> tuple:
        return (self._refresh_job, self._action_job)

    # -- internals ----------------------------------------------------------------------
    def _run(self, fn: Callable[..., str], *args: Any) -> bool:
        if self._closed or (self._action_job is not None and not self._action_job.is_done):
            return False
        self._action_job = (Job(fn, self.session_factory, self._clock, *args)
                            .on_success(self._on_action_succeeded)
                            .on_failure(self._on_action_failed)
                            .on_done(self.refresh)
                            .start(self._executors.db, owner=self))
        return True

    def _on_refresh_succeeded(self, load: ModelsLoad) -> None:
        if self._again:
            self._again = False
            self.refresh()
        self.last_load = load
        self.model.set_rows(load.rows)
        if not self._sized and load.rows:
            self._sized = True
            self.table.resizeColumnsToContents()
        self.tiles["versions"].set_value(load.total)
        for kind in MODEL_KINDS:
            self.tiles[f"production_{kind}"].set_text(load.production.get(kind) or "—")
        self.tiles["failing"].set_value(load.failing_gate)
        self.updated_label.setText(f"Updated {format_local_time(load.now, zone=True)}")
        self.sig_loaded.emit(len(load.rows))

    def _on_model_reset(self) -> None:
        if self._selected is not None and not self.select_version(*self._selected):
            self._selected = None
        self._on_table_selection_changed()

    def _on_table_selection_changed(self, *_: Any) -> None:
        row = self.selected_row
        if row is not None:
            self._selected = (row["kind"], row["version"])
        self.detail.setPlainText(describe_version(row) if row else "")
        self.alias_button.setEnabled(row is not None)
        self.override_button.setEnabled(row is not None and row["gate"] == "refused")

    def _on_action_succeeded(self, text: str) -> None:
        self.message_bar.clear()
        self.updated_label.setText(text)
        self.sig_changed.emit(text)

    def _on_action_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="change the registry", panel=self.message_bar)

    def _on_job_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="read the model registry", panel=self.message_bar)

    def _on_import_button_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Import a model bundle directory", str(Path.home()))
        if path:
            self.import_bundle(Path(path))

    def _on_alias_button_clicked(self) -> None:
        row = self.selected_row
        if row is None:
            return
        alias, ok = QInputDialog.getItem(self, "Set alias", f"Alias of {row['kind']} to point at {row['version']}:",
                                         list(COMMON_ALIASES), 0, True)
        if ok:
            self.set_alias_selected(alias)

    def _on_override_button_clicked(self) -> None:
        row = self.selected_row
        if row is None:
            return
        dialog = GateOverrideDialog(row, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.override_gate_selected(dialog.reason())

    def _on_export_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export model versions", "models.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            n = self.export(Path(path))
        except OSError as exc:
            self.message_bar.show_message(f"Could not write {path}: {exc.strerror or exc}. Pick another folder.")
            return
        self.updated_label.setText(f"Exported {n:,} versions to {path}")
