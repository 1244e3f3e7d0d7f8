"""The Feedback page's HTML report: one self-contained file (charts embedded as PNG) that a
product owner can open or mail. Every text that came from the database or the user is
HTML-escaped (free text may hold ``<script>``); nothing here runs Qt."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

_STYLE = """body{font-family:sans-serif;margin:24px;color:#1b2026}
h1{margin-bottom:0}.muted{color:#56606b}
.tiles{display:flex;gap:12px;margin:12px 0}.tile{border-left:6px solid #0072B2;background:#f5f6f8;padding:8px 14px}
.tile b{font-size:20px;display:block}table{border-collapse:collapse;margin:8px 0 20px}
td,th{border-bottom:1px solid #cfd5dc;padding:3px 8px;text-align:left;vertical-align:top}
td.num{text-align:right}img{max-width:100%;border:1px solid #cfd5dc}"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(columns: Sequence[Any], rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(c.header)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td{' class=num' if c.numeric else ''}>{_e(c.text(row.get(c.key)))}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_report(load: Any, filters: str, tiles: dict[str, tuple[str, str]], charts: dict[str, str],
                  version_rows: Sequence[dict[str, Any]], topics: Sequence[Any], rows: Sequence[dict[str, Any]],
                  columns: Sequence[Any], version_columns: Sequence[Any]) -> str:
    """The report as HTML text.

    Parameters
    ----------
    load
        The page's last ``FeedbackLoad`` (None before the first load).
    filters
        The filters in words.
    tiles
        key → (caption, value shown).
    charts
        title → base64 PNG.
    version_rows, topics, rows
        What the page's tables show (rows: the shown feedback, already capped by the caller).
    columns, version_columns
        The tables' ``RecordColumn`` s.
    """
    when = load.now.isoformat(timespec="seconds") if load is not None else "—"
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>SpeakerOps feedback report</title>",
             f"<style>{_STYLE}</style></head><body>",
             "<h1>Feedback report</h1>",
             f"<p class=muted>{_e(filters)} · data as of {_e(when)} (UTC)</p>",
             "<div class=tiles>"]
    parts += [f"<div class=tile><b>{_e(value)}</b>{_e(caption)}</div>" for caption, value in tiles.values()]
    parts.append("</div>")
    for title, png in charts.items():
        parts.append(f"<h2>{_e(title)}</h2><img alt='{_e(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Model versions: online against offline</h2>")
    parts.append("<p class=muted>Correction rate: answers corrected, repeated or cancelled right after; "
                 "95 % interval by bootstrap. CSAT: share of ratings 4–5. Offline figures from the registry's "
                 "evaluation.</p>")
    parts.append(_table(version_columns, version_rows))
    if topics:
        parts.append("<h2>Topics of free text</h2><table><tr><th>Topic</th><th>Comments</th><th>Typical phrases</th></tr>")
        parts += [f"<tr><td>{_e(t.label)}</td><td class=num>{t.size:,}</td><td>{'<br>'.join(_e(p) for p in t.phrases)}"
                  "</td></tr>" for t in topics]
        parts.append("</table>")
    parts.append(f"<h2>Feedback ({len(rows):,} rows shown)</h2>")
    parts.append(_table(columns, rows))
    parts.append("</body></html>")
    return "\n".join(parts)
