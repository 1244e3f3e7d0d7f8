"""Seeded model of a smart-speaker fleet: who the units are and what their heartbeats say.

Nothing here does I/O. :func:`generate_fleet` draws a fleet of :class:`UnitSpec` from a seed;
:func:`health` and :func:`info` compute a unit's ``/v1/health`` and ``/v1/info`` bodies
(docs/unit-api.md) as pure functions of the spec and the time, so the simulator keeps no state
per unit but the time of the previous poll.

Where the figures come from (simulated, not measured; chosen to look like a consumer fleet):

* request load follows the unit's *local* hour (``HOURLY_LOAD``: low at night, a morning bump,
  a peak in the evening), scaled by a per-household factor; ``PEAK_REQUESTS_PER_H`` at the peak;
* per-stage latencies are lognormal around ``STAGE_MEDIAN_MS`` (the stage medians of a cloud voice
  pipeline: end to end ≈ 1.75 s, cf. published assistant response times of 2.1–2.6 s); the server
  stages slow down under load and on older model versions (``VERSION_EFFECTS``), upload slows
  down on weak Wi-Fi, and ``HICCUP_P`` of requests hit a network or queueing hiccup, so a few percent break
  the ``LATENCY_BUDGET_MS`` end-to-end budget;
* CPU follows the load, temperature follows CPU and the hardware revision (``hw-c`` runs
  12–18 °C hotter), the microphone noise floor follows the site (a quiet home ≈ −60 dBFS, the
  ``busan-office`` open-plan office ≈ −35 dBFS with many more wake-word false accepts).

Randomness is a numpy ``Generator`` seeded from ``(fleet seed, unit index, time bucket)``: the
same fleet seed, unit and time give the same figures.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from fleet.models import MODEL_KINDS, STAGES

logger = logging.getLogger(__name__)

#: Version of the simulated unit agent, reported in ``/v1/info``.
AGENT_VERSION = "1.0.0"


@dataclass(frozen=True)
class Site:
    """An installation site: where units are, and what its rooms sound like."""

    name: str
    region: str
    timezone: str
    #: Share of the fleet installed here (weights, normalised when drawing).
    weight: float
    #: Typical idle microphone noise floor, dBFS.
    noise_floor_dbfs: float
    #: Typical wake-word false accepts per hour.
    false_accepts_per_h: float


#: The sites of the simulated fleet. ``busan-office`` is a noisy open-plan office.
SITES: tuple[Site, ...] = (
    Site("seoul-gangnam", "kr-central", "Asia/Seoul", 0.23, -60.0, 0.3),
    Site("busan-haeundae", "kr-south", "Asia/Seoul", 0.12, -59.0, 0.3),
    Site("tokyo-shibuya", "jp-east", "Asia/Tokyo", 0.14, -58.0, 0.35),
    Site("london-soho", "uk", "Europe/London", 0.11, -60.0, 0.3),
    Site("newyork-midtown", "us-east", "America/New_York", 0.12, -57.0, 0.4),
    Site("sf-mission", "us-west", "America/Los_Angeles", 0.10, -61.0, 0.25),
    Site("berlin-mitte", "eu-central", "Europe/Berlin", 0.11, -61.0, 0.25),
    Site("busan-office", "kr-south", "Asia/Seoul", 0.07, -35.0, 3.0),
)
_SITES_BY_NAME = {s.name: s for s in SITES}

#: Hardware revisions: (share of fleet, temperature offset range °C, CPU cost factor).
HW_REVS: dict[str, tuple[float, tuple[float, float], float]] = {
    "hw-a": (0.25, (-1.0, 1.0), 1.25),
    "hw-b": (0.50, (1.0, 3.0), 1.0),
    "hw-c": (0.25, (12.0, 18.0), 0.9),  # runs hot: +12–18 °C
}

#: Firmware versions and their shares of the fleet.
FIRMWARE_VERSIONS: tuple[tuple[str, float], ...] = (
    ("2.3.7", 0.08), ("2.4.0", 0.22), ("2.4.1", 0.70),
)

#: Installed model versions per kind, oldest first; the last one is current.
MODEL_VERSIONS: dict[str, tuple[str, ...]] = {
    "stt": ("stt-1.2.5", "stt-1.3.2", "stt-1.4.0"),
    "qa": ("qa-2.0.1", "qa-2.0.4", "qa-2.1.0"),
    "tts": ("tts-1.0.1", "tts-1.0.2", "tts-1.0.3"),
}
#: Share of units on the current version of each kind (the rest: previous, a few the oldest).
CURRENT_SHARE = 0.85
#: Older versions: (stage slowed down, latency factor, extra error probability per request).
VERSION_EFFECTS: dict[str, tuple[str, float, float]] = {
    "stt-1.2.5": ("stt", 1.5, 0.03),
    "stt-1.3.2": ("stt", 1.3, 0.015),
    "qa-2.0.1": ("qa", 1.4, 0.02),
    "qa-2.0.4": ("qa", 1.2, 0.01),
    "tts-1.0.1": ("tts", 1.35, 0.01),
    "tts-1.0.2": ("tts", 1.2, 0.005),
}

#: Median duration per pipeline stage, ms, with the lognormal sigma of each.
STAGE_MEDIAN_MS: dict[str, float] = {
    "wake": 150.0, "upload": 250.0, "stt": 450.0, "qa": 120.0, "tts": 180.0, "playback": 600.0,
}
STAGE_SIGMA: dict[str, float] = {
    "wake": 0.25, "upload": 0.35, "stt": 0.3, "qa": 0.4, "tts": 0.3, "playback": 0.25,
}
#: End-to-end latency budget, ms (the sum of the six stages).
LATENCY_BUDGET_MS = 3000.0
#: Probability that a request hits a network/queueing hiccup (one stage 2.5–5× slower).
HICCUP_P = 0.02
#: At most this many latency samples per stage in one heartbeat (docs/unit-api.md).
MAX_LATENCY_SAMPLES = 50
#: Voice requests per hour of an average household at the evening peak.
PEAK_REQUESTS_PER_H = 90.0
#: A first answer (no previous poll) counts the requests of this many seconds.
FIRST_POLL_WINDOW_S = 60.0
#: Relative request load by local hour 0..23 (1.0 = evening peak).
HOURLY_LOAD: tuple[float, ...] = (
    0.18, 0.10, 0.06, 0.05, 0.05, 0.08, 0.22, 0.50, 0.60, 0.45, 0.38, 0.40,
    0.45, 0.40, 0.38, 0.42, 0.50, 0.65, 0.82, 0.95, 1.00, 0.92, 0.65, 0.35,
)
#: Seconds a periodically rebooting unit is unreachable while it boots.
BOOT_DOWN_S = 8.0
#: Seconds a unit reports ``state: updating`` after its agent (re)started.
UPDATING_S = 3.0

_HOURLY = np.array(HOURLY_LOAD + (HOURLY_LOAD[0],))


@dataclass(frozen=True)
class UnitSpec:
    """One simulated unit: its inventory fields and the traits that drive its behaviour.

    Built by :func:`generate_fleet`; immutable, so it can be shared between threads.
    """

    seed: int
    index: int
    serial: str
    hardware_rev: str
    site: str
    region: str
    timezone: str
    firmware_version: str
    stt_version: str
    qa_version: str
    tts_version: str
    tags: tuple[str, ...]
    consent_recordings: bool
    consent_feedback_text: bool
    #: Household request-rate multiplier (lognormal around 1).
    household_load: float
    #: Typical Wi-Fi signal strength, dBm.
    wifi_rssi_dbm: float
    #: Typical idle microphone noise floor, dBFS.
    noise_floor_dbfs: float
    #: Typical wake-word false accepts per hour.
    false_accepts_per_h: float
    #: Temperature above a ``hw-a`` board at the same CPU load, °C.
    temp_offset_c: float
    mem_base_pct: float
    disk_free_base_mb: float
    #: Unit clock minus true time, s.
    clock_skew_s: float
    #: Uptime cycle: the agent restarts every ``reboot_period_s`` (weeks, or minutes for rebooters).
    reboot_period_s: float
    reboot_phase_s: float
    #: Units offline for long periods: cycle length, s (0 = never), and the offline share of it.
    offline_period_s: float = 0.0
    offline_fraction: float = 0.0
    #: Flapping units toggle online/offline every this many seconds (0 = no flapping).
    flap_half_period_s: float = 0.0
    #: The microphone is failing: ``state`` is ``degraded``, noise floor high, more errors.
    degraded_mic: bool = False
    #: Phase for the slow, smooth variations (radians).
    phase: float = 0.0

    @property
    def models(self) -> dict[str, str]:
        """Installed model version per kind, as inventoried: ``{"stt": "stt-1.4.0", ...}``."""
        return {"stt": self.stt_version, "qa": self.qa_version, "tts": self.tts_version}

    @property
    def is_rebooter(self) -> bool:
        """True if the unit reboots every few tens of minutes."""
        return self.reboot_period_s < 6 * 3600


def _choice(rng: np.random.Generator, items: list[Any], weights: list[float]) -> Any:
    u = rng.random() * sum(weights)
    for item, weight in zip(items, weights):
        u -= weight
        if u < 0:
            return item
    return items[-1]


def _model_version(rng: np.random.Generator, kind: str) -> str:
    versions = MODEL_VERSIONS[kind]
    u = rng.random()
    if u < CURRENT_SHARE:
        return versions[-1]
    return versions[0] if u > 0.98 else versions[-2]


def make_unit(seed: int, index: int) -> UnitSpec:
    """Draw unit number ``index`` (0-based) of the fleet of seed ``seed``.

    Each unit has its own generator seeded from ``(seed, index)``, so a smaller fleet of the same
    seed is a prefix of a larger one.
    """
    rng = np.random.default_rng([seed, index, 0x5EED])
    site = _choice(rng, list(SITES), [s.weight for s in SITES])
    hw = _choice(rng, list(HW_REVS), [v[0] for v in HW_REVS.values()])
    firmware = _choice(rng, [f for f, _ in FIRMWARE_VERSIONS], [w for _, w in FIRMWARE_VERSIONS])
    versions = {kind: _model_version(rng, kind) for kind in MODEL_KINDS}
    tags: list[str] = []
    if site.name == "busan-office":
        tags += ["office", "employee"]
    for tag, share in (("beta", 0.05), ("canary", 0.02), ("kids-profile", 0.15),
                       ("multi-room", 0.2), ("vip", 0.01)):
        if rng.random() < share:
            tags.append(tag)
    trait = rng.random()
    offline_period = offline_fraction = flap = 0.0
    if trait < 0.03:  # offline for long periods; a third of them unplugged for good
        offline_period = float(rng.uniform(6, 24)) * 3600
        offline_fraction = 1.0 if rng.random() < 0.33 else float(rng.uniform(0.5, 0.9))
    elif trait < 0.05:
        flap = float(rng.uniform(20, 40))
    rebooter = rng.random() < 0.03
    reboot_period = (float(rng.uniform(15, 60)) * 60 if rebooter
                     else float(rng.uniform(14, 45)) * 86400)
    degraded = rng.random() < 0.01
    skew = float(rng.normal(0, 0.3)) if rng.random() > 0.02 else float(rng.uniform(-600, 600))
    return UnitSpec(
        seed=seed,
        index=index,
        serial=f"SPK-{index + 1:06d}",
        hardware_rev=hw,
        site=site.name,
        region=site.region,
        timezone=site.timezone,
        firmware_version=firmware,
        stt_version=versions["stt"],
        qa_version=versions["qa"],
        tts_version=versions["tts"],
        tags=tuple(tags),
        consent_recordings=bool(rng.random() < 0.6),
        consent_feedback_text=bool(rng.random() < 0.7),
        household_load=float(rng.lognormal(0.0, 0.5)),
        wifi_rssi_dbm=float(rng.uniform(-80, -50)),
        noise_floor_dbfs=site.noise_floor_dbfs + float(rng.normal(0, 2.0)),
        false_accepts_per_h=site.false_accepts_per_h * float(rng.lognormal(0.0, 0.3)),
        temp_offset_c=float(rng.uniform(*HW_REVS[hw][1])),
        mem_base_pct=float(rng.uniform(30, 48)),
        disk_free_base_mb=float(rng.uniform(1200, 2400)),
        clock_skew_s=skew,
        reboot_period_s=reboot_period,
        reboot_phase_s=float(rng.uniform(0, reboot_period)),
        offline_period_s=offline_period,
        offline_fraction=offline_fraction,
        flap_half_period_s=flap,
        degraded_mic=bool(degraded),
        phase=float(rng.uniform(0, 2 * math.pi)),
    )


def generate_fleet(n: int, seed: int) -> list[UnitSpec]:
    """Draw a fleet of ``n`` units, serials ``SPK-000001`` … in order.

    Parameters
    ----------
    n
        Number of units, >= 0.
    seed
        Fleet seed: the same seed gives the same fleet (and ``generate_fleet(k, seed)`` is a
        prefix of ``generate_fleet(n, seed)`` for ``k <= n``).

    Returns
    -------
    list of UnitSpec
        Shares (as drawn, per unit): sites by ``SITES`` weights, ``HW_REVS`` and
        ``FIRMWARE_VERSIONS`` by their shares, 85 % current per model kind, 60 % consent to
        recordings, 70 % to feedback text, 3 % long-offline, 2 % flapping, 3 % rebooting every
        15–60 min, 1 % with a degraded microphone.
    """
    if n < 0:
        raise ValueError(f"fleet size must be >= 0, got {n}")
    return [make_unit(seed, i) for i in range(n)]


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_hour(spec: UnitSpec, now: datetime) -> float:
    """The unit's local time of day at ``now``, hours in [0, 24)."""
    local = now.astimezone(_zone(spec.timezone))
    return local.hour + local.minute / 60 + local.second / 3600


