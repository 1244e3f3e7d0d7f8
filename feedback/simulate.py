"""Realistic feedback for simulated units (``speakerops feedback simulate``).

:func:`generate_feedback` draws interchange-format rows (``docs/feedback.md``) for
``fleet.simulator.behaviour.UnitSpec`` objects or ``fleet.models.Unit`` rows. Units complain more
(low ratings, corrections, repeats) where the simulator makes them worse:

* older model versions (``VERSION_EFFECTS``: slower stage, more errors) — each version's extra
  error probability raises the complaint and correction odds;
* the noisy ``busan-office`` site and a degraded microphone — misrecognitions (corrections);
* the hot ``hw-c`` revision — a few more no-response complaints;
* weak Wi-Fi (UnitSpec only) — slow answers.

Figures (simulated, chosen to look like a consumer voice assistant): about
:data:`BASE_RATE_PER_UNIT_DAY` items per unit per day, 70 % rated 4–5 on a healthy unit, 6 %
corrected; a third of items carry text, 3 % of texts hold an e-mail or phone number (to exercise
redaction). Same seed, units and window → the same rows (submission ids included, so a rerun
imports nothing new).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Feedback items per unit per day on average (most households rate now and then).
BASE_RATE_PER_UNIT_DAY = 0.6
INTENTS: dict[str, tuple[str, ...]] = {
    "weather": ("weather.forecast",),
    "news": ("news.read",),
    "schedule": ("schedule.add", "schedule.remind", "schedule.alarm", "schedule.list", "schedule.cancel"),
    "music": ("music.play", "music.recommend", "music.pause", "music.next"),
    "qa": ("qa.capital", "qa.time", "qa.math", "qa.height", "qa.author"),
    "none": ("none",),
}
FEATURE_SHARE: dict[str, float] = {"weather": 0.22, "news": 0.10, "schedule": 0.2, "music": 0.28, "qa": 0.15,
                                   "none": 0.05}
PRAISE: tuple[str, ...] = (
    "worked perfectly", "quick and accurate answer", "love the new voice", "great, exactly what I asked",
    "the forecast was right", "nice song choice", "reminder came on time",
)
COMPLAINTS: dict[str, tuple[str, ...]] = {
    "misrecognition": ("it did not understand what I said", "heard the wrong words again",
                       "kept mishearing my request", "understood a different song title",
                       "wrong city, it misheard the name"),
    "slow": ("took forever to answer", "very slow response today", "long pause before it answered"),
    "wrong_answer": ("gave the wrong answer", "the answer was incorrect", "weather forecast was wrong",
                     "set the alarm for the wrong time"),
    "no_response": ("did not respond at all", "no answer, the light just spun", "stopped responding mid sentence"),
    "audio": ("the voice sounds robotic and crackly", "speaker volume is distorted", "audio cuts out"),
}
PII_TEXTS: tuple[str, ...] = ("please call me back at 010-2345-6789", "contact me at user.name@example.com",
                              "my number is +82 10 9876 5432, it keeps failing")


def _unit_traits(unit: Any) -> dict[str, Any]:
    """Serial, versions and the badness traits of a UnitSpec or a Unit row."""
    from fleet.simulator.behaviour import VERSION_EFFECTS

    versions = {k: getattr(unit, f"{k}_version", None) for k in ("stt", "qa", "tts")}
    err = sum(VERSION_EFFECTS[v][2] for v in versions.values() if v in VERSION_EFFECTS)
    slow = max([VERSION_EFFECTS[v][1] for v in versions.values() if v in VERSION_EFFECTS] or [1.0])
    wifi = getattr(unit, "wifi_rssi_dbm", -60.0)
    return {"serial": unit.serial, "versions": versions, "version_err": err, "slow": slow - 1.0 + max(0.0, (-70 - wifi) / 20),
            "noisy": getattr(unit, "site", "") == "busan-office" or bool(getattr(unit, "degraded_mic", False)),
            "hot": getattr(unit, "hardware_rev", "") == "hw-c",
            "load": float(getattr(unit, "household_load", 1.0))}


def generate_feedback(units: list[Any], start: datetime, end: datetime, seed: int = 0, *,
                      rate_per_unit_day: float = BASE_RATE_PER_UNIT_DAY, with_versions: bool = True
                      ) -> list[dict[str, Any]]:
    """Feedback rows in the interchange format for ``units`` between ``start`` and ``end``.

    Parameters
    ----------
    units
        ``UnitSpec`` s or ``Unit`` rows (anything with ``serial``, ``site``, ``hardware_rev`` and
        ``<kind>_version``).
    start, end
        Aware times; rows are spread uniformly in between.
    with_versions
        Put the unit's versions in the rows (else the importer looks them up).

    Returns
    -------
    list of dict
        Sorted by ``submitted_at``; ``submission_id`` is ``sim-<seed>-<serial>-<n>``.

    Raises
    ------
    ValueError
        If ``end`` is not after ``start``.
    """
    if end <= start:
        raise ValueError(f"end {end} is not after start {start}")
    days = (end - start).total_seconds() / 86400
    features = list(FEATURE_SHARE)
    shares = np.array(list(FEATURE_SHARE.values()))
    shares /= shares.sum()
    rows: list[dict[str, Any]] = []
    for unit in units:
        t = _unit_traits(unit)
        rng = np.random.default_rng([seed] + [ord(c) for c in t["serial"]])
        n = int(rng.poisson(rate_per_unit_day * days * min(3.0, t["load"])))
        if n == 0:
            continue
        bad = min(0.85, 0.12 + 4.0 * t["version_err"] + (0.18 if t["noisy"] else 0.0) + (0.05 if t["hot"] else 0.0)
                  + 0.25 * t["slow"])
        p_correct = min(0.8, 0.06 + 3.0 * t["version_err"] + (0.15 if t["noisy"] else 0.0))
        offsets = np.sort(rng.uniform(0, (end - start).total_seconds(), n))
        household = "hh-" + t["serial"].lower().replace("spk-", "")
        for j in range(n):
            feature = features[int(rng.choice(len(features), p=shares))]
            intent = INTENTS[feature][int(rng.integers(len(INTENTS[feature])))]
            is_bad = rng.random() < bad
            rating = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])) if is_bad else \
                int(rng.choice([3, 4, 5], p=[0.15, 0.35, 0.5]))
            corrected = bool(rng.random() < (p_correct * (2.0 if is_bad else 0.5)))
            text = ""
            if rng.random() < 0.33:
                if rng.random() < 0.03:
                    text = PII_TEXTS[int(rng.integers(len(PII_TEXTS)))]
                elif is_bad:
                    kinds = ["misrecognition"] * (3 if t["noisy"] or corrected else 1) + ["wrong_answer"] + \
                        ["slow"] * (2 if t["slow"] > 0.25 else 0) + ["no_response"] * (2 if t["hot"] else 1) + ["audio"]
                    pool = COMPLAINTS[kinds[int(rng.integers(len(kinds)))]]
                    text = pool[int(rng.integers(len(pool)))]
                else:
                    text = PRAISE[int(rng.integers(len(PRAISE)))]
            row = {"unit_serial": t["serial"], "household_id": household,
                   "submitted_at": (start + timedelta(seconds=float(offsets[j]))).isoformat(timespec="seconds"),
                   "feature": feature, "intent": intent if feature != "none" else "none", "rating": rating,
                   "text": text, "corrected": corrected, "repeated": bool(is_bad and rng.random() < 0.3),
                   "cancelled": bool(is_bad and rng.random() < 0.1), "submission_id": f"sim-{seed}-{t['serial']}-{j}"}
            if with_versions:
                row.update({f"{k}_version": v for k, v in t["versions"].items() if v})
            rows.append(row)
    rows.sort(key=lambda r: r["submitted_at"])
    return rows
