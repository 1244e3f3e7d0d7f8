"""The fleet table: a ``QAbstractTableModel`` over an immutable pandas snapshot.

The snapshot (``fleet.queries.fleet_snapshot``) is built off the GUI thread and swapped in with
``beginResetModel``/``endResetModel``. Filtering and sorting happen in numpy over a
:class:`~console.models.snapshot_index.SnapshotIndex` built with the snapshot on the worker
thread (codes, sort keys; no per-row Python on the GUI thread); the model holds the shown rows'
numbers and reads their cells lazily. The unit's serial is under ``Qt.UserRole`` (after Spyder's
``DataFrameModel`` and Anki's browser table model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from console.formatting import (
    MISSING,
    format_full_time,
    format_local_time,
    format_number,
    format_text,
    local_zone_name,
)
from console.models.snapshot_index import (  # noqa: F401 (re-exported)
    FLAPPING,
    STATUS_RANK,
    TEXT_FILTER_COLUMNS,
    VERSION_COLUMNS,
    FleetFilter,
    SnapshotIndex,
    ViewColumn,
    prepare_snapshot,
)
from console.theme import E2E_SLO_MS, STATUS_STYLES, Theme, status_style
from console.widgets import STATUS_ROLE
from fleet.queries import SNAPSHOT_WINDOW
from fleet.unit_states import format_duration

logger = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex

# Roles and answers as plain ints: data() runs a few thousand times per repaint on the GUI thread
# and building Qt enums on every call showed in profiles (benchmarks/fleet_table_100k.py).
_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_USER = int(Qt.ItemDataRole.UserRole)
_EDIT = int(Qt.ItemDataRole.EditRole)
_ALIGNMENT = int(Qt.ItemDataRole.TextAlignmentRole)
_FOREGROUND = int(Qt.ItemDataRole.ForegroundRole)
_BACKGROUND = int(Qt.ItemDataRole.BackgroundRole)
_FONT = int(Qt.ItemDataRole.FontRole)
_TOOLTIP = int(Qt.ItemDataRole.ToolTipRole)
_STATUS = int(STATUS_ROLE)
#: Roles data() answers; the view also asks for others (decoration, check state…) per cell.
_ROLES = frozenset({_DISPLAY, _USER, _EDIT, _ALIGNMENT, _FOREGROUND, _BACKGROUND, _FONT, _TOOLTIP, _STATUS})
_ALIGN_NUMBER = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
_ALIGN_TEXT = int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
_CELL_FLAGS = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

#: Text added to the status cell of a flapping unit (fleet.unit_states), e.g. "● online ⇅ flapping".
FLAPPING_MARK = "⇅ flapping"
#: Snapshot columns the status cell's text and tooltip read besides the status.
_STATE_EXTRAS = ("flapping", "state_change_pct", "offline_after_s")


@dataclass(frozen=True)
class Column:
    """One table column: snapshot key, header (with its unit), kind and decimals.

    ``kind`` is ``"text"``, ``"status"``, ``"time"`` or ``"number"``.
    """

    key: str
    header: str
    kind: str = "text"
    decimals: int = 0
    tooltip: str = ""


def fleet_columns(zone: str | None = None) -> tuple[Column, ...]:
    """The fleet table's columns; the heartbeat header names the viewer's zone (``zone``)."""
    zone = zone or local_zone_name()
    window_min = int(SNAPSHOT_WINDOW.total_seconds() // 60)
    return (
        Column("serial", "Serial"),
        Column("status", "Status", "status"),
        Column("site", "Site"),
        Column("last_heartbeat_at", f"Last heartbeat ({zone})", "time"),
        Column("e2e_p95_ms", f"p95 e2e ms ({window_min} min)", "number", 0,
               f"95th percentile end-to-end latency of the requests of the last {window_min} minutes, ms "
               f"(SLO {E2E_SLO_MS:,.0f} ms)"),
        Column("cpu_pct", "CPU %", "number", 1, "CPU use, percent of all cores"),
        Column("temp_c", "Temp °C", "number", 1, "SoC temperature, degrees Celsius"),
        Column("mic_noise_dbfs", "Noise dBFS", "number", 1,
               "Microphone noise floor while idle, dBFS (a quiet room is about −60)"),
        Column("wifi_rssi_dbm", "RSSI dBm", "number", 0, "Wi-Fi signal strength, dBm"),
        Column("errors", f"Errors ({window_min} min)", "number", 0, f"Failed requests in the last {window_min} minutes"),
        Column("requests", f"Requests ({window_min} min)", "number", 0, f"Voice requests in the last {window_min} minutes"),
        Column("mem_pct", "Mem %", "number", 1, "Memory in use, percent"),
        Column("firmware_version", "Firmware"),
        Column("stt_version", "STT model"),
        Column("qa_version", "QA model"),
        Column("tts_version", "TTS model"),
    )


def filter_frame(df: pd.DataFrame, flt: FleetFilter) -> pd.DataFrame:
    """Rows of ``df`` matching ``flt``: case-insensitive substring over
    :data:`TEXT_FILTER_COLUMNS`, exact status and site, and a model version equal to any of
    :data:`VERSION_COLUMNS` (:meth:`SnapshotIndex.mask`)."""
    mask = SnapshotIndex(df).mask(flt)
    return df if mask is None else df.loc[mask]


def sort_frame(df: pd.DataFrame, key: str | None, ascending: bool = True) -> pd.DataFrame:
    """``df`` sorted by column ``key`` (None: by serial); missing values always last.

    Numbers and times sort by value, text case-insensitively, status most urgent first
    (:data:`STATUS_RANK`). Ties keep serial order (:meth:`SnapshotIndex.order`).
    """
    return df.iloc[SnapshotIndex(df).order(key, ascending)]


class FleetTableModel(QAbstractTableModel):
    """The fleet table over an immutable snapshot (one row per unit).

    Parameters
    ----------
    theme
        Colours of the status and SLO highlights.

    Notes
    -----
    Roles: ``DisplayRole`` the formatted figure, ``UserRole`` the unit's serial,
    :data:`console.widgets.STATUS_ROLE` the raw status of the status column,
    ``ToolTipRole`` the full time / column meaning plus the last poll error, ``EditRole`` the
    raw value.
    """

    def __init__(self, theme: Theme, parent: Any = None) -> None:
        super().__init__(parent)
        self._theme = theme
        self._columns = fleet_columns()
        self._index = SnapshotIndex(pd.DataFrame(columns=[c.key for c in self._columns] + ["last_poll_error"]))
        self._filter = FleetFilter()
        self._sort_key: str | None = "status"  # most urgent first until the operator sorts
        self._ascending = True
        self._now: datetime | None = None
        self._rows = np.zeros(0, dtype=np.intp)  # snapshot row of each shown row
        self._shown_at: np.ndarray | None = None  # shown row of each snapshot row (-1: hidden), lazy
        self._view: pd.DataFrame | None = None  # the shown rows as a frame, lazy
        self._arrays: dict[str, ViewColumn] = {}
        self._bold = QFont()
        self._bold.setBold(True)
        self._apply()

    # -- public API ---------------------------------------------------------------------
    @property
    def columns(self) -> tuple[Column, ...]:
        """The columns shown."""
        return self._columns

    @property
    def snapshot(self) -> pd.DataFrame:
        """The whole snapshot last set (unfiltered)."""
        return self._index.frame

    @property
    def snapshot_index(self) -> SnapshotIndex:
        """The snapshot last set with its filter and sort structures."""
        return self._index

    @property
    def frame(self) -> pd.DataFrame:
        """The rows shown: the snapshot filtered and sorted (built on first call per change)."""
        if self._view is None:
            self._view = self._index.frame.iloc[self._rows].reset_index(drop=True)
        return self._view

    def column_index(self, key: str) -> int:
        """Position of the column of snapshot key ``key``.

        Raises
        ------
        KeyError
            If no column shows ``key``.
        """
        for i, col in enumerate(self._columns):
            if col.key == key:
                return i
        raise KeyError(f"no fleet table column shows {key!r}")

    def row_of(self, serial: str) -> int | None:
        """Row showing unit ``serial``, or None if it is filtered out or absent."""
        position = self._index.position(serial)
        if position is None:
            return None
        if self._shown_at is None:
            self._shown_at = np.full(self._index.n_rows, -1, dtype=np.intp)
            self._shown_at[self._rows] = np.arange(len(self._rows), dtype=np.intp)
        row = int(self._shown_at[position])
        return None if row < 0 else row

    def serial_at(self, row: int) -> str | None:
        """Serial of the unit on ``row``."""
        if 0 <= row < len(self._rows):
            return str(self._arrays["serial"][row])
        return None

    def set_snapshot(self, df: pd.DataFrame | SnapshotIndex, now: datetime | None = None) -> None:
        """Swap in a new snapshot (rows of ``fleet_snapshot``); keeps filter and sort.

        Pass it as :func:`prepare_snapshot` made it on the worker thread; a bare frame is
        indexed here, on the GUI thread (tens of ms at 100,000 units). ``now`` (aware) decides
        whether times show their date.
        """
        self._index = df if isinstance(df, SnapshotIndex) else prepare_snapshot(df)
        self._now = now
        self._columns = fleet_columns()  # the zone abbreviation may change (DST)
        self._apply()

    def set_filter(self, flt: FleetFilter) -> None:
        """Show only rows matching ``flt``."""
        if flt != self._filter:
            self._filter = flt
            self._apply()

    @property
    def filter(self) -> FleetFilter:
        """The filter in force."""
        return self._filter

    @property
    def view_spec(self) -> tuple[FleetFilter, str | None, bool]:
        """``(filter, sort column key, ascending)`` of the rows shown, for
        :func:`prepare_snapshot`'s ``shown``."""
        return self._filter, self._sort_key, self._ascending

    def set_theme(self, theme: Theme) -> None:
        """Recolour with ``theme``."""
        self._theme = theme
        if self.rowCount():
            self.dataChanged.emit(self.index(0, 0),
                                  self.index(self.rowCount() - 1, self.columnCount() - 1))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Re-sort the shown rows by ``column`` (missing values last; :meth:`SnapshotIndex.order`)."""
        if not 0 <= column < len(self._columns):
            return
        self._sort_key = self._columns[column].key
        self._ascending = order == Qt.SortOrder.AscendingOrder
        self._apply()

    # -- internals ----------------------------------------------------------------------
    def _apply(self) -> None:
        rows = self._index.rows(self._filter, self._sort_key, self._ascending)
        self.beginResetModel()
        self._rows = rows
        self._shown_at = None
        self._view = None
        # every snapshot column, read lazily (the status cell also reads _STATE_EXTRAS)
        self._arrays = self._index.view_columns(rows)
        self.endResetModel()

    # -- Qt model API -------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._columns)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self._columns):
            return None
        col = self._columns[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.header
        if role == Qt.ItemDataRole.ToolTipRole:
            return col.tooltip or col.header
        if role == Qt.ItemDataRole.TextAlignmentRole:
            align = Qt.AlignmentFlag.AlignRight if col.kind == "number" else Qt.AlignmentFlag.AlignLeft
            return int(align | Qt.AlignmentFlag.AlignVCenter)
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return _CELL_FLAGS

    def data(self, index: _Index, role: int = _DISPLAY) -> Any:
        if role not in _ROLES or not index.isValid():
            return None
        row = index.row()
        if not 0 <= row < len(self._rows):
            return None
        col = self._columns[index.column()]
        if role == _ALIGNMENT:
            return _ALIGN_NUMBER if col.kind == "number" else _ALIGN_TEXT
        if role == _USER:
            return str(self._arrays["serial"][row])
        if role == _STATUS and col.kind != "status":
            return None
        if (role == _FONT or role == _BACKGROUND) and col.key != "e2e_p95_ms":  # only the SLO cell
            return None
        value = self._arrays[col.key][row]
        if role == _DISPLAY:
            if col.kind == "status" and self._flapping(row):
                return f"{status_style(value).label} {FLAPPING_MARK}"
            return self._display(col, value)
        if role == _EDIT:
            return value
        if role == _STATUS:
            return value
        if role == Qt.ItemDataRole.ForegroundRole:
            if col.kind == "status":
                return QBrush(QColor(status_style(value).color))
            if col.key == "e2e_p95_ms" and self._over_slo(value):
                return QBrush(QColor(self._theme.error_text))
            return None
        if role == Qt.ItemDataRole.BackgroundRole:
            if col.key == "e2e_p95_ms" and self._over_slo(value):
                tint = QColor(STATUS_STYLES["offline"].color)
                tint.setAlpha(60 if self._theme.is_dark else 40)
                return QBrush(tint)
            return None
        if role == Qt.ItemDataRole.FontRole:
            if col.key == "e2e_p95_ms" and self._over_slo(value):
                return self._bold
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(col, value, row)
        return None

    def _flapping(self, row: int) -> bool:
        flags = self._arrays.get("flapping")
        return flags is not None and bool(flags[row] is True or flags[row] == 1)

    def _state_notes(self, row: int) -> list[str]:
        """Tooltip lines of the status cell: flapping and the unit's offline threshold."""
        notes = []
        pct = self._arrays.get("state_change_pct")
        pct_text = format_number(pct[row], 0) if pct is not None else MISSING
        if self._flapping(row):
            notes.append(f"Flapping: its answers changed in {pct_text} % of the last 21 polls (weighted); "
                         "offline alerts are held back until it falls to 25 %")
        threshold = self._arrays.get("offline_after_s")
        if threshold is not None and isinstance(threshold[row], (int, float)) and threshold[row] > 0:
            notes.append(f"Offline after {format_duration(threshold[row])} without a heartbeat")
        return notes

    @staticmethod
    def _over_slo(value: Any) -> bool:
        try:
            return float(value) > E2E_SLO_MS
        except (TypeError, ValueError):
            return False

    def _display(self, col: Column, value: Any) -> str:
        if col.kind == "status":
            return status_style(value).label
        if col.kind == "time":
            return format_local_time(value, now=self._now)
        if col.kind == "number":
            text = format_number(value, col.decimals)
            if col.key == "e2e_p95_ms" and self._over_slo(value):
                return f"▲ {text}"
            return text
        return format_text(value)

    def _tooltip(self, col: Column, value: Any, row: int) -> str | None:
        parts: list[str] = []
        if col.kind == "time":
            parts.append(f"Last heartbeat {format_full_time(value)}")
        elif col.key == "e2e_p95_ms" and self._over_slo(value):
            parts.append(f"p95 end-to-end {format_number(value)} ms is above the "
                         f"{E2E_SLO_MS:,.0f} ms SLO")
        elif col.key == "e2e_p95_ms" and value != value:
            requests = self._arrays.get("requests")
            if requests is not None and requests[row] == 0:
                parts.append("No voice request in the window: no latency to show")
        elif col.kind == "status":
            parts.append(f"Status: {status_style(value).word}")
            parts.extend(self._state_notes(row))
        error = self._arrays.get("last_poll_error", np.array([None] * (row + 1)))[row]
        if isinstance(error, str) and error:
            parts.append(f"Last poll error: {error}")
        text = "\n".join(p for p in parts if p and p != MISSING)
        return text or None
