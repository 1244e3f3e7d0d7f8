"""A table model over an immutable snapshot of plain records (dicts), shared by the list pages
(Audit, Models, Rollouts, Tickets, Feedback).

Columns say how a value is shown (``fmt``), whether it is a number (right-aligned) and how its
cell is coloured (``style``: value → :class:`console.theme.StatusStyle`, so a state is a glyph, a
word and a colour, never colour alone). ``Qt.UserRole`` gives the row's dict; ``Qt.EditRole`` the
raw value, which :class:`RecordSortProxy` sorts by. Snapshots are built off the GUI thread and
swapped in with :meth:`RecordTableModel.set_rows` (``beginResetModel``/``endResetModel``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor

from console.theme import StatusStyle

logger = logging.getLogger(__name__)

_INDEX = QModelIndex()


@dataclass(frozen=True)
class RecordColumn:
    """One column: the record key, its header (with the unit), how to show a value."""

    key: str
    header: str
    fmt: Callable[[Any], str] | None = None
    numeric: bool = False
    style: Callable[[Any], StatusStyle | None] | None = None
    tooltip: Callable[[dict[str, Any]], str] | None = None

    def text(self, value: Any) -> str:
        if value is None:
            return "—"
        if self.fmt is not None:
            return self.fmt(value)
        style = self.style(value) if self.style else None
        if style is not None:
            return style.label
        return str(value)


class RecordTableModel(QAbstractTableModel):
    """Rows of dicts under :class:`RecordColumn` s."""

    def __init__(self, columns: Sequence[RecordColumn], parent: Any = None) -> None:
        super().__init__(parent)
        self.columns = tuple(columns)
        self._rows: tuple[dict[str, Any], ...] = ()

    def set_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Swap in a new snapshot (GUI thread)."""
        self.beginResetModel()
        self._rows = tuple(rows)
        self.endResetModel()

    @property
    def rows(self) -> tuple[dict[str, Any], ...]:
        return self._rows

    def row_dict(self, row: int | None) -> dict[str, Any] | None:
        return self._rows[row] if row is not None and 0 <= row < len(self._rows) else None

    def row_of(self, key: str, value: Any) -> int | None:
        return next((i for i, r in enumerate(self._rows) if r.get(key) == value), None)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _INDEX) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = _INDEX) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section].header
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        col = self.columns[index.column()]
        value = row.get(col.key)
        if role == Qt.ItemDataRole.DisplayRole:
            return col.text(value)
        if role == Qt.ItemDataRole.UserRole:
            return row
        if role == Qt.ItemDataRole.EditRole:
            return value
        if role == Qt.ItemDataRole.TextAlignmentRole and col.numeric:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and col.style is not None:
            style = col.style(value)
            return QColor(style.color) if style is not None else None
        if role == Qt.ItemDataRole.ToolTipRole and col.tooltip is not None:
            return col.tooltip(row)
        return None


class RecordSortProxy(QSortFilterProxyModel):
    """Sorts by the raw values (``EditRole``), None last; filters on a case-insensitive substring
    of the displayed text of every column."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setSortRole(Qt.ItemDataRole.EditRole)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)

    def lessThan(self, left: QModelIndex | QPersistentModelIndex,  # noqa: N802
                 right: QModelIndex | QPersistentModelIndex) -> bool:
        a, b = left.data(Qt.ItemDataRole.EditRole), right.data(Qt.ItemDataRole.EditRole)
        if a is None or b is None:
            return a is not None and b is None
        try:
            return bool(a < b)
        except TypeError:
            return str(a) < str(b)


def export_csv(path: Path, columns: Sequence[RecordColumn], rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as CSV with the columns' headers and shown texts; returns the row count.

    Raises
    ------
    OSError
        If the file cannot be written (the caller shows it in the page's message bar).
    """
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([c.header for c in columns])
        for row in rows:
            writer.writerow(["" if row.get(c.key) is None else c.text(row.get(c.key)) for c in columns])
            n += 1
    logger.info("exported %d rows to %s", n, path)
    return n
