"""Read models for the console and the CLI: the fleet table snapshot and a unit's detail.

These build plain data (a pandas ``DataFrame``, dataclasses) from one ``Session``; the console
calls them off the GUI thread and swaps the result into its table models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.models import STAGES, UNIT_STATES, CollectorStatus, Heartbeat, Unit
from fleet.settings import CollectorSettings
from fleet.unit_states import effective_thresholds, load_policy_index

logger = logging.getLogger(__name__)

#: Columns of :func:`fleet_snapshot`, in display order.
SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "serial", "status", "site", "region", "hardware_rev", "firmware_version",
    "stt_version", "qa_version", "tts_version", "last_heartbeat_at",
    "cpu_pct", "temp_c", "mem_pct", "disk_free_mb", "mic_noise_dbfs", "wifi_rssi_dbm",
    "wake_false_accepts_per_h", "requests", "errors", "e2e_p95_ms", "flapping", "state_change_pct",
    "offline_after_s", "last_poll_error", "id",
)


def _e2e_ms(latency_ms: dict | None) -> list[float]:
    """End-to-end latency per request (sum over the six stages), ms; [] if none reported."""
    if not latency_ms:
        return []
    series = [latency_ms.get(stage) or [] for stage in STAGES]
    n = min((len(s) for s in series), default=0)
    return [float(sum(s[i] for s in series)) for i in range(n)]


#: Window over which the fleet table's request figures are computed (requests, errors, p95 e2e).
#: A unit handles a few requests per minute at most, so one heartbeat rarely holds enough.
SNAPSHOT_WINDOW = timedelta(minutes=15)


def fleet_snapshot(session: Session, now: datetime, window: timedelta = SNAPSHOT_WINDOW,
                   default_offline_after_s: float | None = None) -> pd.DataFrame:
    """One row per unit with its inventory, state, latest health figures and request figures.

    Parameters
    ----------
    now
        Aware UTC time the window ends at (the caller's clock).
    window
        Span of heartbeats behind ``requests``, ``errors`` and ``e2e_p95_ms``.
    default_offline_after_s
        The fleet's offline threshold, seconds; None: ``CollectorSettings().offline_after_s``
        (1.5 × the poll interval).

    Returns
    -------
    DataFrame
        Columns :data:`SNAPSHOT_COLUMNS`, sorted by serial. Health figures (``cpu_pct`` …) are
        the latest heartbeat's, NaN for a unit never heard from. ``requests`` and ``errors`` are
        sums over ``window``; ``e2e_p95_ms`` is the 95th percentile end-to-end latency (sum of
        the six stages) of the requests in ``window``, ms, NaN without requests. ``flapping``
        (bool) and ``state_change_pct`` (weighted percent state change of the last 21 polls,
        0–100, NaN before the first poll) come from flap detection; ``offline_after_s`` is the
        unit's effective offline threshold, seconds (its most specific offline policy, else the
        default) — all :mod:`fleet.unit_states`.
    """
    latest = (
        select(Heartbeat.unit_id, func.max(Heartbeat.id).label("hb_id"))
        .group_by(Heartbeat.unit_id)
        .subquery()
    )
    stmt = (
        select(
            Unit.id, Unit.serial, Unit.status, Unit.site, Unit.region, Unit.hardware_rev,
            Unit.firmware_version, Unit.stt_version, Unit.qa_version, Unit.tts_version,
            Unit.last_heartbeat_at, Unit.last_poll_error, Unit.flapping, Unit.state_change_pct, Unit.tags,
            Heartbeat.cpu_pct, Heartbeat.temp_c, Heartbeat.mem_pct, Heartbeat.disk_free_mb,
            Heartbeat.mic_noise_dbfs, Heartbeat.wifi_rssi_dbm, Heartbeat.wake_false_accepts_per_h,
        )
        .outerjoin(latest, latest.c.unit_id == Unit.id)
        .outerjoin(Heartbeat, Heartbeat.id == latest.c.hb_id)
        .order_by(Unit.serial)
    )
    df = pd.DataFrame([dict(r) for r in session.execute(stmt).mappings()],
                      columns=[c for c in SNAPSHOT_COLUMNS if c not in ("requests", "errors", "e2e_p95_ms",
                                                                         "offline_after_s")] + ["tags"])
    if default_offline_after_s is None:
        default_offline_after_s = CollectorSettings().offline_after_s
    df["offline_after_s"] = effective_thresholds(
        load_policy_index(session), df["serial"].tolist(), df["site"].tolist(), df["hardware_rev"].tolist(),
        df["tags"].tolist(), default_offline_after_s)
    df["flapping"] = df["flapping"].eq(True).to_numpy(dtype=bool)
    df["state_change_pct"] = pd.to_numeric(df["state_change_pct"], errors="coerce").astype(float)

    requests: dict[int, int] = {}
    errors: dict[int, int] = {}
    e2e: dict[int, list[float]] = {}
    recent = select(Heartbeat.unit_id, Heartbeat.requests, Heartbeat.errors, Heartbeat.latency_ms).where(
        Heartbeat.received_at > now - window, Heartbeat.received_at <= now)
    for unit_id, n_req, n_err, latency in session.execute(recent):
        requests[unit_id] = requests.get(unit_id, 0) + n_req
        errors[unit_id] = errors.get(unit_id, 0) + n_err
        e2e.setdefault(unit_id, []).extend(_e2e_ms(latency))
    df["requests"] = [float(requests.get(i, np.nan)) for i in df["id"]]
    df["errors"] = [float(errors.get(i, np.nan)) for i in df["id"]]
    df["e2e_p95_ms"] = [float(np.percentile(v, 95)) if (v := e2e.get(i)) else np.nan for i in df["id"]]
    for col in ("cpu_pct", "temp_c", "mem_pct", "disk_free_mb", "mic_noise_dbfs",
                "wifi_rssi_dbm", "wake_false_accepts_per_h"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df[list(SNAPSHOT_COLUMNS)].reset_index(drop=True)


def status_counts(snapshot: pd.DataFrame) -> dict[str, int]:
    """Units per state, every state of :data:`fleet.models.UNIT_STATES` present (0 if none)."""
    counts = snapshot["status"].value_counts().to_dict() if len(snapshot) else {}
    return {state: int(counts.get(state, 0)) for state in UNIT_STATES}


@dataclass(frozen=True)
class UnitDetail:
    """A unit's inventory and its latest heartbeats, for the detail panel.

    ``recent`` holds the unit's heartbeats of the last ``window`` (oldest first) as a DataFrame
    with ``received_at`` and the figures of :class:`fleet.models.Heartbeat`.
    """

    serial: str
    status: str
    inventory: dict[str, object]
    latest: dict[str, object] | None
    stage_p95_ms: dict[str, float] = field(default_factory=dict)
    recent: pd.DataFrame = field(default_factory=pd.DataFrame)


_HEARTBEAT_FIGURES = (
    "received_at", "state", "uptime_s", "cpu_pct", "temp_c", "mem_pct", "disk_free_mb",
    "mic_noise_dbfs", "wifi_rssi_dbm", "wake_false_accepts_per_h", "requests", "errors",
)


def unit_detail(session: Session, serial: str, now: datetime,
                window: timedelta = timedelta(hours=1)) -> UnitDetail | None:
    """The unit ``serial``'s inventory, latest figures and per-stage p95 latency (ms) over
    ``window`` before ``now``; None if no such unit."""
    unit = session.scalar(select(Unit).where(Unit.serial == serial))
    if unit is None:
        return None
    inventory = {
        "serial": unit.serial, "hardware_rev": unit.hardware_rev, "site": unit.site,
        "region": unit.region, "timezone": unit.timezone, "agent_url": unit.agent_url,
        "ssh": f"{unit.ssh_user}@{unit.ssh_host}:{unit.ssh_port}" if unit.ssh_host else None,
        "firmware_version": unit.firmware_version, **{f"{k}_version": v for k, v in unit.model_versions().items()},
        "tags": list(unit.tags or []), "consent_recordings": unit.consent_recordings,
        "consent_feedback_text": unit.consent_feedback_text,
        "last_heartbeat_at": unit.last_heartbeat_at, "last_poll_error": unit.last_poll_error,
        "clock_skew_s": unit.clock_skew_s,
    }
    hbs = session.scalars(
        select(Heartbeat)
        .where(Heartbeat.unit_id == unit.id, Heartbeat.received_at >= now - window)
        .order_by(Heartbeat.received_at)
    ).all()
    recent = pd.DataFrame([{k: getattr(h, k) for k in _HEARTBEAT_FIGURES} for h in hbs],
                          columns=list(_HEARTBEAT_FIGURES))
    stage_p95: dict[str, float] = {}
    for stage in STAGES:
        samples = [v for h in hbs for v in (h.latency_ms or {}).get(stage, [])]
        if samples:
            stage_p95[stage] = float(np.percentile(samples, 95))
    latest = recent.iloc[-1].to_dict() if len(recent) else None
    return UnitDetail(unit.serial, unit.status, inventory, latest, stage_p95, recent)


def collector_statuses(session: Session) -> list[CollectorStatus]:
    """Every collector's latest cycle, newest first."""
    return list(session.scalars(
        select(CollectorStatus).order_by(CollectorStatus.last_cycle_at.desc().nulls_last())
    ))