def load_at(spec: UnitSpec, now: datetime) -> float:
    """Relative request load of the unit's site at ``now``: 0..1 by local hour (``HOURLY_LOAD``)."""
    return float(np.interp(local_hour(spec, now), np.arange(25), _HOURLY))


def _smooth(spec: UnitSpec, t: float, key: int) -> float:
    """A smooth per-unit wiggle in about [-1, 1] over minutes to hours (no state, no randomness)."""
    p = spec.phase + 1.7 * key
    return (0.5 * math.sin(t / 420.0 + p) + 0.3 * math.sin(t / 97.0 + 2.3 * p)
            + 0.2 * math.sin(t / 3100.0 + 0.7 * p))


def uptime_s(spec: UnitSpec, now: datetime) -> float:
    """Seconds since the unit's agent last started, from its reboot cycle."""
    return (now.timestamp() + spec.reboot_phase_s) % spec.reboot_period_s


def boot_time(spec: UnitSpec, now: datetime) -> datetime:
    """When the unit's agent last started (see :func:`uptime_s`), aware UTC."""
    return now - timedelta(seconds=uptime_s(spec, now))


def is_online(spec: UnitSpec, now: datetime) -> bool:
    """Whether the unit answers at ``now`` (long offline periods, flapping, booting)."""
    t = now.timestamp()
    if spec.offline_period_s:
        pos = ((t + spec.reboot_phase_s) % spec.offline_period_s) / spec.offline_period_s
        if pos < spec.offline_fraction:
            return False
    if spec.flap_half_period_s and int((t + spec.phase * 10) // spec.flap_half_period_s) % 2:
        return False
    if spec.is_rebooter and uptime_s(spec, now) < BOOT_DOWN_S:
        return False
    return True


def _rng(spec: UnitSpec, *keys: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, spec.index, *keys])


