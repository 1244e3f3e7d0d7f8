"""The import's fast path agrees with the full validator: any row it accepts, ``validate_record``
accepts with the same record and no error or warning; everything else is left to the full one."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

from feedback.fastpath import FastValidator
from feedback.ingest import (FUTURE_TOLERANCE, MAX_TEXT_CHARS, UnitInfo, content_hash, household_ok, intent_ok,
                             validate_record)

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
UNITS = {"SPK-1": UnitInfo(1, True, ("stt-1", "qa-1", "tts-1")), "SPK-2": UnitInfo(2, False, (None, None, None))}

# Values of each field: well-formed ones and every kind of odd or wrong one.
VALUES = {
    "unit_serial": ["SPK-1", "SPK-2", " SPK-1", "SPK-404", "", None, 7],
    "household_id": ["hh-1", "HH.2:x_y", " hh-1 ", "010-1234-5678", "a@b.c", "bad id", "", None, "x" * 70, 12],
    "submitted_at": ["2026-11-20T09:00:00+09:00", "2026-11-20T00:00:00Z", "2026-11-20 09:00:00+0900",
                     " 2026-11-20T09:00:00+09:00", "2026-11-20T09:00:00", "2030-01-01T00:00:00Z",
                     (NOW + timedelta(minutes=4)).isoformat(), (NOW + timedelta(minutes=6)).isoformat(), "yesterday",
                     "", None, 1234],
    "feature": ["weather", "Music", " qa ", "sports", "", None, 3],
    "intent": ["weather.forecast", "Weather.Forecast", " music.play ", "music.play", "weather", "x.y.z", "", "   ",
               None, "weather." + "a" * 70, 5],
    "rating": ["1", "5", 3, "0", 7, " 4", "04", 4.0, 4.5, True, "four", "", None],
    "text": ["", "  ", "wrong city", "  call 010-1234-5678  ", "x" * (MAX_TEXT_CHARS + 5), None, 42],
    "corrected": ["true", "false", "", None, True, False, 1, 0, 1.0, 2, "Yes", " no ", "maybe", [1]],
    "repeated": [None, "1", "T", "nope"],
    "cancelled": [None, "0", "FALSE"],
    "submission_id": ["app-1", " app-2 ", "", None, "s" * 129, "s" * 128, 99],
    "stt_version": [None, "", "stt-1.4.0", " stt-1.3.2 ", "v" * 65, 1],
    "qa_version": [None, "qa-2.1.0"],
    "tts_version": [None, "tts-1.0.3"],
}


def _validators() -> FastValidator:
    return FastValidator(UNITS, NOW, future_tolerance=FUTURE_TOLERANCE, max_text_chars=MAX_TEXT_CHARS,
                         content_hash=content_hash, household_ok=household_ok, intent_ok=intent_ok)


def _agree(fast: FastValidator, raw: dict) -> bool:
    got = fast(raw)
    rec, errors, warnings = validate_record(raw, 1, NOW, UNITS)
    if got is not None:
        assert (errors, warnings) == ([], []), raw
        assert got == rec, raw
    return got is not None


def test_each_odd_value_alone_agrees_with_the_full_validator() -> None:
    base = {k: v[0] for k, v in VALUES.items()}
    fast = _validators()
    taken = 0
    for key, values in VALUES.items():
        for value in values:
            taken += _agree(fast, base | {key: value})
        taken += _agree(fast, {k: v for k, v in base.items() if k != key})  # the field missing
    assert _agree(fast, base)
    assert taken > 40  # the well-formed spellings do take the fast path


def test_random_combinations_agree_with_the_full_validator() -> None:
    rng = random.Random(0)
    fast = _validators()
    keys = list(VALUES)
    taken = sum(_agree(fast, {k: rng.choice(VALUES[k]) for k in keys}) for _ in range(20_000))
    assert taken > 0
    # and the cached values give the same answers the second time round
    for combo in itertools.islice(itertools.product(*(VALUES[k][:3] for k in keys)), 3000):
        _agree(fast, dict(zip(keys, combo)))
