"""The Diagnostics page: run recordings through the embedded offline voice loop (decode → VAD →
denoise → STT → QA → TTS) and see which stage fails, and whether it is the room or the model.

Data flow: the loop (``inference_core.pipeline.VoiceLoop``) is loaded once, lazily, by a job on
the ``inference`` executor (building the default bundles first if they are missing). Runs and
test-set evaluations are jobs on the same executor with progress and Cancel; they put each
result into a queue as they go (:mod:`console.pages.diagnostics_work`), which the GUI thread
drains on every progress report, so results appear one by one and survive a cancel. An
unreadable file is a result with ``error``, shown in the page; it never stops the batch.
"""

from __future__ import annotations

import logging
import queue
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from console.errors import ErrorReporter
from console.formatting import format_number
from console.jobs import Executors, Job
from console.pages import diagnostics_work as work
from console.pages.diagnostics_controls import (
    RESULT_COLUMNS,
    ControlBar,
    ProgressRow,
    make_results_table,
    result_rows,
)
from console.pages.diagnostics_eval import EvaluationPanel
from console.pages.diagnostics_result import ResultPanel
from console.pages.diagnostics_views import AudioPlayer, RowsModel, VerdictTile
from console.theme import Theme
from console.widgets import MessageBar
from inference_core.pipeline import LoopOptions, LoopResult
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: (key, caption) of the tiles, left to right.
TILES: tuple[tuple[str, str], ...] = (("all", "Recordings run"), ("pass", "Pass"), ("fail", "Fail"),
                                      ("error", "Unreadable"))


