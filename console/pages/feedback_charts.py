"""Charts of the Feedback page (pyqtgraph): volume per day by series, CSAT and correction rate
per day, and the per-version comparison (online correction rate with its bootstrap 95 % interval
as error bars, beside the offline error rate from the registry). Clicking a point of a daily
chart emits ``sig_point_clicked(day, series)``; the page drills the table down to it. They only
draw what :func:`console.pages.feedback_data.load_feedback` computed.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QWidget

from console.theme import Theme

logger = logging.getLogger(__name__)

#: Okabe–Ito colours for series, in order; each series also gets its own marker shape.
SERIES_COLOURS: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
                                   "#F0E442", "#999999")
SERIES_SYMBOLS: tuple[str, ...] = ("o", "s", "t", "d", "+", "x", "star", "p")


def day_ts(day: date) -> float:
    """Seconds since the epoch of a UTC day's midnight (the charts' x)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


class _DailyChart(pg.PlotWidget):
    """A date-axis chart of per-day points that can be clicked."""

    sig_point_clicked = Signal(object, object)  # datetime.date, series value (str) or None

    def __init__(self, theme: Theme, y_label: str, y_units: str | None, parent: QWidget | None = None) -> None:
        axis = pg.DateAxisItem(orientation="bottom", utcOffset=0)
        super().__init__(parent=parent, axisItems={"bottom": axis})
        self.setMinimumHeight(200)
        item = self.getPlotItem()
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setLabel("left", y_label, units=y_units)
        item.getAxis("left").enableAutoSIPrefix(False)
        item.setLabel("bottom", "day (UTC) — click a point to list its feedback")
        item.setMenuEnabled(False)
        self.legend = item.addLegend(offset=(10, 5), colCount=4)
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        theme.style_plot(self)

    def clear_curves(self) -> None:
        item = self.getPlotItem()
        for curve in self.curves.values():
            item.removeItem(curve)
        self.curves.clear()
        self.legend.clear()

    def add_series(self, key: str, name: str, days: list[date], values: np.ndarray, i: int,
                   series_value: str | None, dash: bool = False) -> pg.PlotDataItem:
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        x = np.array([day_ts(d) for d in days], dtype=float)
        curve = pg.PlotDataItem(
            x, values, name=name, connect="finite",
            pen=pg.mkPen(colour, width=2, style=Qt.PenStyle.DashLine if dash else Qt.PenStyle.SolidLine),
            symbol=SERIES_SYMBOLS[i % len(SERIES_SYMBOLS)], symbolSize=8, symbolBrush=colour,
            symbolPen=pg.mkPen(self._theme.surface), data=[(d, series_value) for d in days])
        curve.sigPointsClicked.connect(self._on_curve_points_clicked)
        self.getPlotItem().addItem(curve)
        self.curves[key] = curve
        return curve

    def click_point(self, key: str, day: date) -> bool:
        """Click the point of series ``key`` on ``day`` (as the user would); False if none."""
        curve = self.curves.get(key)
        if curve is None:
            return False
        scatter = curve.scatter
        for pt in scatter.points():
            if pt.data()[0] == day:
                scatter.sigClicked.emit(scatter, [pt], None)
                return True
        return False

    def _on_curve_points_clicked(self, _curve: Any, points: Any, _ev: Any = None) -> None:
        if points is None or len(points) == 0:
            return
        day, series = points[0].data()
        self.sig_point_clicked.emit(day, series)


class VolumeChart(_DailyChart):
    """Feedback items per day, one line per series value (feature, version, site …)."""

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(theme, "feedback items per day", None, parent)

    def set_volume(self, volume: pd.DataFrame, series_label: str) -> None:
        """Draw :func:`feedback_data.daily_volume` (rows days, columns series values)."""
        self.clear_curves()
        if volume is None or volume.empty:
            return
        days = list(volume.index)
        totals = volume.sum(axis=0).sort_values(ascending=False)
        for i, col in enumerate(totals.index[:len(SERIES_COLOURS)]):
            self.add_series(str(col), f"{series_label} {col}", days, volume[col].to_numpy(dtype=float), i, str(col))
        self.getPlotItem().enableAutoRange()


