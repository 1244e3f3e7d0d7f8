"""The Fleet page's detail panel: one unit's inventory, latest health figures (with units),
per-stage p95 latency over the last hour (numbers and a pyqtgraph bar chart) and its last poll
error. Fed a ``fleet.queries.UnitDetail`` built off the GUI thread."""

from __future__ import annotations

import html
import logging
from datetime import datetime
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from console.formatting import (
    MISSING,
    format_age,
    format_local_time,
    format_number,
    format_text,
    is_missing,
)
from console.theme import STATUS_STYLES, Theme
from console.widgets import StatusPill, field_grid, section_title
from fleet.models import STAGES

logger = logging.getLogger(__name__)

#: (key, label) of the inventory rows.
INVENTORY_FIELDS: tuple[tuple[str, str], ...] = (
    ("site", "Site"), ("hardware", "Hardware"), ("timezone", "Time zone"), ("models", "Models"),
    ("ssh", "SSH"), ("consent", "Consents to"), ("tags", "Tags"), ("clock_skew_s", "Clock skew"),
)

#: (key, label, decimals, unit) of the latest-heartbeat figures.
HEALTH_FIELDS: tuple[tuple[str, str, int, str], ...] = (
    ("cpu_pct", "CPU", 1, "%"), ("temp_c", "Temp", 1, "°C"),
    ("mem_pct", "Memory", 1, "%"), ("disk_free_mb", "Disk free", 0, "MiB"),
    ("mic_noise_dbfs", "Mic noise", 1, "dBFS"), ("wifi_rssi_dbm", "Wi-Fi", 0, "dBm"),
    ("wake_false_accepts_per_h", "False wakes", 1, "/h"), ("uptime_s", "Uptime", 0, ""),
    ("requests", "Requests", 0, ""), ("errors", "Errors", 0, ""),
)