class DiagnosticsPage(QWidget):
    """Run recordings or a test set through the voice loop and show what each stage did.

    Parameters
    ----------
    models_root
        Where the model bundles are (``<data_dir>/models``); missing default bundles are built.
    executors
        The console's executors: the loop runs on ``inference``, HTML reports on ``io``.
    reporter
        Gets the failures that are bugs; expected ones show in the page's message bar.
    theme
        Initial look.
    reports_dir
        Where "Open HTML report" writes (default: a temporary directory of the page).
    options
        Loop options (default: every stage and measure on); the denoise selector overrides
        ``denoise``.
    clock
        Returns aware UTC now (names the report files).
    """

    sig_loop_loaded = Signal(object)  # {kind: version}
    sig_run_finished = Signal(int)  # results added by the run
    sig_evaluation_finished = Signal(object)  # the evaluation report dict
    sig_report_written = Signal(str)  # path of the HTML report
    sig_busy_changed = Signal(bool)

    def __init__(self, models_root: Path, executors: Executors, reporter: ErrorReporter, theme: Theme,
                 *, reports_dir: Path | None = None, options: LoopOptions | None = None,
                 clock: Clock = utc_now, unit_panel: QWidget | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models_root = Path(models_root)
        self._executors = executors
        self._reporter = reporter
        self._theme = theme
        self._options = options or LoopOptions()
        self._clock = clock
        self._tmp = tempfile.TemporaryDirectory(prefix="speakerops-diagnostics-")
        self.reports_dir = Path(reports_dir) if reports_dir is not None else Path(self._tmp.name)
        self.loop: Any = None  #: the loaded ``VoiceLoop`` (None until the first run)
        self._load_job: Job | None = None
        self._work_job: Job | None = None
        self._pending: Callable[[], None] | None = None
        self._sink: queue.SimpleQueue = queue.SimpleQueue()
        self._batch: tuple[int, int] = (0, 0)  # (first entry index, files given) of the run
        self._entries: list[LoopResult | dict[str, Any]] = []
        self._closed = False
        self.url_opener: Callable[[QUrl], Any] = QDesktopServices.openUrl
        self.last_report_path: Path | None = None

        title = QLabel("Diagnostics")
        title.setObjectName("pageTitle")
        self.models_label = QLabel(f"Models: not loaded yet (bundles in {self.models_root})")
        self.models_label.setObjectName("muted")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.models_label)

        self.tiles: dict[str, VerdictTile] = {}
        tiles_row = QHBoxLayout()
        tiles_row.setSpacing(10)
        for key, word in TILES:
            tile = VerdictTile(key, word, theme)
            tile.setCursor(Qt.CursorShape.ArrowCursor)
            tile.set_value(0)
            self.tiles[key] = tile
            tiles_row.addWidget(tile, 1)

        self.controls = ControlBar(self._options.denoise)
        self.controls.sig_open_requested.connect(self._on_controls_open_requested)
        self.controls.sig_evaluate_requested.connect(self._on_controls_evaluate_requested)
        self.progress = ProgressRow()
        self.progress.sig_cancel_requested.connect(self._on_progress_cancel_requested)
        self.message_bar = MessageBar()
        self.results_model = RowsModel(RESULT_COLUMNS, right_aligned=(3,), parent=self)
        self.results_table = make_results_table(self.results_model)
        self.results_table.selectionModel().selectionChanged.connect(self._on_results_selection_changed)

        self.result_panel = ResultPanel(theme)
        self.result_panel.sig_play_input_requested.connect(self._on_result_panel_play_input_requested)
        self.result_panel.sig_play_answer_requested.connect(self._on_result_panel_play_answer_requested)
        self.evaluation_panel = EvaluationPanel()
        self.evaluation_panel.sig_open_report_requested.connect(self._on_evaluation_panel_open_report_requested)
        self.empty_label = QLabel("Open recordings (WAV, FLAC or OGG) to run them through the voice loop, "
                                  "or evaluate a test-set manifest. Give the reference transcript to "
                                  "get WER and the alignment.")
        self.empty_label.setObjectName("muted")
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.result_panel)
        self.detail_stack = QStackedWidget()
        for widget in (self.empty_label, scroll, self.evaluation_panel):
            self.detail_stack.addWidget(widget)
        detail = QFrame()
        detail.setObjectName("detailPanel")
        detail_layout = QVBoxLayout(detail)
        detail_layout.setContentsMargins(0, 0, 0, 0)
        detail_layout.addWidget(self.detail_stack)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.results_table)
        self.splitter.addWidget(detail)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([400, 1000])

        files = QWidget()
        files_layout = QVBoxLayout(files)
        files_layout.setContentsMargins(0, 8, 0, 0)
        files_layout.setSpacing(10)
        files_layout.addLayout(tiles_row)
        files_layout.addWidget(self.controls)
        files_layout.addWidget(self.progress)
        files_layout.addWidget(self.message_bar)
        files_layout.addWidget(self.splitter, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 10)
        layout.setSpacing(10)
        layout.addLayout(head)
        #: The remote diagnosis of a unit (``console.pages.unit_diagnosis``), in a tab beside the files.
        self.unit_panel = unit_panel
        if unit_panel is None:
            layout.addWidget(files, 1)
        else:
            self.tabs = QTabWidget()
            self.tabs.addTab(unit_panel, "Unit over SSH")
            self.tabs.addTab(files, "Recordings and test sets")
            layout.addWidget(self.tabs, 1)

        self.player = AudioPlayer(self)
        self.player.sig_note.connect(self.result_panel.set_play_note)

    # -- public API ---------------------------------------------------------------------
    @property
    def results(self) -> list[LoopResult]:
        """The recordings run so far (not the evaluations), oldest first."""
        return [e for e in self._entries if isinstance(e, LoopResult)]

    @property
    def is_busy(self) -> bool:
        """True while the models load for a run, or a run or evaluation is in flight."""
        return self._pending is not None or (self._work_job is not None and not self._work_job.is_done)

    def run_files(self, paths: Sequence[Path | str], reference: str | None = None) -> bool:
        """Run recordings through the loop (loading it first if needed).

        Parameters
        ----------
        paths
            WAV/FLAC/OGG files; unreadable ones give a result with an error.
        reference
            What was said (for WER and the alignment); default the reference line edit.

        Returns
        -------
        bool
            False (and a message) when another run is in flight or there is nothing to run.
        """
        paths = [Path(p) for p in paths]
        if reference is None:
            reference = self.controls.reference
        else:
            self.controls.reference_edit.setText(reference)
        if not paths or not self._may_start():
            return False
        self._queue_work(lambda: self._start_run(paths, reference or None))
        return True

    def evaluate(self, manifest: Path | str) -> bool:
        """Evaluate the loop on a JSONL test-set manifest; False when busy."""
        if not self._may_start():
            return False
        self._queue_work(lambda: self._start_evaluation(Path(manifest)))
        return True

    def cancel(self) -> None:
        """Stop the run or evaluation after the current file; a run waiting for the models is
        dropped (the models keep loading, for the next run)."""
        if self._pending is not None:
            self._pending = None
            self._end_busy("Cancelled before the models were loaded; they keep loading for the next run.")
        if self._work_job is not None and not self._work_job.is_done:
            self._work_job.cancel()
            self.progress.show_cancelling()

    def select_row(self, row: int) -> None:
        """Select row ``row`` of the results table and show its detail."""
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        self.results_table.selectionModel().setCurrentIndex(self.results_model.index(row, 0), flags)

    def open_report(self) -> bool:
        """Write the shown evaluation as HTML (on the ``io`` executor) and open it; False if no
        evaluation is shown."""
        report = self.evaluation_panel.report
        if report is None or self._closed:
            return False
        self.evaluation_panel.set_report_note("Writing the HTML report…")
        (Job(work.write_report_html, report, self.reports_dir, self._clock().astimezone())
         .on_success(self._on_report_written)
         .on_failure(self._on_report_failed)
         .start(self._executors.io, owner=self))
        return True

    def apply_theme(self, theme: Theme) -> None:
        """Recolour tiles and chart with ``theme``."""
        self._theme = theme
        for tile in self.tiles.values():
            tile.apply_theme(theme)
        self.result_panel.apply_theme(theme)
        self._rebuild_table()
        if self.unit_panel is not None:
            self.unit_panel.apply_theme(theme)

    def apply_role(self, role: str | None) -> None:
        """Forward to the unit panel (remote diagnosis and unit actions need a technician's role)."""
        if self.unit_panel is not None:
            self.unit_panel.apply_role(role)

    def shutdown(self) -> None:
        """Cancel jobs in flight, stop playback and remove the temporary files; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pending = None
        if self.unit_panel is not None:
            self.unit_panel.shutdown()
        for job in (self._load_job, self._work_job):
            if job is not None and not job.is_done:
                job.cancel()
        self.player.stop()
        self._tmp.cleanup()

    # -- loading the loop and queueing work ---------------------------------------------
    def _may_start(self) -> bool:
        if self._closed:
            return False
        if self.is_busy:
            self.message_bar.show_message("A run is in progress: wait for it or cancel it first.")
            return False
        self.message_bar.clear()
        return True

    def _queue_work(self, start: Callable[[], None]) -> None:
        self._set_busy(True)
        if self.loop is not None:
            start()
            return
        self._pending = start
        self.progress.show_progress(-1.0, work.loading_message(self.models_root))
        if self._load_job is None or self._load_job.is_done:
            self._load_job = (Job(work.load_voice_loop, self.models_root, self._options)
                              .with_progress(self._on_load_progress)
                              .on_success(self._on_load_succeeded)
                              .on_failure(self._on_load_failed)
                              .start(self._executors.inference, owner=self))

    def _start_run(self, paths: list[Path], reference: str | None) -> None:
        self._sink = queue.SimpleQueue()
        self._batch = (len(self._entries), len(paths))
        self.progress.show_progress(0.0, f"Running {len(paths)} recording(s)…")
        self._work_job = (Job(work.run_recordings, self.loop, paths, reference, self.controls.denoise, self._sink)
                          .with_progress(self._on_run_progress)
                          .on_failure(self._on_work_failed)
                          .on_done(self._on_run_done)
                          .start(self._executors.inference, owner=self))

    def _start_evaluation(self, manifest: Path) -> None:
        self._sink = queue.SimpleQueue()
        self._batch = (len(self._entries), 0)
        self.progress.show_progress(0.0, f"Evaluating {manifest.name}…")
        self._work_job = (Job(work.evaluate_manifest, self.loop, manifest, self.controls.denoise, self._sink)
                          .with_progress(self._on_run_progress)
                          .on_failure(self._on_work_failed)
                          .on_done(self._on_evaluation_done)
                          .start(self._executors.inference, owner=self))

    def _set_busy(self, busy: bool) -> None:
        self.controls.set_busy(busy)
        self.sig_busy_changed.emit(busy)

    def _end_busy(self, message: str = "") -> None:
        self.progress.finish()
        self._set_busy(False)
        if message:
            self.message_bar.show_message(message)

    # -- slots --------------------------------------------------------------------------
    def _on_load_progress(self, fraction: float, message: str) -> None:
        if self._pending is not None:
            self.progress.show_progress(fraction, message)

    def _on_load_succeeded(self, loop: Any) -> None:
        self.loop = loop
        versions = loop.versions
        self.models_label.setText("Models: " + " · ".join(versions.values())
                                  + f" (loaded in {format_number(loop.load_ms, 0, 'ms')})")
        self.sig_loop_loaded.emit(versions)
        pending, self._pending = self._pending, None
        if pending is not None and not self._closed:
            pending()

    def _on_load_failed(self, exc: BaseException) -> None:
        self._pending = None
        self._end_busy()
        self.models_label.setText("Models: could not be loaded")
        self._reporter.report(exc, context="load the voice models", panel=self.message_bar)

    def _on_run_progress(self, fraction: float, message: str) -> None:
        verb = "Evaluating" if self._batch[1] == 0 else "Running"
        self.progress.show_progress(fraction, f"{verb} {message} · decode → VAD → denoise → STT → QA → TTS"
                            if message != "done" else "Finishing…")
        self._take_results()

    def _on_work_failed(self, exc: BaseException) -> None:
        self._reporter.report(exc, context="run the voice loop", panel=self.message_bar)

    def _on_run_done(self) -> None:
        added = self._take_results()
        first, given = self._batch
        done = len(self._entries) - first
        job = self._work_job
        cancelled = job is not None and job.outcome == "cancelled"
        self._end_busy(f"Cancelled after {done} of {given} recordings." if cancelled else "")
        logger.info("diagnostics run ended: %d of %d recordings (%d new rows)", done, given, added)
        self.sig_run_finished.emit(done)

    def _on_evaluation_done(self) -> None:
        self._take_results()
        self._end_busy()
        if len(self._entries) > self._batch[0]:
            report = self._entries[-1]
            self.sig_evaluation_finished.emit(report)

    def _on_report_written(self, path: Path) -> None:
        self.last_report_path = Path(path)
        self.evaluation_panel.set_report_note(f"Report written to {path}")
        self.sig_report_written.emit(str(path))
        if not self.url_opener(QUrl.fromLocalFile(str(path))):
            self.evaluation_panel.set_report_note(f"Report written to {path} (no browser could open it)")

    def _on_report_failed(self, exc: BaseException) -> None:
        self.evaluation_panel.set_report_note("")
        self._reporter.report(exc, context="write the HTML report", panel=self.message_bar)

    def _on_results_selection_changed(self, *_: Any) -> None:
        rows = self.results_table.selectionModel().selectedRows()
        if not rows:
            return
        entry = self.results_model.payload(rows[0].row())
        shown = self.result_panel.result if self.detail_stack.currentIndex() == 1 else (
            self.evaluation_panel.report if self.detail_stack.currentIndex() == 2 else None)
        if entry is shown:
            return  # the table was rebuilt around the same selection
        if isinstance(entry, LoopResult):
            self.result_panel.show_result(entry)
            self.detail_stack.setCurrentIndex(1)
        elif isinstance(entry, dict):
            self.evaluation_panel.show_report(entry)
            self.detail_stack.setCurrentIndex(2)

    def _on_controls_open_requested(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open recordings", str(Path.home()), work.AUDIO_FILTER)
        if paths:
            self.run_files(paths)

    def _on_controls_evaluate_requested(self) -> None:
        default = work.default_manifest()
        path, _ = QFileDialog.getOpenFileName(self, "Evaluate a test set", str(default or Path.home()),
                                              "Test-set manifests (*.jsonl);;All files (*)")
        if path:
            self.evaluate(path)

    def _on_progress_cancel_requested(self) -> None:
        self.cancel()

    def _on_result_panel_play_input_requested(self, path: str) -> None:
        self.player.play(Path(path))

    def _on_result_panel_play_answer_requested(self) -> None:
        result = self.result_panel.result
        if result is None or result.answer_audio is None or self._closed:
            return
        target = Path(self._tmp.name) / f"answer-{id(result):x}.wav"
        try:
            if not target.exists():
                work.write_wav(target, result.answer_audio, 16000)
        except OSError as exc:
            self.result_panel.set_play_note(f"Cannot write the answer's audio: {exc}")
            return
        self.player.play(target)

    def _on_evaluation_panel_open_report_requested(self) -> None:
        self.open_report()

    # -- helpers ------------------------------------------------------------------------
    def _take_results(self) -> int:
        new = work.drain(self._sink)
        if not new:
            return 0
        had_batch_rows = len(self._entries) > self._batch[0]
        self._entries.extend(new)
        self._rebuild_table()
        if not had_batch_rows:
            self.select_row(self._batch[0])
        return len(new)

    def _rebuild_table(self) -> None:
        selected = self.results_table.selectionModel().selectedRows()
        current = selected[0].row() if selected else None
        rows, counts = result_rows(self._entries)
        self.results_model.set_rows(rows, list(self._entries))
        self.tiles["all"].set_value(len(self.results))
        for word, n in counts.items():
            self.tiles[word].set_value(n)
        if current is not None and current < len(rows):
            self.select_row(current)