class RatesChart(_DailyChart):
    """CSAT (share of ratings 4–5) and correction rate per day, in %."""

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(theme, "share of the day's feedback (%)", None, parent)
        self.getPlotItem().setYRange(0, 100, padding=0.05)

    def set_rates(self, rates: pd.DataFrame) -> None:
        """Draw :func:`feedback_data.daily_rates`."""
        self.clear_curves()
        if rates is None or rates.empty:
            return
        days = list(rates.index)
        self.add_series("csat", "CSAT % (ratings 4–5)", days, rates["csat"].to_numpy(dtype=float) * 100, 2, None)
        self.add_series("correction_rate", "correction rate %", days,
                        rates["correction_rate"].to_numpy(dtype=float) * 100, 5, None, dash=True)
        self.getPlotItem().setYRange(0, 100, padding=0.05)


class VersionChart(pg.PlotWidget):
    """Per model version: the online correction rate (bars, with the bootstrap 95 % interval as
    error bars) and the offline error rate from the registry (1 − answer or intent accuracy,
    ◆ markers), both in %, so a version that looks good offline and bad online stands out."""

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.setMinimumHeight(200)
        item = self.getPlotItem()
        item.showGrid(x=False, y=True, alpha=0.2)
        item.setLabel("left", "rate (%)")
        item.setLabel("bottom", "model version")
        item.setMenuEnabled(False)
        item.setMouseEnabled(x=False, y=False)
        self.legend = item.addLegend(offset=(-10, 5))
        self.bars: pg.BarGraphItem | None = None
        self.errors: pg.ErrorBarItem | None = None
        self.offline: pg.ScatterPlotItem | None = None
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        theme.style_plot(self)

    def set_versions(self, versions: pd.DataFrame, kind: str = "stt") -> None:
        """Draw :func:`feedback_data.version_comparison`'s rows of ``kind`` versions."""
        item = self.getPlotItem()
        for it in (self.bars, self.errors, self.offline):
            if it is not None:
                item.removeItem(it)
        self.bars = self.errors = self.offline = None
        self.legend.clear()
        if versions is None or versions.empty:
            item.getAxis("bottom").setTicks([[]])
            return
        x = np.arange(len(versions), dtype=float)
        rate = pd.to_numeric(versions["correction_rate"], errors="coerce").to_numpy(dtype=float) * 100
        lo = pd.to_numeric(versions["ci_low"], errors="coerce").to_numpy(dtype=float) * 100
        hi = pd.to_numeric(versions["ci_high"], errors="coerce").to_numpy(dtype=float) * 100
        has = ~np.isnan(rate)
        self.bars = pg.BarGraphItem(x=x[has], height=rate[has], width=0.5, brush="#0072B2",
                                    pen=pg.mkPen(self._theme.surface))
        item.addItem(self.bars)
        self.legend.addItem(self.bars, "online correction rate % (bar: 95 % CI)")
        self.errors = pg.ErrorBarItem(x=x[has], y=rate[has], top=(hi - rate)[has], bottom=(rate - lo)[has],
                                      beam=0.2, pen=pg.mkPen(self._theme.text, width=2))
        item.addItem(self.errors)
        off = np.array([offline_error(r, kind) for r in versions.to_dict("records")], dtype=float)
        if np.any(~np.isnan(off)):
            ok = ~np.isnan(off)
            self.offline = pg.ScatterPlotItem(x=x[ok] + 0.32, y=off[ok] * 100, symbol="d", size=12,
                                              brush="#E69F00", pen=pg.mkPen(self._theme.text))
            item.addItem(self.offline)
            self.legend.addItem(self.offline, "offline error % (WER, or 1 − accuracy)")
        item.getAxis("bottom").setTicks([[(float(i), str(v)) for i, v in enumerate(versions["version"])]])
        top = np.nanmax(np.concatenate([hi[has], off[~np.isnan(off)], [5.0]])) if len(x) else 5.0
        item.setXRange(-0.6, len(x) - 0.4, padding=0)
        item.setYRange(0, float(top) * 1.35 if math.isfinite(top) else 10, padding=0)


def offline_error(row: dict[str, Any], kind: str = "stt") -> float:
    """The offline error rate (0–1) of a version: WER for STT, else 1 − answer (or intent)
    accuracy; falls back to the other figure; nan if the registry has none."""
    wer = row.get("wer")
    if kind == "stt" and wer is not None and not (isinstance(wer, float) and math.isnan(wer)):
        return float(wer)
    for key in ("answer_accuracy", "intent_accuracy"):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return 1.0 - float(v)
    v = row.get("wer")
    return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else float("nan")
