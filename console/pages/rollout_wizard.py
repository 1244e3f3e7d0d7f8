"""The "New rollout…" dialog of the Rollouts page: a plan (kind, version from the registry, target
filter, canary, waves, thresholds, parallel sessions, timeout, rate limit, maintenance window)
with a live preview of the groups the core would make, then Start (or Create only).

The preview is :func:`fleet.rollout_plan.preview` itself, run on the ``db`` executor 300 ms after
the last edit, so what the operator sees is what :func:`fleet.rollout_control.create_rollout`
stores. Start creates and starts the rollout in one unit of work; a refused registry gate shows
in the dialog's message bar with the failed requirements, and can be overridden with a written
reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

from pydantic import ValidationError
from PySide6.QtCore import QTime, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableView,
    QTimeEdit,
    QVBoxLayout,
    QWidget,
)
from sqlalchemy import select

from console.errors import ErrorReporter
from console.jobs import Executors, Job
from console.models.records import RecordColumn, RecordTableModel
from console.theme import Theme
from console.widgets import MessageBar, section_title
from fleet import rollout_control
from fleet.models import MODEL_KINDS, ModelVersion, Unit
from fleet.rollout_plan import (
    DEFAULT_CANARY_UNITS,
    DEFAULT_ERROR_THRESHOLD_PCT,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_SUCCESS_THRESHOLD_PCT,
    DEFAULT_UNIT_TIMEOUT_S,
    DEFAULT_WAVES_PCT,
    MaintenanceWindow,
    PlanPreview,
    RolloutPlan,
    TargetFilter,
    preview,
)

logger = logging.getLogger(__name__)

#: Milliseconds of quiet after an edit before the preview is recomputed.
PREVIEW_DELAY_MS = 300

PREVIEW_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("index", "#", numeric=True),
    RecordColumn("name", "Group"),
    RecordColumn("size", "Units", numeric=True),
    RecordColumn("cumulative_pct", "Reached %", fmt=lambda v: f"{v:.0f}", numeric=True),
    RecordColumn("first", "Units (first ones)"),
)
EXCLUDED_COLUMNS: tuple[RecordColumn, ...] = (RecordColumn("serial", "Left out"), RecordColumn("why", "Why"))


@dataclass(frozen=True)
class VersionChoice:
    """A registry version offered in the wizard, with whether its evaluation passed."""

    kind: str
    version: str
    evaluation_passed: bool | None
    overridden: bool

    @property
    def label(self) -> str:
        if self.evaluation_passed is False and not self.overridden:
            return f"{self.version}  ✖ evaluation failed"
        if self.evaluation_passed is False:
            return f"{self.version}  ⚑ gate overridden"
        if self.evaluation_passed is None and not self.overridden:
            return f"{self.version}  ○ not evaluated (needs an override)"
        if self.evaluation_passed is None:
            return f"{self.version}  ⚑ not evaluated, gate overridden"
        return f"{self.version}  ✔ evaluation passed"


@dataclass(frozen=True)
class WizardOptions:
    """Registry versions per kind and the inventory's values, for the form's choices and hints."""

    versions: dict[str, list[VersionChoice]] = field(default_factory=dict)
    sites: tuple[str, ...] = ()
    hardware_revs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    current_versions: dict[str, tuple[str, ...]] = field(default_factory=dict)


def load_wizard_options(session_factory: Callable[[], Any]) -> WizardOptions:
    """Registry versions (newest first) and the inventory's sites, revisions, tags (worker)."""
    with session_factory() as session:
        rows = session.execute(select(ModelVersion.kind, ModelVersion.version, ModelVersion.evaluation_passed,
                                      ModelVersion.gate_override_reason)
                               .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())).all()
        versions: dict[str, list[VersionChoice]] = {k: [] for k in MODEL_KINDS}
        for kind, version, passed, override in rows:
            versions.setdefault(kind, []).append(VersionChoice(kind, version, passed, bool(override)))
        units = session.execute(select(Unit.site, Unit.hardware_rev, Unit.tags, Unit.stt_version,
                                       Unit.qa_version, Unit.tts_version)).all()
    tags = sorted({t for u in units for t in (u.tags or [])})
    current = {k: tuple(sorted({str(getattr(u, f"{k}_version")) for u in units
                                if getattr(u, f"{k}_version")})) for k in MODEL_KINDS}
    return WizardOptions(versions, tuple(sorted({u.site for u in units if u.site})),
                         tuple(sorted({u.hardware_rev for u in units if u.hardware_rev})), tuple(tags), current)