def _mean_rate_per_s(spec: UnitSpec, start: datetime, end: datetime) -> float:
    """Average request rate of the unit over ``[start, end]``, requests/s."""
    elapsed = (end - start).total_seconds()
    points = min(24, max(1, math.ceil(elapsed / 900)))
    step = elapsed / points
    load = sum(load_at(spec, start + timedelta(seconds=step * (i + 0.5))) for i in range(points))
    return PEAK_REQUESTS_PER_H / 3600 * spec.household_load * load / points


def _stage_factors(spec: UnitSpec, models: dict[str, str], load: float,
                   wifi_dbm: float) -> tuple[dict[str, float], float]:
    """Latency factor per stage and the per-request error probability."""
    factors = dict.fromkeys(STAGES, 1.0)
    error_p = 0.01 + 0.01 * load
    server = 1.0 + 0.4 * load * load  # queueing on the servers at the regional peak
    for stage in ("stt", "qa", "tts"):
        factors[stage] = server
    for version in models.values():
        effect = VERSION_EFFECTS.get(version)
        if effect:
            factors[effect[0]] *= effect[1]
            error_p += effect[2]
    factors["upload"] *= 1.0 + max(0.0, -65.0 - wifi_dbm) / 20.0
    if wifi_dbm < -75:
        error_p += 0.02
    if spec.degraded_mic:
        factors["wake"] *= 1.5
        error_p += 0.08
    return factors, error_p


