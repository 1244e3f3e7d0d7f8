"""One theme object feeding the Qt stylesheet, the Qt palette and the pyqtgraph pens.

Status colours are the Okabe–Ito palette (Okabe & Ito, "Color Universal Design", 2008), safe
for colour-blind readers, the same in the dark and the light theme. A status is never shown
by colour alone: :data:`STATUS_STYLES` gives each one a word and a glyph of its own shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from importlib.resources import files
from string import Template
from typing import Any

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusStyle:
    """How one unit status is shown: a word, a glyph (distinct shape) and a colour."""

    word: str
    glyph: str
    color: str

    @property
    def label(self) -> str:
        """Glyph and word, e.g. ``"● online"``."""
        return f"{self.glyph} {self.word}"


#: Okabe–Ito colours per unit status (fleet.models.UNIT_STATES), with their word and glyph.
STATUS_STYLES: dict[str, StatusStyle] = {
    "online": StatusStyle("online", "●", "#009E73"),      # bluish green
    "degraded": StatusStyle("degraded", "▲", "#E69F00"),  # orange
    "updating": StatusStyle("updating", "⟳", "#56B4E9"),  # sky blue
    "offline": StatusStyle("offline", "✖", "#D55E00"),    # vermillion
    "unknown": StatusStyle("unknown", "○", "#999999"),    # grey
}

#: Text drawn on a status-coloured fill; dark enough on all five fills (contrast ≥ 5:1).
ON_STATUS_TEXT = "#111111"

#: End-to-end latency service-level objective, ms (the 3 s SLO of the service-flow page).
E2E_SLO_MS = 3000.0


def status_style(status: str | None) -> StatusStyle:
    """The style of ``status``; unknown or missing statuses get the grey ``unknown`` style
    with their own word, so nothing is shown blank."""
    if status in STATUS_STYLES:
        return STATUS_STYLES[status]  # type: ignore[index]
    word = status or "unknown"
    return StatusStyle(word, STATUS_STYLES["unknown"].glyph, STATUS_STYLES["unknown"].color)


@dataclass(frozen=True)
class Theme:
    """Colours and sizes of one look of the console.

    Every colour is a ``#rrggbb`` string. :meth:`stylesheet` fills ``resources/console.qss``
    with them, :meth:`palette` builds the Qt palette and :meth:`pen` / :meth:`style_plot` give
    pyqtgraph the same colours.
    """

    name: str
    window: str
    surface: str
    surface_alt: str
    border: str
    text: str
    text_muted: str
    accent: str
    selection: str
    warning: str
    warning_text: str
    warning_bg: str
    error_text: str
    font_pt: int = 10
    title_pt: int = 14
    tile_pt: int = 22

    @property
    def is_dark(self) -> bool:
        """True for the dark theme."""
        return self.name == "dark"

    def status(self, status: str | None) -> StatusStyle:
        """The :class:`StatusStyle` of a unit status (same in every theme)."""
        return status_style(status)

    def qcolor(self, name_or_hex: str) -> QColor:
        """A ``QColor`` of a theme field (e.g. ``"text"``) or of a ``#rrggbb`` string."""
        value = getattr(self, name_or_hex, name_or_hex)
        return QColor(value)

    def stylesheet(self) -> str:
        """The Qt stylesheet: ``resources/console.qss`` with this theme's colours filled in."""
        template = Template((files("resources") / "console.qss").read_text(encoding="utf-8"))
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return template.substitute(values)

    def palette(self) -> QPalette:
        """A Qt palette matching the stylesheet (for widgets and styles it does not reach)."""
        pal = QPalette()
        roles = {
            QPalette.ColorRole.Window: self.window,
            QPalette.ColorRole.WindowText: self.text,
            QPalette.ColorRole.Base: self.surface,
            QPalette.ColorRole.AlternateBase: self.surface_alt,
            QPalette.ColorRole.Text: self.text,
            QPalette.ColorRole.Button: self.surface_alt,
            QPalette.ColorRole.ButtonText: self.text,
            QPalette.ColorRole.Highlight: self.selection,
            QPalette.ColorRole.HighlightedText: self.text,
            QPalette.ColorRole.ToolTipBase: self.surface_alt,
            QPalette.ColorRole.ToolTipText: self.text,
            QPalette.ColorRole.PlaceholderText: self.text_muted,
            QPalette.ColorRole.Link: self.accent,
        }
        for role, value in roles.items():
            pal.setColor(role, QColor(value))
        pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor(self.text_muted))
        return pal

    def pen(self, role: str = "text_muted", width: float = 1.0) -> Any:
        """A pyqtgraph pen in a theme colour (field name or status name or ``#rrggbb``)."""
        import pyqtgraph as pg

        color = STATUS_STYLES[role].color if role in STATUS_STYLES else getattr(self, role, role)
        return pg.mkPen(color=color, width=width)

    def brush(self, role: str) -> Any:
        """A pyqtgraph brush in a theme colour (field name or status name or ``#rrggbb``)."""
        import pyqtgraph as pg

        color = STATUS_STYLES[role].color if role in STATUS_STYLES else getattr(self, role, role)
        return pg.mkBrush(color)

    def style_plot(self, plot_widget: Any) -> None:
        """Colour a ``pyqtgraph.PlotWidget``: background, axes and tick labels."""
        plot_widget.setBackground(self.surface)
        item = plot_widget.getPlotItem()
        for side in ("left", "bottom"):
            axis = item.getAxis(side)
            axis.setPen(self.pen("border"))
            axis.setTextPen(self.pen("text_muted"))
            axis.label.setDefaultTextColor(QColor(self.text_muted))

    def apply(self, app: QApplication) -> None:
        """Make this the look of ``app``: Fusion style, palette, stylesheet, pyqtgraph defaults."""
        import pyqtgraph as pg

        app.setStyle("Fusion")
        app.setPalette(self.palette())
        app.setStyleSheet(self.stylesheet())
        pg.setConfigOptions(background=self.surface, foreground=self.text_muted, antialias=True)
        logger.debug("theme %s applied", self.name)


DARK = Theme(
    name="dark",
    window="#15181c",
    surface="#1e2227",
    surface_alt="#262b31",
    border="#3a414a",
    text="#e8eaed",
    text_muted="#a4adb7",
    accent="#4a9fe0",
    selection="#2d4a68",
    warning="#E69F00",
    warning_text="#f0b429",
    warning_bg="#3a2f17",
    error_text="#ff8a4c",
)

LIGHT = Theme(
    name="light",
    window="#eef0f3",
    surface="#ffffff",
    surface_alt="#f5f6f8",
    border="#cfd5dc",
    text="#1b2026",
    text_muted="#56606b",
    accent="#0072B2",
    selection="#cfe3f6",
    warning="#E69F00",
    warning_text="#8a5a00",
    warning_bg="#fff3d6",
    error_text="#a84300",
)

THEMES: dict[str, Theme] = {"dark": DARK, "light": LIGHT}


def get_theme(name: str) -> Theme:
    """The theme called ``name`` (``"dark"`` or ``"light"``).

    Raises
    ------
    KeyError
        For another name; the message lists the themes there are.
    """
    try:
        return THEMES[name]
    except KeyError:
        raise KeyError(f"no theme {name!r}; choose one of {sorted(THEMES)}") from None
