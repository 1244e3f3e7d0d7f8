"""Parsing and validation of a unit's ``/v1/health`` answer (docs/unit-api.md).

Kept apart from the collector so that the parser can be tested and fuzzed on its own.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.errors import HealthReportError
from fleet.models import MODEL_KINDS, STAGES

#: At most this many latency samples per stage are kept from one answer (docs/unit-api.md).
MAX_SAMPLES_PER_STAGE = 50


class HealthReport(BaseModel):
    """A validated heartbeat. Field units as in docs/unit-api.md."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    serial: str = Field(min_length=1, max_length=64)
    time: datetime | None = None
    state: Literal["ok", "degraded", "updating"]
    uptime_s: float = Field(ge=0)
    cpu_pct: float = Field(ge=0, le=100)
    temp_c: float = Field(ge=-40, le=150)
    mem_pct: float = Field(ge=0, le=100)
    disk_free_mb: float = Field(ge=0)
    mic_noise_dbfs: float = Field(ge=-200, le=0)
    wifi_rssi_dbm: float = Field(ge=-150, le=0)
    wake_false_accepts_per_h: float = Field(ge=0)
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    models: dict[str, str | None] = Field(default_factory=dict)
    latency_ms: dict[str, list[float]] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("time must carry a UTC offset (ISO 8601, e.g. 2026-11-21T06:30:00+00:00)")
        return value

    @field_validator("latency_ms")
    @classmethod
    def _stages(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        cleaned: dict[str, list[float]] = {}
        for stage in STAGES:
            samples = value.get(stage) or []
            if any(not math.isfinite(v) or v < 0 for v in samples):
                raise ValueError(f"latency_ms.{stage} holds a negative or non-finite value")
            cleaned[stage] = [float(v) for v in samples[:MAX_SAMPLES_PER_STAGE]]
        return cleaned

    def model_versions(self) -> dict[str, str | None]:
        """Reported version per kind; None for a kind the unit did not report."""
        return {kind: self.models.get(kind) for kind in MODEL_KINDS}


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(parts) + more


def parse_health(body: bytes) -> HealthReport:
    """Parse a ``/v1/health`` body.

    Parameters
    ----------
    body
        The raw HTTP body (UTF-8 JSON object).

    Raises
    ------
    HealthReportError
        If the body is not UTF-8 JSON, is nested too deeply, is not an object, or lacks a field
        or has one out of range; the message names the first problems.
    """
    try:
        data: Any = json.loads(body)
    except UnicodeDecodeError as exc:
        raise HealthReportError(f"answer is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise HealthReportError(
            f"answer is not valid JSON ({exc.msg} at char {exc.pos} of {len(body)} bytes; truncated?)"
        ) from exc
    except RecursionError as exc:
        raise HealthReportError("answer JSON is nested too deeply to be a heartbeat") from exc
    if not isinstance(data, dict):
        raise HealthReportError(f"answer is JSON {type(data).__name__}, not an object")
    try:
        return HealthReport.model_validate(data)
    except ValidationError as exc:
        raise HealthReportError(f"answer is not a valid heartbeat: {_describe(exc)}") from exc