def _requests(spec: UnitSpec, now: datetime, start: datetime, models: dict[str, str],
              wifi_dbm: float) -> tuple[int, int, dict[str, list[float]]]:
    """Requests, errors and per-stage latencies (ms) of the requests in ``[start, now]``."""
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return 0, 0, {stage: [] for stage in STAGES}
    rng = _rng(spec, int(start.timestamp() * 1000), int(now.timestamp() * 1000), 1)
    n = int(rng.poisson(_mean_rate_per_s(spec, start, now) * elapsed))
    factors, error_p = _stage_factors(spec, models, load_at(spec, now), wifi_dbm)
    errors = int(rng.binomial(n, min(error_p, 0.9))) if n else 0
    k = min(n, MAX_LATENCY_SAMPLES)
    z = rng.standard_normal((len(STAGES), k))
    hiccup = rng.random(k) < HICCUP_P
    hiccup_stage = rng.integers(1, 4, k)  # upload, stt or qa
    hiccup_factor = rng.uniform(2.5, 5.0, k)
    latency: dict[str, list[float]] = {}
    for s, stage in enumerate(STAGES):
        values = STAGE_MEDIAN_MS[stage] * factors[stage] * np.exp(STAGE_SIGMA[stage] * z[s])
        values = np.where(hiccup & (hiccup_stage == s), values * hiccup_factor, values)
        latency[stage] = [round(float(v), 1) for v in values]
    return n, errors, latency


