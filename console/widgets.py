"""Small widgets shared by the pages: key-figure tiles, the in-panel message bar, the status
cell delegate and section titles."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from PySide6.QtCore import QModelIndex, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QHideEvent, QMouseEvent, QPainter, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from console.theme import ON_STATUS_TEXT, Theme, status_style

logger = logging.getLogger(__name__)


def _mix(a: str, b: str, t: float) -> str:
    """Colour ``a`` moved ``t`` (0–1) of the way to ``b``, as ``#rrggbb``."""
    ca, cb = QColor(a), QColor(b)
    r = round(ca.red() + (cb.red() - ca.red()) * t)
    g = round(ca.green() + (cb.green() - ca.green()) * t)
    bl = round(ca.blue() + (cb.blue() - ca.blue()) * t)
    return QColor(r, g, bl).name()


def section_title(text: str) -> QLabel:
    """A small bold, muted section heading (``QLabel#sectionTitle``)."""
    label = QLabel(text.upper())
    label.setObjectName("sectionTitle")
    label.setWordWrap(True)
    return label


class Tile(QFrame):
    """A key figure at the top of a page: a big number above a glyph and a word.

    The tile's stripe and glyph carry the status colour; the word says the same thing, so the
    colour is never alone. Clicking the tile emits ``sig_clicked(key)``.

    Parameters
    ----------
    key
        What the tile counts, e.g. ``"online"`` or ``"units"``; a unit status picks its style.
    word
        The caption, e.g. ``"Online"``.
    """

    sig_clicked = Signal(str)

    def __init__(self, key: str, word: str, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key = key
        self.word = word
        self.setObjectName("tile")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setMinimumWidth(150)
        self._stripe = QFrame()
        self._stripe.setFixedWidth(6)
        self._value = QLabel("—")
        self._value.setObjectName("tileValue")
        self._caption = QLabel()
        self._caption.setObjectName("tileWord")
        text = QVBoxLayout()
        text.setContentsMargins(12, 8, 12, 8)
        text.setSpacing(0)
        text.addWidget(self._value)
        text.addWidget(self._caption)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(self._stripe)
        row.addLayout(text, 1)
        self.apply_theme(theme)

    def value_text(self) -> str:
        """The number shown."""
        return self._value.text()

    def caption_text(self) -> str:
        """The caption shown, glyph and word (plain text)."""
        return self._plain_caption

    def set_value(self, value: int | None) -> None:
        """Show ``value`` (``"—"`` for None)."""
        self._value.setText("—" if value is None else f"{value:,}")

    def set_text(self, text: str) -> None:
        """Show a short word instead of a number (e.g. ``"✔ intact"``)."""
        self._value.setText(text)

    def colour_and_glyph(self, theme: Theme) -> tuple[str, str]:
        """The tile's colour and glyph: the status palette for unit states, else the accent."""
        if self.key in ("online", "degraded", "updating", "offline", "unknown"):
            style = status_style(self.key)
            return style.color, style.glyph
        return theme.accent, "■"

    def apply_theme(self, theme: Theme) -> None:
        """Recolour the stripe, background tint and glyph for ``theme``."""
        color, glyph = self.colour_and_glyph(theme)
        tint = _mix(theme.surface, color, 0.10 if theme.is_dark else 0.07)
        self.setStyleSheet(f"QFrame#tile {{ background: {tint}; }}")
        self._stripe.setStyleSheet(
            f"background: {color}; border-top-left-radius: 6px; border-bottom-left-radius: 6px;")
        self._plain_caption = f"{glyph} {self.word}"
        self._caption.setText(f'<span style="color:{color}">{glyph}</span>&nbsp;{self.word}')

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt name)
        if event.button() == Qt.MouseButton.LeftButton:
            self.sig_clicked.emit(self.key)
        super().mousePressEvent(event)


class MessageBar(QFrame):
    """An expected failure shown inside the panel that caused it, with a Dismiss button.

    (After Orange's message bars.) Hidden until :meth:`show_message`.
    """

    sig_dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBar")
        self._glyph = QLabel("⚠")
        self._text = QLabel()
        self._text.setTextFormat(Qt.TextFormat.PlainText)  # messages may hold "<...>"
        self._text.setWordWrap(True)
        self._text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        dismiss = QPushButton("Dismiss")
        dismiss.clicked.connect(self._on_dismiss_clicked)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addWidget(self._glyph)
        row.addWidget(self._text, 1)
        row.addWidget(dismiss)
        self.hide()

    def show_message(self, text: str) -> None:
        """Show ``text`` (what went wrong and what to do)."""
        self._text.setText(text)
        self.show()

    def text(self) -> str:
        """The message shown ('' when hidden)."""
        return self._text.text() if not self.isHidden() else ""

    def clear(self) -> None:
        """Hide the bar."""
        self._text.setText("")
        self.hide()

    def _on_dismiss_clicked(self) -> None:
        self.clear()
        self.sig_dismissed.emit()


