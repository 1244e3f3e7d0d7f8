"""Widgets and table columns of the Rollouts page: the state styles (glyph, word and Okabe–Ito
colour, never colour alone), the columns of the rollout, group and per-unit tables, the group
progress chart and the text of a pause reason. They only draw what :mod:`console.pages.rollouts`
loaded.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from console.formatting import format_local_time, format_number
from console.models.records import RecordColumn
from console.theme import StatusStyle, Theme

logger = logging.getLogger(__name__)

GREEN, ORANGE, SKY, VERMILLION, GREY = "#009E73", "#E69F00", "#56B4E9", "#D55E00", "#999999"
YELLOW, BLUE, PURPLE = "#F0E442", "#0072B2", "#CC79A7"

#: Rollout states (``fleet.rollout_models.ROLLOUT_STATES``): glyph, word, colour.
ROLLOUT_STYLES: dict[str, StatusStyle] = {
    "planned": StatusStyle("planned", "○", GREY),
    "running": StatusStyle("running", "⟳", SKY),
    "paused": StatusStyle("paused", "‖", ORANGE),
    "cancelling": StatusStyle("cancelling", "⊘", PURPLE),
    "cancelled": StatusStyle("cancelled", "⊘", GREY),
    "completed": StatusStyle("completed", "✔", GREEN),
    "failed": StatusStyle("failed", "✖", VERMILLION),
}
#: Group states (``fleet.rollout_models.GROUP_STATES``).
GROUP_STYLES: dict[str, StatusStyle] = {
    "pending": StatusStyle("pending", "○", GREY),
    "running": StatusStyle("running", "⟳", SKY),
    "succeeded": StatusStyle("succeeded", "✔", GREEN),
    "failed": StatusStyle("failed", "✖", VERMILLION),
    "cancelled": StatusStyle("cancelled", "⊘", GREY),
}
#: Per-unit states (``fleet.rollout_models.UNIT_STATES``).
UNIT_STYLES: dict[str, StatusStyle] = {
    "pending": StatusStyle("pending", "○", GREY),
    "waiting_window": StatusStyle("waiting for window", "◷", YELLOW),
    "in_progress": StatusStyle("in progress", "⟳", SKY),
    "succeeded": StatusStyle("succeeded", "✔", GREEN),
    "failed": StatusStyle("failed", "✖", VERMILLION),
    "rolled_back": StatusStyle("rolled back", "↶", ORANGE),
    "skipped": StatusStyle("skipped", "⤼", PURPLE),
    "cancelled": StatusStyle("cancelled", "⊘", GREY),
}


def _style(table: dict[str, StatusStyle]):
    def pick(value: Any) -> StatusStyle | None:
        if value is None:
            return None
        return table.get(str(value), StatusStyle(str(value), "○", GREY))
    return pick


rollout_style = _style(ROLLOUT_STYLES)
group_style = _style(GROUP_STYLES)
unit_style = _style(UNIT_STYLES)


def _time(value: Any) -> str:
    return format_local_time(value, zone=True)


def _mib(value: Any) -> str:
    return format_number(value / 2**20, 1)


def _pct(value: Any) -> str:
    return format_number(value, 0, "%")


#: The rollout list (rows from :func:`console.pages.rollouts.load_rollouts`).
ROLLOUT_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("id", "#", numeric=True),
    RecordColumn("state", "State", style=rollout_style),
    RecordColumn("kind", "Kind"),
    RecordColumn("version", "Version"),
    RecordColumn("succeeded", "Succeeded", numeric=True),
    RecordColumn("failed", "Failed", numeric=True),
    RecordColumn("total", "Units", numeric=True),
    RecordColumn("progress_pct", "Done %", fmt=lambda v: format_number(v, 0), numeric=True),
    RecordColumn("created_by", "Created by"),
    RecordColumn("started_at", "Started", fmt=_time),
    RecordColumn("pause_reason", "Pause reason", tooltip=lambda r: r.get("pause_reason") or ""),
)

#: The groups of the selected rollout.
GROUP_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("index", "#", numeric=True),
    RecordColumn("name", "Group"),
    RecordColumn("state", "State", style=group_style),
    RecordColumn("units", "Units", numeric=True),
    RecordColumn("succeeded", "Succeeded", numeric=True),
    RecordColumn("failed", "Failed", numeric=True),
    RecordColumn("in_progress", "In progress", numeric=True),
    RecordColumn("success_threshold_pct", "Success ≥ %", fmt=_pct, numeric=True),
    RecordColumn("error_threshold_pct", "Error ≥ %", fmt=_pct, numeric=True),
    RecordColumn("min_finished", "Min finished", numeric=True),
    RecordColumn("note", "Gate / status", tooltip=lambda r: r.get("note") or ""),
)

#: The per-unit table of the selected rollout (also the CSV export's columns).
UNIT_COLUMNS: tuple[RecordColumn, ...] = (
    RecordColumn("order", "#", numeric=True),
    RecordColumn("serial", "Serial"),
    RecordColumn("group", "Group"),
    RecordColumn("state", "State", style=unit_style),
    RecordColumn("step_reached", "Step reached"),
    RecordColumn("bytes_sent", "Sent (MiB)", fmt=_mib, numeric=True),
    RecordColumn("attempts", "Attempts", numeric=True),
    RecordColumn("previous_version", "From"),
    RecordColumn("final_version", "Now runs"),
    RecordColumn("started_at", "Started", fmt=_time),
    RecordColumn("finished_at", "Finished", fmt=_time),
    RecordColumn("error", "Error", tooltip=lambda r: r.get("error") or ""),
)

#: Segments of a group's bar, in drawing order: (key, legend word, colour, unit states counted).
SEGMENTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("succeeded", "✔ succeeded", GREEN, ("succeeded",)),
    ("failed", "✖ failed / ↶ rolled back", VERMILLION, ("failed", "rolled_back")),
    ("in_progress", "⟳ in progress", SKY, ("in_progress",)),
    ("waiting", "◷ waiting for window", YELLOW, ("waiting_window",)),
    ("pending", "○ pending", GREY, ("pending",)),
    ("other", "⤼ skipped / ⊘ cancelled", PURPLE, ("skipped", "cancelled")),
)


def segment_counts(counts: dict[str, int]) -> dict[str, int]:
    """A group's unit counts by state folded into the chart's segments."""
    return {key: sum(int(counts.get(s, 0)) for s in states) for key, _, _, states in SEGMENTS}


def legend_html() -> str:
    """The chart's legend as rich text: each segment's colour swatch beside its glyph and word."""
    parts = [f'<span style="color:{colour}">■</span>&nbsp;{word}' for _, word, colour, _ in SEGMENTS]
    return " &nbsp; ".join(parts) + " &nbsp; <b>|</b>&nbsp;success threshold"


class GroupProgressChart(pg.PlotWidget):
    """One horizontal bar per group (canary at the top), stacked by unit outcome, with a | tick
    at the group's success threshold. :func:`legend_html` names every colour (shown below it)."""

    def __init__(self, theme: Theme, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.setMinimumHeight(160)
        self.bars: dict[str, pg.BarGraphItem] = {}
        self.threshold_marks: pg.ScatterPlotItem | None = None
        item = self.getPlotItem()
        item.setMouseEnabled(x=False, y=False)
        item.setMenuEnabled(False)
        item.hideButtons()
        item.setLabel("bottom", "units")
        item.getAxis("bottom").enableAutoSIPrefix(False)
        item.getAxis("left").setWidth(96)
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self._theme = theme
        theme.style_plot(self)

    def set_groups(self, groups: list[dict[str, Any]]) -> None:
        """Draw the groups of :func:`fleet.rollout_control.status` (each with ``counts``)."""
        item = self.getPlotItem()
        for bar in self.bars.values():
            item.removeItem(bar)
        if self.threshold_marks is not None:
            item.removeItem(self.threshold_marks)
            self.threshold_marks = None
        self.bars.clear()
        if not groups:
            item.getAxis("left").setTicks([[]])
            return
        n = len(groups)
        ys = [float(n - 1 - i) for i in range(n)]  # first group on top
        left = [0.0] * n
        seg = [segment_counts(g.get("counts") or {}) for g in groups]
        for key, word, colour, _ in SEGMENTS:
            widths = [float(s[key]) for s in seg]
            if not any(widths):
                continue
            bar = pg.BarGraphItem(x0=list(left), y=ys, width=widths, height=0.6, brush=colour,
                                  pen=pg.mkPen(self._theme.surface, width=1))
            item.addItem(bar)
            self.bars[key] = bar
            left = [a + b for a, b in zip(left, widths)]
        xs = [g["units"] * g["success_threshold_pct"] / 100.0 for g in groups]
        self.threshold_marks = pg.ScatterPlotItem(x=xs, y=ys, symbol="|", size=22,
                                                  pen=pg.mkPen(self._theme.text, width=2))
        item.addItem(self.threshold_marks)
        item.getAxis("left").setTicks([[(y, f"{g['name']} ({g['units']})") for y, g in zip(ys, groups)]])
        widest = max([g["units"] for g in groups] + [1])
        item.setXRange(0, widest * 1.05, padding=0)
        item.setYRange(-0.6, n - 0.4, padding=0)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time of a status dict as an aware ``datetime`` (None stays None)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def group_rows(detail: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """The group and unit table rows of a :func:`fleet.rollout_control.status` dict."""
    groups, units = [], []
    for g in detail.get("groups", []):
        counts = g.get("counts") or {}
        gate = g.get("gate") or None
        note = (gate or {}).get("reason") or g.get("status") or ""
        groups.append({**{k: v for k, v in g.items() if k != "units_detail"},
                       "succeeded": counts.get("succeeded", 0),
                       "failed": counts.get("failed", 0) + counts.get("rolled_back", 0),
                       "in_progress": counts.get("in_progress", 0), "note": note})
        for u in g.get("units_detail", []):
            units.append({**u, "order": len(units) + 1, "group": g["name"], "group_index": g["index"],
                          "started_at": parse_time(u.get("started_at")), "finished_at": parse_time(u.get("finished_at"))})
    return tuple(groups), tuple(units)


def reason_lines(detail: dict[str, Any], groups: tuple[dict[str, Any], ...]) -> list[str]:
    """Why the rollout stopped (pause reason), failed voice-quality gates with their figures, and a
    registry-gate override, as lines for the page's warning label."""
    lines = []
    if detail.get("pause_reason"):
        lines.append(f"{'Paused' if detail['state'] == 'paused' else 'Stopped'}: {detail['pause_reason']}")
    for g in groups:
        if g.get("gate") and not g["gate"].get("passed", True):
            lines.append(f"{g['name']}: {gate_text(g['gate'])}")
    if detail.get("gate_override_reason"):
        lines.append(f"Registry gate overridden: {detail['gate_override_reason']}")
    return lines


def gate_text(gate: dict[str, Any] | None) -> str:
    """A voice-quality gate result (``RolloutGroup.gate_result``) as lines: the verdict, then the
    updated group's figures beside the compared units'."""
    if not gate:
        return ""
    lines = [str(gate.get("reason") or ("passed" if gate.get("passed") else "not passed"))]
    group, control = gate.get("group") or {}, gate.get("control") or {}
    rows = (("error_rate", "error rate", lambda v: f"{v * 100:.1f} %"),
            ("p95_e2e_ms", "p95 end to end", lambda v: f"{v:,.0f} ms"),
            ("wake_fa_per_h", "wake false accepts", lambda v: f"{v:.2f} /h"),
            ("correction_rate", "corrections", lambda v: f"{v * 100:.1f} %"))
    for key, label, fmt in rows:
        a, b = group.get(key), control.get(key)
        if a is None and b is None:
            continue
        lines.append(f"  {label}: updated {fmt(a) if a is not None else '—'}"
                     f" vs {gate.get('compared_with') or 'others'} {fmt(b) if b is not None else '—'}")
    if group.get("requests") is not None:
        lines.append(f"  requests: updated {group.get('requests'):,} vs others {control.get('requests') or 0:,}")
    return "\n".join(lines)

