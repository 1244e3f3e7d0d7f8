"""Shared helpers of the feedback/ticket/trend tests (not a test module)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet.models import Heartbeat, Unit

FIELDS = ["unit_serial", "household_id", "submitted_at", "feature", "intent", "rating", "text", "corrected",
          "submission_id"]


def add_unit(session, serial: str, now: datetime, *, consent: bool = True, site: str = "seoul-gangnam",
             hw: str = "hw-a", stt: str = "stt-1.4.0", qa: str = "qa-2.1.0", tts: str = "tts-1.0.3") -> Unit:
    unit = Unit(serial=serial, agent_url=f"http://127.0.0.1:9/{serial}", site=site, hardware_rev=hw,
                stt_version=stt, qa_version=qa, tts_version=tts, consent_feedback_text=consent,
                created_at=now, updated_at=now)
    session.add(unit)
    session.flush()
    return unit


def add_heartbeat(session, unit: Unit, at: datetime, *, stt: str, qa: str, tts: str) -> None:
    session.add(Heartbeat(unit_id=unit.id, received_at=at, state="ok", uptime_s=1.0, cpu_pct=1.0, temp_c=40.0,
                          mem_pct=30.0, disk_free_mb=1000.0, mic_noise_dbfs=-60.0, wifi_rssi_dbm=-60.0,
                          wake_false_accepts_per_h=0.1, requests=0, errors=0, stt_version=stt, qa_version=qa,
                          tts_version=tts, latency_ms={}))


def row(serial: str = "SPK-1", household: str = "hh-1", at: str = "2026-11-20T09:00:00+09:00", feature: str = "weather",
        intent: str = "weather.forecast", rating: Any = 4, text: str = "", corrected: Any = "false",
        submission_id: str = "") -> dict[str, Any]:
    return {"unit_serial": serial, "household_id": household, "submitted_at": at, "feature": feature,
            "intent": intent, "rating": rating, "text": text, "corrected": corrected, "submission_id": submission_id}


def write_csv(path: Path, rows: list[dict[str, Any]], encoding: str = "utf-8", raw_lines: dict[int, str] | None = None
              ) -> Path:
    """CSV with header; ``raw_lines`` inserts literal lines at 0-based data positions (malformed rows)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    lines = buf.getvalue().splitlines()
    for i, r in enumerate(rows):
        if raw_lines and i in raw_lines:
            lines.append(raw_lines[i])
        b = io.StringIO()
        csv.writer(b, lineterminator="\n").writerow([r.get(f, "") for f in FIELDS])
        lines.append(b.getvalue().rstrip("\n"))
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path
