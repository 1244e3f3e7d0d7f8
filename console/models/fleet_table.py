"""The fleet table: a ``QAbstractTableModel`` over an immutable pandas snapshot.

The snapshot (``fleet.queries.fleet_snapshot``) is built off the GUI thread and swapped in with
``beginResetModel``/``endResetModel``. Filtering and sorting happen in pandas
(:func:`filter_frame`, :func:`sort_frame`); the model holds the filtered, sorted frame and its
columns as numpy arrays. The unit's serial is under ``Qt.UserRole`` (after Spyder's
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
from console.theme import E2E_SLO_MS, STATUS_STYLES, Theme, status_style
from console.widgets import STATUS_ROLE
from fleet.queries import SNAPSHOT_WINDOW

logger = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex

#: Sort order of the status column, most urgent first.
STATUS_RANK: dict[str, int] = {"offline": 0, "degraded": 1, "updating": 2, "unknown": 3, "online": 4}

#: Columns searched by the free-text filter.
TEXT_FILTER_COLUMNS: tuple[str, ...] = (
    "serial", "site", "region", "firmware_version", "stt_version", "qa_version", "tts_version")

#: Columns matched by the model-version filter.
VERSION_COLUMNS: tuple[str, ...] = ("stt_version", "qa_version", "tts_version")


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


@dataclass(frozen=True)
class FleetFilter:
    """What the filter bar asks for; empty strings mean "any"."""

    text: str = ""
    status: str = ""
    site: str = ""
    version: str = ""


def filter_frame(df: pd.DataFrame, flt: FleetFilter) -> pd.DataFrame:
    """Rows of ``df`` matching ``flt``: case-insensitive substring over
    :data:`TEXT_FILTER_COLUMNS`, exact status and site, and a model version equal to any of
    :data:`VERSION_COLUMNS`."""
    mask = np.ones(len(df), dtype=bool)
    text = flt.text.strip().lower()
    if text:
        hit = np.zeros(len(df), dtype=bool)
        for col in TEXT_FILTER_COLUMNS:
            if col in df:
                values = df[col].astype(object).where(df[col].notna(), "").astype(str).str.lower()
                hit |= values.str.contains(text, regex=False).to_numpy(dtype=bool)
        mask &= hit
    if flt.status:
        mask &= (df["status"] == flt.status).to_numpy(dtype=bool)
    if flt.site:
        mask &= (df["site"] == flt.site).to_numpy(dtype=bool)
    if flt.version:
        hit = np.zeros(len(df), dtype=bool)
        for col in VERSION_COLUMNS:
            hit |= (df[col] == flt.version).fillna(False).to_numpy(dtype=bool)
        mask &= hit
    return df.loc[mask]


def sort_frame(df: pd.DataFrame, key: str | None, ascending: bool = True) -> pd.DataFrame:
    """``df`` sorted by column ``key`` (None: by serial); missing values always last.

    Numbers and times sort by value, text case-insensitively, status most urgent first
    (:data:`STATUS_RANK`). Ties keep serial order (a stable sort after sorting by serial).
    """
    base = df.sort_values("serial", kind="mergesort") if "serial" in df else df
    if key is None or key not in base:
        return base
    col = base[key]
    if key == "status":
        sort_key = col.map(lambda s: STATUS_RANK.get(s, len(STATUS_RANK))).astype(float)
    elif pd.api.types.is_numeric_dtype(col) or pd.api.types.is_datetime64_any_dtype(col):
        sort_key = col
    else:
        sort_key = col.astype(object).where(col.notna(), None).map(
            lambda v: v.lower() if isinstance(v, str) else v)
    order = sort_key.sort_values(ascending=ascending, kind="mergesort", na_position="last").index
    return base.loc[order]


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
        self._snapshot = pd.DataFrame(columns=[c.key for c in self._columns] + ["last_poll_error"])
        self._filter = FleetFilter()
        self._sort_key: str | None = "status"  # most urgent first until the operator sorts
        self._ascending = True
        self._now: datetime | None = None
        self._view = self._snapshot
        self._arrays: dict[str, np.ndarray] = {}
        self._row_of: dict[str, int] = {}
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
        return self._snapshot

    @property
    def frame(self) -> pd.DataFrame:
        """The rows shown: the snapshot filtered and sorted."""
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
        return self._row_of.get(serial)

    def serial_at(self, row: int) -> str | None:
        """Serial of the unit on ``row``."""
        if 0 <= row < len(self._view):
            return str(self._arrays["serial"][row])
        return None

    def set_snapshot(self, df: pd.DataFrame, now: datetime | None = None) -> None:
        """Swap in a new snapshot (rows of ``fleet_snapshot``); keeps filter and sort.

        ``now`` (aware) decides whether times show their date.
        """
        self._snapshot = df
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

    def set_theme(self, theme: Theme) -> None:
        """Recolour with ``theme``."""
        self._theme = theme
        if self.rowCount():
            self.dataChanged.emit(self.index(0, 0),
                                  self.index(self.rowCount() - 1, self.columnCount() - 1))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Re-sort the shown rows in pandas by ``column`` (missing values last)."""
        if not 0 <= column < len(self._columns):
            return
        self._sort_key = self._columns[column].key
        self._ascending = order == Qt.SortOrder.AscendingOrder
        self._apply()

    # -- internals ----------------------------------------------------------------------
    def _apply(self) -> None:
        view = sort_frame(filter_frame(self._snapshot, self._filter), self._sort_key,
                          self._ascending).reset_index(drop=True)
        self.beginResetModel()
        self._view = view
        keys = {c.key for c in self._columns} | {"last_poll_error"}
        self._arrays = {k: view[k].to_numpy(dtype=object) for k in keys if k in view}
        self._row_of = {str(s): i for i, s in enumerate(self._arrays.get("serial", []))}
        self.endResetModel()

    # -- Qt model API -------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._view)

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
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = index.row()
        col = self._columns[index.column()]
        if not 0 <= row < len(self._view):
            return None
        value = self._arrays[col.key][row]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(col, value)
        if role == Qt.ItemDataRole.UserRole:
            return str(self._arrays["serial"][row])
        if role == Qt.ItemDataRole.EditRole:
            return value
        if role == STATUS_ROLE:
            return value if col.kind == "status" else None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if col.kind == "number":
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
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
        error = self._arrays.get("last_poll_error", np.array([None] * (row + 1)))[row]
        if isinstance(error, str) and error:
            parts.append(f"Last poll error: {error}")
        text = "\n".join(p for p in parts if p and p != MISSING)
        return text or None
