"""Widgets of the Diagnostics page: a read-only table model over row snapshots, the per-stage
timing chart, verdict tiles and a playback helper that never crashes without a sound device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt, QUrl, Signal
from PySide6.QtGui import QColor

from console.pages.diagnostics_work import END_TO_END_BUDGET_MS, SERVER_BUDGET_MS, VERDICTS
from console.theme import Theme
from console.widgets import Tile
from inference_core.pipeline import STAGES

logger = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, an optional ``#rrggbb`` text colour and tooltip."""

    text: str
    color: str | None = None
    tooltip: str | None = None


class RowsModel(QAbstractTableModel):
    """A read-only table over an immutable snapshot of rows, swapped in whole.

    Parameters
    ----------
    headers
        Column titles, with units (e.g. ``"Loop ms"``).
    right_aligned
        Indices of the columns holding figures (right-aligned).

    Notes
    -----
    Each row may carry a payload (the domain object), returned under ``Qt.UserRole``.
    """

    def __init__(self, headers: Sequence[str], right_aligned: Sequence[int] = (),
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._headers = tuple(headers)
        self._right = frozenset(right_aligned)
        self._rows: tuple[tuple[Cell, ...], ...] = ()
        self._payloads: tuple[Any, ...] = ()

    def set_rows(self, rows: Sequence[Sequence[Cell | str]], payloads: Sequence[Any] | None = None) -> None:
        """Replace every row (``str`` cells are plain text)."""
        self.beginResetModel()
        self._rows = tuple(tuple(c if isinstance(c, Cell) else Cell(str(c)) for c in row) for row in rows)
        self._payloads = tuple(payloads) if payloads is not None else (None,) * len(self._rows)
        self.endResetModel()

    def text(self, row: int, column: int) -> str:
        """The text of a cell."""
        return self._rows[row][column].text

    def payload(self, row: int) -> Any:
        """The domain object of ``row`` (None if out of range)."""
        return self._payloads[row] if 0 <= row < len(self._payloads) else None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._headers)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self._headers[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.TextAlignmentRole:
            right = section in self._right
            return int((Qt.AlignmentFlag.AlignRight if right else Qt.AlignmentFlag.AlignLeft)
                       | Qt.AlignmentFlag.AlignVCenter)
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        cell = self._rows[index.row()][index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return cell.text
        if role == Qt.ItemDataRole.ForegroundRole and cell.color:
            return QColor(cell.color)
        if role == Qt.ItemDataRole.ToolTipRole:
            return cell.tooltip or cell.text
        if role == Qt.ItemDataRole.TextAlignmentRole:
            horizontal = (Qt.AlignmentFlag.AlignRight if index.column() in self._right
                          else Qt.AlignmentFlag.AlignLeft)
            return int(horizontal | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.UserRole:
            return self._payloads[index.row()]
        return None


def fit_height(table: Any) -> None:
    """Make a ``QTableView`` exactly as tall as its header and rows (no vertical scroll bar)."""
    height = table.horizontalHeader().height() + 2 * table.frameWidth()
    height += sum(table.rowHeight(i) for i in range(table.model().rowCount()))
    table.setFixedHeight(height)


class VerdictTile(Tile):
    """A key-figure tile counting recordings of one verdict (``"pass"``, ``"fail"``,
    ``"error"``) or all of them (``"all"``), with the verdict's glyph and colour."""

    def colour_and_glyph(self, theme: Theme) -> tuple[str, str]:
        """The verdict's colour and glyph (the accent for ``all``)."""
        if self.key in VERDICTS:
            _, glyph, color = VERDICTS[self.key]
            return color, glyph
        return theme.accent, "■"


class StageChart(pg.PlotWidget):
    """Horizontal bars: time per loop stage (:data:`STAGES`, top to bottom) in ms, with dashed
    vertical lines at the 2,000 ms server budget and the 3,000 ms end-to-end budget."""

    def __init__(self, theme: Theme, parent: Any = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(180)
        self.setMaximumHeight(210)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.setMenuEnabled(False)
        item = self.getPlotItem()
        item.setLabel("bottom", "ms")
        item.getAxis("bottom").enableAutoSIPrefix(False)
        item.showGrid(x=True, alpha=0.2)
        n = len(STAGES)
        self._ys = np.arange(n)[::-1].astype(float)  # decode at the top
        item.getAxis("left").setTicks([[(float(y), s) for y, s in zip(self._ys, STAGES, strict=True)]])
        item.getAxis("left").setStyle(hideOverlappingLabels=False)
        item.getAxis("left").setWidth(64)  # room for "denoise" before the first paint
        self.bars = pg.BarGraphItem(x0=np.zeros(n), y=self._ys, width=np.zeros(n), height=0.62)
        self.addItem(self.bars)
        self.value_labels = [pg.TextItem(anchor=(0, 0.5)) for _ in STAGES]
        for label, y in zip(self.value_labels, self._ys, strict=True):
            label.setPos(0, y)
            self.addItem(label)
        self.budget_lines: dict[str, pg.InfiniteLine] = {}
        for key, pos, text, at in (("server", SERVER_BUDGET_MS, "server budget 2,000 ms ", 0.94),
                                   ("end_to_end", END_TO_END_BUDGET_MS, "end-to-end budget 3,000 ms ", 0.80)):
            line = pg.InfiniteLine(pos=pos, angle=90, movable=False, label=text,
                                   labelOpts={"position": at, "anchors": [(1, 0.5), (1, 0.5)]})
            self.budget_lines[key] = line
            self.addItem(line)
        self.setYRange(-0.6, n - 0.4, padding=0)
        self.set_timings([0.0] * n)
        self.apply_theme(theme)

    def bar_count(self) -> int:
        """Bars drawn (one per stage)."""
        return len(self.bars.opts["width"])

    def timings(self) -> list[float]:
        """The ms shown per stage, in :data:`STAGES` order."""
        return [float(w) for w in self.bars.opts["width"]]

    def set_timings(self, values_ms: Sequence[float]) -> None:
        """Show ``values_ms`` (one per stage, ms)."""
        widths = np.asarray([max(0.0, float(v)) for v in values_ms])
        self.bars.setOpts(width=widths)
        top = max(END_TO_END_BUDGET_MS * 1.1, float(widths.max(initial=0.0)) * 1.18)
        for label, w, y in zip(self.value_labels, widths, self._ys, strict=True):
            label.setText(f"{w:,.0f} ms")
            label.setPos(w + top * 0.008, y)
        self.setXRange(0, top, padding=0)

    def apply_theme(self, theme: Theme) -> None:
        """Recolour axes, bars, labels and budget lines for ``theme``."""
        theme.style_plot(self)
        self.bars.setOpts(brush=theme.brush("accent"), pen=theme.pen("accent"))
        for label in self.value_labels:
            label.setColor(theme.qcolor("text"))
        for key, line in self.budget_lines.items():
            color = "#D55E00" if key == "end_to_end" else theme.warning
            line.setPen(pg.mkPen(color=color, width=1.5, style=Qt.PenStyle.DashLine))
            line.label.setColor(QColor(color))


class AudioPlayer(QObject):
    """Plays WAV files with QtMultimedia (``QMediaPlayer`` + ``QAudioOutput``).

    Without a sound output (servers, CI) or when the backend fails, nothing is raised:
    ``sig_note`` says why it cannot play. The player is created on first use.
    """

    sig_note = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._player: Any = None
        self._output: Any = None

    def play(self, path: Path) -> bool:
        """Start playing ``path``; False (and a note) when it cannot."""
        try:
            from PySide6.QtMultimedia import QAudioOutput, QMediaDevices, QMediaPlayer

            if not QMediaDevices.audioOutputs():
                self.sig_note.emit(f"No sound output device on this computer; cannot play. "
                                   f"The file is {path}")
                return False
            if self._player is None:
                self._player = QMediaPlayer(self)
                self._output = QAudioOutput(self)
                self._player.setAudioOutput(self._output)
                self._player.errorOccurred.connect(self._on_player_error_occurred)
            self._player.stop()
            self._player.setSource(QUrl.fromLocalFile(str(path)))
            self._player.play()
        except Exception as exc:  # playback is a convenience: it must never take the page down
            logger.warning("cannot play %s: %r", path, exc)
            self.sig_note.emit(f"Cannot play {Path(path).name}: {exc}")
            return False
        self.sig_note.emit(f"Playing {Path(path).name}…")
        return True

    def _on_player_error_occurred(self, _error: Any, message: str) -> None:
        self.sig_note.emit(f"Playback failed: {message or 'the audio backend refused the file'}")

    def stop(self) -> None:
        """Stop playback and release the player."""
        if self._player is not None:
            try:
                self._player.stop()
                self._player.setSource(QUrl())
            except Exception:  # pragma: no cover - backend quirks at shutdown
                logger.debug("stopping the player failed", exc_info=True)