class FleetDetailPanel(QFrame):
    """Detail of the selected unit.

    Call :meth:`show_detail` with a ``UnitDetail`` (or None: the unit is gone) and
    :meth:`show_empty` when nothing is selected. :meth:`field_text` reads a shown value.
    """

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("detailPanel")
        self.setMinimumWidth(340)
        self._theme = theme
        self._values: dict[str, QLabel] = {}
        self.serial: str | None = None

        self._stack = QStackedWidget()
        self._empty = QLabel("Select a unit in the table to see its inventory, latest health "
                             "figures and per-stage latency.")
        self._empty.setObjectName("muted")
        self._empty.setWordWrap(True)
        self._empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._stack.addWidget(self._empty)

        content = QWidget()
        col = QVBoxLayout(content)
        col.setContentsMargins(14, 12, 14, 12)
        col.setSpacing(6)
        head = QHBoxLayout()
        self._serial = QLabel()
        self._serial.setTextFormat(Qt.TextFormat.PlainText)
        self._serial.setObjectName("detailSerial")
        self._serial.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._pill = StatusPill()
        head.addWidget(self._serial)
        head.addStretch(1)
        head.addWidget(self._pill)
        col.addLayout(head)

        col.addWidget(section_title("Inventory"))
        col.addLayout(self._grid([(k, lbl) for k, lbl in INVENTORY_FIELDS], pairs_per_row=1))
        self._health_title = section_title("Latest heartbeat")
        col.addWidget(self._health_title)
        col.addLayout(self._grid([(k, lbl) for k, lbl, _, _ in HEALTH_FIELDS], pairs_per_row=2))
        col.addWidget(section_title("p95 latency by stage, last hour (ms)"))
        col.addLayout(self._grid([(f"p95_{s}", s) for s in STAGES], pairs_per_row=2))
        self._plot = pg.PlotWidget()
        self._plot.setMinimumHeight(130)
        self._plot.setMaximumHeight(160)
        self._plot.setMouseEnabled(x=False, y=False)
        self._plot.hideButtons()
        self._plot.setMenuEnabled(False)
        self._plot.getPlotItem().setLabel("left", "p95 (ms)")
        self._plot.getPlotItem().getAxis("left").enableAutoSIPrefix(False)
        bottom = self._plot.getPlotItem().getAxis("bottom")
        bottom.setTicks([list(enumerate(STAGES))])
        bottom.setStyle(hideOverlappingLabels=False)
        self._plot.getPlotItem().showGrid(y=True, alpha=0.25)
        self._bars = pg.BarGraphItem(x=np.arange(len(STAGES)), height=np.zeros(len(STAGES)),
                                     width=0.6)
        self._plot.addItem(self._bars)
        self._plot.setXRange(-0.6, len(STAGES) - 0.4, padding=0)
        col.addWidget(self._plot)
        col.addWidget(section_title("Last poll"))
        self._poll = QLabel()
        self._poll.setTextFormat(Qt.TextFormat.RichText)
        self._poll.setWordWrap(True)
        self._poll.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        col.addWidget(self._poll)
        col.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        self._stack.addWidget(scroll)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._stack)
        self.apply_theme(theme)
        self.show_empty()

    # -- building -----------------------------------------------------------------------
    def _grid(self, fields, pairs_per_row: int) -> QGridLayout:
        return field_grid(fields, pairs_per_row, self._values)

    # -- public API ---------------------------------------------------------------------
    def field_text(self, key: str) -> str:
        """The text shown for ``key`` (an inventory key, a heartbeat figure, ``p95_<stage>``,
        ``"serial"``, ``"status"`` or ``"last_poll"``).

        Raises
        ------
        KeyError
            For a key the panel does not show.
        """
        if key == "serial":
            return self._serial.text()
        if key == "status":
            return self._pill.text() if self._pill.isVisible() or self._pill.text() else ""
        if key == "last_poll":
            return self._poll.text()
        return self._values[key].text()

    @property
    def is_empty(self) -> bool:
        """True while no unit is shown."""
        return self._stack.currentIndex() == 0

    def show_empty(self, message: str | None = None) -> None:
        """Show the "select a unit" hint (or ``message``)."""
        self.serial = None
        if message:
            self._empty.setText(message)
        self._stack.setCurrentIndex(0)

    def show_detail(self, detail: Any, now: datetime) -> None:
        """Show a ``fleet.queries.UnitDetail``; None shows that the unit no longer exists."""
        if detail is None:
            self.show_empty("This unit is no longer in the inventory.")
            return
        self.serial = detail.serial
        inv = dict(detail.inventory)
        self._serial.setText(detail.serial)
        self._pill.set_status(detail.status)
        site, region = inv.get("site") or MISSING, inv.get("region")
        inv["site"] = f"{site} ({region})" if region else site
        inv["hardware"] = (f"{format_text(inv.get('hardware_rev'))} · firmware "
                           f"{format_text(inv.get('firmware_version'))}")
        inv["models"] = " · ".join(format_text(inv.get(f"{k}_version")) for k in ("stt", "qa", "tts"))
        inv["ssh"] = inv.get("ssh") or "no SSH access"
        consents = [name for key, name in (("consent_recordings", "recordings"),
                                           ("consent_feedback_text", "feedback text"))
                    if inv.get(key)]
        inv["consent"] = ", ".join(consents) or "nothing"
        inv["tags"] = ", ".join(inv.get("tags") or []) or MISSING
        skew = inv.get("clock_skew_s")
        inv["clock_skew_s"] = MISSING if is_missing(skew) else format_number(skew, 1, "s")
        for key, _ in INVENTORY_FIELDS:
            self._values[key].setText(format_text(inv.get(key)))

        latest = detail.latest or {}
        received = latest.get("received_at")
        if received is not None and not is_missing(received):
            age = (now - received).total_seconds() if hasattr(received, "tzinfo") else None
            self._health_title.setText(
                f"HEARTBEAT {format_local_time(received, now=now, zone=True)} · "
                f"{format_age(age)} ago")
        else:
            self._health_title.setText("HEARTBEAT · none in the last hour")
        for key, _, decimals, unit in HEALTH_FIELDS:
            value = latest.get(key)
            if key == "uptime_s":
                text = format_age(value) if not is_missing(value) else MISSING
            else:
                text = format_number(value, decimals, unit)
            self._values[key].setText(text)

        heights = []
        for stage in STAGES:
            value = detail.stage_p95_ms.get(stage)
            self._values[f"p95_{stage}"].setText(format_number(value, 0, "ms"))
            heights.append(0.0 if value is None else float(value))
        self._bars.setOpts(height=np.asarray(heights))
        self._plot.getPlotItem().enableAutoRange(axis="y")
        self._plot.setVisible(bool(detail.stage_p95_ms))  # no requests: the "—" say it

        error = inv.get("last_poll_error")
        if error:
            self._poll.setObjectName("warning")
            self._poll.setText(f"▲ Failed: {html.escape(str(error))}")
        else:
            self._poll.setObjectName("")
            ok = STATUS_STYLES["online"]
            self._poll.setText(f'<span style="color:{ok.color}">{ok.glyph}</span> Succeeded'
                               if inv.get("last_heartbeat_at") else "No poll yet")
        self._poll.style().unpolish(self._poll)
        self._poll.style().polish(self._poll)
        self._stack.setCurrentIndex(1)

    def apply_theme(self, theme: Theme) -> None:
        """Recolour the chart with ``theme``."""
        self._theme = theme
        theme.style_plot(self._plot)
        self._bars.setOpts(brush=theme.brush("accent"), pen=theme.pen("accent"))
