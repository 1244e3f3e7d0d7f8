"""Widgets of the Service flow page: SLO tiles, the stage-breakdown and p95 charts, and the
health-aggregates table model. They only draw what :mod:`console.pages.service_flow` loaded."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from console.formatting import format_number, local_zone_name
from console.theme import STATUS_STYLES, Theme
from fleet.models import STAGES
from fleet.slo import E2E_BUDGET_MS, SERVER_BUDGET_MS, SERVER_STAGES, SloStatus

logger = logging.getLogger(__name__)

#: Okabe–Ito colours per stage (distinct for colour-blind readers; the legend names each one).
STAGE_COLOURS: dict[str, str] = {
    "wake": "#56B4E9", "upload": "#E69F00", "stt": "#009E73", "qa": "#F0E442",
    "tts": "#0072B2", "playback": "#CC79A7", "e2e": "#999999",
}
MET, MISSED = STATUS_STYLES["online"], STATUS_STYLES["offline"]

_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_USER = int(Qt.ItemDataRole.UserRole)
_ALIGNMENT = int(Qt.ItemDataRole.TextAlignmentRole)
_ALIGN_NUMBER = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


def _mix(a: str, b: str, t: float) -> str:
    ca, cb = QColor(a), QColor(b)
    return QColor(round(ca.red() + (cb.red() - ca.red()) * t), round(ca.green() + (cb.green() - ca.green()) * t),
                  round(ca.blue() + (cb.blue() - ca.blue()) * t)).name()


class FigureTile(QFrame):
    """A key figure: a big value, a caption and a detail line; an optional status colour+word."""

    def __init__(self, key: str, caption: str, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key = key
        self.setObjectName("tile")
        self.setMinimumWidth(150)
        self._colour: str | None = None
        self._stripe = QFrame()
        self._stripe.setFixedWidth(6)
        self._value = QLabel("—")
        self._value.setObjectName("tileValue")
        self._caption = QLabel(caption)
        self._caption.setObjectName("tileWord")
        self._detail = QLabel("")
        self._detail.setObjectName("muted")
        col = QVBoxLayout()
        col.setContentsMargins(12, 8, 12, 8)
        col.setSpacing(0)
        for w in (self._value, self._caption, self._detail):
            col.addWidget(w)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(self._stripe)
        row.addLayout(col, 1)
        self.apply_theme(theme)

    def set_figure(self, value: str, detail: str = "", colour: str | None = None) -> None:
        """Show ``value`` with ``detail`` below; ``colour`` tints the stripe (None: accent)."""
        self._value.setText(value)
        self._detail.setText(detail)
        self._colour = colour
        self.apply_theme(self._theme)

    def value_text(self) -> str:
        return self._value.text()

    def detail_text(self) -> str:
        return self._detail.text()

    def text(self) -> str:
        """Everything the tile says (tests, screen readers)."""
        return f"{self._caption.text()} {self._value.text()} {self._detail.text()}"

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        colour = self._colour or theme.accent
        tint = _mix(theme.surface, colour, 0.10 if theme.is_dark else 0.07)
        self.setStyleSheet(f"QFrame#tile {{ background: {tint}; }}")
        self._stripe.setStyleSheet(f"background: {colour}; border-top-left-radius: 6px;"
                                   " border-bottom-left-radius: 6px;")


def slo_tile_figure(status: SloStatus) -> tuple[str, str, str | None]:
    """(value, detail, colour) of an SLO tile: compliance, ✔/✖ word and burn rate."""
    if status.compliance is None:
        return "—", "no requests in the window", None
    style = MET if status.met else MISSED
    word = "✔ met" if status.met else "✖ missed"
    return f"{status.compliance * 100:.2f} %", f"{word} · burn rate {status.burn_rate:.2f}×", style.color


class StageBreakdownChart(pg.PlotWidget):
    """Where the time goes: p50 per stage stacked left to right (end to end row and server row),
    a p95 marker per stage, and the 2,000 ms server / 3,000 ms end-to-end budgets as lines."""

    ROWS = {"e2e": 1.0, "server": 0.0}

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.setMinimumHeight(190)
        self.stage_bars: dict[str, pg.BarGraphItem] = {}
        self.p95_markers: dict[str, pg.ScatterPlotItem] = {}
        self.grew_most: str | None = None
        item = self.getPlotItem()
        item.setMouseEnabled(x=True, y=False)
        item.setMenuEnabled(False)
        item.showGrid(x=True, y=False, alpha=0.2)
        item.setLabel("bottom", "latency (p50 stacked, ◆ p95 of each stage)", units="ms")
        item.getAxis("bottom").enableAutoSIPrefix(False)
        item.getAxis("left").setTicks([[(1.0, "End to end"), (0.0, "Server")]])
        item.setYRange(-0.6, 1.6, padding=0)
        self.legend = item.addLegend(offset=(-10, -10), colCount=2)
        self.budget_lines = [
            pg.InfiniteLine(SERVER_BUDGET_MS, angle=90, label="server budget 2,000 ms",
                            labelOpts={"position": 0.08}),
            pg.InfiniteLine(E2E_BUDGET_MS, angle=90, label="end-to-end budget 3,000 ms",
                            labelOpts={"position": 0.93}),
        ]
        for line in self.budget_lines:
            item.addItem(line)
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        theme.style_plot(self)
        for line in self.budget_lines:
            line.setPen(pg.mkPen(theme.warning_text, width=2, style=Qt.PenStyle.DashLine))
            line.label.setColor(theme.warning_text)
        if getattr(self, "stage_bars", None):
            self._clear_breakdown()  # the next set_breakdown draws them with the theme's pens

    def set_breakdown(self, df: pd.DataFrame) -> None:
        """Draw :func:`fleet.slo.stage_breakdown`'s rows (empty frame: clear).

        While the stages drawn, the ones with a p95 and the stage that grew most stay the same
        (every refresh but the first, as a rule), the bars and markers are moved in place;
        otherwise they and the legend are rebuilt (tens of ms of GUI-thread work per refresh
        before, benchmarks/gui_stall.py).
        """
        layout: list[tuple[str, list[float], list[float], float, float]] = []  # stage, ys, x0s, p50, p95
        grew_most = None
        x_e2e, x_server = 0.0, 0.0
        if df is not None and len(df):
            rows = df.set_index("stage")
            grew = df.loc[df["grew_most"], "stage"]
            grew_most = str(grew.iloc[0]) if len(grew) else None
            for stage in STAGES:
                p50 = float(rows.loc[stage, "p50_ms"]) if stage in rows.index else float("nan")
                p95 = float(rows.loc[stage, "p95_ms"]) if stage in rows.index else float("nan")
                if np.isnan(p50):
                    continue
                ys, x0s = [self.ROWS["e2e"]], [x_e2e]
                if stage in SERVER_STAGES:
                    ys.append(self.ROWS["server"])
                    x0s.append(x_server)
                layout.append((stage, ys, x0s, p50, p95))
                x_e2e += p50
                if stage in SERVER_STAGES:
                    x_server += p50
        shape = ([st for st, *_ in layout], [st for st, _, _, _, p95 in layout if not np.isnan(p95)], grew_most)
        current = (list(self.stage_bars), list(self.p95_markers), self.grew_most)
        if shape != current:
            self._clear_breakdown()
        self.grew_most = grew_most
        item = self.getPlotItem()
        right = E2E_BUDGET_MS
        for stage, ys, x0s, p50, p95 in layout:
            bar = self.stage_bars.get(stage)
            if bar is None:
                highlight = stage == grew_most
                pen = pg.mkPen(self._theme.text, width=3) if highlight else pg.mkPen(self._theme.surface, width=1)
                bar = pg.BarGraphItem(x0=x0s, y=ys, width=[p50] * len(ys), height=0.55,
                                      brush=STAGE_COLOURS[stage], pen=pen)
                item.addItem(bar)
                self.legend.addItem(bar, f"{'▲ ' if highlight else ''}{stage}")
                self.stage_bars[stage] = bar
            else:
                bar.setOpts(x0=x0s, y=ys, width=[p50] * len(ys))
            if np.isnan(p95):
                continue
            xs, ms = [x + p95 for x in x0s], [y + 0.36 for y in ys]
            marker = self.p95_markers.get(stage)
            if marker is None:
                marker = pg.ScatterPlotItem(x=xs, y=ms, symbol="d", size=9, brush=STAGE_COLOURS[stage],
                                            pen=pg.mkPen(self._theme.text))
                item.addItem(marker)
                self.p95_markers[stage] = marker
            else:
                marker.setData(x=xs, y=ms)
            right = max(right, max(xs))
        if layout:
            # room on the right, past the 3,000 ms budget, for the legend
            item.setXRange(0, max(right, x_e2e, E2E_BUDGET_MS) * 1.4, padding=0)

    def _clear_breakdown(self) -> None:
        item = self.getPlotItem()
        for bar in self.stage_bars.values():
            item.removeItem(bar)
        for marker in self.p95_markers.values():
            item.removeItem(marker)
        self.legend.clear()
        self.stage_bars.clear()
        self.p95_markers.clear()


#: Buckets per curve up to which the series chart marks each with a dot (the last hour's 60
#: minutes; a day's 288 five-minute buckets draw as lines only). Curves are 1 px wide: at 2 px,
#: Qt's antialiased wide-pen paths made one repaint of a day's chart ~3× as long (42 vs 14 ms,
#: 1400 × 300 px), and that repaint runs on the GUI thread (benchmarks/gui_stall.py).
SYMBOL_MAX_POINTS = 120


class StageSeriesChart(pg.PlotWidget):
    """p95 latency per stage over time (zoom with the wheel, drag to pan), budgets as lines."""

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        self.zone = local_zone_name()
        axis = pg.DateAxisItem(orientation="bottom")
        super().__init__(parent=parent, axisItems={"bottom": axis})
        self.setMinimumHeight(220)
        item = self.getPlotItem()
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setLabel("left", "p95 latency", units="ms")
        item.getAxis("left").enableAutoSIPrefix(False)
        item.setLabel("bottom", f"time ({self.zone})")
        self.legend = item.addLegend(offset=(10, 5), colCount=4)
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.budget_lines = [pg.InfiniteLine(v, angle=0) for v in (SERVER_BUDGET_MS, E2E_BUDGET_MS)]
        for line in self.budget_lines:
            item.addItem(line)
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        theme.style_plot(self)
        for line in self.budget_lines:
            line.setPen(pg.mkPen(theme.warning_text, width=1, style=Qt.PenStyle.DashLine))

    def set_series(self, df: pd.DataFrame) -> None:
        """Draw ``p95_ms`` per stage of :func:`fleet.slo.stage_p95_series` (``server`` left out).

        Curves of stages already drawn get the new points (``setData``); the curves and the
        legend are rebuilt only when the set of stages changes.
        """
        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if df is not None and len(df):
            for stage in (*STAGES, "e2e"):
                part = df[df["stage"] == stage].sort_values("bucket_start")
                if not len(part):
                    continue
                when = pd.to_datetime(part["bucket_start"], utc=True)
                x = ((when - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
                y = pd.to_numeric(part["p95_ms"], errors="coerce").to_numpy(dtype=float)
                data[stage] = (x, y)
        item = self.getPlotItem()
        if list(data) != list(self.curves):
            for curve in self.curves.values():
                item.removeItem(curve)
            self.curves.clear()
            self.legend.clear()
            for stage, (x, y) in data.items():
                style = Qt.PenStyle.DashLine if stage == "e2e" else Qt.PenStyle.SolidLine
                curve = pg.PlotDataItem(x, y, pen=pg.mkPen(STAGE_COLOURS[stage], width=1, style=style),
                                        symbol=self._symbol(len(x)), symbolSize=4,
                                        symbolBrush=STAGE_COLOURS[stage], symbolPen=None, connect="finite",
                                        name="end to end" if stage == "e2e" else stage)
                item.addItem(curve)
                self.curves[stage] = curve
            item.enableAutoRange()
            return
        for stage, (x, y) in data.items():
            curve = self.curves[stage]
            symbol = self._symbol(len(x))
            if curve.opts["symbol"] != symbol:
                curve.setSymbol(symbol)
            curve.setData(x, y)

    @staticmethod
    def _symbol(points: int) -> str | None:
        """A dot per bucket only while they are few enough to tell apart (:data:`SYMBOL_MAX_POINTS`)."""
        return "o" if points <= SYMBOL_MAX_POINTS else None


#: (column, header, decimals) of the health table; units in the headers.
HEALTH_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("units", "Units", 0), ("online", "● Online", 0), ("degraded", "▲ Degraded", 0),
    ("updating", "⟳ Updating", 0), ("offline", "✖ Offline", 0),
    ("cpu_pct_p50", "CPU % p50", 1), ("cpu_pct_p95", "CPU % p95", 1), ("cpu_pct_max", "CPU % max", 1),
    ("temp_c_p95", "Temp °C p95", 1), ("temp_c_max", "Temp °C max", 1),
    ("mem_pct_p95", "Mem % p95", 1), ("disk_free_mb_min", "Disk free MiB min", 0),
    ("mic_noise_dbfs_p95", "Noise dBFS p95", 1), ("wifi_rssi_dbm_p50", "RSSI dBm p50", 0),
    ("wake_false_accepts_per_h_p95", "False wakes /h p95", 2),
)


class HealthTableModel(QAbstractTableModel):
    """An immutable :func:`fleet.slo.health_aggregates` frame; the group value under UserRole."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.frame = pd.DataFrame()
        self.key = "site"
        self.key_header = "Site"
        self._keys: list[Any] = []
        self._cells: list[list[str]] = []  # display text per row and column, made in set_frame

    def set_frame(self, frame: pd.DataFrame, key: str, key_header: str) -> None:
        """Show ``frame`` (one row per group, the group in column ``key``); every cell's text is
        formatted here, once, not in each ``data()`` call (a pandas row lookup per call cost
        ~0.3 ms, ~0.4 s per repaint, benchmarks/gui_stall.py)."""
        frame = frame.reset_index(drop=True)
        keys = frame[key].tolist() if key in frame else [None] * len(frame)
        columns = [frame[col].tolist() if col in frame else [None] * len(frame) for col, _, _ in HEALTH_COLUMNS]
        cells = [[(k or "(none)")] + [format_number(values[i], decimals)
                                      for values, (_, _, decimals) in zip(columns, HEALTH_COLUMNS, strict=True)]
                 for i, k in enumerate(keys)]
        if (key, key_header, keys, cells) == (self.key, self.key_header, self._keys, self._cells):
            self.frame = frame
            return  # same figures: no reset, no repaint
        self.beginResetModel()
        self.frame, self.key, self.key_header = frame, key, key_header
        self._keys, self._cells = keys, cells
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.frame)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else 1 + len(HEALTH_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation != Qt.Orientation.Horizontal or role != Qt.ItemDataRole.DisplayRole:
            return None
        return self.key_header if section == 0 else HEALTH_COLUMNS[section - 1][1]

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._cells):
            return None
        if role == _DISPLAY:
            return self._cells[index.row()][index.column()]
        if role == _USER:
            return self._keys[index.row()]
        if role == _ALIGNMENT and index.column() > 0:
            return _ALIGN_NUMBER
        return None