def preview_plan(session_factory: Callable[[], Any], plan: RolloutPlan) -> PlanPreview:
    """:func:`fleet.rollout_plan.preview` in its own read-only unit of work (worker)."""
    with session_factory() as session:
        return preview(session, plan)


def _failed_requirements(session: Any, kind: str, version: str) -> list[tuple[str, str]]:
    """(label, figure) of each requirement ``kind``/``version`` failed in its evaluation."""
    mv = session.execute(select(ModelVersion).where(ModelVersion.kind == kind,
                                                    ModelVersion.version == version)).scalar_one_or_none()
    out = []
    for r in (mv.requirements or []) if mv is not None else []:
        if r.get("passed") is not False:
            continue
        value = r.get("value")
        shown = "—" if value is None else (f"{value * 100:.1f} %" if isinstance(value, float) and value <= 1
                                           else f"{value:,.4g}")
        out.append((str(r.get("label") or r.get("key")), shown))
    return out


def create_rollout_from_plan(session_factory: Any, clock: Callable[[], datetime], plan: RolloutPlan,
                             start: bool, override_reason: str | None) -> int:
    """Create (and if ``start``, start) a rollout of ``plan`` in one unit of work (worker).

    Returns the rollout id.

    Raises
    ------
    fleet.rollout_control.RolloutGateRefused
        The registry's gate refuses the version and no reason was given; the message ends with
        the failed requirements and their figures.
    fleet.rollout_control.RolloutError
        Not in the registry, or no unit matches.
    """
    try:
        with session_factory.begin() as session:
            rollout = rollout_control.create_rollout(session, plan, clock=clock,
                                                     override_reason=override_reason or None)
            if start:
                rollout_control.start(session, rollout.id, clock=clock)
            return int(rollout.id)
    except rollout_control.RolloutGateRefused as exc:
        with session_factory() as session:
            failed = _failed_requirements(session, plan.kind, plan.version)
        text = str(exc)
        if failed and not all(label in text for label, _ in failed):
            text += " — failed requirements: " + "; ".join(f"{label}: {shown}" for label, shown in failed)
        raise rollout_control.RolloutGateRefused(
            f"{text}. Here: write a reason in 'Gate override reason' to start it anyway") from exc


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