#: Model role giving a cell's raw unit status (``"online"``, ...) to :class:`StatusDelegate`.
STATUS_ROLE = Qt.ItemDataRole.UserRole + 1


class StatusDelegate(QStyledItemDelegate):
    """Paints a status cell as a pill: the Okabe–Ito colour with the glyph and the word on it."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        status = index.data(STATUS_ROLE)
        if status is None:
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        st = status_style(status)
        fm = QFontMetrics(opt.font)
        text = index.data(Qt.ItemDataRole.DisplayRole) or st.label  # e.g. "● online ⇅ flapping"
        width = fm.horizontalAdvance(text) + 16
        height = min(opt.rect.height() - 6, fm.height() + 4)
        rect = QRectF(opt.rect.left() + 4, opt.rect.center().y() - height / 2 + 1, width, height)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(st.color))
        painter.drawRoundedRect(rect, height / 2, height / 2)
        painter.setPen(QColor(ON_STATUS_TEXT))
        painter.setFont(opt.font)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        size = super().sizeHint(option, index)
        status = index.data(STATUS_ROLE)
        if status is not None:
            fm = QFontMetrics(option.font)
            text = index.data(Qt.ItemDataRole.DisplayRole) or status_style(status).label
            size.setWidth(max(size.width(), fm.horizontalAdvance(text) + 28))
        return size


class StatusPill(QLabel):
    """A status shown as a coloured pill with glyph and word, outside tables."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.set_status(None)

    def set_status(self, status: str | None) -> None:
        """Show ``status`` (None: hidden)."""
        if status is None:
            self.hide()
            return
        st = status_style(status)
        self.setText(st.label)
        self.setStyleSheet(
            f"background: {st.color}; color: {ON_STATUS_TEXT}; border-radius: 10px;"
            " padding: 2px 10px; font-weight: bold;")
        self.show()


def field_grid(fields: Sequence[tuple[str, str]], pairs_per_row: int, values: dict[str, QLabel],
               make_value: Callable[[], QLabel] | None = None) -> QGridLayout:
    """A grid of ``label: value`` pairs, ``pairs_per_row`` to a row; the value labels are stored in
    ``values`` by key (default: selectable plain text, wrapping when one pair per row)."""
    grid = QGridLayout()
    grid.setHorizontalSpacing(10)
    grid.setVerticalSpacing(3)
    for i, (key, label) in enumerate(fields):
        r, c = divmod(i, pairs_per_row)
        name = QLabel(label)
        name.setObjectName("fieldLabel")
        if make_value is not None:
            value = make_value()
        else:
            value = QLabel("—")
            value.setTextFormat(Qt.TextFormat.PlainText)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(pairs_per_row == 1)
        grid.addWidget(name, r, 2 * c, Qt.AlignmentFlag.AlignTop)
        grid.addWidget(value, r, 2 * c + 1)
        values[key] = value
    for c in range(pairs_per_row):
        grid.setColumnStretch(2 * c + 1, 1)
    return grid


class RefreshWhileVisible:
    """Mixin for pages that refresh on ``self.timer`` only while shown (put it before ``QWidget``).

    The page provides ``timer`` (a ``QTimer`` whose timeout calls ``refresh``), ``refresh()``,
    ``_closed`` (False until shut down) and ``_jobs_in_flight()`` (its jobs that
    :meth:`stop_refreshing` cancels).
    """

    def stop_refreshing(self) -> None:
        """Stop the timer and cancel the jobs in flight (results dropped); no refresh after."""
        self._closed = True
        self.timer.stop()
        for job in self._jobs_in_flight():
            if job is not None and not job.is_done:
                job.cancel()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if self._closed:
            return
        if not self.timer.isActive():
            self.timer.start()
        self.refresh()

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 (Qt name)
        super().hideEvent(event)
        self.timer.stop()


def style_table(table: QTableView) -> QTableView:
    """The console's list look: whole-row single selection, alternating rows, no grid, no row
    numbers, resizable columns with the last one stretched. Returns ``table``."""
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setAlternatingRowColors(True)
    table.setShowGrid(False)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    table.horizontalHeader().setStretchLastSection(True)
    return table