def info(spec: UnitSpec, now: datetime, *, models: dict[str, str] | None = None,
         booted_at: datetime | None = None) -> dict[str, Any]:
    """The unit's ``/v1/info`` body (docs/unit-api.md).

    Parameters
    ----------
    spec
        The unit.
    now
        Aware time of the answer (true time; the unit's clock skew is not applied to boot_time).
    models
        Installed versions read from the unit's ``current`` symlinks; default: the spec's.
    booted_at
        A later agent start (e.g. after ``bin/restart-voice-service``) overriding the reboot cycle.
    """
    boot = boot_time(spec, now)
    if booted_at is not None and booted_at > boot:
        boot = booted_at
    return {
        "serial": spec.serial,
        "hardware_rev": spec.hardware_rev,
        "firmware_version": spec.firmware_version,
        "agent_version": AGENT_VERSION,
        "site": spec.site,
        "region": spec.region,
        "timezone": spec.timezone,
        "models": dict(models) if models is not None else spec.models,
        "boot_time": boot.astimezone(UTC).isoformat(timespec="seconds"),
    }


def health(spec: UnitSpec, now: datetime, since: datetime | None, *,
           models: dict[str, str] | None = None,
           booted_at: datetime | None = None) -> dict[str, Any]:
    """The unit's ``/v1/health`` body at ``now`` (docs/unit-api.md).

    Parameters
    ----------
    spec
        The unit.
    now
        Aware time of the answer. Figures vary with it: gauges have a jitter per 1-s bucket on
        top of slow per-unit wiggles; the request load follows the unit's local hour.
    since
        Time of the previous ``/v1/health`` answer, or None for the first one (then the last
        ``FIRST_POLL_WINDOW_S`` seconds count). Requests before the agent's start never count.
    models
        Installed versions (the ``current`` symlinks of an SSH unit); default: the spec's.
    booted_at
        A later agent start overriding the reboot cycle (an SSH unit's restart marker).

    Returns
    -------
    dict
        ``requests``/``errors`` are counts since ``since``; ``latency_ms`` holds at most
        ``MAX_LATENCY_SAMPLES`` values per stage, ms; gauges are in the units their names say.
    """
    models = dict(models) if models is not None else spec.models
    t = now.timestamp()
    up = uptime_s(spec, now)
    if booted_at is not None:
        up = min(up, max(0.0, (now - booted_at).total_seconds()))
    start = since if since is not None else now - timedelta(seconds=FIRST_POLL_WINDOW_S)
    start = max(start, now - timedelta(seconds=up))
    load = load_at(spec, now)
    activity = min(1.5, load * spec.household_load)
    rng = _rng(spec, int(t), 0)
    jitter = rng.standard_normal(6)
    hw_cpu = HW_REVS[spec.hardware_rev][2]
    cpu = 5.0 + hw_cpu * 30.0 * activity + 3.0 * _smooth(spec, t, 1) + 2.5 * jitter[0]
    if up < 120:  # boot work
        cpu += 25.0 * (1 - up / 120)
    cpu = min(100.0, max(1.0, cpu))
    temp = 28.0 + spec.temp_offset_c + 0.3 * cpu + 1.5 * _smooth(spec, t, 2) + 0.3 * jitter[1]
    mem = min(99.0, spec.mem_base_pct + 12.0 * activity + 2.0 * _smooth(spec, t, 3)
              + 0.7 * jitter[2])
    log_growth = 80.0 * ((t + spec.phase * 1000) % 21600) / 21600  # logs rotate every 6 h
    disk = spec.disk_free_base_mb - log_growth
    office_hours = spec.site == "busan-office" and 9 <= local_hour(spec, now) < 18
    noise = spec.noise_floor_dbfs + (5.0 if office_hours else 0.0)
    if spec.degraded_mic:
        noise = -22.0
    noise += 1.5 * _smooth(spec, t, 4) + 0.8 * jitter[3]
    wifi = max(-95.0, min(-30.0, spec.wifi_rssi_dbm + 3.0 * _smooth(spec, t, 5) + 1.5 * jitter[4]))
    false_accepts = spec.false_accepts_per_h * (1.6 if office_hours else 0.8)
    false_accepts *= 1.0 + 0.3 * _smooth(spec, t, 6) + (4.0 if spec.degraded_mic else 0.0)
    requests, errors, latency = _requests(spec, now, start, models, wifi)
    state = "ok"
    if spec.degraded_mic:
        state = "degraded"
    if up < UPDATING_S:
        state = "updating"
    unit_time = now + timedelta(seconds=spec.clock_skew_s)
    return {
        "serial": spec.serial,
        "time": unit_time.astimezone(UTC).isoformat(timespec="milliseconds"),
        "state": state,
        "uptime_s": round(up, 1),
        "cpu_pct": round(cpu, 1),
        "temp_c": round(temp, 1),
        "mem_pct": round(mem, 1),
        "disk_free_mb": round(disk, 1),
        "mic_noise_dbfs": round(noise, 1),
        "wifi_rssi_dbm": round(wifi, 1),
        "wake_false_accepts_per_h": round(max(0.0, false_accepts), 2),
        "requests": requests,
        "errors": errors,
        "models": models,
        "latency_ms": latency,
    }