class RolloutWizard(QDialog):
    """Plan a rollout with a live preview of its groups, then start it.

    Parameters
    ----------
    session_factory, clock, executors, reporter, theme
        As for the pages; options, the preview and the creation run on ``executors.db``.

    Signals
    -------
    sig_previewed(object)
        A :class:`fleet.rollout_plan.PlanPreview` was shown.
    sig_created(int, bool)
        Rollout id created, and whether it was started.
    sig_failed(str)
        The plan or the creation was refused (the message shown).
    """

    sig_options_loaded = Signal()
    sig_previewed = Signal(object)
    sig_created = Signal(int, bool)
    sig_failed = Signal(str)

    def __init__(self, session_factory: Any, clock: Callable[[], datetime], executors: Executors,
                 reporter: ErrorReporter, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New rollout")
        self.resize(1100, 720)
        self.session_factory = session_factory
        self._clock = clock
        self._executors = executors
        self._reporter = reporter
        self._options = WizardOptions()
        self._jobs: dict[str, Job | None] = {"options": None, "preview": None, "create": None}
        self._again = False
        self._generation = 0  # bumped on every preview request; older results are dropped
        self._closed = False
        self.last_preview: PlanPreview | None = None

        self.kind_combo = QComboBox()
        for kind in MODEL_KINDS:
            self.kind_combo.addItem(kind, kind)
        self.version_combo = QComboBox()
        self.version_combo.setMinimumWidth(260)
        self.sites_edit, self.hw_edit, self.tags_edit, self.current_edit = (QLineEdit() for _ in range(4))
        self.serials_edit = QPlainTextEdit()
        self.serials_edit.setPlaceholderText("explicit serials (comma or one per line); empty: all matching")
        self.serials_edit.setFixedHeight(54)
        self.canary_spin = QSpinBox()
        self.canary_spin.setRange(0, 100000)
        self.canary_spin.setValue(DEFAULT_CANARY_UNITS)
        self.canary_unit_combo = QComboBox()
        self.canary_unit_combo.addItem("units", "units")
        self.canary_unit_combo.addItem("% of targets", "pct")
        self.waves_edit = QLineEdit(", ".join(f"{w:g}" for w in DEFAULT_WAVES_PCT))
        self.success_spin = self._pct_spin(DEFAULT_SUCCESS_THRESHOLD_PCT)
        self.error_spin = self._pct_spin(DEFAULT_ERROR_THRESHOLD_PCT)
        self.min_finished_spin = QSpinBox()
        self.min_finished_spin.setRange(1, 100000)
        self.parallel_spin = QSpinBox()
        self.parallel_spin.setRange(1, 500)
        self.parallel_spin.setValue(DEFAULT_MAX_PARALLEL)
        self.timeout_spin = QSpinBox()
        self.timeout_spin.setRange(10, 86400)
        self.timeout_spin.setValue(int(DEFAULT_UNIT_TIMEOUT_S))
        self.timeout_spin.setSuffix(" s")
        self.rate_spin = QSpinBox()
        self.rate_spin.setRange(0, 100000)
        self.rate_spin.setSpecialValueText("no limit")
        self.rate_spin.setSuffix(" units/min")
        self.window_check = QCheckBox("only in")
        self.window_start = QTimeEdit(QTime(2, 0))
        self.window_end = QTimeEdit(QTime(5, 0))
        for w in (self.window_start, self.window_end):
            w.setDisplayFormat("HH:mm")
            w.setEnabled(False)
        self.override_edit = QLineEdit()
        self.override_edit.setPlaceholderText("only if the registry's gate refuses this version: why ship it anyway")

        form = QFormLayout()
        form.addRow("Kind", self.kind_combo)
        form.addRow("Version", self.version_combo)
        form.addRow("Sites", self.sites_edit)
        form.addRow("Hardware revisions", self.hw_edit)
        form.addRow("Tags (all of)", self.tags_edit)
        form.addRow("Current versions", self.current_edit)
        form.addRow("Units", self.serials_edit)
        canary_row = QHBoxLayout()
        canary_row.addWidget(self.canary_spin)
        canary_row.addWidget(self.canary_unit_combo)
        form.addRow("Canary", canary_row)
        form.addRow("Waves (cumulative %)", self.waves_edit)
        form.addRow("Success threshold", self.success_spin)
        form.addRow("Error threshold", self.error_spin)
        form.addRow("Min finished for error", self.min_finished_spin)
        form.addRow("Parallel SSH sessions", self.parallel_spin)
        form.addRow("Per-unit timeout", self.timeout_spin)
        form.addRow("Rate limit", self.rate_spin)
        window_row = QHBoxLayout()
        window_row.addWidget(self.window_check)
        window_row.addWidget(self.window_start)
        window_row.addWidget(QLabel("–"))
        window_row.addWidget(self.window_end)
        window_row.addWidget(QLabel("unit's local time"))
        window_row.addStretch(1)
        form.addRow("Maintenance window", window_row)
        form.addRow("Gate override reason", self.override_edit)
        form_box = QWidget()
        form_column = QVBoxLayout(form_box)
        form_column.setContentsMargins(0, 0, 0, 0)
        form_column.addLayout(form)
        form_column.addStretch(1)
        form_box.setMinimumWidth(470)

        self.summary_label = QLabel("Preview: —")
        self.summary_label.setWordWrap(True)
        self.preview_model = RecordTableModel(PREVIEW_COLUMNS, self)
        self.preview_table = self._table(self.preview_model)
        self.excluded_model = RecordTableModel(EXCLUDED_COLUMNS, self)
        self.excluded_table = self._table(self.excluded_model)
        right = QVBoxLayout()
        right.addWidget(section_title("Groups preview (what Start creates)"))
        right.addWidget(self.summary_label)
        right.addWidget(self.preview_table, 3)
        right.addWidget(section_title("Left out"))
        right.addWidget(self.excluded_table, 2)

        body = QHBoxLayout()
        body.addWidget(form_box)
        body.addLayout(right, 1)
        self.message_bar = MessageBar()
        self.start_button = QPushButton("Start rollout")
        self.start_button.setDefault(True)
        self.create_button = QPushButton("Create only")
        self.close_button = QPushButton("Close")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.create_button, self.start_button, self.close_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message_bar)
        layout.addLayout(body, 1)
        layout.addLayout(buttons)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(PREVIEW_DELAY_MS)
        self._debounce.timeout.connect(self.preview_now)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_combo_changed)
        for w in (self.version_combo, self.canary_unit_combo):
            w.currentIndexChanged.connect(self._on_field_changed)
        for w in (self.sites_edit, self.hw_edit, self.tags_edit, self.current_edit, self.waves_edit):
            w.textChanged.connect(self._on_field_changed)
        self.serials_edit.textChanged.connect(self._on_field_changed)
        for w in (self.canary_spin, self.min_finished_spin, self.parallel_spin, self.timeout_spin, self.rate_spin):
            w.valueChanged.connect(self._on_field_changed)
        for w in (self.success_spin, self.error_spin):
            w.valueChanged.connect(self._on_field_changed)
        self.window_check.toggled.connect(self._on_window_check_toggled)
        for w in (self.window_start, self.window_end):
            w.timeChanged.connect(self._on_field_changed)
        self.start_button.clicked.connect(lambda: self.submit(start=True))
        self.create_button.clicked.connect(lambda: self.submit(start=False))
        self.close_button.clicked.connect(self.close)

    @staticmethod
    def _pct_spin(value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 100.0)
        spin.setDecimals(0)
        spin.setSuffix(" %")
        spin.setValue(value)
        return spin

    @staticmethod
    def _table(model: RecordTableModel) -> QTableView:
        table = QTableView()
        table.setModel(model)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setAlternatingRowColors(True)
        table.setShowGrid(False)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        return table

    # -- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(j is not None and not j.is_done for j in self._jobs.values())

    def load_options(self) -> None:
        """Read the registry versions and inventory values (db executor), then preview."""
        if self._closed or self._running("options"):
            return
        self._jobs["options"] = (Job(load_wizard_options, self.session_factory)
                                 .on_success(self._on_options_loaded)
                                 .on_failure(self._on_job_failed)
                                 .start(self._executors.db, owner=self))

    def set_version(self, kind: str, version: str) -> bool:
        """Choose ``kind`` and ``version`` (as the user would); False if not in the registry."""
        self.kind_combo.setCurrentIndex(max(0, self.kind_combo.findData(kind)))
        i = self.version_combo.findData(version)
        if i < 0:
            return False
        self.version_combo.setCurrentIndex(i)
        return True

    def plan(self) -> RolloutPlan:
        """The plan the form describes.

        Raises
        ------
        ValueError
            (pydantic ``ValidationError`` included) when a field is invalid; the message says which.
        """
        version = self.version_combo.currentData()
        if not version:
            raise ValueError(f"no {self.kind_combo.currentData()} version in the registry; import one on the "
                             "Models page first")
        try:
            waves = [float(w.rstrip("% ")) for w in _split(self.waves_edit.text())]
        except ValueError:
            raise ValueError(f"waves must be percentages separated by commas, e.g. 5, 25, 50, 100 — got "
                             f"{self.waves_edit.text()!r}") from None
        pct = self.canary_unit_combo.currentData() == "pct"
        canary = self.canary_spin.value()
        window = None
        if self.window_check.isChecked():
            window = MaintenanceWindow(start=time.fromisoformat(self.window_start.time().toString("HH:mm")),
                                       end=time.fromisoformat(self.window_end.time().toString("HH:mm")))
        return RolloutPlan(
            kind=self.kind_combo.currentData(), version=version,
            targets=TargetFilter(sites=_split(self.sites_edit.text()), hardware_revs=_split(self.hw_edit.text()),
                                 tags=_split(self.tags_edit.text()), current_versions=_split(self.current_edit.text()),
                                 serials=_split(self.serials_edit.toPlainText())),
            canary_units=None if pct else canary, canary_pct=(canary or None) if pct else None,
            waves_pct=waves, success_threshold_pct=self.success_spin.value(),
            error_threshold_pct=self.error_spin.value(), min_finished=self.min_finished_spin.value(),
            max_parallel=self.parallel_spin.value(), unit_timeout_s=float(self.timeout_spin.value()),
            max_per_minute=self.rate_spin.value() or None, window=window)

    def preview_now(self) -> bool:
        """Recompute the groups preview for the form's plan now; False if the plan is invalid."""
        if self._closed:
            return False
        self._generation += 1
        try:
            plan = self.plan()
        except (ValueError, ValidationError) as exc:
            self._show_invalid(exc)
            return False
        if self._running("preview"):
            self._again = True
            return True
        generation = self._generation
        self._jobs["preview"] = (Job(preview_plan, self.session_factory, plan)
                                 .on_success(lambda pv: self._on_preview_succeeded(pv, generation))
                                 .on_failure(self._on_job_failed)
                                 .start(self._executors.db, owner=self))
        return True

    def submit(self, start: bool = True) -> bool:
        """Create the rollout (and start it when ``start``) off the GUI thread; False if the
        plan is invalid or a creation is already in flight."""
        if self._closed or self._running("create"):
            return False
        try:
            plan = self.plan()
        except (ValueError, ValidationError) as exc:
            self._show_invalid(exc)
            return False
        self.start_button.setEnabled(False)
        self.create_button.setEnabled(False)
        self._jobs["create"] = (Job(create_rollout_from_plan, self.session_factory, self._clock, plan, start,
                                    self.override_edit.text().strip() or None)
                                .on_success(lambda rid: self._on_create_succeeded(rid, start))
                                .on_failure(self._on_create_failed)
                                .on_done(self._on_create_done)
                                .start(self._executors.db, owner=self))
        return True

    def shutdown(self) -> None:
        """Cancel the jobs in flight; no more work after."""
        self._closed = True
        self._debounce.stop()
        for job in self._jobs.values():
            if job is not None and not job.is_done:
                job.cancel()

    # -- internals ----------------------------------------------------------------------
    def _running(self, name: str) -> bool:
        job = self._jobs.get(name)
        return job is not None and not job.is_done

    def _show_invalid(self, exc: BaseException) -> None:
        if isinstance(exc, ValidationError):
            text = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        else:
            text = str(exc)
        self.message_bar.show_message(f"The plan is not valid: {text}")
        self.preview_model.set_rows(())
        self.excluded_model.set_rows(())
        self.summary_label.setText("Preview: — (fix the plan)")
        self.last_preview = None
        self.sig_failed.emit(text)

    def _on_options_loaded(self, options: WizardOptions) -> None:
        self._options = options
        hint = lambda values: "all — e.g. " + ", ".join(values[:4]) if values else "all"  # noqa: E731
        self.sites_edit.setPlaceholderText(hint(options.sites))
        self.hw_edit.setPlaceholderText(hint(options.hardware_revs))
        self.tags_edit.setPlaceholderText("none required — e.g. " + ", ".join(options.tags[:4]) if options.tags
                                          else "none required")
        self._fill_versions()
        self.sig_options_loaded.emit()
        self.preview_now()

    def _fill_versions(self) -> None:
        kind = self.kind_combo.currentData()
        self.version_combo.blockSignals(True)
        self.version_combo.clear()
        for choice in self._options.versions.get(kind, []):
            self.version_combo.addItem(choice.label, choice.version)
        self.version_combo.blockSignals(False)
        current = self._options.current_versions.get(kind, ())
        self.current_edit.setPlaceholderText("any — e.g. " + ", ".join(current[:4]) if current else "any")

    def _on_kind_combo_changed(self, _index: int) -> None:
        self._fill_versions()
        self._on_field_changed()

    def _on_window_check_toggled(self, on: bool) -> None:
        self.window_start.setEnabled(on)
        self.window_end.setEnabled(on)
        self._on_field_changed()

    def _on_field_changed(self, *_: Any) -> None:
        if not self._closed:
            self._debounce.start()

    def _on_preview_succeeded(self, pv: PlanPreview, generation: int) -> None:
        if self._again:  # the form changed while this preview was computed: it is stale
            self._again = False
            self.preview_now()
            return
        if generation != self._generation:  # the plan became invalid meanwhile
            return
        self.message_bar.clear()
        self.last_preview = pv
        self.preview_model.set_rows([
            {"index": g.index, "name": g.name, "size": len(g.units), "cumulative_pct": g.cumulative_pct,
             "first": ", ".join(u.serial for u in g.units[:6]) + (" …" if len(g.units) > 6 else "")}
            for g in pv.groups])
        self.excluded_model.set_rows([{"serial": s, "why": why} for s, why in sorted(pv.excluded.items())])
        sizes = " → ".join(str(len(g.units)) for g in pv.groups) or "none"
        self.summary_label.setText(f"{pv.total_units:,} units in {len(pv.groups)} groups ({sizes}); "
                                   f"{len(pv.excluded):,} left out. {pv.plan.kind} {pv.plan.version}, "
                                   f"≤ {pv.plan.max_parallel} parallel sessions.")
        self.sig_previewed.emit(pv)

    def _on_create_succeeded(self, rollout_id: int, started: bool) -> None:
        self.message_bar.clear()
        self.sig_created.emit(rollout_id, started)

    def _on_create_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="create the rollout", panel=self.message_bar)
        self.sig_failed.emit(str(exc))

    def _on_create_done(self) -> None:
        self.start_button.setEnabled(True)
        self.create_button.setEnabled(True)

    def _on_job_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="plan the rollout", panel=self.message_bar)
        self.sig_failed.emit(str(exc))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self._debounce.stop()
        super().closeEvent(event)
